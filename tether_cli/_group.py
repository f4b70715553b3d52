"""The `tether` command's group: one entry point over the three deployables.

`tether.control_plane`, `tether.execution_worker` and `tether.sdk` are peers that must not import each other's CLI
code, so the group loads each subcommand lazily from its own package, and composes here the one
group that needs two of them: `tether worker` is the worker's own group (run a worker, `pair`)
with the SDK's operator commands about workers added (`list`, `drain`, `tokens`, `revoke`).
`tether conformance` (the worker conformance kit) lives here because it needs a control plane
and the SDK at once.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable

import click

_SUBCOMMANDS = {
    "serve": ("tether.control_plane.cli", "serve"),
    "session": ("tether.sdk.cli", "session"),
    "pair": ("tether.sdk.cli", "pair"),
    "keys": ("tether.control_plane.keys_cli", "keys"),
    "db": ("tether.control_plane.db_cli", "db"),
    "conformance": ("tether.cli.conformance", "conformance"),
    "doctor": ("tether.cli.doctor", "doctor"),
}


@functools.cache
def worker_group() -> click.Group:
    """`tether worker`: the worker's group from `tether.execution_worker.cli`, plus the SDK's
    `list`, `drain`, `tokens` and `revoke`. A copy: the worker's own group stays as it is."""
    from tether.execution_worker.cli import worker
    from tether.sdk.cli import drain_worker, list_worker_tokens, list_workers, revoke_worker_token

    group = copy.copy(worker)
    group.commands = dict(worker.commands)
    for command in (list_workers, drain_worker, list_worker_tokens, revoke_worker_token):
        group.add_command(command)
    return group


# Subcommands built here rather than taken as they are from one package.
_COMPOSED: dict[str, Callable[[], click.Command]] = {"worker": worker_group}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*_SUBCOMMANDS, *_COMPOSED])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMPOSED:
            return _COMPOSED[name]()
        if name not in _SUBCOMMANDS:
            return None
        module, attr = _SUBCOMMANDS[name]
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="tether")
def main() -> None:
    """Tether: a control plane for remote agent execution."""
