"""Several control-plane replicas on one PostgreSQL database, as real processes.

Workers and subscribers are spread over three replicas; the replica that serves (the leader)
is SIGKILLed mid-stream. Every session must still complete every turn, each exactly once,
with a gapless log read by subscribers that reconnect from their cursor.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal

import pytest

from tests.helpers.pg import fresh_database
from tests.helpers.processes import ControlPlaneProcess, eventually, start_worker
from tether import sdk
from tether.control_plane.store._election import current_leader

pytestmark = pytest.mark.timeout(180)

TURNS = 3
SESSIONS = 6


@pytest.fixture
def pg_url():
    with fresh_database() as url:  # skips, saying why, without a PostgreSQL
        yield url


def _replicas(tmp_path: pathlib.Path, url: str, n: int = 3) -> list[ControlPlaneProcess]:
    out = []
    for i in range(n):
        d = tmp_path / f"r{i}"
        d.mkdir()
        cp = ControlPlaneProcess(d, url, extra=["--replica-id", f"r{i}", "--worker-dead-grace-s", "1"])
        cp.start()  # the first one also migrates (--migrate on PostgreSQL); later ones find it at head
        out.append(cp)
    return out


def _targets(cps: list[ControlPlaneProcess], first: int) -> str:
    """A gRPC target naming every replica, `first` tried first (as a load balancer would)."""
    order = cps[first:] + cps[:first]
    return "ipv4:" + ",".join(cp.target for cp in order)


async def _retry(fn, what: str, timeout: float = 30.0):
    """Retry a call while the replicas fail over (UNAVAILABLE), up to `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await fn()
        except sdk.UnavailableError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what}: still unavailable after {timeout}s") from None
            await asyncio.sleep(0.2)


class Follower:
    """A subscriber over the SDK's stream, which reopens by itself after its last event when
    the replica serving it goes away; should the SDK give up, it starts again from its cursor."""

    def __init__(self, client: sdk.AsyncClient, session_id: str) -> None:
        self.client, self.session_id = client, session_id
        self.events: list[sdk.Event] = []
        self.reconnects = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            cursor = self.events[-1].seq if self.events else 0
            try:
                async for event in self.client.stream_events(self.session_id, after_seq=cursor):
                    self.events.append(event)
            except sdk.TetherError:  # the replica serving the stream went away
                self.reconnects += 1
                await asyncio.sleep(0.2)

    def ended(self, turn_id: str) -> bool:
        return any(e.turn_id == turn_id and e.is_terminal for e in self.events)


async def test_three_replicas_survive_the_leader_being_killed_mid_stream(tmp_path, procs, pg_url, caplog):
    cps = _replicas(tmp_path, pg_url)
    try:
        ran = tmp_path / "ran.log"
        for i in range(3):  # each worker dials a different replica first
            start_worker(procs, _targets(cps, i), tmp_path / f"w{i}", f"w{i}", 2, "--worker-id", f"w{i}")
        clients = [sdk.AsyncClient(_targets(cps, i)) for i in range(3)]
        followers: list[Follower] = []
        try:
            await eventually(
                lambda: _count_connected(clients[0]), timeout=30, what="three workers connected through the replicas"
            )
            sessions = [await clients[k % 3].create_session(runtime="shell") for k in range(SESSIONS)]
            followers += [Follower(clients[(k + 1) % 3], s.session_id) for k, s in enumerate(sessions)]

            async def run(k: int, session_id: str) -> list[str]:
                client = clients[k % 3]
                turn_ids = []
                for j in range(TURNS):
                    token = f"s{k}-t{j}"
                    command = f"for i in 1 2 3 4 5 6; do echo {token}-$i; sleep 0.25; done; echo {token} >> {ran}"
                    turn = await _retry(
                        lambda command=command, token=token: client.send_input(
                            session_id, command, idempotency_key=token
                        ),
                        f"send {token}",
                    )
                    turn_ids.append(turn.turn_id)
                    await eventually(
                        lambda turn=turn: followers[k].ended(turn.turn_id), timeout=60, what=f"{token} to end"
                    )
                return turn_ids

            runs = [asyncio.create_task(run(k, s.session_id)) for k, s in enumerate(sessions)]
            # Kill the leader while the first turns stream output.
            await eventually(
                lambda: all(any(e.kind == sdk.EventKind.OUTPUT for e in f.events) for f in followers),
                timeout=30,
                what="every session streaming output",
            )
            leader = await current_leader(pg_url)
            victim = cps[int(leader.replica_id.removeprefix("r"))]
            victim.stop(signal.SIGKILL)
            turn_ids = await asyncio.wait_for(asyncio.gather(*runs), 120)
        finally:
            for f in followers:
                f.task.cancel()
            for c in clients:
                await c.close()

        # Each turn ran exactly once (the workers append a line when a turn's command ends).
        lines = ran.read_text().split()
        assert sorted(lines) == sorted(f"s{k}-t{j}" for k in range(SESSIONS) for j in range(TURNS))
        for k, f in enumerate(followers):
            seqs = [e.seq for e in f.events]
            assert seqs == list(range(1, len(seqs) + 1)), f"session {k}: gap or repeat in {seqs}"
            ends = {e.turn_id: e.kind for e in f.events if e.is_terminal}
            assert all(ends.get(t) == sdk.EventKind.TURN_COMPLETED for t in turn_ids[k]), f"session {k}: {ends}"
            started = [e.turn_id for e in f.events if e.kind == sdk.EventKind.TURN_STARTED]
            assert sorted(started) == sorted(turn_ids[k]), f"session {k}: a turn started twice: {started}"
            outputs = [e for e in f.events if e.kind == sdk.EventKind.OUTPUT]
            assert outputs, f"session {k} has no output"
        # The kill really cut streams, and the SDK reopened them on another replica.
        reopened = [r for r in caplog.records if r.name == "tether.sdk" and "reopening after seq" in r.getMessage()]
        assert reopened or sum(f.reconnects for f in followers) >= 1
    finally:
        for cp in cps:
            cp.stop()


async def _count_connected(client: sdk.AsyncClient) -> bool:
    try:
        return sum(w.connected for w in await client.list_workers()) == 3
    except sdk.UnavailableError:
        return False


async def test_a_deposed_leader_can_commit_nothing(pg_url):
    """The fence: once another replica is elected, every write transaction of the old leader
    rolls back, even while the old leader still believes it leads."""
    from tests.helpers.pg import _admin, _run
    from tether.control_plane.domain.model import Session, new_id, now_us
    from tether.control_plane.store import WriteFailed, Writer, WriteSet, create_engine, ensure_schema, session_to_row
    from tether.control_plane.store._election import Election

    engine = create_engine(pg_url)
    await ensure_schema(engine, migrate=True)
    deposed: list[str] = []
    # `a` checks its lock's connection only once a minute: it stays unaware of losing it.
    a = Election(pg_url, "a", "127.0.0.1:1", on_elected=lambda epoch: None, on_deposed=deposed.append, check_s=60)
    b = Election(pg_url, "b", "127.0.0.1:2", on_elected=lambda epoch: None, on_deposed=deposed.append, poll_s=0.1)
    writer = Writer(engine)
    writer.fence = a.fence
    writer.start()

    def session() -> dict:
        now = now_us()
        return session_to_row(Session(new_id("ses"), "shell", {}, {}, now, now, owner="o"))

    async def count() -> int:
        async with engine.connect() as conn:
            return (await conn.exec_driver_sql("SELECT count(*) FROM sessions")).scalar()

    try:
        a.start()
        await eventually(lambda: a.is_leader, what="a to lead")
        b.start()
        await eventually(lambda: b.leader is not None and b.leader.replica_id == "a", what="b to follow a")
        await writer.submit(WriteSet(session_inserts=[session()]))  # a leads: it commits
        assert await count() == 1

        # a's lock connection dies (its host cut off from the database, say): b takes over.
        pid = a._conn.get_server_pid()
        _run(_admin(f"SELECT pg_terminate_backend({pid})"))
        await eventually(lambda: b.is_leader, what="b to be elected")
        assert b.epoch == a.epoch + 1 and a.is_leader  # a has not noticed

        with pytest.raises(WriteFailed, match="was replaced by epoch"):
            await writer.submit(WriteSet(session_inserts=[session()]))
        assert await count() == 1, "the deposed leader's write was stored"
        assert deposed and "replaced by epoch" in deposed[0]
    finally:
        await writer.stop()
        await a.stop()
        await b.stop()
        await engine.dispose()


async def test_a_follower_never_serves_a_call_itself(tmp_path, pg_url):
    """A call that claims to be relayed already reaches a follower's own handlers only through
    the gate, which answers UNAVAILABLE: a client cannot make a follower touch session state."""
    import grpc

    from tether.v1 import session_service_pb2 as spb
    from tether.v1 import session_service_pb2_grpc as sgrpc

    leader, follower = _replicas(tmp_path, pg_url, 2)
    try:
        async with sdk.AsyncClient(follower.target) as client:  # relayed to the leader: served
            created = await client.create_session(runtime="shell")
        spoofed = (("x-tether-forwarded-by", "r0"),)
        async with grpc.aio.insecure_channel(follower.target) as ch:
            stub = sgrpc.SessionServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.GetSession(spb.GetSessionRequest(session_id=created.session_id), metadata=spoofed, timeout=5)
            stream = stub.StreamSessionEvents(
                spb.StreamSessionEventsRequest(session_id=created.session_id), metadata=spoofed, timeout=5
            )
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                async for _ in stream:
                    pass
        for err in (unary.value, streamed.value):
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "replica r1 is not serving" in err.details()
    finally:
        follower.stop()
        leader.stop()
