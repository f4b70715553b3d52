"""The model-visible history a worker rebuilds from Resume chunks (`history_from_resume`): a
turn lost with its worker is marked, so the model knows it never finished."""

from __future__ import annotations

from tether.execution_worker._convert import LOST_TURN_MARKER, history_from_resume
from tether.execution_worker.runtime import HistoryItem, HistoryRole
from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb


def _event(seq: int, turn_id: str, **body: object) -> pb.Event:
    return pb.Event(seq=seq, session_id="ses_1", turn_id=turn_id, body=pb.EventBody(**body))


def _chunks(*events: pb.Event) -> list[wpb.ResumeResponse]:
    return [wpb.ResumeResponse(events=list(events))]


def _codex_item(role: int, text: str, turn_id: str) -> pb.HistoryItem:
    return pb.HistoryItem(role=role, text=text, turn_id=turn_id, raw_json='{"type": "message"}')


def test_a_turn_lost_with_its_worker_is_marked_after_its_input() -> None:
    chunks = _chunks(
        _event(1, "trn_1", input_received=pb.InputReceived(input="first")),
        _event(2, "trn_1", history_item=_codex_item(pb.HISTORY_ITEM_ROLE_INPUT, "first", "trn_1")),
        _event(3, "trn_1", history_item=_codex_item(pb.HISTORY_ITEM_ROLE_OUTPUT, "done first", "trn_1")),
        _event(4, "trn_1", turn_completed=pb.TurnCompleted()),
        # Codex records a turn's history at its end: a turn lost mid-way has only its input.
        _event(5, "trn_2", input_received=pb.InputReceived(input="delete the build folder")),
        _event(6, "trn_2", turn_started=pb.TurnStarted(worker_id="wa")),
        _event(7, "trn_2", turn_failed=pb.TurnFailed(error_message="worker wa lost", worker_lost=True)),
        _event(8, "trn_3", input_received=pb.InputReceived(input="what now?")),
    )
    history = history_from_resume(chunks, skip_turn_id="trn_3")
    assert [(h.role, h.text, h.turn_id) for h in history] == [
        (HistoryRole.INPUT, "first", "trn_1"),
        (HistoryRole.OUTPUT, "done first", "trn_1"),
        (HistoryRole.INPUT, "delete the build folder", "trn_2"),
        (HistoryRole.INPUT, LOST_TURN_MARKER, "trn_2"),
    ]
    assert LOST_TURN_MARKER.startswith("<turn_aborted>\n") and LOST_TURN_MARKER.endswith("\n</turn_aborted>")


def test_a_lost_turn_keeps_its_output_and_other_endings_get_no_marker() -> None:
    chunks = _chunks(
        _event(1, "trn_1", input_received=pb.InputReceived(input="say a")),
        _event(2, "trn_1", output=pb.OutputChunk(text="a\n")),
        _event(3, "trn_1", turn_failed=pb.TurnFailed(error_message="lease lost", worker_lost=True)),
        _event(4, "trn_2", input_received=pb.InputReceived(input="fail x")),
        _event(5, "trn_2", turn_failed=pb.TurnFailed(error_message="x")),
        _event(6, "trn_3", input_received=pb.InputReceived(input="sleep 9")),
        _event(7, "trn_3", turn_interrupted=pb.TurnInterrupted(reason="stop")),
    )
    assert history_from_resume(chunks, skip_turn_id="") == [
        HistoryItem(HistoryRole.INPUT, "say a", "trn_1"),
        HistoryItem(HistoryRole.OUTPUT, "a\n", "trn_1"),
        HistoryItem(HistoryRole.INPUT, LOST_TURN_MARKER, "trn_1"),
        HistoryItem(HistoryRole.INPUT, "fail x", "trn_2"),
        HistoryItem(HistoryRole.INPUT, "sleep 9", "trn_3"),
    ]


def test_a_lost_turn_whose_runtime_recorded_its_history_is_not_marked() -> None:
    # The worker died between the turn's history and its terminal event: the model saw it all.
    chunks = _chunks(
        _event(1, "trn_1", input_received=pb.InputReceived(input="hi")),
        _event(2, "trn_1", history_item=_codex_item(pb.HISTORY_ITEM_ROLE_INPUT, "hi", "trn_1")),
        _event(3, "trn_1", history_item=_codex_item(pb.HISTORY_ITEM_ROLE_OUTPUT, "hello", "trn_1")),
        _event(4, "trn_1", turn_failed=pb.TurnFailed(error_message="lost", worker_lost=True)),
    )
    assert [h.text for h in history_from_resume(chunks, skip_turn_id="")] == ["hi", "hello"]


def test_a_revert_drops_the_turns_it_lists_from_the_snapshot_and_from_the_log() -> None:
    """A snapshot taken after turn 3 holds turns 1-3; the log after it has turn 4, then a revert
    to turn 1 (turns 2-4 leave the history), then turn 5 about to run."""
    snapshot = wpb.ResumeResponse(
        snapshot_seq=12,
        history=[
            _codex_item(pb.HISTORY_ITEM_ROLE_INPUT, text, turn)
            for text, turn in (("one", "trn_1"), ("two", "trn_2"), ("three", "trn_3"))
        ],
    )
    log = wpb.ResumeResponse(
        events=[
            _event(13, "trn_4", input_received=pb.InputReceived(input="four")),
            _event(14, "trn_4", history_item=_codex_item(pb.HISTORY_ITEM_ROLE_INPUT, "four", "trn_4")),
            _event(15, "trn_4", turn_completed=pb.TurnCompleted()),
            _event(
                16,
                "trn_1",
                session_reverted=pb.SessionReverted(turn_id="trn_1", reverted_turn_ids=["trn_2", "trn_3", "trn_4"]),
            ),
            _event(17, "trn_5", input_received=pb.InputReceived(input="five")),
        ]
    )
    history = history_from_resume([snapshot, log], skip_turn_id="trn_5")
    assert [(h.text, h.turn_id) for h in history] == [("one", "trn_1")]
    # Turns after the revert are history again.
    later = wpb.ResumeResponse(
        events=[
            _event(18, "trn_5", output=pb.OutputChunk(text="5\n")),
            _event(19, "trn_5", turn_completed=pb.TurnCompleted()),
        ]
    )
    history = history_from_resume([snapshot, log, later], skip_turn_id="")
    assert [(h.text, h.turn_id) for h in history] == [("one", "trn_1"), ("five", "trn_5"), ("5\n", "trn_5")]
