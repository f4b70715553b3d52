"""The `tether` command: one entry point over the three deployables.

`control_plane`, `execution_worker` and `sdk` are peers that must not import each other's CLI
code, so the group loads each subcommand lazily from its own package. `tether conformance`
(the worker conformance kit) lives here because it needs a control plane and the SDK at once.
"""

from __future__ import annotations

import importlib

import click

_SUBCOMMANDS = {
    "serve": ("control_plane.cli", "serve"),
    "worker": ("execution_worker.cli", "worker"),
    "session": ("sdk.cli", "session"),
    "pair": ("sdk.cli", "pair"),
    "keys": ("control_plane.keys_cli", "keys"),
    "db": ("control_plane.db_cli", "db"),
    "conformance": ("tether_cli.conformance", "conformance"),
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


__all__ = ["main"]
