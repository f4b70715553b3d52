"""Durable storage: ORM rows, the group-commit writer and the read queries.

SQLAlchemy errors stop here: the writer reports `WriteFailed`, which `domain/` maps to an
UNAVAILABLE answer.
"""

from ._access import AccessStore
from ._database import (
    create_engine,
    create_schema,
    create_sqlite_writer_engine,
    database_url,
    is_sqlite,
    SchemaTooOld,
)
from ._reads import (
    Reader,
    LoadedSession,
    lease_to_row,
    request_to_row,
    request_update_row,
    session_to_row,
    session_update_row,
    snapshot_to_row,
    turn_to_row,
    turn_update_row,
)
from ._writer import WriteFailed, Writer, WriteSet

__all__ = [
    "AccessStore",
    "Reader",
    "LoadedSession",
    "WriteFailed",
    "WriteSet",
    "Writer",
    "create_engine",
    "create_schema",
    "create_sqlite_writer_engine",
    "is_sqlite",
    "SchemaTooOld",
    "database_url",
    "lease_to_row",
    "request_to_row",
    "request_update_row",
    "session_to_row",
    "session_update_row",
    "snapshot_to_row",
    "turn_to_row",
    "turn_update_row",
]
