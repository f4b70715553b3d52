"""The turn list a UI draws a conversation from (ListTurns), and the session's title.

Each turn carries a summary kept from its events as they are ingested: when it started, the seq
of its first and terminal events, its last token usage and its last agent message, stored with
the batch that changed them (so they survive a restart mid-turn). A page goes by ordinal either
way, shows open turns as memory has them, and ends early at a byte budget.
"""

from __future__ import annotations

import pytest

from tether.control_plane.domain import errors
from tether.control_plane.domain.model import TurnState

from .harness import OTHER_OWNER, OWNER, Worker, new_hub, new_session, run_turn


async def test_a_turn_carries_its_start_seq_range_usage_and_last_agent_message() -> None:
    hub, store = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    offer = await run_turn(hub, w, sid, "summarize")
    epoch, tid = offer.lease_epoch, offer.turn_id
    await w.write(
        sid, epoch, tid, ("token_usage", b"usage-1"), ("item_completed", b"agent_message:first"), "item_completed"
    )
    # Durable mid-turn: a control plane restarted now still lists what the turn said so far.
    assert (store.turns[tid].usage, store.turns[tid].final_message) == (b"usage-1", "first")
    await w.write(sid, epoch, tid, ("item_completed", b"agent_message:second"), ("token_usage", b"usage-2"))
    await w.write(sid, epoch, tid, "turn_completed")

    turns, more = await hub.list_turns(OWNER, sid, 10, 0, False)

    assert more is None and [t.turn_id for t in turns] == [tid]
    turn = turns[0]
    log = store.events[sid]
    assert log[turn.first_seq - 1].kind == "input_received" and log[turn.first_seq - 1].turn_id == tid
    assert turn.last_seq == log[-1].seq and log[-1].kind == "turn_completed"
    assert (turn.usage, turn.final_message) == (b"usage-2", "second")
    assert turn.create_time_us <= turn.start_time_us <= turn.end_time_us
    stored = store.turns[tid]
    assert (stored.first_seq, stored.last_seq, stored.usage, stored.final_message, stored.start_time_us) == (
        turn.first_seq,
        turn.last_seq,
        b"usage-2",
        "second",
        turn.start_time_us,
    )


async def test_a_turn_the_control_plane_ends_names_its_terminal_event() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    turn, _ = await hub.send_input(OWNER, sid, "never runs", "")
    await hub.interrupt_turn(OWNER, sid, turn.turn_id, "no")

    [listed], _ = await hub.list_turns(OWNER, sid, 10, 0, False)

    assert listed.state == TurnState.INTERRUPTED and listed.start_time_us == 0
    assert store.events[sid][listed.last_seq - 1].kind == "turn_interrupted"
    assert store.turns[turn.turn_id].last_seq == listed.last_seq


async def test_pages_go_by_ordinal_either_way_and_open_turns_show_as_memory_has_them() -> None:
    hub, _ = new_hub()
    w = Worker(hub, "w")
    await w.connect()
    sid = await new_session(hub)
    sent = [(await hub.send_input(OWNER, sid, f"turn {i}", ""))[0].turn_id for i in range(1, 6)]

    first, after = await hub.list_turns(OWNER, sid, 2, 0, False)
    second, after2 = await hub.list_turns(OWNER, sid, 2, after or 0, False)
    last, end = await hub.list_turns(OWNER, sid, 2, after2 or 0, False)
    assert [t.turn_id for t in first + second + last] == sent and end is None
    newest, after = await hub.list_turns(OWNER, sid, 3, 0, True)
    rest, end = await hub.list_turns(OWNER, sid, 3, after or 0, True)
    assert [t.turn_id for t in newest + rest] == sent[::-1] and end is None
    # The first turn was offered to the worker: memory says so, the store only says queued.
    assert first[0].state == TurnState.OFFERED


async def test_a_page_ends_early_at_its_byte_budget_but_never_empty() -> None:
    hub, _ = new_hub()
    sid = await new_session(hub)
    for i in range(3):
        await hub.send_input(OWNER, sid, str(i) * (900 * 1024), "")
    page, after = await hub.list_turns(OWNER, sid, 10, 0, False)
    assert len(page) == 2 and after == 2  # a third 900 KiB input would pass 2 MiB
    rest, end = await hub.list_turns(OWNER, sid, 10, after, False)
    assert len(rest) == 1 and end is None

    huge = await new_session(hub)
    await hub.send_input(OWNER, huge, "x" * (3 * 1024 * 1024), "")
    page, end = await hub.list_turns(OWNER, huge, 10, 0, False)
    assert len(page) == 1 and end is None


async def test_another_owner_cannot_list_the_turns() -> None:
    hub, _ = new_hub()
    sid = await new_session(hub)
    with pytest.raises(errors.SessionNotFound):
        await hub.list_turns(OTHER_OWNER, sid, 10, 0, False)


async def test_the_title_is_the_first_inputs_first_line_until_one_is_set() -> None:
    hub, store = new_hub()
    sid = await new_session(hub)
    assert (await hub.get_session(OWNER, sid)).session.title == ""
    await hub.send_input(OWNER, sid, "\n   fix   the\tbuild  \nand then the tests", "")
    await hub.send_input(OWNER, sid, "a second input names nothing", "")
    assert (await hub.get_session(OWNER, sid)).session.title == "fix the build"
    assert store.sessions[sid].title == "fix the build"

    long = await new_session(hub)
    await hub.send_input(OWNER, long, "word " * 50, "")
    title = (await hub.get_session(OWNER, long)).session.title
    assert len(title) == 100 and title.endswith("\u2026") and title.startswith("word word")


async def test_update_changes_the_title_and_replaces_the_labels_archived_or_not() -> None:
    hub, store = new_hub()
    view = await hub.create_session(OWNER, "shell", {}, {"team": "a", "old": "x"})
    sid = view.session.session_id
    await hub.send_input(OWNER, sid, "first input", "")
    await hub.interrupt_turn(OWNER, sid, "", "")
    await hub.archive_session(OWNER, sid)

    changed = await hub.update_session(OWNER, sid, "Build fixes", None)
    assert changed.session.title == "Build fixes" and changed.session.labels == {"team": "a", "old": "x"}
    changed = await hub.update_session(OWNER, sid, None, {"team": "b"})
    assert changed.session.title == "Build fixes" and changed.session.labels == {"team": "b"}
    assert (store.sessions[sid].title, store.sessions[sid].labels, store.sessions[sid].archived) == (
        "Build fixes",
        {"team": "b"},
        True,
    )
    await hub.send_input(OWNER, await new_session(hub), "x", "")  # no effect on others
    cleared = await hub.update_session(OWNER, sid, "", None)
    assert cleared.session.title == ""
    with pytest.raises(errors.SessionNotFound):
        await hub.update_session(OTHER_OWNER, sid, "mine", None)
    assert store.sessions[sid].title == ""
