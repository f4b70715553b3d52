"""What a UI draws from: ListSessions (title, last activity, filters, order) and ListTurns (a
conversation without the raw log), and UpdateSession, on a real control plane (SQLite and
PostgreSQL) with a real worker, through the SDK and the `tether session` commands."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from tests.helpers.processes import eventually
from tether import sdk
from tether.sdk.cli import session as session_cli


async def _run(client: sdk.AsyncClient, session_id: str, text: str) -> str:
    turn = await client.send_input(session_id, text)
    done = await client.wait_for_turn(session_id, turn.turn_id, timeout_s=10)
    assert done.state == sdk.TurnState.COMPLETED, done
    return turn.turn_id


async def _cli(control_plane, *args: str):
    result = await asyncio.to_thread(
        CliRunner().invoke, session_cli, ["--control-plane", f"127.0.0.1:{control_plane.port}", *args]
    )
    assert result.exit_code == 0, result.output
    return result


async def test_a_conversation_is_drawn_from_list_turns_without_the_log(control_plane, client, start_worker):
    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_list")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    session = await client.create_session("fake")
    first = await _run(client, session.session_id, "reply: hello there\nsecond line")
    second = await _run(client, session.session_id, "plain")
    third = await _run(client, session.session_id, "reply: taken back")
    await client.revert_session(session.session_id, second)

    turns = [t async for t in client.iter_turns(session.session_id, page_size=2)]

    assert [t.turn_id for t in turns] == [first, second, third]
    log = {e.seq: e async for e in client.stream_events(session.session_id, stop_at_end=True)}
    for turn in turns:
        assert log[turn.first_seq].kind == "input_received" and log[turn.first_seq].turn_id == turn.turn_id
        assert log[turn.last_seq].kind == "turn_completed" and log[turn.last_seq].turn_id == turn.turn_id
        assert turn.worker_id == "wkr_list" and turn.exit_code == 0
        assert turn.create_time <= turn.start_time <= turn.end_time
    one, two, three = turns
    assert (one.final_message, one.usage.total_tokens if one.usage else None) == ("hello there\nsecond line", 23)
    assert (two.final_message, two.usage) == ("", None)
    assert [t.reverted for t in turns] == [False, False, True]
    # Newest first, and the session's own summary.
    newest = await client.list_turns(session.session_id, order_by="create_time desc", page_size=1)
    assert [t.turn_id for t in newest.turns] == [third] and newest.next_page_token
    nxt = await client.list_turns(session.session_id, order_by="create_time desc", page_token=newest.next_page_token)
    assert [t.turn_id for t in nxt.turns] == [second, first] and not nxt.next_page_token
    with pytest.raises(sdk.InvalidArgumentError) as refused:
        await client.list_turns(session.session_id, page_token=newest.next_page_token)  # the order changed
    assert refused.value.reason == "INVALID_PAGE_TOKEN" and "different query" in str(refused.value)
    current = await client.get_session(session.session_id)
    assert (current.title, current.turn_count) == ("reply: hello there", 3)
    assert current.create_time < current.last_activity_time

    shown = await _cli(control_plane, "turns", session.session_id)
    lines = shown.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(first) and "-> hello there second line" in lines[0]
    assert "tokens=23" in lines[0] and "(reverted)" in lines[2] and "-> exit 0" in lines[1]
    as_json = json.loads((await _cli(control_plane, "turns", session.session_id, "--json", "--newest-first")).stdout)
    assert [t["turn_id"] for t in as_json["turns"]] == [third, second, first]


async def test_sessions_filter_and_order_and_pages_keep_to_their_query(control_plane, client):
    old = await client.create_session("shell", labels={"team": "a", "tier": "gold"})
    odd = await client.create_session("shell", labels={"team": "a%_\\"})
    other = await client.create_session("codex", labels={"team": "ab"})
    idle = await client.create_session("shell", labels={"team": "b"})
    await client.archive_session(idle.session_id)
    await client.send_input(old.session_id, "wakes the oldest up")  # queued: no worker

    async def ids(**query) -> list[str]:
        every = [s.session_id async for s in client.iter_sessions(**query)]
        paged = [s.session_id async for s in client.iter_sessions(page_size=1, **query)]
        assert paged == every, query
        return every

    made = [old.session_id, odd.session_id, other.session_id, idle.session_id]
    assert await ids() == made[::-1]
    assert await ids(order_by="create_time") == made
    assert await ids(order_by="last_activity_time desc") == [
        old.session_id,
        idle.session_id,
        other.session_id,
        odd.session_id,
    ]
    assert await ids(runtime="codex") == [other.session_id]
    assert await ids(labels={"team": "a"}) == [old.session_id]  # not "ab", not "a%_\"
    assert await ids(labels={"team": "a%_\\"}) == [odd.session_id]
    assert await ids(labels={"team": "a", "tier": "gold"}) == [old.session_id]
    assert await ids(labels={"team": "a", "tier": "silver"}) == []
    assert await ids(archived=True) == [idle.session_id]
    assert await ids(archived=False, order_by="create_time") == made[:3]
    assert await ids(state="active") == [old.session_id]
    assert await ids(state="archived", archived=False) == []
    listed = {s.session_id: s async for s in client.iter_sessions()}
    assert listed[old.session_id].title == "wakes the oldest up" and listed[odd.session_id].title == ""
    assert listed[old.session_id].last_activity_time > listed[old.session_id].create_time

    page = await client.list_sessions(page_size=1, runtime="shell")
    with pytest.raises(sdk.InvalidArgumentError) as refused:
        await client.list_sessions(page_size=1, runtime="codex", page_token=page.next_page_token)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"

    shown = await _cli(control_plane, "list", "--label", "team=a", "--order", "activity")
    assert shown.stdout.split()[0] == old.session_id and shown.stdout.rstrip().endswith("wakes the oldest up")


async def test_update_session_sets_the_title_and_labels_and_the_command_does_too(control_plane, client):
    session = await client.create_session("shell", labels={"team": "a"})
    await client.send_input(session.session_id, "first words")
    assert (await client.get_session(session.session_id)).title == "first words"

    renamed = await client.update_session(session.session_id, title="Release notes")
    assert (renamed.title, renamed.labels) == ("Release notes", {"team": "a"})
    relabeled = await client.update_session(session.session_id, labels={"team": "b", "env": "prod"})
    assert (relabeled.title, relabeled.labels) == ("Release notes", {"team": "b", "env": "prod"})

    shown = await _cli(control_plane, "update", session.session_id, "--title", "From the CLI", "--label", "k=v")
    assert shown.stdout.rstrip().endswith("From the CLI")
    stored = await client.get_session(session.session_id)
    assert (stored.title, stored.labels) == ("From the CLI", {"k": "v"})
    await _cli(control_plane, "update", session.session_id, "--clear-labels")
    assert (await client.get_session(session.session_id)).labels == {}
    with pytest.raises(sdk.NotFoundError):
        async with sdk.AsyncClient(f"127.0.0.1:{control_plane.port}", owner="someone-else") as stranger:
            await stranger.update_session(session.session_id, title="mine")
    assert (await client.get_session(session.session_id)).title == "From the CLI"
