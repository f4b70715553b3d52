"""`tether session`: create sessions, send them input, follow their events, answer their
pending requests, snapshot, restore, archive and delete them; a thin shell over `sdk.Client`.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

import click

from ._async_client import DEFAULT_TARGET, DEFAULT_TIMEOUT_S
from ._cli_common import (
    EXIT_INTERRUPTED,
    ConnectingGroup,
    LazyClient,
    echo_fields,
    echo_json,
    json_option,
    parse_pairs,
    pass_lazy,
    plain,
)
from ._models import InputPolicy, PendingRequest, RequestState, Session, Snapshot, Turn, TurnState
from ._transcript import APPROVAL_DECISIONS, Transcript, answer_text

__all__ = ["session"]

_Item = TypeVar("_Item")


@click.group(cls=ConnectingGroup)
@click.option(
    "--control-plane",
    envvar="TETHER_CONTROL_PLANE",
    show_envvar=True,
    default=DEFAULT_TARGET,
    show_default=True,
    help="Address of the control plane.",
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
    ctx.obj = LazyClient(control_plane, timeout_s)
    ctx.call_on_close(ctx.obj.close)


_reconnect_option = click.option(
    "--reconnect/--no-reconnect",
    default=True,
    show_default=True,
    help="When the control plane goes away (a restart), reopen the stream after the last event "
    "printed, with backoff; --no-reconnect fails at once (UNAVAILABLE).",
)


def _session_line(s: Session) -> str:
    active = s.last_activity_time or s.create_time
    when = active.isoformat(timespec="seconds") if active else "-"
    state = s.state.name.lower()
    line = f"{s.session_id}  {state:8}  {s.runtime:8}  turns={s.turn_count}  {when}"
    return f"{line}  {s.title}" if s.title else line


def _turn_line(t: Turn) -> str:
    started = t.create_time.isoformat(timespec="seconds") if t.create_time else "-"
    if t.end_time and t.create_time:
        took = f"{(t.end_time - t.create_time).total_seconds():.1f}s"
    else:
        took = "-"
    result = t.final_message or t.error_message or (f"exit {t.exit_code}" if t.state is TurnState.COMPLETED else "")
    result = " ".join(result.split())
    if len(result) > 60:
        result = result[:57] + "..."
    seqs = f"{t.first_seq}-{t.last_seq or ''}"
    tokens = f"  tokens={t.usage.total_tokens}" if t.usage else ""
    reverted = "  (reverted)" if t.reverted else ""
    text = " ".join(t.input.split())
    text = text if len(text) <= 40 else text[:37] + "..."
    return (
        f"{t.turn_id}  {t.state.name.lower():11}  {started}  {took:>7}  seq={seqs}{tokens}{reverted}  "
        f"{text!r} -> {result}"
    )


def _echo_listing(
    key: str,
    line: Callable[[_Item], str],
    *,
    all_pages: bool,
    every: Callable[[], Iterable[_Item]],
    page: Callable[[], tuple[list[_Item], str]],
    as_json: bool,
) -> None:
    """A list command's output: every item (--all) or one page of them, as JSON under `key`, or
    one `line` each with the next page's token on stderr."""
    items, next_token = (list(every()), "") if all_pages else page()
    if as_json:
        echo_json({key: items, "next_page_token": next_token})
        return
    for item in items:
        click.echo(line(item))
    if next_token:
        click.echo(f"more: --page-token {next_token}", err=True)


def _request_line(r: PendingRequest) -> str:
    created = r.create_time.isoformat(timespec="seconds") if r.create_time else "-"
    summary = " ".join(r.summary.split())
    if len(summary) > 80:
        summary = summary[:77] + "..."
    line = f"{r.request_id}  {r.state.name.lower():8}  {r.kind.name.lower():20}  {r.turn_id}  {created}  {summary}"
    if r.state is RequestState.RESOLVED:
        line += f"  answer: {answer_text(r.response_json)}"
    elif r.state is RequestState.EXPIRED:
        line += f"  expired: {r.expire_reason}"
    return line


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
def create(lazy: LazyClient, runtime: str, labels: tuple[str, ...], selectors: tuple[str, ...], as_json: bool) -> None:
    """Create a session and print its id."""
    created = lazy.client.create_session(
        runtime,
        labels=parse_pairs(labels, "--label"),
        worker_selector=parse_pairs(selectors, "--selector"),
    )
    if as_json:
        echo_json(created)
    else:
        click.echo(created.session_id)


@session.command()
@click.argument("session_id")
@json_option
@pass_lazy
def get(lazy: LazyClient, session_id: str, as_json: bool) -> None:
    """Show one session."""
    found = lazy.client.get_session(session_id)
    if as_json:
        echo_json(found)
    else:
        echo_fields(found)


_SESSION_ORDERS = {
    "created": "create_time desc",
    "created-asc": "create_time",
    "activity": "last_activity_time desc",
    "activity-asc": "last_activity_time",
}


@session.command("list")
@click.option("--state", type=click.Choice(["idle", "active", "archived"]), default=None)
@click.option("--archived/--not-archived", "archived", default=None, help="Only archived, or only other, sessions.")
@click.option("--runtime", default="", help="Only sessions of this runtime.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Only sessions with this label (repeatable).")
@click.option(
    "--order",
    type=click.Choice(list(_SESSION_ORDERS)),
    default="created",
    show_default=True,
    help="Newest or oldest first, by creation or by last activity.",
)
@click.option("--page-size", type=int, default=0, help="Sessions per page (0: server default).")
@click.option("--page-token", default="", help="Token printed by a previous page.")
@click.option("--all", "all_pages", is_flag=True, help="Fetch every page.")
@json_option
@pass_lazy
def list_(
    lazy: LazyClient,
    state: str | None,
    archived: bool | None,
    runtime: str,
    labels: tuple[str, ...],
    order: str,
    page_size: int,
    page_token: str,
    all_pages: bool,
    as_json: bool,
) -> None:
    """List sessions (id, state, runtime, turns, last activity, title), newest first."""
    label_filter = parse_pairs(labels, "--label")
    order_by = _SESSION_ORDERS[order]

    def one_page() -> tuple[list[Session], str]:
        page = lazy.client.list_sessions(
            page_size=page_size,
            page_token=page_token,
            state=state,
            archived=archived,
            runtime=runtime,
            labels=label_filter,
            order_by=order_by,
        )
        return page.sessions, page.next_page_token

    _echo_listing(
        "sessions",
        _session_line,
        all_pages=all_pages,
        every=lambda: lazy.client.iter_sessions(
            page_size=page_size,
            state=state,
            archived=archived,
            runtime=runtime,
            labels=label_filter,
            order_by=order_by,
        ),
        page=one_page,
        as_json=as_json,
    )


@session.command()
@click.argument("session_id")
@click.option("--title", default=None, help='A new title (one line; "" clears it).')
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Replace the labels with these (repeatable).")
@click.option("--clear-labels", is_flag=True, help="Remove every label.")
@json_option
@pass_lazy
def update(
    lazy: LazyClient, session_id: str, title: str | None, labels: tuple[str, ...], clear_labels: bool, as_json: bool
) -> None:
    """Change a session's title or labels."""
    if labels and clear_labels:
        raise click.UsageError("--label and --clear-labels contradict each other; pass one")
    new_labels = {} if clear_labels else (parse_pairs(labels, "--label") if labels else None)
    if title is None and new_labels is None:
        raise click.UsageError("nothing to change: pass --title, --label or --clear-labels")
    changed = lazy.client.update_session(session_id, title=title, labels=new_labels)
    if as_json:
        echo_json(changed)
    else:
        click.echo(_session_line(changed))


@session.command()
@click.argument("session_id")
@click.option("--newest-first", is_flag=True, help="Newest turn first (default: conversation order).")
@click.option("--page-size", type=int, default=0, help="Turns per page (0: server default).")
@click.option("--page-token", default="", help="Token printed by a previous page.")
@click.option("--all", "all_pages", is_flag=True, help="Fetch every page.")
@json_option
@pass_lazy
def turns(
    lazy: LazyClient,
    session_id: str,
    newest_first: bool,
    page_size: int,
    page_token: str,
    all_pages: bool,
    as_json: bool,
) -> None:
    """List a session's turns: state, start, duration, event seqs, tokens, input and result."""
    order_by = "create_time desc" if newest_first else "create_time"

    def one_page() -> tuple[list[Turn], str]:
        page = lazy.client.list_turns(session_id, page_size=page_size, page_token=page_token, order_by=order_by)
        return page.turns, page.next_page_token

    _echo_listing(
        "turns",
        _turn_line,
        all_pages=all_pages,
        every=lambda: lazy.client.iter_turns(session_id, page_size=page_size, order_by=order_by),
        page=one_page,
        as_json=as_json,
    )


@session.command()
@click.argument("session_id")
@click.argument("input_text", metavar="INPUT")
@click.option("--idempotency-key", default="", help="Makes a retry return the first turn.")
@click.option(
    "--if-busy",
    "policy",
    type=click.Choice(["enqueue", "reject", "interrupt"]),
    default="enqueue",
    show_default=True,
    help="When a turn is queued or running: run after it, refuse (exit 1, SESSION_BUSY), or interrupt it and run next.",
)
@click.option(
    "--output-schema",
    default=None,
    metavar="JSON|@FILE",
    help="A JSON Schema the turn's result must match (its result is printed with --wait).",
)
@click.option("--wait", "--follow", "wait", is_flag=True, help="Print the turn live; exit with the turn's exit code.")
@_reconnect_option
@json_option
@pass_lazy
def send(
    lazy: LazyClient,
    session_id: str,
    input_text: str,
    idempotency_key: str,
    policy: str,
    output_schema: str | None,
    wait: bool,
    reconnect: bool,
    as_json: bool,
) -> None:
    """Send INPUT to a session as a new turn."""
    client = lazy.client
    schema = None
    if output_schema is not None:
        if output_schema.startswith("@"):
            try:
                schema = pathlib.Path(output_schema[1:]).read_text()
            except OSError as exc:
                raise click.FileError(output_schema[1:], exc.strerror) from None
        else:
            schema = output_schema
    after_seq = client.get_session(session_id).last_seq if wait else 0
    turn = client.send_input(
        session_id,
        input_text,
        idempotency_key=idempotency_key,
        policy=InputPolicy[policy.upper()],
        output_schema=schema,
    )
    if not wait:
        if as_json:
            echo_json(turn)
        else:
            click.echo(turn.turn_id)
        return
    if turn.deduplicated:
        after_seq = 0  # the turn's events may predate the cursor taken above
    if not as_json:
        click.echo(f"turn {turn.turn_id}" + (" (deduplicated)" if turn.deduplicated else ""), err=True)
    transcript = Transcript(lifecycle=False)
    try:
        for event in client.stream_events(session_id, after_seq=after_seq, reconnect=reconnect):
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
        sys.exit(EXIT_INTERRUPTED)
    transcript.finish()
    final = client.get_turn(session_id, turn.turn_id)
    if as_json:
        echo_json(final)
    elif final.result_json:
        click.echo(f"result: {final.result_json}")
    sys.exit(_turn_exit_status(final))


def _turn_exit_status(turn: Turn) -> int:
    if turn.state is TurnState.COMPLETED:
        return turn.exit_code
    if turn.state is TurnState.FAILED:
        click.echo(f"error: turn failed: {turn.error_message}", err=True)
        return 1
    if turn.state is TurnState.INTERRUPTED:
        click.echo(f"turn interrupted: {turn.error_message}", err=True)
        return EXIT_INTERRUPTED
    return 1


@session.command()
@click.argument("session_id")
@click.option("--after", "after_seq", type=click.IntRange(0), default=0, metavar="N", help="Only events with seq > N.")
@click.option("--follow/--no-follow", default=False, help="Keep printing live events.")
@_reconnect_option
@json_option
@pass_lazy
def events(lazy: LazyClient, session_id: str, after_seq: int, follow: bool, reconnect: bool, as_json: bool) -> None:
    """Print a session's events: #seq turn kind text, with agent items as a transcript."""
    transcript = Transcript(lifecycle=True)
    try:
        stream = lazy.client.stream_events(session_id, after_seq=after_seq, stop_at_end=not follow, reconnect=reconnect)
        for event in stream:
            if as_json:
                click.echo(json.dumps(plain(event)))
            else:
                transcript.render(event)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    transcript.finish()


@session.command()
@click.argument("session_id")
@click.option("--turn", "turn_id", default="", help="Turn to stop (default: the active turn).")
@click.option("--reason", default="", help="Recorded in the turn_interrupted event.")
@json_option
@pass_lazy
def interrupt(lazy: LazyClient, session_id: str, turn_id: str, reason: str, as_json: bool) -> None:
    """Interrupt a queued or running turn."""
    turn = lazy.client.interrupt_turn(session_id, turn_id, reason=reason)
    if as_json:
        echo_json(turn)
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
def requests_(lazy: LazyClient, session_id: str, state: str, as_json: bool) -> None:
    """List a session's pending requests (approvals, questions), oldest first."""
    found = lazy.client.list_requests(session_id, state=state)
    if as_json:
        echo_json({"requests": found})
        return
    for r in found:
        click.echo(_request_line(r))
    if not found:
        click.echo(f"no {'' if state == 'all' else state + ' '}requests", err=True)


@session.command()
@click.argument("session_id")
@click.argument("request_id")
@click.option("--decision", type=click.Choice(APPROVAL_DECISIONS), help="Answer an approval.")
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
    lazy: LazyClient,
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
        echo_json(resolved)
    else:
        click.echo(f"{resolved.request_id} {resolved.state.name.lower()} {answer_text(resolved.response_json)}")


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
def snapshot(lazy: LazyClient, session_id: str, create: bool, as_json: bool) -> None:
    """Show (or --create) a session's snapshot."""
    client = lazy.client
    snap = client.create_snapshot(session_id) if create else client.get_snapshot(session_id)
    if as_json:
        echo_json(snap)
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
def restore(lazy: LazyClient, session_id: str, selectors: tuple[str, ...], worker_id: str, as_json: bool) -> None:
    """Move an idle session onto another worker and rehydrate it there."""
    restored = lazy.client.restore_session(session_id, parse_pairs(selectors, "--selector"), worker_id or None)
    if as_json:
        echo_json(restored)
    else:
        click.echo(f"{restored.session_id} worker={restored.worker_id or '-'} epoch={restored.lease_epoch}")


# The lifecycle commands (fork, revert, export, import, archive, delete, purge) are in
# _lifecycle_cli.py; importing it adds them to the group.
from . import _lifecycle_cli  # noqa: E402, F401
