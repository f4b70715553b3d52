"""Snapshots that send only the history after a stored one (SnapshotRequest.base_snapshot_id).

The control plane's side, at the contract level with a scripted worker against an in-process
control plane: a delta is stored whole (its base's history, then its own), and a base that is
not a stored snapshot of the session, or that is past the snapshot's seq, is refused with
SNAPSHOT_BASE_UNKNOWN and stores nothing. The worker's side, against the scripted control plane
of tests/helpers/fake_control_plane.py: once the control plane offers deltas, a snapshot after
the first sends only the new items, and a refused base costs one retry with the whole history.
"""

from __future__ import annotations

import grpc
import pytest

from tests.helpers.fake_control_plane import _connected, _run_turn
from tests.helpers.fake_worker import FakeWorker, completed, output, started
from tests.helpers.processes import eventually
from tether.execution_worker._errors import error_reason
from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb


def _items(*texts: str) -> list[pb.HistoryItem]:
    return [pb.HistoryItem(role=pb.HISTORY_ITEM_ROLE_OUTPUT, text=t) for t in texts]


async def _snapshot(w: FakeWorker, session_id: str, epoch: int, seq: int, items, base: str = "") -> str:
    request = wpb.SnapshotRequest(
        worker_id=w.worker_id, session_id=session_id, lease_epoch=epoch, seq=seq, history=items, base_snapshot_id=base
    )
    return (await w.stub.Snapshot(iter([request]), timeout=10)).snapshot_id


async def _turns_each_snapshotted(cp, session_id: str, turns: int) -> None:
    """Run turns trn_1.. of `session_id` one at a time, each followed by its after-turn snapshot."""
    for n in range(1, turns + 1):
        await _run_turn(cp, session_id, f"trn_{n}")
        await eventually(lambda n=n: len(cp.snapshots()) == n, timeout=3, what=f"snapshot {n}")


async def _reason(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), error_reason(refused.value)


async def test_a_delta_is_stored_whole_and_a_bad_base_stores_nothing(control_plane, client):
    w = FakeWorker(f"127.0.0.1:{control_plane.port}", "wkr_a")
    assert (await w.register()).snapshot_deltas
    await w.open_lease()
    try:

        async def one_turn(session_id: str) -> tuple[int, int]:
            t = await client.send_input(session_id, "one")
            epoch = (await w.take_offer()).lease_epoch
            await w.write(session_id, epoch, [started(1, t.turn_id, "wkr_a"), output(2, t.turn_id, "1\n")])
            await w.write(session_id, epoch, [completed(3, t.turn_id)])
            return epoch, (await client.get_session(session_id)).last_seq

        other = await client.create_session("shell")
        other_epoch, other_seq = await one_turn(other.session_id)
        others = await _snapshot(w, other.session_id, other_epoch, other_seq, _items("theirs"))
        s = await client.create_session("shell")
        epoch, seq = await one_turn(s.session_id)
        first = await _snapshot(w, s.session_id, epoch, seq, _items("a", "b"))
        second = await _snapshot(w, s.session_id, epoch, seq, _items("c"), base=first)
        stored = await client.get_snapshot(s.session_id)
        assert stored.snapshot_id == second
        assert [h.text for h in stored.history] == ["a", "b", "c"]
        # A delta on a delta: the chain stays whole.
        third = await _snapshot(w, s.session_id, epoch, seq, _items("d", "e"), base=second)
        assert [h.text for h in (await client.get_snapshot(s.session_id)).history] == ["a", "b", "c", "d", "e"]

        # Refused, and nothing stored: a base never stored, another session's, one past the seq.
        for base, seq_claimed in (("snp_nope", seq), (others, seq), (third, seq - 1)):
            code, reason = await _reason(_snapshot(w, s.session_id, epoch, seq_claimed, _items("x"), base=base))
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SNAPSHOT_BASE_UNKNOWN"), base
            latest = await client.get_snapshot(s.session_id)
            assert latest.snapshot_id == third and [h.text for h in latest.history] == ["a", "b", "c", "d", "e"]
    finally:
        await w.close()


async def test_the_worker_sends_only_the_new_history_once_the_control_plane_takes_deltas(
    fake_cp, start_worker, monkeypatch
):
    monkeypatch.setattr("tether.execution_worker._snapshots.DELTA_MIN_BASE_ITEMS", 2)
    cp, target = fake_cp
    cp.snapshot_deltas = True
    start_worker(target, snapshot_idle_s=0.0)
    await _connected(cp)
    await _turns_each_snapshotted(cp, "ses_d", 3)
    (h1, items1), (h2, items2), (h3, items3) = cp.snapshots()
    assert h1.base_snapshot_id == "" and [i.text for i in items1] == ["cmd trn_1", "ran cmd trn_1\n"]
    assert h2.base_snapshot_id == "snp_1" and [i.text for i in items2] == ["cmd trn_2", "ran cmd trn_2\n"]
    assert h3.base_snapshot_id == "snp_2" and [i.text for i in items3] == ["cmd trn_3", "ran cmd trn_3\n"]

    # The control plane no longer has the base (pruned, say): the same snapshot goes again whole.
    cp.unknown_bases.add("snp_3")
    await _run_turn(cp, "ses_d", "trn_4")
    await eventually(lambda: len(cp.snapshots()) == 5, timeout=3, what="the refused delta and its retry")
    (h4, items4), (h5, items5) = cp.snapshots()[3:]
    assert h4.base_snapshot_id == "snp_3" and len(items4) == 2
    assert h5.base_snapshot_id == "" and len(items5) == 8 and h5.seq == h4.seq


async def test_a_control_plane_without_deltas_gets_the_whole_history_every_time(fake_cp, start_worker, monkeypatch):
    monkeypatch.setattr("tether.execution_worker._snapshots.DELTA_MIN_BASE_ITEMS", 2)
    cp, target = fake_cp
    start_worker(target, snapshot_idle_s=0.0)
    await _connected(cp)
    await _turns_each_snapshotted(cp, "ses_w", 2)
    assert [(h.base_snapshot_id, len(items)) for h, items in cp.snapshots()] == [("", 2), ("", 4)]


async def test_a_short_history_is_sent_whole_as_a_delta_would_cost_more(fake_cp, start_worker, monkeypatch):
    monkeypatch.setattr("tether.execution_worker._snapshots.DELTA_MIN_BASE_ITEMS", 4)
    cp, target = fake_cp
    cp.snapshot_deltas = True
    start_worker(target, snapshot_idle_s=0.0)
    await _connected(cp)
    await _turns_each_snapshotted(cp, "ses_s", 3)
    # A base of 2 items is below the bound; one of 4 is not.
    assert [(h.base_snapshot_id, len(items)) for h, items in cp.snapshots()] == [("", 2), ("", 4), ("snp_2", 2)]
