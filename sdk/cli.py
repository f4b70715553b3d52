"""The `tether session` commands, and the operator commands `tether worker list` and
`tether worker drain` (attached to the `tether worker` group by `execution_worker.cli`): a thin
shell over the blocking `sdk.Client`.

This module owns argument parsing, human and `--json` output, and turning a `TetherError` into
``error: <message> (<reason>)`` on stderr with exit status 2 for bad input and 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
from datetime import datetime
from typing import Any

import click

from ._async_client import DEFAULT_TARGET, DEFAULT_TIMEOUT_S
from ._errors import InvalidArgumentError, OutOfRangeError, TetherError
from ._models import Event, EventKind, Session, Snapshot, Turn, TurnState, WorkerStatus
from ._sync_client import Client

__all__ = ["drain_worker", "list_workers", "session"]

_BAD_INPUT_ERRORS = (InvalidArgumentError, OutOfRangeError)
_EXIT_INTERRUPTED = 130


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


class _Lazy:
    """Creates the client on first use so `--help` never opens a channel."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self._target = target
        self._timeout_s = timeout_s
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._target, timeout_s=self._timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_lazy = click.make_pass_decorator(_Lazy)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


# -- output -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "raw"
        }
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
    "--selector", "selectors", multiple=True, metavar="K=V",
    help="Label an eligible worker must carry (repeatable).",
)
@json_option
@pass_lazy
def create(lazy: _Lazy, runtime: str, labels: tuple[str, ...], selectors: tuple[str, ...],
           as_json: bool) -> None:
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
def list_(lazy: _Lazy, state: str | None, page_size: int, page_token: str, all_pages: bool,
          as_json: bool) -> None:
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
@click.option("--wait", is_flag=True, help="Print output live; exit with the turn's exit code.")
@json_option
@pass_lazy
def send(lazy: _Lazy, session_id: str, input_text: str, idempotency_key: str, wait: bool,
         as_json: bool) -> None:
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
        click.echo(f"turn {turn.turn_id}" + (" (deduplicated)" if turn.deduplicated else ""),
                   err=True)
    try:
        for event in client.stream_events(session_id, after_seq=after_seq):
            if event.turn_id != turn.turn_id:
                continue
            if event.kind is EventKind.OUTPUT and not as_json:
                click.echo(event.text, nl=False, err=event.stream == "stderr")
                (sys.stderr if event.stream == "stderr" else sys.stdout).flush()
            if event.is_terminal:
                break
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; turn {turn.turn_id} keeps running "
                   f"(tether session interrupt {session_id})", err=True)
        sys.exit(_EXIT_INTERRUPTED)
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
    """Print a session's events: #seq turn kind text."""
    try:
        for event in lazy.client.stream_events(
            session_id, after_seq=after_seq, stop_at_end=not follow
        ):
            if as_json:
                click.echo(json.dumps(_plain(event)))
            else:
                click.echo(_describe_event(event))
    except KeyboardInterrupt:
        sys.exit(_EXIT_INTERRUPTED)


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
    click.echo(f"{snap.snapshot_id} seq={snap.seq} runtime={snap.runtime} "
               f"worker={snap.worker_id or '-'} {created}")
    for item in snap.history:
        text = item.text if len(item.text) <= 120 else item.text[:117] + "..."
        click.echo(f"  {item.turn_id} {item.role.name.lower()}: {text!r}")


@session.command()
@click.argument("session_id")
@click.option(
    "--selector", "selectors", multiple=True, metavar="K=V",
    help="Label the target worker must carry, on top of the session's selector (repeatable).",
)
@click.option("--worker-id", default="", help="Move to this worker (default: any that matches).")
@json_option
@pass_lazy
def restore(lazy: _Lazy, session_id: str, selectors: tuple[str, ...], worker_id: str,
            as_json: bool) -> None:
    """Move an idle session onto another worker and rehydrate it there."""
    restored = lazy.client.restore_session(
        session_id, _parse_pairs(selectors, "--selector"), worker_id or None
    )
    if as_json:
        _echo_json(restored)
    else:
        click.echo(f"{restored.session_id} worker={restored.worker_id or '-'} "
                   f"epoch={restored.lease_epoch}")


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
    "--control-plane", default=None,
    help=f"Address of the control plane [default: the group's --control-plane, else "
         f"TETHER_CONTROL_PLANE, else {DEFAULT_TARGET}].",
)
_admin_timeout = click.option(
    "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True,
    help="Deadline of the call, in seconds.",
)


def _admin_target(ctx: click.Context, control_plane: str | None) -> str:
    if control_plane:
        return control_plane
    parent = ctx.parent.params.get("control_plane") if ctx.parent is not None else None
    return parent or os.environ.get("TETHER_CONTROL_PLANE") or DEFAULT_TARGET


def _worker_line(w: WorkerStatus) -> str:
    state = ("connected" if w.connected else "disconnected") + (",draining" if w.draining else "")
    return (f"{w.worker_id}  {state:22}  turns={w.running_turns}/{w.slots}  "
            f"sessions={w.held_sessions}  runtimes={','.join(w.runtimes) or '-'}  {w.name}")


@click.command("list", cls=_ReportingCommand)
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def list_workers(ctx: click.Context, control_plane: str | None, timeout_s: float,
                 as_json: bool) -> None:
    """List the workers the control plane knows, connected first."""
    with Client(_admin_target(ctx, control_plane), timeout_s=timeout_s) as client:
        workers = client.list_workers()
    if as_json:
        _echo_json({"workers": workers})
        return
    for w in workers:
        click.echo(_worker_line(w))


@click.command("drain", cls=_ReportingCommand, short_help="Ask a connected worker to drain.")
@click.argument("worker_id")
@click.option("--grace-s", type=click.FloatRange(0), default=None,
              help="Seconds running turns get to finish [default: the worker's own setting].")
@_admin_control_plane
@_admin_timeout
@json_option
@click.pass_context
def drain_worker(ctx: click.Context, worker_id: str, grace_s: float | None,
                 control_plane: str | None, timeout_s: float, as_json: bool) -> None:
    """Ask a connected worker to drain: it finishes its turns, snapshots, releases, exits."""
    with Client(_admin_target(ctx, control_plane), timeout_s=timeout_s) as client:
        status = client.drain_worker(worker_id, grace_s)
    if as_json:
        _echo_json(status)
    else:
        click.echo(f"{status.worker_id} draining" if status.draining else _worker_line(status))
