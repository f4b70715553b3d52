"""The `tether` command: `tether serve`, `tether worker`, `tether session`, and the rest.

The plain `pip install tether` is the SDK alone; the command needs click, which the `cli`,
`server` and `worker` extras bring. Without it, `tether` says which extra to install instead
of failing with a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from ._group import main as group
    except ModuleNotFoundError as exc:
        if exc.name != "click":
            raise
        sys.exit(
            "tether: the command needs the CLI extra; install it with "
            "pip install 'tether[cli]' (or 'tether[server]' / 'tether[worker]')"
        )
    group()


__all__ = ["main"]
