"""The `tether session` commands, and the operator commands `tether worker list` and
`tether worker drain` (attached to the `tether worker` group by `execution_worker.cli`): a thin
shell over the blocking `sdk.Client`.

This module owns argument parsing, human and `--json` output (`_Transcript` renders a live
event stream for a person), and turning a `TetherError` into ``error: <message> (<reason>)``
on stderr with exit status 2 for bad input and 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from ._async_client import DEFAULT_TARGET, DEFAULT_TIMEOUT_S
from ._errors import InvalidArgumentError, OutOfRangeError, TetherError
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
    Session,
    Snapshot,
    TokenUsage,
    Turn,
    TurnState,
    WorkerStatus,
)
from ._sync_client import Client

__all__ = ["drain_worker", "list_workers", "session"]

_BAD_INPUT_ERRORS = (InvalidArgumentError, OutOfRangeError)
_EXIT_INTERRUPTED = 130
#: The decisions every approval takes (`RequestKind`); a runtime may offer fewer.
_APPROVAL_DECISIONS = ("accept", "acceptForSession", "decline", "cancel")


def _report(ctx: click.Context, exc: TetherError) -> None:
    label = exc.reason or exc.code.name
    click.echo(f"error: {exc.message or exc.code.name} ({label})", err=True)
    for field, description in exc.field_violations:
        click.echo(f"  {field}: {description}", err=True)
    ctx.exit(2 if isinstance(exc, _BAD_INPUT_ERRORS) else 1)


class _SessionGroup(click.Group):
    """Reports SDK errors as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TetherError as exc:
            _report(ctx, exc)


class _ReportingCommand(click.Command):
    """A stand-alone command that reports SDK errors like the session group does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TetherError as exc:
            _report(ctx, exc)


@click.group(cls=_SessionGroup)
@click.option(
    "--control-plane",
    envvar="TETHER_CONTROL_PLANE",
    default=DEFAULT_TARGET,
    show_default=True,
    help="Address of the control plane (env TETHER_CONTROL_PLANE).",
)
@click.option(
    "--timeout-s",
    type=float,
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Deadline of each call, in seconds.",
)
@click.pass_context
def session(ctx: click.Context, control_plane: str, timeout_s: float) -> None:
    """Create sessions, send them input and follow their events."""
    ctx.obj = _Lazy(control_plane, timeout_s)
    ctx.call_on_close(ctx.obj.close)


def env_credentials() -> dict[str, str | None]:
    """Client credentials from the environment, never from flags (argv is visible to every
    user of the machine): TETHER_API_KEY, TETHER_OWNER (for a backend or admin key),
    TETHER_TLS_CA, and TETHER_TLS_CLIENT_CERT with TETHER_TLS_CLIENT_KEY for mutual TLS."""
    env = os.environ.get
    return {
        "api_key": env("TETHER_API_KEY") or None,
        "owner": env("TETHER_OWNER") or None,
        "tls_ca_file": env("TETHER_TLS_CA") or None,
        "tls_cert_file": env("TETHER_TLS_CLIENT_CERT") or None,
        "tls_key_file": env("TETHER_TLS_CLIENT_KEY") or None,
    }


def _client(target: str, timeout_s: float) -> Client:
    try:
        return Client(target, timeout_s=timeout_s, **env_credentials())
    except ValueError as exc:  # an unreadable TLS file
        raise click.UsageError(str(exc)) from None


class _Lazy:
    """Creates the client on first use so `--help` never opens a channel."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self._target = target
        self._timeout_s = timeout_s
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = _client(self._target, self._timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_lazy = click.make_pass_decorator(_Lazy)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


# -- output -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "raw"}
    if isinstance(value, enum.Enum):
        return value.name if isinstance(value, enum.IntEnum) else value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, sort_keys=False))


def _echo_fields(obj: Any) -> None:
    for key, value in _plain(obj).items():
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        click.echo(f"{key}: {value}")


def _session_line(s: Session) -> str:
    created = s.create_time.isoformat(timespec="seconds") if s.create_time else "-"
    state = s.state.name.lower()
    return f"{s.session_id}  {state:8}  {s.runtime:8}  turns={s.turn_count}  {created}"


def _describe_event(event: Event) -> str:
    """One readable line: ``#seq turn kind text``."""
    detail = {
        EventKind.INPUT_RECEIVED: event.input,
        EventKind.TURN_STARTED: f"worker={event.worker_id}",
        EventKind.OUTPUT: f"[{event.stream or '-'}] {event.text.rstrip(chr(10))}",
        EventKind.TURN_COMPLETED: f"exit_code={event.exit_code}",
        EventKind.TURN_FAILED: event.error_message + (" (worker lost)" if event.worker_lost else ""),
        EventKind.TURN_INTERRUPTED: event.reason,
        EventKind.RUNTIME: f"{event.runtime_event_name} {event.runtime_json}",
    }.get(event.kind, "")
    return f"#{event.seq} {event.turn_id} {event.kind.value or 'unknown'} {detail}".rstrip()


def _write_click(text: str, err: bool) -> None:
    click.echo(text, nl=False, err=err)
    (sys.stderr if err else sys.stdout).flush()


class _Transcript:
    """Renders a session's events for a person as they stream.

    Items read like a terminal session: an agent message's deltas print inline as text, a
    command as ``$ <command>`` followed by its output and ``[exit N]``, file changes as paths
    with their diffs; a pending request as a ``?`` line saying how to answer it; token usage,
    agent errors and answered or expired requests as short lines. history_item events are for
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
            self._line(_describe_event(event))

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
            self._line(_request_prompt(event.session_id, event.request), fg="yellow", bold=True)

    def _request_resolved(self, event: Event) -> None:
        if event.request_state is RequestState.EXPIRED:
            self._line(f"= expired [{event.request_id}]: {event.reason}", dim=True)
        else:
            self._line(f"= answered [{event.request_id}]: {_answer_text(event.response_json)}", dim=True)

    def _hidden(self, event: Event) -> None:
        pass

    _HANDLERS: dict[EventKind, Callable[[_Transcript, Event], None]] = {
        EventKind.ITEM_STARTED: _item_started,
        EventKind.ITEM_DELTA: _item_delta,
        EventKind.ITEM_COMPLETED: _item_completed,
        EventKind.TOKEN_USAGE: _token_usage,
        EventKind.AGENT_ERROR: _agent_error,
        EventKind.REQUEST_OPENED: _request_opened,
        EventKind.REQUEST_RESOLVED: _request_resolved,
        EventKind.HISTORY_ITEM: _hidden,
    }


def _indent_rest(text: str, indent: str = "    ") -> str:
    """`text` with every line after the first indented (a multi-line value in a line)."""
    return text.replace("\n", "\n" + indent)


def _usage_line(usage: TokenUsage) -> str:
    total = f"total {usage.total_tokens:,}"
    if usage.model_context_window:
        total += f", context window {usage.model_context_window:,}"
    return f"tokens: {usage.last_input_tokens:,} in / {usage.last_output_tokens:,} out ({total})"


def _answer_text(response_json: str) -> str:
    try:
        answer = json.loads(response_json)
    except ValueError:
        return response_json
    if isinstance(answer, dict) and isinstance(answer.get("decision"), str) and len(answer) == 1:
        return answer["decision"]
    return response_json


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


def _request_prompt(session_id: str, request: PendingRequest) -> str:
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
        decisions = [d for d in offered if d in _APPROVAL_DECISIONS]
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


def _request_line(r: PendingRequest) -> str:
    created = r.create_time.isoformat(timespec="seconds") if r.create_time else "-"
    summary = " ".join(r.summary.split())
    if len(summary) > 80:
        summary = summary[:77] + "..."
    line = f"{r.request_id}  {r.state.name.lower():8}  {r.kind.name.lower():20}  {r.turn_id}  {created}  {summary}"
    if r.state is RequestState.RESOLVED:
        line += f"  answer: {_answer_text(r.response_json)}"
    elif r.state is RequestState.EXPIRED:
        line += f"  expired: {r.expire_reason}"
    return line


def _parse_pairs(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected k=v, got {pair!r}", param_hint=option)
        result[key] = value
    return result


# -- commands ---------------------------------------------------------------------------


@session.command()
@click.option("--runtime", required=True, help='Runtime of the session, e.g. "shell".')
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label (repeatable).")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    metavar="K=V",
    help="Label an eligible worker must carry (repeatable).",
)
@json_option
@pass_lazy
def create(lazy: _Lazy, runtime: str, labels: tuple[str, ...], selectors: tuple[str, ...], as_json: bool) -> None:
    """Create a session and print its id."""
    created = lazy.client.create_session(
        runtime,
        labels=_parse_pairs(labels, "--label"),
        worker_selector=_parse_pairs(selectors, "--selector"),
    )
    if as_json:
        _echo_json(created)
    else:
        click.echo(created.session_id)


@session.command()
@click.argument("session_id")
@json_option
@pass_lazy
def get(lazy: _Lazy, session_id: str, as_json: bool) -> None:
    """Show one session."""
    found = lazy.client.get_session(session_id)
    if as_json:
        _echo_json(found)
    else:
        _echo_fields(found)


@session.command("list")
@click.option("--state", type=click.Choice(["idle", "active", "archived"]), default=None)
@click.option("--page-size", type=int, default=0, help="Sessions per page (0: server default).")
@click.option("--page-token", default="", help="Token printed by a previous page.")
@click.option("--all", "all_pages", is_flag=True, help="Fetch every page.")
@json_option
@pass_lazy
def list_(lazy: _Lazy, state: str | None, page_size: int, page_token: str, all_pages: bool, as_json: bool) -> None:
    """List sessions, newest first."""
    next_token = ""
    if all_pages:
        sessions = list(lazy.client.iter_sessions(page_size=page_size, state=state))
    else:
        page = lazy.client.list_sessions(page_size=page_size, page_token=page_token, state=state)
        sessions, next_token = page.sessions, page.next_page_token
    if as_json:
        _echo_json({"sessions": sessions, "next_page_token": next_token})
        return
    for s in sessions:
        click.echo(_session_line(s))
    if next_token:
        click.echo(f"more: --page-token {next_token}", err=True)


@session.command()
@click.argument("session_id")
@click.argument("input_text", metavar="INPUT")
@click.option("--idempotency-key", default="", help="Makes a retry return the first turn.")
@click.option("--wait", "--follow", "wait", is_flag=True, help="Print the turn live; exit with the turn's exit code.")
@json_option
@pass_lazy
def send(lazy: _Lazy, session_id: str, input_text: str, idempotency_key: str, wait: bool, as_json: bool) -> None:
    """Send INPUT to a session as a new turn."""
    client = lazy.client
    after_seq = client.get_session(session_id).last_seq if wait else 0
    turn = client.send_input(session_id, input_text, idempotency_key=idempotency_key)
    if not wait:
        if as_json:
            _echo_json(turn)
        else:
            click.echo(turn.turn_id)
        return
    if turn.deduplicated:
        after_seq = 0  # the turn's events may predate the cursor taken above
    if not as_json:
        click.echo(f"turn {turn.turn_id}" + (" (deduplicated)" if turn.deduplicated else ""), err=True)
    transcript = _Transcript(lifecycle=False)
    try:
        for event in client.stream_events(session_id, after_seq=after_seq):
            if event.turn_id != turn.turn_id:
                continue
            if not as_json:
                transcript.render(event)
            if event.is_terminal:
                break
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped following; turn {turn.turn_id} keeps running (tether session interrupt {session_id})", err=True
        )
        sys.exit(_EXIT_INTERRUPTED)
    transcript.finish()
    final = client.get_turn(session_id, turn.turn_id)
    if as_json:
        _echo_json(final)
    sys.exit(_turn_exit_status(final))


def _turn_exit_status(turn: Turn) -> int:
    if turn.state is TurnState.COMPLETED:
        return turn.exit_code
    if turn.state is TurnState.FAILED:
        click.echo(f"error: turn failed: {turn.error_message}", err=True)
        return 1
    if turn.state is TurnState.INTERRUPTED:
        click.echo(f"turn interrupted: {turn.error_message}", err=True)
        return _EXIT_INTERRUPTED
    return 1


@session.command()
@click.argument("session_id")
@click.option("--after", "after_seq", type=int, default=0, help="Only events with seq > N.")
@click.option("--follow/--no-follow", default=False, help="Keep printing live events.")
@json_option
@pass_lazy
def events(lazy: _Lazy, session_id: str, after_seq: int, follow: bool, as_json: bool) -> None:
    """Print a session's events: #seq turn kind text, with agent items as a transcript."""
    transcript = _Transcript(lifecycle=True)
    try:
        for event in lazy.client.stream_events(session_id, after_seq=after_seq, stop_at_end=not follow):
            if as_json:
                click.echo(json.dumps(_plain(event)))
            else:
                transcript.render(event)
    except KeyboardInterrupt:
        sys.exit(_EXIT_INTERRUPTED)
    transcript.finish()


@session.command()
@click.argument("session_id")
@click.option("--turn", "turn_id", default="", help="Turn to stop (default: the active turn).")
@click.option("--reason", default="", help="Recorded in the turn_interrupted event.")
@json_option
@pass_lazy
def interrupt(lazy: _Lazy, session_id: str, turn_id: str, reason: str, as_json: bool) -> None:
    """Interrupt a queued or running turn."""
    turn = lazy.client.interrupt_turn(session_id, turn_id, reason=reason)
    if as_json:
        _echo_json(turn)
    else:
        click.echo(f"{turn.turn_id} {turn.state.name.lower()}")


@session.command("requests")
@click.argument("session_id")
@click.option(
    "--state",
    type=click.Choice(["pending", "resolved", "expired", "all"]),
    default="pending",
    show_default=True,
    help="Only requests in this state.",
)
@json_option
@pass_lazy
def requests_(lazy: _Lazy, session_id: str, state: str, as_json: bool) -> None:
    """List a session's pending requests (approvals, questions), oldest first."""
    found = lazy.client.list_requests(session_id, state=state)
    if as_json:
        _echo_json({"requests": found})
        return
    for r in found:
        click.echo(_request_line(r))
    if not found:
        click.echo(f"no {'' if state == 'all' else state + ' '}requests", err=True)


@session.command()
@click.argument("session_id")
@click.argument("request_id")
@click.option("--decision", type=click.Choice(_APPROVAL_DECISIONS), help="Answer an approval.")
@click.option(
    "--answer",
    "answers",
    multiple=True,
    metavar="QUESTION_ID=TEXT",
    help="Answer a question of a user-input request (repeatable).",
)
@click.option("--json", "response_json", metavar="JSON", help="The answer as JSON, as the runtime wants it.")
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Print the resolved request as text or JSON.",
)
@pass_lazy
def respond(
    lazy: _Lazy,
    session_id: str,
    request_id: str,
    decision: str | None,
    answers: tuple[str, ...],
    response_json: str | None,
    output: str,
) -> None:
    """Answer a pending request, exactly once: --decision, --answer or --json."""
    if sum((decision is not None, bool(answers), response_json is not None)) != 1:
        raise click.UsageError("give exactly one of --decision, --answer or --json")
    resolved = lazy.client.respond_to_request(
        session_id,
        request_id,
        response_json,
        decision=decision,
        answers=_parse_answers(answers) if answers else None,
    )
    if output == "json":
        _echo_json(resolved)
    else:
        click.echo(f"{resolved.request_id} {resolved.state.name.lower()} {_answer_text(resolved.response_json)}")


def _parse_answers(pairs: tuple[str, ...]) -> dict[str, list[str]]:
    """QUESTION_ID=TEXT pairs; a question given twice gets both answers, in order."""
    result: dict[str, list[str]] = {}
    for pair in pairs:
        question_id, sep, text = pair.partition("=")
        if not sep or not question_id:
            raise click.BadParameter(f"expected QUESTION_ID=TEXT, got {pair!r}", param_hint="--answer")
        result.setdefault(question_id, []).append(text)
    return result


@session.command()
@click.argument("session_id")
@click.option("--create", is_flag=True, help="Take a new snapshot instead of showing the latest.")
@json_option
@pass_lazy
def snapshot(lazy: _Lazy, session_id: str, create: bool, as_json: bool) -> None:
    """Show (or --create) a session's snapshot."""
    client = lazy.client
    snap = client.create_snapshot(session_id) if create else client.get_snapshot(session_id)
    if as_json:
        _echo_json(snap)
        return
    _echo_snapshot(snap)


def _echo_snapshot(snap: Snapshot) -> None:
    created = snap.create_time.isoformat(timespec="seconds") if snap.create_time else "-"
    click.echo(f"{snap.snapshot_id} seq={snap.seq} runtime={snap.runtime} worker={snap.worker_id or '-'} {created}")
    for item in snap.history:
        text = item.text if len(item.text) <= 120 else item.text[:117] + "..."
        click.echo(f"  {item.turn_id} {item.role.name.lower()}: {text!r}")


@session.command()
@click.argument("session_id")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    metavar="K=V",
    help="Label the target worker must carry, on top of the session's selector (repeatable).",
)
@click.option("--worker-id", default="", help="Move to this worker (default: any that matches).")
@json_option
@pass_lazy
def restore(lazy: _Lazy, session_id: str, selectors: tuple[str, ...], worker_id: str, as_json: bool) -> None:
    """Move an idle session onto another worker and rehydrate it there."""
    restored = lazy.client.restore_session(session_id, _parse_pairs(selectors, "--selector"), worker_id or None)
    if as_json:
        _echo_json(restored)
    else:
        click.echo(f"{restored.session_id} worker={restored.worker_id or '-'} epoch={restored.lease_epoch}")


@session.command()
@click.argument("session_id")
@json_option
@pass_lazy
def archive(lazy: _Lazy, session_id: str, as_json: bool) -> None:
    """Archive a session (read-only from then on)."""
    archived = lazy.client.archive_session(session_id)
    if as_json:
        _echo_json(archived)
    else:
        click.echo(f"{archived.session_id} {archived.state.name.lower()}")


@session.command()
@click.argument("session_id")
@pass_lazy
def delete(lazy: _Lazy, session_id: str) -> None:
    """Delete a session with its turns, events and snapshots."""
    lazy.client.delete_session(session_id)
    click.echo(f"{session_id} deleted")


# -- operator commands, attached to `tether worker` ------------------------------------------

# No envvar here: the `tether worker` group's own --control-plane reads TETHER_CONTROL_PLANE,
# and an environment variable must not override a flag given before the subcommand.
_admin_control_plane = click.option(
    "--control-plane",
    default=None,
    help=f"Address of the control plane [default: the group's --control-plane, else "
    f"TETHER_CONTROL_PLANE, else {DEFAULT_TARGET}].",
)
_admin_timeout = click.option(
    "--timeout-s",
    type=float,
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Deadline of the call, in seconds.",
)


def _admin_target(ctx: click.Context, control_plane: str | None) -> str:
    if control_plane:
        return control_plane
    parent = ctx.parent.params.get("control_plane") if ctx.parent is not None else None
    return parent or os.environ.get("TETHER_CONTROL_PLANE") or DEFAULT_TARGET


def _worker_line(w: WorkerStatus) -> str:
    state = ("connected" if w.connected else "disconnected") + (",draining" if w.draining else "")
    return (
        f"{w.worker_id}  {state:22}  turns={w.running_turns}/{w.slots}  "
        f"sessions={w.held_sessions}  runtimes={','.join(w.runtimes) or '-'}  {w.name}"
    )


@click.command("list", cls=_ReportingCommand)
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def list_workers(ctx: click.Context, control_plane: str | None, timeout_s: float, as_json: bool) -> None:
    """List the workers the control plane knows, connected first."""
    with _client(_admin_target(ctx, control_plane), timeout_s) as client:
        workers = client.list_workers()
    if as_json:
        _echo_json({"workers": workers})
        return
    for w in workers:
        click.echo(_worker_line(w))


@click.command("drain", cls=_ReportingCommand, short_help="Ask a connected worker to drain.")
@click.argument("worker_id")
@click.option(
    "--grace-s",
    type=click.FloatRange(0),
    default=None,
    help="Seconds running turns get to finish [default: the worker's own setting].",
)
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def drain_worker(
    ctx: click.Context,
    worker_id: str,
    grace_s: float | None,
    control_plane: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Ask a connected worker to drain: it finishes its turns, snapshots, releases, exits."""
    with _client(_admin_target(ctx, control_plane), timeout_s) as client:
        status = client.drain_worker(worker_id, grace_s)
    if as_json:
        _echo_json(status)
    else:
        click.echo(f"{status.worker_id} draining" if status.draining else _worker_line(status))


@click.command("tokens", cls=_ReportingCommand)
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def list_worker_tokens(ctx: click.Context, control_plane: str | None, timeout_s: float, as_json: bool) -> None:
    """List the owner's worker tokens (TETHER_API_KEY, TETHER_OWNER), newest first."""
    with _client(_admin_target(ctx, control_plane), timeout_s) as client:
        tokens = client.list_worker_tokens()
    if as_json:
        _echo_json({"tokens": tokens})
        return
    for t in tokens:
        state = "revoked" if t.revoked else "valid"
        click.echo(f"{t.token_id}  {state:8}  worker={t.worker_id}  {t.name}")


@click.command("revoke", cls=_ReportingCommand)
@click.argument("token_id")
@_admin_control_plane
@_admin_timeout
@click.pass_context
def revoke_worker_token(ctx: click.Context, token_id: str, control_plane: str | None, timeout_s: float) -> None:
    """Revoke a worker token: the worker is cut off at once and its sessions move."""
    with _client(_admin_target(ctx, control_plane), timeout_s) as client:
        token = client.revoke_worker_token(token_id)
    click.echo(f"{token.token_id} revoked (worker {token.worker_id})")


@click.command("pair", cls=_ReportingCommand)
@click.option(
    "--control-plane",
    envvar="TETHER_CONTROL_PLANE",
    default=DEFAULT_TARGET,
    show_default=True,
    help="Address of the control plane (env TETHER_CONTROL_PLANE).",
)
@click.option(
    "--ttl-s", type=click.FloatRange(1, 86400), default=None, help="How long the code works, in seconds [default: 600]."
)
@click.option(
    "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True, help="Deadline of the call, in seconds."
)
@json_option
def pair(control_plane: str, ttl_s: float | None, timeout_s: float, as_json: bool) -> None:
    """Issue a one-time pairing code for a new worker of the owner of TETHER_API_KEY (or of
    TETHER_OWNER, with a backend key). On the worker's machine:
    `tether worker pair --code CODE`."""
    with _client(control_plane, timeout_s) as client:
        code = client.create_pairing_code(ttl_s)
    if as_json:
        _echo_json(code)
        return
    expires = code.expire_time.isoformat(timespec="seconds") if code.expire_time else "?"
    click.echo(f"{code.code}  (owner {code.owner}, works once, until {expires})")
