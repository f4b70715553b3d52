"""The SDK's commands: `tether session`, `tether pair`, and the operator commands `tether worker
list`, `drain`, `tokens` and `revoke` (composed into the `tether worker` group by `tether.cli`).

They are a thin shell over the blocking `sdk.Client`; this module is what other code imports.
Behind it: `_session_cli` (the session commands) and `_lifecycle_cli` (fork, revert, export and
import, archive, delete, purge), `_admin_cli` (the AdminService commands),
`_transcript` (events rendered for a person) and `_cli_common` (error reporting, credentials
from the environment, `--json` output).
"""

from __future__ import annotations

from ._admin_cli import drain_worker, list_worker_tokens, list_workers, pair, revoke_worker_token
from ._session_cli import session

__all__ = ["drain_worker", "list_worker_tokens", "list_workers", "pair", "revoke_worker_token", "session"]
