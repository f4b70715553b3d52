"""The transcript: a session's events rendered for a person as they stream, as `tether session
events` and `tether session send --wait` print them.

It owns how each event kind reads (agent messages inline, commands as ``$ <command>`` with their
output and ``[exit N]``, file changes with their diffs, pending requests as a ``?`` line saying
how to answer them) and the wording the other commands share: the one-line form of an answer
(`answer_text`) and the decisions an approval takes (`APPROVAL_DECISIONS`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from ._models import (
    DeltaKind,
    Event,
    EventKind,
    FileChange,
    Item,
    ItemKind,
    PendingRequest,
    RequestKind,
    RequestState,
    TokenUsage,
)

__all__ = ["APPROVAL_DECISIONS", "Transcript", "answer_text", "describe_event", "request_prompt"]

#: The decisions every approval takes (`RequestKind`); a runtime may offer fewer.
APPROVAL_DECISIONS = ("accept", "acceptForSession", "decline", "cancel")


def describe_event(event: Event) -> str:
    """One readable line: ``#seq turn kind text``."""
    detail = {
        EventKind.INPUT_RECEIVED: event.input,
        EventKind.TURN_STARTED: f"worker={event.worker_id}",
        EventKind.OUTPUT: f"[{event.stream or '-'}] {event.text.rstrip(chr(10))}",
        EventKind.TURN_COMPLETED: f"exit_code={event.exit_code}",
        EventKind.TURN_FAILED: event.error_message + (" (worker lost)" if event.worker_lost else ""),
        EventKind.TURN_INTERRUPTED: event.reason,
        EventKind.TURN_WAITING: event.reason,
        EventKind.RUNTIME: f"{event.runtime_event_name} {event.runtime_json}",
        EventKind.WORKSPACE_RESTORED: _restored_detail(event),
    }.get(event.kind, "")
    return f"#{event.seq} {event.turn_id} {event.kind.value or 'unknown'} {detail}".rstrip()


def _restored_detail(event: Event) -> str:
    w = event.workspace_restored
    if w is None:
        return ""
    return (
        f"worker={event.worker_id} files={w.file_count} bytes={w.total_bytes} written={w.files_written} "
        f"downloaded={w.bytes_downloaded} removed={w.files_removed}"
    )


def _write_click(text: str, err: bool) -> None:
    click.echo(text, nl=False, err=err)
    (sys.stderr if err else sys.stdout).flush()


class Transcript:
    """Renders a session's events for a person as they stream.

    Items read like a terminal session: an agent message's deltas print inline as text, a
    command as ``$ <command>`` followed by its output and ``[exit N]``, file changes as paths
    with their diffs; a pending request as a ``?`` line saying how to answer it; token usage,
    agent errors, answered or expired requests and why a queued turn waits (``waiting: ...``)
    as short lines. history_item events are for
    rehydration and stay hidden.

    With `lifecycle` (``tether session events``) the other kinds print as ``#seq turn kind
    detail`` lines; without it (``tether session send --wait``) output chunks print inline and
    the turn's own events stay silent. `write(text, err)` receives everything.
    """

    def __init__(
        self,
        *,
        lifecycle: bool,
        write: Callable[[str, bool], None] = _write_click,
    ) -> None:
        self._lifecycle = lifecycle
        self._write = write
        # Whether stdout's last line is unfinished, and whether item text (not a command's
        # own output chunk, which is printed byte for byte) left it so.
        self._mid_line = False
        self._item_text_open = False
        self._streamed: set[str] = set()  # items whose text or output came as deltas
        self._announced: set[str] = set()  # items whose header line is printed
        self._changes_shown: set[str] = set()  # file-change items whose diffs are printed

    # -- writing --------------------------------------------------------------------------

    def _inline(self, text: str, *, item: bool) -> None:
        if not text:
            return
        self._write(text, False)
        self._mid_line = not text.endswith("\n")
        self._item_text_open = item and self._mid_line

    def _line(self, text: str, **style: Any) -> None:
        """A line of its own, starting on a fresh line."""
        self._end_line()
        self._write(click.style(text, **style) + "\n" if style else text + "\n", False)

    def _end_line(self) -> None:
        if self._mid_line:
            self._write("\n", False)
        self._mid_line = self._item_text_open = False

    def finish(self) -> None:
        """End a line that item text left open (output chunks are left byte for byte)."""
        if self._item_text_open:
            self._end_line()

    # -- events ---------------------------------------------------------------------------

    def render(self, event: Event) -> None:
        handler = self._HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, event)
        elif event.kind is EventKind.OUTPUT and not self._lifecycle:
            if event.stream == "stderr":
                self._write(event.text, True)
            else:
                self._inline(event.text, item=False)
        elif self._lifecycle:
            self._line(describe_event(event))

    def _item_started(self, event: Event) -> None:
        item = event.item
        if item is None:
            return
        if item.kind is ItemKind.COMMAND_EXECUTION:
            self._announce(item)
        elif item.kind is ItemKind.AGENT_MESSAGE:
            self._end_line()  # its deltas start on a fresh line
        elif item.kind is ItemKind.FILE_CHANGE:
            self._show_changes(item)
        elif item.kind is ItemKind.TOOL_CALL:
            self._announce(item)

    def _item_delta(self, event: Event) -> None:
        if event.delta_kind in (DeltaKind.AGENT_MESSAGE, DeltaKind.COMMAND_OUTPUT):
            self._streamed.add(event.item_id)
            self._inline(event.text, item=True)
        # Reasoning prints whole when its item completes; a file change as its diff.

    def _item_completed(self, event: Event) -> None:
        item = event.item
        if item is None:
            return
        streamed = item.item_id in self._streamed
        if item.kind is ItemKind.AGENT_MESSAGE:
            if not streamed:
                self._end_line()
                self._inline(item.text, item=True)
            self._end_line()
        elif item.kind is ItemKind.COMMAND_EXECUTION:
            self._announce(item)
            if not streamed:
                self._inline(item.aggregated_output, item=True)
            if item.exit_code is not None:
                self._line(f"[exit {item.exit_code}]", dim=True)
            elif item.status and item.status != "completed":
                self._line(f"[{item.status}]", dim=True)
            else:
                self._end_line()
        elif item.kind is ItemKind.REASONING:
            if item.text.strip():
                self._line(_indent_rest(f"thinking: {item.text.strip()}"), dim=True)
        elif item.kind is ItemKind.FILE_CHANGE:
            self._show_changes(item)
            if item.status and item.status != "completed":
                self._line(f"[{item.status}]", dim=True)
        elif item.kind is ItemKind.TOOL_CALL:
            self._announce(item)
            if item.status and item.status != "completed":
                self._line(f"[{item.status}]", dim=True)
        self._streamed.discard(item.item_id)
        self._announced.discard(item.item_id)
        self._changes_shown.discard(item.item_id)

    def _announce(self, item: Item) -> None:
        if item.item_id in self._announced:
            return
        self._announced.add(item.item_id)
        if item.kind is ItemKind.COMMAND_EXECUTION:
            self._line(f"$ {item.command}", bold=True)
        else:
            self._line(f"* tool: {item.text or 'call'}", bold=True)

    def _show_changes(self, item: Item) -> None:
        if not item.changes or item.item_id in self._changes_shown:
            return
        self._changes_shown.add(item.item_id)
        for change in item.changes:
            self._file_change(change)

    def _file_change(self, change: FileChange) -> None:
        self._line(f"~ {change.path} ({change.kind or 'change'})", bold=True)
        if change.diff:
            self._inline(change.diff, item=True)
            self._end_line()

    def _token_usage(self, event: Event) -> None:
        if event.token_usage is not None:
            self._line(_usage_line(event.token_usage), dim=True)

    def _agent_error(self, event: Event) -> None:
        code = f" [{event.error_code}]" if event.error_code else ""
        retry = " (retrying)" if event.will_retry else ""
        self._line(f"agent error: {event.error_message}{code}{retry}", fg="red")

    def _request_opened(self, event: Event) -> None:
        if event.request is not None:
            self._line(request_prompt(event.session_id, event.request), fg="yellow", bold=True)

    def _request_resolved(self, event: Event) -> None:
        if event.request_state is RequestState.EXPIRED:
            self._line(f"= expired [{event.request_id}]: {event.reason}", dim=True)
        else:
            self._line(f"= answered [{event.request_id}]: {answer_text(event.response_json)}", dim=True)

    def _turn_waiting(self, event: Event) -> None:
        self._line(f"waiting: {event.reason}", fg="yellow")

    def _session_reverted(self, event: Event) -> None:
        gone = len(event.reverted_turn_ids)
        self._line(f"reverted to turn {event.turn_id}: {gone} later turn{'s' if gone != 1 else ''} left the history")

    def _workspace_restored(self, event: Event) -> None:
        w = event.workspace_restored
        if w is not None:
            self._line(
                f"workspace restored on {event.worker_id}: {w.file_count} files, {w.total_bytes} bytes "
                f"({w.files_written} written, {w.bytes_downloaded} bytes downloaded, {w.files_removed} removed)",
                dim=True,
            )

    def _hidden(self, event: Event) -> None:
        pass

    _HANDLERS: dict[EventKind, Callable[[Transcript, Event], None]] = {
        EventKind.ITEM_STARTED: _item_started,
        EventKind.ITEM_DELTA: _item_delta,
        EventKind.ITEM_COMPLETED: _item_completed,
        EventKind.TOKEN_USAGE: _token_usage,
        EventKind.AGENT_ERROR: _agent_error,
        EventKind.REQUEST_OPENED: _request_opened,
        EventKind.REQUEST_RESOLVED: _request_resolved,
        EventKind.HISTORY_ITEM: _hidden,
        EventKind.TURN_WAITING: _turn_waiting,
        EventKind.SESSION_REVERTED: _session_reverted,
        EventKind.WORKSPACE_RESTORED: _workspace_restored,
    }


def _indent_rest(text: str, indent: str = "    ") -> str:
    """`text` with every line after the first indented (a multi-line value in a line)."""
    return text.replace("\n", "\n" + indent)


def _usage_line(usage: TokenUsage) -> str:
    total = f"total {usage.total_tokens:,}"
    if usage.model_context_window:
        total += f", context window {usage.model_context_window:,}"
    return f"tokens: {usage.last_input_tokens:,} in / {usage.last_output_tokens:,} out ({total})"


def answer_text(response_json: str) -> str:
    try:
        answer = json.loads(response_json)
    except ValueError:
        return response_json
    decision = answer.get("decision") if isinstance(answer, dict) and len(answer) == 1 else None
    return decision if isinstance(decision, str) else response_json


def _questions(request: PendingRequest) -> list[tuple[str, str]]:
    """(question id, text with options) of a user-input request, from its `params_json`."""
    try:
        params = json.loads(request.params_json or "{}")
    except ValueError:
        return []
    questions = params.get("questions") if isinstance(params, dict) else None
    found = []
    for q in questions if isinstance(questions, list) else ():
        if not isinstance(q, dict) or not q.get("id"):
            continue
        text = str(q.get("question") or q.get("header") or "")
        labels = [str(o.get("label")) for o in q.get("options") or [] if isinstance(o, dict) and o.get("label")]
        if labels:
            text += f" (options: {', '.join(labels)})"
        found.append((str(q["id"]), text))
    return found


def request_prompt(session_id: str, request: PendingRequest) -> str:
    """What a request asks and the command that answers it, e.g. ``? approval needed [req_...]
    command: rm -rf build — answer with: tether session respond ses_... req_... --decision
    accept|decline``."""
    respond = f"tether session respond {session_id} {request.request_id}"
    summary = request.summary
    if request.kind in (RequestKind.COMMAND_APPROVAL, RequestKind.FILE_CHANGE_APPROVAL):
        what = "command" if request.kind is RequestKind.COMMAND_APPROVAL else "file change"
        head = f"? approval needed [{request.request_id}] {what}: "
        # A runtime may offer decisions that take more than a name (Codex's
        # acceptWithExecpolicyAmendment); those need --json.
        offered = request.available_decisions or ["accept", "decline"]
        decisions = [d for d in offered if d in APPROVAL_DECISIONS]
        answer = (
            f"{respond} --decision {'|'.join(decisions)}" if decisions else respond + " --json '{\"decision\": ...}'"
        )
    elif request.kind is RequestKind.USER_INPUT:
        questions = _questions(request)
        if questions:
            lines = [f"? input needed [{request.request_id}]"]
            lines += [f"    {qid}: {_indent_rest(text, '      ')}" for qid, text in questions]
            flags = " ".join(f"--answer {qid}=TEXT" for qid, _ in questions)
            lines.append(f"  answer with: {respond} {flags}")
            return "\n".join(lines)
        head = f"? input needed [{request.request_id}] "
        answer = f"{respond} --answer QUESTION_ID=TEXT"
    else:
        head = f"? request [{request.request_id}] {request.method}: "
        answer = respond + " --json '{...}'"
    if "\n" in summary.strip():
        return f"{head.rstrip()}\n    {_indent_rest(summary.strip())}\n  answer with: {answer}"
    return f"{head}{summary.strip()}".rstrip() + f" — answer with: {answer}"
