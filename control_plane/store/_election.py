"""Which replica serves: a PostgreSQL advisory lock elects one, a leadership epoch fences it.

Several control-plane replicas share one PostgreSQL database. One of them, the leader, holds
the session state and serves every call; the others relay calls to it (api/_forward.py). The
election is PostgreSQL's own: the leader holds a session-level advisory lock on a dedicated
connection. When the leader's process dies, PostgreSQL drops its connection and the lock with
it, and the next replica to try takes it: no home-made consensus, no clocks.

On winning, a replica bumps `leadership.epoch` and records its address; followers learn the
address by LISTEN/NOTIFY, with a bounded poll of the row as a fallback, so a lost notification
only delays. Every write transaction of the leader first reads the epoch `FOR SHARE` (the
writer's fence): a deposed leader's write can never commit after a newer leader took over,
because the newer leader's epoch bump waits for that share lock and every later transaction
sees the new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

# The advisory lock key: b"tether\x00\x01" as a signed 64-bit integer.
LOCK_KEY = int.from_bytes(b"tether\x00\x01", "big", signed=True)
CHANNEL = "tether_leader"


class Deposed(Exception):
    """This replica's leadership ended (another replica took over); it must stop at once."""


@dataclass(frozen=True)
class Leader:
    epoch: int
    replica_id: str
    address: str


def asyncpg_dsn(url: str) -> str:
    """The plain libpq-style URL asyncpg takes, from a SQLAlchemy `postgresql+asyncpg://` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _read_leader(conn) -> Leader | None:
    row = await conn.fetchrow("SELECT epoch, replica_id, address FROM leadership WHERE id = 1")
    return Leader(row["epoch"], row["replica_id"], row["address"]) if row else None


async def current_leader(url: str) -> Leader | None:
    """The leader the database names now (None before the first election)."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        return await _read_leader(conn)
    finally:
        await conn.close()


class Election:
    """Campaign for leadership of the replicas on one PostgreSQL database.

    `leader` is the current leader as last seen (None before the first read). `on_elected`
    runs once, when this replica wins; `on_deposed` runs if it then loses the lock's
    connection, after which nothing it holds in memory may be trusted. `decided` is set once
    this replica knows its part: it follows another leader, or it leads and `on_elected` is done.
    """

    def __init__(
        self,
        url: str,
        replica_id: str,
        address: str,
        *,
        on_elected: Callable[[int], object],
        on_deposed: Callable[[str], None],
        poll_s: float = 1.0,
        check_s: float = 1.0,
    ) -> None:
        self._dsn = asyncpg_dsn(url)
        self.replica_id = replica_id
        self.address = address
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._poll_s = poll_s
        self._check_s = check_s
        self.leader: Leader | None = None
        self.epoch = 0  # ours, once elected
        self._wake = asyncio.Event()
        self.decided = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None  # asyncpg.Connection holding the lock (asyncpg ships no types)

    @property
    def is_leader(self) -> bool:
        return self.epoch > 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tether-election")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)  # releases the lock for the next replica
            self._conn = None

    async def _connect(self):
        import asyncpg

        conn = await asyncpg.connect(self._dsn, timeout=5)
        await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
        return conn

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            self._wake.clear()  # before reading: a notification from now on wakes the next pass
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect()
                if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    await self._lead()
                    return
                self.leader = await _read_leader(self._conn)
                if self.leader is not None and self.leader.replica_id != self.replica_id:
                    self.decided.set()
                backoff = 0.2
            except Deposed:
                raise
            except Exception as exc:
                log.warning("election: the database did not answer (%s); retrying in %.1fs", exc, backoff)
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.terminate()
                    self._conn = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._poll_s * 2)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):  # the fallback poll
                    await self._wake.wait()

    async def _lead(self) -> None:
        conn = self._conn
        epoch = await conn.fetchval(
            "INSERT INTO leadership (id, epoch, replica_id, address, elected_at_us) VALUES (1, 1, $1, $2, $3) "
            "ON CONFLICT (id) DO UPDATE SET epoch = leadership.epoch + 1, replica_id = EXCLUDED.replica_id, "
            "address = EXCLUDED.address, elected_at_us = EXCLUDED.elected_at_us RETURNING epoch",
            self.replica_id,
            self.address,
            int(time.time() * 1e6),
        )
        self.epoch = epoch
        self.leader = Leader(epoch, self.replica_id, self.address)
        await conn.execute(f"NOTIFY {CHANNEL}, '{epoch}'")
        log.info("replica %s is the leader (epoch %d) at %s", self.replica_id, epoch, self.address)
        result = self._on_elected(epoch)
        if asyncio.iscoroutine(result):
            await result
        self.decided.set()
        # Hold the lock: if its connection goes, so does the leadership.
        while True:
            await asyncio.sleep(self._check_s)
            try:
                async with asyncio.timeout(max(2.0, 2 * self._check_s)):
                    await conn.fetchval("SELECT 1")
            except Exception as exc:
                why = f"lost the leader's database connection ({type(exc).__name__}: {exc})"
                self.epoch = 0
                self._on_deposed(why)
                raise Deposed(why) from exc

    def fence(self, conn: Connection) -> None:
        """The writer's first statement in every transaction: refuse to write unless this
        replica's epoch is still the current one."""
        current = conn.execute(text("SELECT epoch FROM leadership WHERE id = 1 FOR SHARE")).scalar()
        if self.epoch == 0 or current != self.epoch:
            why = f"replica {self.replica_id} (epoch {self.epoch}) was replaced by epoch {current}"
            self._on_deposed(why)
            raise Deposed(why)
