"""Schema migrations: the tables come only from `control_plane/store/migrations`, on SQLite and
PostgreSQL alike.

The migrations make exactly what the models describe (and revision 0001 exactly what the release
before owners made); databases made by `create_all` before migrations existed are recognised,
upgraded with their rows intact and served; `tether serve` refuses, in one line that says what
to run, a database that is not at this release's revision or cannot be reached.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, func, insert, inspect, select, text

from tests.helpers import legacy_schema
from tests.helpers.pg import PG_SERVER, fresh_database, require_pg
from tests.helpers.processes import ROOT, ControlPlaneProcess, Proc
from tether import sdk
from tether.control_plane.domain.model import new_id
from tether.control_plane.store import (
    SCHEMA_HEAD,
    Upgrade,
    _migrate,
    create_engine,
    database_url,
    describe_database,
    upgrade_schema,
)
from tether.control_plane.store import _schema as current_schema
from tether.control_plane.store._schema import Base
from tether.v1 import resources_pb2 as pb


def tether(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def serve_args(db: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tether.control_plane", "--dev", "--port", "0", "--db", db, *extra]


def serve(db: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`tether serve` expected to refuse to start (so it exits by itself)."""
    return subprocess.run(serve_args(db, *extra), capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@contextlib.contextmanager
def serving(tmp_path: pathlib.Path, db: str, *extra: str) -> Iterator[tuple[str, Proc]]:
    """`tether serve --dev` with exactly these flags (no --migrate unless given); yields its
    target once it listens, and stops it afterwards."""
    cp = ControlPlaneProcess(tmp_path, db, extra=list(extra), migrate=False)
    cp.start()
    try:
        assert cp.proc is not None
        yield cp.target, cp.proc
    finally:
        cp.stop()


def run_together(*commands: list[str], timeout: float = 60) -> list[tuple[int, str, str]]:
    """Run the commands at once; (exit code, stdout, stderr) of each."""
    running = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for args in commands
    ]
    outputs = [p.communicate(timeout=timeout) for p in running]
    return [(p.returncode, out, err) for p, (out, err) in zip(running, outputs, strict=True)]


def in_thread(coro: Any) -> Any:
    """Run a coroutine on its own loop in a thread, so sync and async tests alike can wait for it."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def on_db(db: str, fn: Callable[[Connection], Any]) -> Any:
    """Run `fn(sync connection)` in one transaction, through the control plane's own engine."""

    async def run() -> Any:
        engine = create_engine(database_url(db))
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return in_thread(run())


def schema_differences(metadata: MetaData) -> Callable[[Connection], list]:
    def compare(conn: Connection) -> list:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, metadata)

    return compare


# What a control plane of the release before owners left behind: two sessions (one with a
# finished turn and its log, one archived), a worker and a released lease.
SESSION, ARCHIVED, TURN, WORKER = new_id("ses"), new_id("ses"), new_id("trn"), "w-old"
BODIES = [
    ("input_received", pb.EventBody(input_received=pb.InputReceived(input="echo hi"))),
    ("turn_started", pb.EventBody(turn_started=pb.TurnStarted(worker_id=WORKER))),
    ("output", pb.EventBody(output=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDOUT, text="hi\n"))),
    (
        "item_completed",
        pb.EventBody(item_completed=pb.ItemCompleted(item=pb.Item(kind=pb.ITEM_KIND_AGENT_MESSAGE, text="said hi"))),
    ),
    ("token_usage", pb.EventBody(token_usage=pb.TokenUsage(total_tokens=42))),
    ("turn_completed", pb.EventBody(turn_completed=pb.TurnCompleted(exit_code=0))),
]


# The tables of revision 0002 (owners), as the releases with owners and without migrations
# made them. The current models still describe them; if a later revision changes one, copy
# the models of commit 6a4bd49 here as legacy_schema is.
OWNER_TABLES = [
    "workers",
    "sessions",
    "turns",
    "events",
    "leases",
    "snapshots",
    "requests",
    "api_keys",
    "worker_tokens",
    "pairing_codes",
]


def old_rows(schema: Any, owner: str | None = None, only: list[str] | None = None) -> Callable[[Connection], None]:
    """Create the tables as `schema` (a models module) does with create_all (`only` these, if
    given), and write the rows. `owner`: the owner_id of sessions and workers, for a schema that
    has owners."""
    owned = {} if owner is None else {"owner_id": owner}

    def write(conn: Connection) -> None:
        metadata = schema.Base.metadata
        metadata.create_all(conn, tables=None if only is None else [metadata.tables[name] for name in only])
        session = dict(
            worker_selector_json="{}",
            labels_json='{"team": "a"}',
            runtime_thread_id="",
            runtime="shell",
            create_time_us=1_000,
            update_time_us=2_000,
            **owned,
        )
        conn.execute(
            insert(schema.SessionRow),
            [
                dict(session, session_id=SESSION, archived=False),
                dict(session, session_id=ARCHIVED, archived=True),
            ],
        )
        conn.execute(
            insert(schema.TurnRow),
            [
                dict(
                    turn_id=TURN,
                    session_id=SESSION,
                    ordinal=1,
                    input="echo hi",
                    idempotency_key="k1",
                    state=4,
                    worker_id=WORKER,
                    lease_epoch=1,
                    exit_code=0,
                    error_message="",
                    create_time_us=1_500,
                    end_time_us=1_900,
                )
            ],
        )
        conn.execute(
            insert(schema.EventRow),
            [
                dict(
                    session_id=SESSION,
                    seq=seq,
                    turn_id=TURN,
                    kind=kind,
                    body=body.SerializeToString(),
                    lease_epoch=1,
                    worker_seq=seq,
                    create_time_us=1_500 + seq,
                )
                for seq, (kind, body) in enumerate(BODIES, start=1)
            ],
        )
        conn.execute(insert(schema.LeaseRow), [dict(session_id=SESSION, worker_id="", epoch=1, granted_at_us=1_500)])
        conn.execute(
            insert(schema.WorkerRow),
            [
                dict(
                    worker_id=WORKER,
                    name="old",
                    registration_id="reg",
                    runtimes_json='["shell"]',
                    labels_json="{}",
                    slots=2,
                    version="0.1.0",
                    registered_at_us=1_000,
                    **owned,
                )
            ],
        )

    return write


def rows_after(conn: Connection) -> dict[str, Any]:
    return {
        "session_owners": dict(conn.execute(text("SELECT session_id, owner_id FROM sessions")).all()),
        "worker_owners": dict(conn.execute(text("SELECT worker_id, owner_id FROM workers")).all()),
        "turns": conn.execute(text("SELECT turn_id, idempotency_key, state FROM turns")).all(),
        "events": conn.execute(text("SELECT seq, kind, body FROM events ORDER BY seq")).all(),
        "leases": conn.execute(text("SELECT session_id, epoch FROM leases")).all(),
        "revision": conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one(),
    }


async def _upgrade(db: str, legacy_owner: str = "local") -> Upgrade:
    engine = create_engine(database_url(db))
    try:
        return await upgrade_schema(engine, legacy_owner)
    finally:
        await engine.dispose()


def test_models_and_migrations_agree(db_url: str) -> None:
    done = asyncio.run(_upgrade(db_url))
    assert (done.from_revision, done.to_revision, done.stamped) == (None, SCHEMA_HEAD, False)
    assert on_db(db_url, schema_differences(Base.metadata)) == []


def _migrate_to(db: str, step: Callable[[Any], None]) -> None:
    """Run one alembic command (upgrade or downgrade to a revision) the way `_migrate` does."""

    async def run() -> None:
        engine = create_engine(database_url(db))
        try:
            await _migrate._migration_transaction(engine, lambda conn: step(_migrate._config(conn, legacy_owner="x")))
        finally:
            await engine.dispose()

    asyncio.run(run())


def sqlite_ddl(conn: Connection) -> list[tuple[str, str]]:
    return conn.execute(
        text("SELECT name, sql FROM sqlite_master WHERE tbl_name != 'alembic_version' ORDER BY name")
    ).all()


def test_revision_0001_is_the_schema_released_before_owners_and_each_step_goes_back(
    db_url: str, tmp_path: pathlib.Path
) -> None:
    _migrate_to(db_url, lambda config: command.upgrade(config, "0001"))
    assert on_db(db_url, schema_differences(legacy_schema.Base.metadata)) == []
    if not db_url.startswith("postgresql"):  # on SQLite, to the letter of each CREATE statement
        released = str(tmp_path / "released.db")
        on_db(released, legacy_schema.Base.metadata.create_all)
        assert on_db(db_url, sqlite_ddl) == on_db(released, sqlite_ddl)
    _migrate_to(db_url, lambda config: command.upgrade(config, "head"))
    _migrate_to(db_url, lambda config: command.downgrade(config, "0001"))
    assert on_db(db_url, schema_differences(legacy_schema.Base.metadata)) == []
    _migrate_to(db_url, lambda config: command.downgrade(config, "base"))
    assert on_db(db_url, lambda conn: inspect(conn).get_table_names()) == ["alembic_version"]


def _without_later_columns(conn: Connection) -> None:
    """The release with owners and no migrations made today's tables, less what came after it:
    the leadership table (not created) and the columns below (dropped once the rows are in)."""
    conn.execute(text("ALTER TABLE sessions DROP COLUMN tracks_workspace"))  # 0005
    conn.execute(text("DROP INDEX ix_sessions_delete_time"))  # 0004
    for table, column in (  # 0004
        ("sessions", "forked_from_session_id"),
        ("sessions", "forked_from_turn_id"),
        ("turns", "reverted"),
        ("sessions", "title"),
        ("sessions", "delete_time_us"),
        ("sessions", "compacted_seq"),
        ("turns", "start_time_us"),
        ("turns", "first_seq"),
        ("turns", "last_seq"),
        ("turns", "usage"),
        ("turns", "final_message"),
        ("turns", "output_schema"),
        ("turns", "result_json"),
    ):
        conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))


@pytest.mark.parametrize("made_by", ["release before owners", "owners without migrations"])
def test_a_database_made_before_migrations_is_upgraded_with_its_rows_and_served(
    db_url: str, made_by: str, tmp_path: pathlib.Path
) -> None:
    before_owners = made_by == "release before owners"
    if before_owners:
        on_db(db_url, old_rows(legacy_schema))
    else:
        on_db(db_url, old_rows(current_schema, owner="carol", only=OWNER_TABLES))
        on_db(db_url, _without_later_columns)
    before = on_db(db_url, lambda conn: conn.execute(text("SELECT seq, kind, body FROM events ORDER BY seq")).all())

    done = tether("db", "upgrade", "--db", db_url)
    assert done.returncode == 0, done.stderr
    revision = "0001" if before_owners else "0002"
    assert f"was made before migrations: recorded it as revision {revision}" in done.stdout
    assert (f"from {revision} to {SCHEMA_HEAD}" in done.stdout) == (revision != SCHEMA_HEAD)
    if before_owners:
        assert "(2 sessions and 1 worker) now belong to owner 'local' (--legacy-owner)" in done.stdout
    else:
        assert "owner" not in done.stdout

    owner = "local" if before_owners else "carol"
    after = on_db(db_url, rows_after)
    assert after["session_owners"] == {SESSION: owner, ARCHIVED: owner}
    assert after["worker_owners"] == {WORKER: owner}
    assert after["turns"] == [(TURN, "k1", 4)] and after["leases"] == [(SESSION, 1)]
    assert after["events"] == before and len(before) == len(BODIES)
    assert after["revision"] == SCHEMA_HEAD
    assert on_db(db_url, schema_differences(Base.metadata)) == []

    with serving(tmp_path, db_url) as (target, _):
        with sdk.Client(target, owner=owner) as client:
            session = client.get_session(SESSION)
            assert (session.owner, session.labels, session.turn_count) == (owner, {"team": "a"}, 1)
            assert session.last_seq == len(BODIES)
            events = list(client.stream_events(SESSION, stop_at_end=True, timeout_s=10))
            assert [e.kind for e in events] == [kind for kind, _ in BODIES]
            assert events[2].text == "hi\n" and events[-1].exit_code == 0
            assert client.get_turn(SESSION, TURN).state == sdk.TurnState.COMPLETED
            # 0004 read the turn list's summary and the title back from the log.
            assert session.title == "echo hi"
            [turn] = client.list_turns(SESSION).turns
            assert (turn.first_seq, turn.last_seq, turn.final_message) == (1, len(BODIES), "said hi")
            assert turn.usage is not None and turn.usage.total_tokens == 42
            assert turn.start_time is not None and turn.start_time == events[1].create_time
            assert {s.session_id for s in client.list_sessions().sessions} == {SESSION, ARCHIVED}
        with sdk.Client(target, owner="someone-else") as stranger, pytest.raises(sdk.NotFoundError):
            stranger.get_session(SESSION)


def test_legacy_owner_is_named_at_upgrade_time(tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / "old.db")
    on_db(db, old_rows(legacy_schema))
    refused = tether("db", "upgrade", "--db", db, "--legacy-owner", "")
    assert refused.returncode == 2 and "--legacy-owner" in refused.stderr
    assert on_db(db, lambda conn: inspect(conn).has_table("alembic_version")) is False  # nothing changed

    done = tether("db", "upgrade", "--db", db, "--legacy-owner", "team-a")
    assert done.returncode == 0, done.stderr
    assert "now belong to owner 'team-a' (--legacy-owner)" in done.stdout
    assert on_db(db, rows_after)["session_owners"] == {SESSION: "team-a", ARCHIVED: "team-a"}


def test_upgrading_at_head_is_a_no_op_that_says_so(db_url: str) -> None:
    first = tether("db", "upgrade", "--db", db_url)
    assert first.returncode == 0, first.stderr
    assert f"from empty to {SCHEMA_HEAD}" in first.stdout and "owner" not in first.stdout
    again = tether("db", "upgrade", "--db", db_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith(f"is already at revision {SCHEMA_HEAD} (head): nothing to do")
    current = tether("db", "current", "--db", db_url)
    assert current.returncode == 0 and current.stdout.strip() == f"{SCHEMA_HEAD} (head)"
    assert tether("db", "check", "--db", db_url).returncode == 0


def test_current_and_check_name_what_to_run(db_url: str) -> None:
    name = describe_database(database_url(db_url))
    if db_url.startswith("postgresql"):
        current = tether("db", "current", "--db", db_url)
        assert current.stdout.splitlines()[0] == "none (an empty database)"
    on_db(db_url, old_rows(legacy_schema))
    current = tether("db", "current", "--db", db_url)
    assert current.returncode == 0, current.stderr
    assert current.stdout.splitlines() == [
        "0001 (made before migrations: detected from its tables, not recorded yet)",
        f"the database {name} was made before migrations (its tables are revision 0001), this release needs "
        f"{SCHEMA_HEAD}: run `tether db upgrade --db {name}`",
    ]
    check = tether("db", "check", "--db", db_url)
    assert check.returncode == 1 and f"run `tether db upgrade --db {name}`" in check.stderr
    assert "Traceback" not in check.stderr


def test_serve_refuses_an_unmigrated_postgres_database_and_migrate_starts_it(tmp_path: pathlib.Path) -> None:
    with fresh_database("tether_mig") as url:
        empty = serve(url)
        assert empty.returncode == 1
        assert empty.stderr.strip().splitlines() == [
            f"Error: the database {url} has no Tether tables yet, this release needs revision {SCHEMA_HEAD}: "
            f"run `tether db upgrade --db {url}` (or start with --migrate)"
        ]
        assert not on_db(url, lambda conn: inspect(conn).get_table_names())  # refused: nothing made

        on_db(url, old_rows(legacy_schema))
        behind = serve(url)
        assert behind.returncode == 1 and "Traceback" not in behind.stderr
        assert (
            f"Error: the database {url} was made before migrations (its tables are revision 0001), this release "
            f"needs {SCHEMA_HEAD}: run `tether db upgrade --db {url}` (or start with --migrate)"
        ) in behind.stderr

        with serving(tmp_path, url, "--migrate") as (_, migrating):
            pass
        assert (
            "sessions and workers from before owners (sessions: 2, workers: 1) now belong to owner 'local'"
            in migrating.output()
        )
        assert on_db(url, rows_after)["revision"] == SCHEMA_HEAD
        with serving(tmp_path, url) as (target, _), sdk.Client(target) as client:  # at head: no flag needed
            assert client.get_session(SESSION).owner == "local"


def test_a_database_newer_than_this_release_is_refused(db_url: str) -> None:
    assert tether("db", "upgrade", "--db", db_url).returncode == 0
    on_db(db_url, lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = '9999'")))
    name = describe_database(database_url(db_url))
    message = (
        f"the database {name} is at revision 9999, newer than this release knows (it needs {SCHEMA_HEAD}): "
        "run the Tether release that upgraded it"
    )
    cli = [sys.executable, "-m", "tether.cli", "db"]
    for code, _, err in run_together(
        serve_args(db_url),
        serve_args(db_url, "--migrate"),
        [*cli, "upgrade", "--db", db_url],
        [*cli, "check", "--db", db_url],
    ):
        assert code == 1 and err.strip() == f"Error: {message}"
    assert on_db(db_url, rows_after)["revision"] == "9999"


def test_tables_that_match_no_release_are_refused_even_with_migrate(tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / "odd.db")
    on_db(db, lambda conn: conn.execute(text("CREATE TABLE sessions (session_id VARCHAR(64) PRIMARY KEY)")))
    for code, _, err in run_together(
        serve_args(db, "--migrate"), [sys.executable, "-m", "tether.cli", "db", "upgrade", "--db", db]
    ):
        assert code == 1 and "Traceback" not in err
        assert f"the database {db} has Tether tables but no migration record, and they match no release" in err
        assert "lacks table events" in err and "lacks sessions.runtime" in err


def test_serve_and_keys_set_up_a_new_sqlite_file_and_refuse_an_old_one(tmp_path: pathlib.Path) -> None:
    served = str(tmp_path / "served.db")
    with serving(tmp_path, served):
        pass
    assert tether("db", "check", "--db", served).returncode == 0
    keyed = str(tmp_path / "keyed.db")
    created = tether("keys", "create", "--owner", "alice", "--db", keyed)
    assert created.returncode == 0, created.stderr
    assert tether("db", "check", "--db", keyed).returncode == 0

    old = str(tmp_path / "old.db")
    on_db(old, old_rows(legacy_schema))
    refused = tether("keys", "list", "--db", old)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"run `tether db upgrade --db {old}`" in refused.stderr and "--migrate" not in refused.stderr


def test_upgrades_at_once_take_turns(db_url: str) -> None:
    """Control planes started together with --migrate, or an operator's upgrade racing one: one
    upgrades, the others wait for it and find nothing to do."""
    outputs = run_together(*[[sys.executable, "-m", "tether.cli", "db", "upgrade", "--db", db_url]] * 3)
    assert [code for code, _, _ in outputs] == [0, 0, 0], outputs
    said = sorted(
        "upgraded" if f"from empty to {SCHEMA_HEAD}" in out else "nothing to do" if "nothing to do" in out else out
        for _, out, _ in outputs
    )
    assert said == ["nothing to do", "nothing to do", "upgraded"]
    assert on_db(db_url, schema_differences(Base.metadata)) == []


async def test_upgrades_at_once_in_one_process_take_turns(db_url: str) -> None:
    engines = [create_engine(database_url(db_url)) for _ in range(3)]
    try:
        done = await asyncio.gather(*(upgrade_schema(engine) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    assert sorted(d.from_revision or "empty" for d in done) == [SCHEMA_HEAD, SCHEMA_HEAD, "empty"]
    assert on_db(db_url, schema_differences(Base.metadata)) == []


def test_a_failed_upgrade_changes_nothing(db_url: str) -> None:
    on_db(db_url, old_rows(legacy_schema))
    # An index in the way of the one 0002 makes last, after it has re-made sessions and workers.
    on_db(db_url, lambda conn: conn.execute(text("CREATE INDEX ix_sessions_owner_session ON sessions (runtime)")))
    done = tether("db", "upgrade", "--db", db_url)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    name = describe_database(database_url(db_url))
    assert done.stderr.startswith(
        f"Error: upgrading the database {name} to revision {SCHEMA_HEAD} failed and changed nothing: "
    )
    assert "ix_sessions_owner_session" in done.stderr

    def columns(conn: Connection) -> dict[str, set[str]]:
        inspector = inspect(conn)
        return {table: {c["name"] for c in inspector.get_columns(table)} for table in inspector.get_table_names()}

    assert on_db(db_url, columns) == {
        table.name: {c.name for c in table.columns} for table in legacy_schema.Base.metadata.sorted_tables
    }
    events = on_db(db_url, lambda conn: conn.execute(select(func.count()).select_from(legacy_schema.EventRow)).scalar())
    assert events == len(BODIES)


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers (a database behind a black hole)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, listener.getsockname()[1]


def test_an_unreachable_database_is_named_in_one_line_quickly(tmp_path: pathlib.Path) -> None:
    listener, silent = _silent_port()
    with listener:
        cases = [
            ("postgresql+asyncpg://tether:s3cret@127.0.0.1:1/tether", "Connection refused"),
            (f"postgresql+asyncpg://tether:s3cret@127.0.0.1:{silent}/tether", "timed out waiting for an answer"),
        ]
        for url, reason in cases:
            started = time.monotonic()
            done = serve(url, timeout=30)
            assert time.monotonic() - started < 15
            assert done.returncode == 1 and "s3cret" not in done.stderr and "Traceback" not in done.stderr
            lines = done.stderr.strip().splitlines()
            masked = url.replace("s3cret", "***")
            assert len(lines) == 1 and lines[0].startswith(f"Error: cannot open the database {masked}: "), lines
            assert reason in lines[0]


def test_a_postgres_database_that_does_not_exist_is_named() -> None:
    require_pg()
    missing = f"{PG_SERVER}/tether_no_such_database"
    done = serve(missing)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f'Error: cannot open the database {missing}: database "tether_no_such_database" does not exist'
    )


def test_a_url_without_a_driver_gets_the_one_tether_ships():
    from tether.control_plane.store import database_url

    assert database_url("postgresql://u@h:5432/db") == "postgresql+asyncpg://u@h:5432/db"
    assert database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert database_url("sqlite:////tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert database_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
