"""Durable storage: ORM rows, their migrations, the group-commit writer and the read queries.

Implements the domain's storage ports (`domain/ports.py`): `Reader` is the `SessionReader`,
`Writer` the `GroupCommitWriter` (it maps the domain's `Changes` to rows, `_rows.py`), and
`AccessStore` the `CredentialStore`, `SqlBlobStore` the `BlobStore` (workspace blobs). SQLAlchemy errors stop here: the writer reports
`WriteFailed`, which `domain/` maps to an UNAVAILABLE answer.
"""

from ..domain.ports import LoadedSession, WriteFailed
from ._access import AccessStore
from ._blobs import SqlBlobStore
from ._database import (
    create_engine,
    create_sqlite_writer_engine,
    database_url,
    is_sqlite,
)
from ._migrate import (
    SCHEMA_HEAD,
    DatabaseNotReady,
    DatabaseUnreachable,
    SchemaNotCurrent,
    SchemaState,
    Upgrade,
    UpgradeFailed,
    check_schema,
    describe_database,
    ensure_schema,
    not_current,
    schema_state,
    upgrade_schema,
)
from ._reads import Reader
from ._rows import (
    WriteSet,
    lease_to_row,
    request_to_row,
    request_update_row,
    rows_of,
    session_to_row,
    session_update_row,
    snapshot_to_row,
    turn_to_row,
    turn_update_row,
    worker_to_row,
)
from ._writer import Writer

__all__ = [
    "AccessStore",
    "SqlBlobStore",
    "DatabaseNotReady",
    "DatabaseUnreachable",
    "SCHEMA_HEAD",
    "SchemaNotCurrent",
    "SchemaState",
    "Upgrade",
    "UpgradeFailed",
    "Reader",
    "LoadedSession",
    "WriteFailed",
    "WriteSet",
    "Writer",
    "check_schema",
    "create_engine",
    "create_sqlite_writer_engine",
    "database_url",
    "describe_database",
    "ensure_schema",
    "is_sqlite",
    "not_current",
    "schema_state",
    "upgrade_schema",
    "lease_to_row",
    "request_to_row",
    "request_update_row",
    "rows_of",
    "session_to_row",
    "session_update_row",
    "snapshot_to_row",
    "turn_to_row",
    "turn_update_row",
    "worker_to_row",
]
