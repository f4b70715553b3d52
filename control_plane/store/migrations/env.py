"""Alembic's entry point, run by `control_plane.store._migrate` on a connection it opened.

There is no alembic.ini and no URL here: `_migrate` opens a transaction on the control plane's
own (async) engine and hands its sync connection over in `config.attributes["connection"]`, so
the migrations run in that transaction with the same driver the server uses.
"""

from __future__ import annotations

from alembic import context

from tether.control_plane.store._schema import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "Tether's migrations run on a connection from control_plane.store._migrate: "
        "use `tether db upgrade --db URL`, not the alembic command"
    )

if connection.dialect.name == "sqlite" and connection.exec_driver_sql("PRAGMA foreign_keys").scalar():
    # Batch mode drops and re-creates a table; with foreign keys on, dropping `sessions` would
    # cascade to every turn and event. `_migrate` turns them off around the transaction.
    raise RuntimeError("SQLite migrations must run with PRAGMA foreign_keys=OFF")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot alter a column in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    compare_server_default=True,
)
with context.begin_transaction():
    context.run_migrations()
