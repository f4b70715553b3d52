"""Nothing lost: worker death, partitions, blips, drain and control-plane restarts, with real
`tether serve` and `tether worker` processes on a real SQLite file."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest

from tests.helpers.processes import ControlPlaneProcess, eventually, start_worker
from tether import sdk
from tether.cli._proxy import TcpProxy


async def _events(client: sdk.AsyncClient, session_id: str, after: int = 0) -> list[sdk.Event]:
    return [e async for e in client.stream_events(session_id, after_seq=after, stop_at_end=True)]


def check_log(events: list[sdk.Event]) -> None:
    """The log invariants every test here relies on: gapless, one terminal per turn and nothing
    after it, and lease epochs that never go down (no write from a stale holder)."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "the log has a gap or a duplicate"
    ended: set[str] = set()
    epoch = 0
    for e in events:
        assert e.turn_id not in ended, f"event {e.seq} follows the end of turn {e.turn_id}"
        if e.is_terminal:
            ended.add(e.turn_id)
        if e.lease_epoch:
            assert e.lease_epoch >= epoch, f"event {e.seq} was written under stale epoch {e.lease_epoch} < {epoch}"
            epoch = e.lease_epoch


def _outputs(events: list[sdk.Event], turn_id: str) -> str:
    return "".join(e.text for e in events if e.turn_id == turn_id and e.kind == "output")


async def _wait_output(client: sdk.AsyncClient, session_id: str, turn_id: str, needle: str) -> None:
    async def seen() -> bool:
        return needle in _outputs(await _events(client, session_id), turn_id)

    await eventually(seen, timeout=20, what=f"{needle!r} in the output of {turn_id}")


def _cp(tmp_path, db_url: str, *extra: str) -> ControlPlaneProcess:
    cp = ControlPlaneProcess(tmp_path, db_url, extra=list(extra))
    cp.start()
    return cp


async def test_a_killed_worker_moves_its_session_on_the_worker_dead_clock_not_the_lease_ttl(tmp_path, procs, db_url):
    # A 60 s lease TTL: only the worker-dead grace (0.5 s) can move the session in time.
    cp = _cp(tmp_path, db_url, "--lease-ttl-s", "60", "--worker-dead-grace-s", "0.5")
    try:
        a = start_worker(procs, cp.target, tmp_path / "wa", "wa", 1, "--worker-id", "wa")
        async with sdk.AsyncClient(cp.target) as client:
            s = await client.create_session("shell")
            t1 = await client.send_input(s.session_id, "echo one")
            assert (await client.wait_for_turn(s.session_id, t1.turn_id, timeout_s=20)).worker_id == "wa"
            t2 = await client.send_input(s.session_id, "echo started; sleep 60")
            await _wait_output(client, s.session_id, t2.turn_id, "started")
            start_worker(procs, cp.target, tmp_path / "wb", "wb", 1, "--worker-id", "wb")
            killed_at = time.monotonic()
            a.send_signal(signal.SIGKILL)
            lost = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=30)
            assert time.monotonic() - killed_at < 30, "moved by lease expiry, not by the worker-dead clock"
            assert lost.state == sdk.TurnState.FAILED and "wa" in lost.error_message
            t3 = await client.send_input(s.session_id, "echo three")
            done = await client.wait_for_turn(s.session_id, t3.turn_id, timeout_s=20)
            assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wb"
            assert done.lease_epoch == lost.lease_epoch + 1
            events = await _events(client, s.session_id)
            check_log(events)
            failed = [e for e in events if e.turn_id == t2.turn_id and e.kind == "turn_failed"]
            assert len(failed) == 1 and failed[0].worker_lost
            assert _outputs(events, t2.turn_id) == "started\n"
            # B rehydrated the whole conversation, including the turn that died with A.
            snap = await client.create_snapshot(s.session_id)
            texts = [h.text for h in snap.history]
            assert texts[:3] == ["echo one", "one\n", "echo started; sleep 60"] and texts[-2:] == [
                "echo three",
                "three\n",
            ]
    finally:
        cp.stop()


async def test_a_stream_blip_within_the_grace_moves_nothing(tmp_path, procs, db_url):
    cp = _cp(tmp_path, db_url, "--worker-dead-grace-s", "5", "--lease-ttl-s", "10")
    proxy = TcpProxy(cp.port)
    await proxy.start()
    try:
        start_worker(procs, proxy.target, tmp_path / "wa", "wa", 1, "--worker-id", "wa")
        async with sdk.AsyncClient(cp.target) as client:
            s = await client.create_session("shell")
            t = await client.send_input(s.session_id, "for i in $(seq 1 30); do echo $i; sleep 0.05; done")
            await _wait_output(client, s.session_id, t.turn_id, "3\n")
            epoch = (await client.get_session(s.session_id)).lease_epoch
            proxy.cut()  # every connection of the worker drops at once, mid-turn
            done = await client.wait_for_turn(s.session_id, t.turn_id, timeout_s=30)
            assert proxy.cuts == 1
            assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wa" and done.lease_epoch == epoch
            events = await _events(client, s.session_id)
            check_log(events)
            assert _outputs(events, t.turn_id) == "".join(f"{i}\n" for i in range(1, 31))
            assert (await client.get_session(s.session_id)).worker_id == "wa"
    finally:
        await proxy.close()
        cp.stop()


async def test_a_partitioned_worker_is_fenced_and_none_of_its_late_writes_is_stored(tmp_path, procs, db_url):
    cp = _cp(tmp_path, db_url, "--lease-ttl-s", "2", "--heartbeat-interval-s", "0.3", "--worker-dead-grace-s", "0.5")
    try:
        a = start_worker(procs, cp.target, tmp_path / "wa", "wa", 1, "--worker-id", "wa")
        async with sdk.AsyncClient(cp.target) as client:
            s = await client.create_session("shell")
            t1 = await client.send_input(s.session_id, "for i in $(seq 1 200); do echo $i; sleep 0.02; done")
            await _wait_output(client, s.session_id, t1.turn_id, "2\n")
            a.send_signal(signal.SIGSTOP)  # a silent partition: no FIN, no renewals
            try:
                lost = await client.wait_for_turn(s.session_id, t1.turn_id, timeout_s=30)
                assert lost.state == sdk.TurnState.FAILED
                start_worker(procs, cp.target, tmp_path / "wb", "wb", 1, "--worker-id", "wb")
                t2 = await client.send_input(s.session_id, "echo after")
                done = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=20)
                assert done.worker_id == "wb" and done.lease_epoch == lost.lease_epoch + 1
                before = await _events(client, s.session_id)
            finally:
                a.send_signal(signal.SIGCONT)
            # A wakes up with buffered output and a turn it believes it runs: every write of
            # it must be refused, and it must stop the session.
            # Once A drops the session, every write it had in flight was either refused or never
            # sent: nothing more can arrive from it.
            await eventually(
                lambda: f"dropping session {s.session_id}" in a.output(), timeout=20, what="A dropped the session"
            )
            after = await _events(client, s.session_id)
            assert [(e.seq, e.kind, e.text) for e in after] == [(e.seq, e.kind, e.text) for e in before]
            check_log(after)
            assert all(e.lease_epoch != lost.lease_epoch for e in after if e.seq > before[-1].seq)
            failed = [e for e in after if e.turn_id == t1.turn_id and e.kind == "turn_failed"]
            assert len(failed) == 1 and failed[0].worker_lost
            # A keeps running as a worker: it is not holding the session any more.
            assert a.popen.poll() is None
            assert (await client.get_session(s.session_id)).worker_id == "wb"
    finally:
        cp.stop()


async def test_drain_under_load_loses_no_turn(tmp_path, procs, db_url):
    cp = _cp(tmp_path, db_url)
    try:
        a = start_worker(procs, cp.target, tmp_path / "wa", "wa", 2, "--worker-id", "wa", "--drain-grace-s", "30")
        start_worker(procs, cp.target, tmp_path / "wb", "wb", 2, "--worker-id", "wb")
        async with sdk.AsyncClient(cp.target) as client:
            sessions = [await client.create_session("shell") for _ in range(6)]

            async def run(session: sdk.Session) -> list[sdk.Turn]:
                turns = []
                for k in range(4):
                    t = await client.send_input(session.session_id, f"sleep 0.15; echo {session.session_id}-{k}")
                    turns.append(await client.wait_for_turn(session.session_id, t.turn_id, timeout_s=60))
                return turns

            load = asyncio.gather(*(run(s) for s in sessions))

            async def a_is_running_turns() -> bool:
                # A lease granted to wa: it accepted a turn (an offer alone, which the drain
                # would hand back, shows in running_turns too and is not enough).
                holders = [(await client.get_session(s.session_id)).worker_id for s in sessions]
                return "wa" in holders

            await eventually(a_is_running_turns, timeout=20, what="wa mid-load")
            a.send_signal(signal.SIGTERM)
            results = await load
            assert a.popen.wait(30) == 0
            for session, turns in zip(sessions, results, strict=True):
                assert [t.state for t in turns] == [sdk.TurnState.COMPLETED] * 4, turns
                events = await _events(client, session.session_id)
                check_log(events)
                for k, t in enumerate(turns):
                    assert _outputs(events, t.turn_id) == f"{session.session_id}-{k}\n"
            workers = {t.worker_id for turns in results for t in turns}
            assert workers == {"wa", "wb"}
            # After the drain, nothing is held by the drained worker.
            for session in sessions:
                assert (await client.get_session(session.session_id)).worker_id != "wa"
    finally:
        cp.stop()


async def test_control_plane_sigkill_mid_stream_loses_nothing(tmp_path, procs, db_url):
    cp = _cp(tmp_path, db_url)
    try:
        start_worker(procs, cp.target, tmp_path / "wa", "wa", 1, "--worker-id", "wa")
        seen: list[sdk.Event] = []
        async with sdk.AsyncClient(cp.target) as client:
            s = await client.create_session("shell")
            t = await client.send_input(s.session_id, "for i in $(seq 1 40); do echo $i; sleep 0.15; done")

        async def subscriber() -> None:
            # A live subscriber that reconnects from its cursor whenever the stream breaks.
            while True:
                try:
                    async with sdk.AsyncClient(cp.target) as c:
                        cursor = seen[-1].seq if seen else 0
                        async for e in c.stream_events(s.session_id, after_seq=cursor):
                            seen.append(e)
                            if e.is_terminal:
                                return
                except sdk.TetherError:
                    await asyncio.sleep(0.1)

        follower = asyncio.create_task(subscriber())
        await eventually(lambda: sum(e.kind == "output" for e in seen) >= 5, timeout=20, what="output flowing")
        cp.stop(signal.SIGKILL)
        # Down longer than the lease TTL (3 s), as a slow restart is: the worker's reconnect
        # delay must not have grown past the TTL the restarted control plane gives its leases.
        await asyncio.sleep(3.5)
        cp.start()  # same port, same database

        async def loaded() -> bool:  # once loaded, its lease's TTL runs (a refusal is gRPC's stale backoff)
            try:
                async with sdk.AsyncClient(cp.target) as client:
                    await client.get_session(s.session_id)
                return True
            except sdk.UnavailableError:
                return False

        await eventually(loaded, timeout=10, what="the restarted control plane to answer")
        await asyncio.wait_for(follower, 60)
        async with sdk.AsyncClient(cp.target) as client:
            done = await client.wait_for_turn(s.session_id, t.turn_id, timeout_s=30)
            assert done.state == sdk.TurnState.COMPLETED and done.worker_id == "wa"
            events = await _events(client, s.session_id)
        check_log(events)
        assert [e.seq for e in seen] == [e.seq for e in events], "the subscriber saw a gap or a duplicate"
        assert _outputs(events, t.turn_id) == "".join(f"{i}\n" for i in range(1, 41))
    finally:
        cp.stop()


async def test_a_session_waits_for_its_busy_holder_only_up_to_the_sticky_timeout(tmp_path, procs, db_url):
    cp = _cp(tmp_path, db_url, "--sticky-timeout-s", "1")
    try:
        start_worker(procs, cp.target, tmp_path / "wa", "wa", 1, "--worker-id", "wa")
        async with sdk.AsyncClient(cp.target) as client:
            warm = await client.create_session("shell")
            busy = await client.create_session("shell")
            t1 = await client.send_input(warm.session_id, "echo warm")
            await client.wait_for_turn(warm.session_id, t1.turn_id, timeout_s=20)
            long = await client.send_input(busy.session_id, "sleep 30")
            await eventually(
                lambda: _state(client, busy.session_id, long.turn_id, sdk.TurnState.RUNNING), timeout=20, what="A busy"
            )
            start_worker(procs, cp.target, tmp_path / "wb", "wb", 1, "--worker-id", "wb")
            t2 = await client.send_input(warm.session_id, "echo moved")
            done = await client.wait_for_turn(warm.session_id, t2.turn_id, timeout_s=20)
            # A holds the warm runtime but has no free slot: after the sticky timeout B takes it.
            assert done.worker_id == "wb" and done.state == sdk.TurnState.COMPLETED
            snap = await client.create_snapshot(warm.session_id)
            assert [h.text for h in snap.history] == ["echo warm", "warm\n", "echo moved", "moved\n"]
            await client.interrupt_turn(busy.session_id, long.turn_id)
    finally:
        cp.stop()


async def _state(client: sdk.AsyncClient, session_id: str, turn_id: str, state: sdk.TurnState) -> bool:
    return (await client.get_turn(session_id, turn_id)).state == state


async def test_restore_session_moves_an_idle_session_onto_a_chosen_worker(tmp_path, procs, db_url):
    cp = _cp(tmp_path, db_url)
    try:
        start_worker(procs, cp.target, tmp_path / "wa", "wa", 1, "--worker-id", "wa", "--label", "pool=a")
        async with sdk.AsyncClient(cp.target) as client:
            s = await client.create_session("shell")
            t1 = await client.send_input(s.session_id, "echo before")
            first = await client.wait_for_turn(s.session_id, t1.turn_id, timeout_s=20)
            # Nowhere to go yet: a clear error and nothing changes.
            with pytest.raises(sdk.TetherError) as err:
                await client.restore_session(s.session_id, worker_selector={"pool": "b"})
            assert err.value.reason == "NO_WORKER"
            assert (await client.get_session(s.session_id)).worker_id == "wa"
            start_worker(procs, cp.target, tmp_path / "wb", "wb", 1, "--worker-id", "wb", "--label", "pool=b")
            start_worker(procs, cp.target, tmp_path / "wc", "wc", 1, "--worker-id", "wc", "--label", "pool=c")
            await eventually(lambda: _connected(client, {"wa", "wb", "wc"}), timeout=20, what="workers connected")
            moved = await client.restore_session(s.session_id, worker_selector={"pool": "b"})
            assert moved.worker_id == "wb" and moved.lease_epoch == first.lease_epoch + 1
            # The next turn runs on the restored, warm runtime, which holds A's history.
            t2 = await client.send_input(s.session_id, "echo after")
            second = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=20)
            assert second.worker_id == "wb" and second.lease_epoch == moved.lease_epoch
            snap = await client.create_snapshot(s.session_id)
            assert [h.text for h in snap.history] == ["echo before", "before\n", "echo after", "after\n"]
            # A session with a turn in flight is not moved.
            t3 = await client.send_input(s.session_id, "sleep 30")
            await eventually(
                lambda: _state(client, s.session_id, t3.turn_id, sdk.TurnState.RUNNING), timeout=20, what="running"
            )

            # The control plane counts a turn RUNNING once it grants it; the worker ignores an
            # interrupt that reaches it before the grant, so wait until the worker has started it.
            async def worker_started() -> bool:
                events = await _events(client, s.session_id)
                return any(e.kind is sdk.EventKind.TURN_STARTED and e.turn_id == t3.turn_id for e in events)

            await eventually(worker_started, timeout=20, what="the worker to start the turn")
            with pytest.raises(sdk.TetherError) as err:
                await client.restore_session(s.session_id, worker_id="wc")
            assert err.value.reason == "SESSION_BUSY" and err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            await client.interrupt_turn(s.session_id, t3.turn_id)
            await client.wait_for_turn(s.session_id, t3.turn_id, timeout_s=20)
            moved = await client.restore_session(s.session_id, worker_id="wc")
            assert moved.worker_id == "wc"
            check_log(await _events(client, s.session_id))
    finally:
        cp.stop()


async def _connected(client: sdk.AsyncClient, ids: set[str]) -> bool:
    return ids <= {w.worker_id for w in await client.list_workers() if w.connected}


async def test_drain_worker_rpc_drains_a_worker_and_it_exits(tmp_path, procs, db_url):
    cp = _cp(tmp_path, db_url)
    try:
        workers = {w: start_worker(procs, cp.target, tmp_path / w, w, 1, "--worker-id", w) for w in ("wa", "wb")}
        async with sdk.AsyncClient(cp.target) as client:
            await eventually(lambda: _connected(client, {"wa", "wb"}), timeout=20, what="workers connected")
            s = await client.create_session("shell")
            t = await client.send_input(s.session_id, "echo one")
            first = await client.wait_for_turn(s.session_id, t.turn_id, timeout_s=20)
            drainee = first.worker_id
            status = await client.drain_worker(drainee)
            assert status.draining
            assert await asyncio.to_thread(workers[drainee].popen.wait, 30) == 0
            await eventually(lambda: _holder_is_not(client, s.session_id, drainee), timeout=20, what="lease released")
            t2 = await client.send_input(s.session_id, "echo two")
            second = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=20)
            assert second.worker_id != drainee and second.state == sdk.TurnState.COMPLETED
            with pytest.raises(sdk.TetherError) as err:
                await client.drain_worker("nobody")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        cp.stop()


async def _holder_is_not(client: sdk.AsyncClient, session_id: str, worker_id: str) -> bool:
    return (await client.get_session(session_id)).worker_id != worker_id


@pytest.mark.parametrize("grant_with_offer", [False, True], ids=["default", "grant-with-offer"])
async def test_a_turn_sent_to_a_worker_that_died_unnoticed_moves_unless_granted_with_its_offer(
    tmp_path, procs, db_url, grant_with_offer
):
    """The one thing `tether serve --grant-with-offer` trades (docs/operations.md): worker A is
    frozen (SIGSTOP: no FIN, so the control plane still counts it connected) when the session's
    next turn is sent, and is then killed. By default that turn was only offered to A, so it
    moves to B and completes there, rehydrated; with the policy it went out with its grant, so
    A may have begun it, and it fails worker_lost rather than risk running twice."""
    cp = _cp(tmp_path, db_url, "--worker-dead-grace-s", "0.5", *(["--grant-with-offer"] if grant_with_offer else []))
    try:
        a = start_worker(procs, cp.target, tmp_path / "wa", "wa", 1, "--worker-id", "wa")
        async with sdk.AsyncClient(cp.target) as client:
            s = await client.create_session("shell")
            t1 = await client.send_input(s.session_id, "echo one")
            first = await client.wait_for_turn(s.session_id, t1.turn_id, timeout_s=20)
            assert first.worker_id == "wa"
            start_worker(procs, cp.target, tmp_path / "wb", "wb", 1, "--worker-id", "wb")
            a.send_signal(signal.SIGSTOP)
            t2 = await client.send_input(s.session_id, "echo two")
            a.send_signal(signal.SIGKILL)
            second = await client.wait_for_turn(s.session_id, t2.turn_id, timeout_s=30)
            events = await _events(client, s.session_id)
            check_log(events)
            if grant_with_offer:
                assert second.state == sdk.TurnState.FAILED and second.worker_id == "wa", second
                failed = [e for e in events if e.turn_id == t2.turn_id and e.kind == "turn_failed"]
                assert len(failed) == 1 and failed[0].worker_lost
            else:
                assert second.state == sdk.TurnState.COMPLETED and second.worker_id == "wb", second
                assert second.lease_epoch == first.lease_epoch + 1
                assert _outputs(events, t2.turn_id) == "two\n"
            # Either way the session goes on, on B.
            t3 = await client.send_input(s.session_id, "echo three")
            third = await client.wait_for_turn(s.session_id, t3.turn_id, timeout_s=30)
            assert third.state == sdk.TurnState.COMPLETED and third.worker_id == "wb"
    finally:
        cp.stop()
