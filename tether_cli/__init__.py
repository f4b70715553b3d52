"""The `tether` command: `tether serve`, `tether worker`, `tether session`, and the rest.

The plain `pip install tether` is the SDK alone; the command needs click, which the `cli`,
`server` and `worker` extras bring. Without it, `tether` says which extra to install instead
of failing with a traceback.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    # gRPC's C core logs TLS handshake failures and the like to stderr in its own format
    # (ssl_transport_security.cc); the command reports them itself, in words that say what to
    # set. The variable is read once, when gRPC loads: so before anything imports it. An
    # operator who sets GRPC_VERBOSITY (or GRPC_TRACE) keeps what they asked for.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
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
