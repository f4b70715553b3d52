"""Event compaction by retention on a real control plane (SQLite and PostgreSQL) with a real
worker: events a snapshot covers are dropped once old enough, a cursor below what is kept gets
OUT_OF_RANGE / CURSOR_EXPIRED naming the oldest seq still served, and the session's history is
whole wherever it goes next: a new worker, a fork, a bundle imported again."""

from __future__ import annotations

import re

import grpc
import pytest

from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.domain.messages import Retention, RetentionPolicy

EXPECTED = ["one", "ran one\n", "two", "ran two\n", "three", "ran three\n"]


async def _run(client: sdk.AsyncClient, session_id: str, text: str) -> str:
    turn = await client.send_input(session_id, text)
    done = await client.wait_for_turn(session_id, turn.turn_id, timeout_s=10)
    assert done.state == sdk.TurnState.COMPLETED, done
    return turn.turn_id


async def test_a_compacted_log_expires_old_cursors_and_keeps_the_history_whole(db_url, start_worker):
    retention = Retention(RetentionPolicy(compact_events_after_s=0.3), sweep_s=0.2)
    settings = Settings(port=0, db=db_url, timings=FAST, dev_owner="local", migrate=True, retention=retention)
    async with ControlPlane(settings) as cp, sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
        target = f"127.0.0.1:{cp.port}"
        first = start_worker(target, worker_id="wkr_a")
        await eventually(lambda: first.worker.connected, timeout=5, what="worker a connected")
        session = await client.create_session("fake")
        for text in ("one", "two", "three"):
            await _run(client, session.session_id, text)
        snapshot = await client.create_snapshot(session.session_id)
        end = (await client.get_session(session.session_id)).last_seq
        assert snapshot.seq == end

        async def compacted() -> bool:
            # An after-turn snapshot of an earlier turn can be swept first (compacting less):
            # wait for the sweep that the snapshot taken above covers.
            return (await client.get_session(session.session_id)).compacted_seq >= end

        await eventually(compacted, timeout=10, what="the log compacted up to the snapshot")
        kept_from = (await client.get_session(session.session_id)).compacted_seq
        assert kept_from == end  # every event is old and covered by the snapshot

        with pytest.raises(sdk.OutOfRangeError) as expired:
            [e async for e in client.stream_events(session.session_id, after_seq=0, stop_at_end=True)]
        assert expired.value.reason == "CURSOR_EXPIRED" and f"served from seq {kept_from + 1}" in str(expired.value)
        assert [e async for e in client.stream_events(session.session_id, after_seq=kept_from, stop_at_end=True)] == []
        turns = [t async for t in client.iter_turns(session.session_id)]
        assert [t.input for t in turns] == ["one", "two", "three"]  # the turn list outlives the events

        # A worker that never held the session rehydrates it from the snapshot alone.
        await first.worker.close()
        second = start_worker(target, worker_id="wkr_b")
        await eventually(lambda: second.worker.connected, timeout=5, what="worker b connected")
        await _run(client, session.session_id, "four")
        runtime, _ = second.registry.turns[-1]
        assert [h.text for h in runtime.started_with or []] == EXPECTED

        # A fork of a compacted session carries the snapshot, cut to the turns it copies.
        fork = await client.fork_session(session.session_id, turns[1].turn_id)
        await _run(client, fork.session_id, "five")
        runtime, _ = second.registry.turns[-1]
        assert [h.text for h in runtime.started_with or []] == EXPECTED[:4]

        # So does a bundle: exported, imported, its next turn sees the whole history.
        before = (await client.get_session(session.session_id)).compacted_seq
        bundle = b"".join([c async for c in client.export_session(session.session_id)])
        imported = await client.import_session(bundle)
        after = (await client.get_session(session.session_id)).compacted_seq  # the sweeper goes on
        assert before <= imported.compacted_seq <= after and imported.compacted_seq > 0
        await _run(client, imported.session_id, "six")
        runtime, _ = second.registry.turns[-1]
        assert [h.text for h in runtime.started_with or []] == [*EXPECTED, "four", "ran four\n"]


@pytest.mark.parametrize("change", ["compaction", "delete"])
async def test_an_export_that_a_compaction_or_delete_overtakes_stops_instead_of_leaving_a_gap(
    control_plane, client, start_worker, monkeypatch, change: str
) -> None:
    """The log is read a page at a time while the bundle goes out. Retention compacting the
    session (or a delete) between two pages used to let the bundle out with a hole in its log;
    the export now stops with ABORTED / SESSION_BUSY, and exporting again gives a whole bundle."""
    from tether.control_plane.domain import _log

    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_export")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    session = await client.create_session("fake")
    for text in ("one", "two", "three"):
        await _run(client, session.session_id, text)
    snapshot = await client.create_snapshot(session.session_id)
    sessions = control_plane.hub._sessions

    async def overtake() -> None:
        if change == "compaction":
            await sessions.compacted(sessions.get(session.session_id), snapshot.seq)
        else:
            await client.delete_session(session.session_id)

    pages = _log.EventLog.events_between

    async def overtaken(self, session_id: str, after_seq: int, upto: int):
        first = True
        async for page in pages(self, session_id, after_seq, upto):
            yield page
            if first:
                first = False
                await overtake()  # between the first page and the next

    monkeypatch.setattr(_log, "_RESUME_PAGE", 2)
    monkeypatch.setattr(_log.EventLog, "events_between", overtaken)
    with pytest.raises(sdk.SessionBusyError) as stopped:
        b"".join([c async for c in client.export_session(session.session_id)])
    assert stopped.value.code == grpc.StatusCode.ABORTED, stopped.value
    what = "compacted by retention" if change == "compaction" else "deleted"
    # The page after the first may have been read before the change (it is read ahead).
    assert re.search(f"was {what} while it was exported \\(event [35] is gone\\)", str(stopped.value))

    monkeypatch.setattr(_log.EventLog, "events_between", pages)
    if change == "compaction":  # exported again, whole: its log starts after the compacted seq
        imported = await client.import_session(b"".join([c async for c in client.export_session(session.session_id)]))
        assert imported.compacted_seq == snapshot.seq
        await _run(client, imported.session_id, "four")
        runtime, _ = w.registry.turns[-1]
        assert [h.text for h in runtime.started_with or []] == EXPECTED
