"""ForkSession (and the archive commands) end to end on a real control plane (SQLite and PostgreSQL) with a real worker: the
fork holds the source's turns and events up to the fork turn, its next turn runs on a worker
that rehydrates exactly that history, and the `tether session fork` command prints the fork.
"""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from tests.helpers.processes import eventually
from tether import sdk
from tether.control_plane.api._convert import ProtoBodyCodec
from tether.sdk.cli import session as session_cli
from tether.v1 import resources_pb2 as pb


async def _turns(client: sdk.AsyncClient, session_id: str, *texts: str) -> list[str]:
    ids = []
    for text in texts:
        turn = await client.send_input(session_id, text)
        done = await client.wait_for_turn(session_id, turn.turn_id, timeout_s=10)
        assert done.state == sdk.TurnState.COMPLETED, done
        ids.append(turn.turn_id)
    return ids


async def test_the_forks_next_turn_sees_the_history_up_to_the_fork_turn_and_nothing_after(
    control_plane, client, start_worker
):
    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_fork")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    source = await client.create_session("fake", labels={"team": "a"})
    first, second, third = await _turns(client, source.session_id, "first", "second", "third")
    before = [(e.seq, e.kind, e.turn_id) async for e in client.stream_events(source.session_id, stop_at_end=True)]

    fork = await client.fork_session(source.session_id, second)

    assert fork.session_id != source.session_id and fork.labels == {"team": "a"} and fork.runtime == "fake"
    assert (fork.forked_from_session_id, fork.forked_from_turn_id, fork.turn_count) == (source.session_id, second, 2)
    copied = [e async for e in client.stream_events(fork.session_id, stop_at_end=True)]
    assert [e.seq for e in copied] == list(range(1, len(copied) + 1)) and fork.last_seq == len(copied)
    inputs = [e.raw.body.input_received.input for e in copied if e.kind == "input_received"]
    assert inputs == ["first", "second"]
    assert {e.turn_id for e in copied}.isdisjoint({first, second, third})
    # The source is untouched.
    after = [(e.seq, e.kind, e.turn_id) async for e in client.stream_events(source.session_id, stop_at_end=True)]
    assert after == before and (await client.get_session(source.session_id)).turn_count == 3

    (fourth,) = await _turns(client, fork.session_id, "fourth")
    runtime, turn_id = w.registry.turns[-1]
    assert turn_id == fourth
    assert [h.text for h in runtime.started_with or []] == ["first", "ran first\n", "second", "ran second\n"]
    assert (await client.get_session(fork.session_id)).turn_count == 3

    # The default is the last completed turn; the command prints the fork.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        session_cli,
        ["--control-plane", f"127.0.0.1:{control_plane.port}", "fork", source.session_id],
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1, result.stdout
    new_id, _, _, from_id, _, at = result.stdout.split()
    assert (from_id, at) == (source.session_id, third)
    assert (await client.get_session(new_id)).turn_count == 3


async def test_a_fork_of_a_running_turn_is_refused_and_stores_nothing(control_plane, client, start_worker):
    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_fork")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    w.registry.gate.clear()  # turns run until the gate opens
    source = await client.create_session("fake")
    turn = await client.send_input(source.session_id, "slow")

    async def running() -> bool:
        return (await client.get_turn(source.session_id, turn.turn_id)).state == sdk.TurnState.RUNNING

    await eventually(running, timeout=5, what="the turn running")
    try:
        await client.fork_session(source.session_id, turn.turn_id)
        raise AssertionError("forking a running turn succeeded")
    except sdk.FailedPreconditionError as refused:
        assert refused.reason == "TURN_NOT_ENDED" and turn.turn_id in str(refused)
    assert [s.session_id async for s in client.iter_sessions()] == [source.session_id]
    w.registry.gate.set()
    # Let the turn end before the fixtures stop the worker and the control plane.
    done = await client.wait_for_turn(source.session_id, turn.turn_id, timeout_s=10)
    assert done.state == sdk.TurnState.COMPLETED


def test_the_codec_rebinds_the_ids_that_event_bodies_name():
    codec = ProtoBodyCodec()
    item = pb.EventBody(history_item=pb.HistoryItem(text="hi", turn_id="trn_old")).SerializeToString()
    opened = pb.EventBody(
        request_opened=pb.RequestOpened(request=pb.PendingRequest(request_id="r1", session_id="s1", turn_id="trn_old"))
    ).SerializeToString()
    resolved = pb.EventBody(request_resolved=pb.RequestResolved(request_id="r1")).SerializeToString()
    output = pb.EventBody(output=pb.OutputChunk(text="trn_old")).SerializeToString()

    def rebound(kind: str, body: bytes) -> pb.EventBody:
        return pb.EventBody.FromString(codec.rebind(kind, body, "s2", "trn_new", {"r1": "r2"}))

    assert rebound("history_item", item).history_item == pb.HistoryItem(text="hi", turn_id="trn_new")
    request = rebound("request_opened", opened).request_opened.request
    assert (request.request_id, request.session_id, request.turn_id) == ("r2", "s2", "trn_new")
    assert rebound("request_resolved", resolved).request_resolved.request_id == "r2"
    assert codec.rebind("output", output, "s2", "trn_new", {}) == output


async def test_the_archive_commands_round_trip(control_plane, client):
    s = await client.create_session("shell")
    target = f"127.0.0.1:{control_plane.port}"
    for command, state in (("archive", "archived"), ("unarchive", "idle")):
        result = await asyncio.to_thread(
            CliRunner().invoke, session_cli, ["--control-plane", target, command, s.session_id]
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.split() == [s.session_id, state]
    assert (await client.get_session(s.session_id)).state == sdk.SessionState.IDLE


async def test_after_a_revert_the_next_turn_rehydrates_without_the_reverted_turns(control_plane, client, start_worker):
    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_fork")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    s = await client.create_session("fake")
    first, second, third = await _turns(client, s.session_id, "first", "second", "third")
    target = f"127.0.0.1:{control_plane.port}"

    result = await asyncio.to_thread(
        CliRunner().invoke, session_cli, ["--control-plane", target, "revert", s.session_id, first]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [s.session_id, "reverted", "to", first]

    assert [(await client.get_turn(s.session_id, t)).reverted for t in (first, second, third)] == [False, True, True]
    log = [e async for e in client.stream_events(s.session_id, stop_at_end=True)]
    assert log[-1].kind == sdk.EventKind.SESSION_REVERTED and log[-1].turn_id == first
    assert log[-1].reverted_turn_ids == (second, third)
    (fourth,) = await _turns(client, s.session_id, "fourth")
    runtime, turn_id = w.registry.turns[-1]
    assert turn_id == fourth
    assert [h.text for h in runtime.started_with or []] == ["first", "ran first\n"]
    with pytest.raises(sdk.FailedPreconditionError) as refused:
        await client.revert_session(s.session_id, third)
    assert refused.value.reason == "TURN_REVERTED"
