"""The `tether` command's group: one entry point over the three deployables.

`tether.control_plane`, `tether.execution_worker` and `tether.sdk` are peers that must not import each other's CLI
code, so the group loads each subcommand lazily from its own package. `tether conformance`
(the worker conformance kit) lives here because it needs a control plane and the SDK at once.
"""

from __future__ import annotations

import importlib

import click

_SUBCOMMANDS = {
    "serve": ("tether.control_plane.cli", "serve"),
    "worker": ("tether.execution_worker.cli", "worker"),
    "session": ("tether.sdk.cli", "session"),
    "pair": ("tether.sdk.cli", "pair"),
    "keys": ("tether.control_plane.keys_cli", "keys"),
    "db": ("tether.control_plane.db_cli", "db"),
    "conformance": ("tether.cli.conformance", "conformance"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _SUBCOMMANDS:
            return None
        module, attr = _SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="tether")
def main() -> None:
    """Tether: a control plane for remote agent execution."""
