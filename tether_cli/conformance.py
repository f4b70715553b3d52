"""`tether conformance`: drive any execution worker through the contract's scenarios.

The kit owns a control plane (in process, temporary SQLite, 127.0.0.1), a TCP proxy between
it and the worker under test (so it can cut the worker off), and the worker's process. It
talks to the control plane with the Python SDK and judges the worker only by what the contract
makes visible: the session log, turn states, snapshots, the worker list, and how many of the
worker's calls fencing refused. docs/conformance.md is the worker author's side of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import click

# gRPC's C core logs connection events (GOAWAY and the like) that the kit causes on purpose.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from tether import sdk
from tether.cli._kit import (
    BLIP_S,
    DRAIN_EXIT_S,
    FREEZE_S,
    KIT_TIMINGS,
    Kit,
    ScenarioFailed,
    check_gapless,
    expect,
    outputs,
    until,
)

# -- scenarios -------------------------------------------------------------------------------


async def register(kit: Kit) -> None:
    launched = kit.launch_under_test()
    status = await kit.registered(launched)
    expect("script" in status.runtimes, f"the worker offers {status.runtimes}, not the 'script' runtime")
    expect(status.slots >= 1, f"the worker registered {status.slots} slots")
    kit.worker = launched


async def offer_accept(kit: Kit) -> None:
    session = await kit.client.create_session(runtime="script")
    turn, events = await kit.run(session.session_id, "say hello")
    expect(turn.state is sdk.TurnState.COMPLETED, f"the turn ended {turn.state.name}: {turn.error_message}")
    kinds = [e.kind.value for e in events]
    expect(
        kinds == ["input_received", "turn_started", "output", "turn_completed"],
        f"the turn's events are {kinds}, not input_received, turn_started, output, turn_completed",
    )
    started = events[1]
    expect(started.worker_id == worker_id(kit), f"turn_started names worker {started.worker_id!r}")
    expect(outputs(events) == ["hello\n"], f"the output is {outputs(events)}, not ['hello\\n']")
    expect(events[-1].exit_code == 0, f"exit code {events[-1].exit_code}")
    check_gapless(await kit.events(session.session_id))


async def events_resend(kit: Kit) -> None:
    assert kit.proxy is not None
    session = await kit.client.create_session(runtime="script")
    sid = session.session_id
    before = kit.proxy.connections
    turn = await kit.client.send_input(sid, "say one\nsleep 500\nsay two\nsleep 1500\nsay three")
    await kit.wait_event(sid, "the first output", lambda e: e.kind is sdk.EventKind.OUTPUT)
    # "two" is produced while the worker is cut off: it must keep it and send it afterwards.
    await kit.proxy.blackout(BLIP_S)
    done = await kit.wait_turn(sid, turn.turn_id, timeout=15)
    expect(done.state is sdk.TurnState.COMPLETED, f"the turn ended {done.state.name}: {done.error_message}")
    expect(kit.proxy.connections > before, "the worker never reconnected after its connections were cut")
    events = await kit.events(sid)
    check_gapless(events)
    got = outputs(events)
    expect(got == ["one\n", "two\n", "three\n"], f"the output is {got}, not one, two, three exactly once each")


async def interrupt(kit: Kit) -> None:
    session = await kit.client.create_session(runtime="script")
    sid = session.session_id
    turn = await kit.client.send_input(sid, "say start\nsleep 30000\nsay never")
    await kit.wait_event(sid, "the output 'start'", lambda e: e.kind is sdk.EventKind.OUTPUT)
    await kit.client.interrupt_turn(sid, turn.turn_id, reason="conformance")
    done = await kit.wait_turn(sid, turn.turn_id, timeout=5)
    expect(done.state is sdk.TurnState.INTERRUPTED, f"the turn ended {done.state.name}, not INTERRUPTED")
    events = await kit.events(sid)
    check_gapless(events)
    expect(outputs(events) == ["start\n"], f"the output is {outputs(events)}: the script ran on after the interrupt")


async def snapshot(kit: Kit) -> None:
    session = await kit.client.create_session(runtime="script")
    sid = session.session_id
    last_seq = 0
    for script in ("say first", "say second"):
        turn, events = await kit.run(sid, script)
        expect(turn.state is sdk.TurnState.COMPLETED, f"turn {script!r} ended {turn.state.name}")
        last_seq = events[-1].seq
    snap = await kit.client.create_snapshot(sid, timeout_s=15)
    got = [(item.role.name, item.text) for item in snap.history]
    want = [("INPUT", "say first"), ("OUTPUT", "first\n"), ("INPUT", "say second"), ("OUTPUT", "second\n")]
    expect(got == want, f"the snapshot's history is {got}, not {want}")
    expect(snap.seq >= last_seq, f"the snapshot covers seq {snap.seq}, but the second turn ended at seq {last_seq}")


async def resume(kit: Kit) -> None:
    sid = kit.resume_session
    expect(sid, "the kit could not prepare a session on its reference worker")

    async def released() -> bool:
        return not (await kit.client.get_session(sid)).worker_id

    # The killed reference worker's lease moves after the worker-dead grace.
    wait = KIT_TIMINGS.worker_dead_grace_s + 5
    await until(released, wait, f"the killed reference worker still held the session after {wait:g}s", period=0.1)
    turn, events = await kit.run(sid, "recall", timeout=15)
    expect(turn.state is sdk.TurnState.COMPLETED, f"the turn ended {turn.state.name}: {turn.error_message}")
    started = next((e for e in events if e.kind is sdk.EventKind.TURN_STARTED), None)
    expect(
        started is not None and started.worker_id == worker_id(kit),
        "the recall turn did not run on the worker under test",
    )
    want = "".join(f"recalled: {text}\n" for text in kit.resume_inputs)
    got = "".join(outputs(events))
    expect(got == want, f"recall printed {got!r}, not {want!r}: the rehydrated history is wrong")


async def lease_loss(kit: Kit) -> None:
    assert kit.cp is not None and kit.worker is not None
    session = await kit.client.create_session(runtime="script")
    sid = session.session_id
    turn = await kit.client.send_input(sid, "say before\nsleep 3000\nsay after")
    await kit.wait_event(sid, "the output 'before'", lambda e: e.kind is sdk.EventKind.OUTPUT)
    old_epoch = (await kit.client.get_session(sid)).lease_epoch
    # Frozen, the worker cannot know its lease is gone: when it wakes, its sleep is over and it
    # writes the rest of the turn at once, as a zombie would. Fencing refuses those writes;
    # the worker must then stop writing for that lease.
    frozen_at = time.monotonic()
    kit.worker.signal_group(signal.SIGSTOP)
    try:
        failed = await kit.wait_turn(sid, turn.turn_id, timeout=FREEZE_S)
        await asyncio.sleep(max(0.0, frozen_at + FREEZE_S - time.monotonic()))  # past the lease TTL too
    finally:
        kit.worker.signal_group(signal.SIGCONT)
    expect(failed.state is sdk.TurnState.FAILED, f"the frozen worker's turn ended {failed.state.name}, not FAILED")
    wid = worker_id(kit)

    async def reconnected() -> bool:
        status = await kit.worker_status(wid)
        return status is not None and status.connected

    await until(reconnected, 10, "the worker did not reconnect within 10s of waking", period=0.1)
    # It may have tried a few stale writes before it learned; after that they must stop.
    await asyncio.sleep(1.5)
    hub = kit.cp.hub
    assert hub is not None
    fenced = hub.fenced_calls(wid)
    await asyncio.sleep(2.0)
    more = hub.fenced_calls(wid) - fenced
    expect(more == 0, f"the worker kept writing for its lost lease: {more} more calls refused with LEASE_LOST")
    events = await kit.events(sid)
    check_gapless(events)
    ended = next(e for e in events if e.turn_id == turn.turn_id and e.is_terminal)
    late = [e for e in events if e.seq > ended.seq and e.lease_epoch == old_epoch and e.lease_epoch]
    expect(not late, f"events of the lost epoch {old_epoch} reached the log: {[e.kind.value for e in late]}")
    expect("after\n" not in outputs(events), "output of the lost lease's turn reached the log")
    nxt, nxt_events = await kit.run(sid, "say again", timeout=15)
    expect(nxt.state is sdk.TurnState.COMPLETED, f"the next turn ended {nxt.state.name}: {nxt.error_message}")
    started = next(e for e in nxt_events if e.kind is sdk.EventKind.TURN_STARTED)
    expect(started.worker_id == wid, "the next turn did not run on the worker under test")
    expect(started.lease_epoch > old_epoch, f"the next turn ran at epoch {started.lease_epoch}, not above {old_epoch}")


async def drain(kit: Kit) -> None:
    launched = kit.worker
    assert launched is not None
    wid = worker_id(kit)
    held = await kit.client.create_session(runtime="script")
    sid = held.session_id
    warm, _ = await kit.run(sid, "say warm")
    expect(warm.state is sdk.TurnState.COMPLETED, f"the first turn ended {warm.state.name}")
    ref = kit.launch_reference("reference-2")
    await kit.registered(ref)
    turn = await kit.client.send_input(sid, "say draining\nsleep 1500\nsay done")
    await kit.wait_event(
        sid, "the output 'draining'", lambda e: e.turn_id == turn.turn_id and e.kind is sdk.EventKind.OUTPUT
    )
    launched.popen.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        status = await kit.worker_status(wid)
        return status is not None and status.draining

    await until(
        draining, 3, "the worker did not tell the control plane it is draining (DrainStarted) within 3s of SIGTERM"
    )
    other = await kit.client.create_session(runtime="script")
    other_turn = await kit.client.send_input(other.session_id, "say elsewhere")

    async def exited() -> bool:
        return launched.exited

    await until(exited, DRAIN_EXIT_S, f"the worker did not exit within {DRAIN_EXIT_S:g}s of SIGTERM")
    exited_at = time.monotonic()
    holder = (await kit.client.get_session(sid)).worker_id
    expect(launched.popen.returncode == 0, f"the worker exited with status {launched.popen.returncode}, not 0")
    done = await kit.client.get_turn(sid, turn.turn_id)
    expect(
        done.state is sdk.TurnState.COMPLETED,
        f"the running turn ended {done.state.name}, not COMPLETED: drain must let it finish",
    )
    events = [e for e in await kit.events(sid) if e.turn_id == turn.turn_id]
    expect(outputs(events) == ["draining\n", "done\n"], f"the drained turn's output is {outputs(events)}")
    expect(holder != wid, "the worker exited still holding its session's lease: it must release it when drained")
    moved = await kit.wait_turn(other.session_id, other_turn.turn_id, timeout=10)
    expect(moved.state is sdk.TurnState.COMPLETED, f"the turn sent during the drain ended {moved.state.name}")
    other_started = next(e for e in await kit.events(other.session_id) if e.kind is sdk.EventKind.TURN_STARTED)
    expect(other_started.worker_id != wid, "the worker took a new turn while draining")
    after = await kit.client.send_input(sid, "say moved")
    await kit.wait_event(
        sid, "the next turn to start", lambda e: e.turn_id == after.turn_id and e.kind is sdk.EventKind.TURN_STARTED
    )
    waited = time.monotonic() - exited_at
    expect(
        waited < KIT_TIMINGS.worker_dead_grace_s - 0.5,
        f"the session waited {waited:.1f}s for another worker: its lease was not released",
    )


def worker_id(kit: Kit) -> str:
    assert kit.worker is not None
    return kit.worker.worker_id


SCENARIOS: list[tuple[str, Callable[[Kit], Awaitable[None]]]] = [
    ("register", register),
    ("offer-accept", offer_accept),
    ("events-resend", events_resend),
    ("interrupt", interrupt),
    ("snapshot", snapshot),
    ("resume", resume),
    ("lease-loss", lease_loss),
    ("drain", drain),
]


async def run_kit(worker_cmd: str, root: pathlib.Path, echo: Callable[[str], None]) -> int:
    """Run every scenario; return 0 when all passed, 1 when any failed, 2 when registration
    failed (the worker never registered, or registered without the 'script' runtime or a slot),
    so no other scenario could run."""
    kit = Kit(worker_cmd, root)
    failed = 0
    registration: str | None = None  # why the register scenario failed, once it has
    try:
        await kit.start()
        await kit.prepare_resume()
        for name, scenario in SCENARIOS:
            if kit.worker is None and name != "register":
                echo(f"FAIL {name}: not run, registration failed: {registration}")
                failed += 1
                continue
            started = time.monotonic()
            problem: str | None = None
            try:
                await asyncio.wait_for(scenario(kit), timeout=90)
            except ScenarioFailed as exc:
                problem = str(exc)
            except TimeoutError:
                problem = "did not finish within 90s"
            except sdk.TetherError as exc:
                problem = f"the control plane answered {exc.code.name}: {exc}"
            if problem is None:
                echo(f"PASS {name} ({time.monotonic() - started:.1f}s)")
                continue
            failed += 1
            echo(f"FAIL {name}: {problem}")
            if name == "register":
                registration = problem.splitlines()[0] if problem else "no reason given"
    finally:
        await kit.close()
        await _let_stragglers_finish(3.0)
    if kit.worker is None:
        return 2
    return 1 if failed else 0


async def _let_stragglers_finish(timeout: float) -> None:
    """Give tasks still running after the control plane closed (a gRPC handler finishing a
    read it started before the shutdown) up to `timeout` to end by themselves. Cancelled by
    asyncio.run instead, such a task sometimes never finished and the kit hung at exit."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=timeout)


@click.command("conformance")
@click.option(
    "--worker-cmd",
    default=None,
    metavar="COMMAND",
    help="Starts the worker under test; split like a shell command line (not run through "
    "a shell). {control_plane} and {workdir} are replaced, and the same values are "
    "in TETHER_CONTROL_PLANE and TETHER_WORKDIR.",
)
@click.option(
    "--runtime",
    "runtime_name",
    default=None,
    metavar="NAME",
    help="Instead of a worker, check a runtime this installation offers (a built-in or a "
    "tether.runtimes plugin): that it moves between workers the way it declares its "
    "portability (history, state or none).",
)
@click.option(
    "--turn",
    "turn_input",
    default="echo tether-conformance",
    show_default=True,
    metavar="INPUT",
    help="With --runtime: the input of the turns the kit runs.",
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="Keep the kit's files (worker logs, database) in this directory "
    "[default: a temporary one, kept only when a scenario fails].",
)
def conformance(
    worker_cmd: str | None, runtime_name: str | None, turn_input: str, keep_dir: pathlib.Path | None
) -> None:
    """Check that an execution worker follows the WorkerService contract, or (--runtime) that
    a runtime moves the way it declares (docs/conformance.md).

    Prints PASS or FAIL per scenario; exits 1 when any failed, 2 when registration failed (the
    worker never registered, or registered without the 'script' runtime), so nothing else ran.
    """
    if (worker_cmd is None) == (runtime_name is None):
        raise click.UsageError("give exactly one of --worker-cmd COMMAND and --runtime NAME")
    root = keep_dir or pathlib.Path(tempfile.mkdtemp(prefix="tether-conformance-"))
    root.mkdir(parents=True, exist_ok=True)
    # The control plane's own log (leases dropped on purpose, and so on) goes to a file next
    # to the workers' logs, so the terminal shows only the verdicts.
    logging.basicConfig(
        filename=root / "control-plane.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if runtime_name is not None:
        code = _check_runtime(runtime_name, turn_input, root)
    else:
        assert worker_cmd is not None
        code = asyncio.run(run_kit(worker_cmd, root, lambda line: click.echo(line)))
        if code == 0:
            click.echo(f"all {len(SCENARIOS)} scenarios passed")
    if code == 0:
        if keep_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    else:
        what = "the control plane's log and the database" if runtime_name else "worker logs and the database"
        click.echo(f"conformance failed; {what} are in {root}")
    sys.exit(code)


def _check_runtime(name: str, turn_input: str, root: pathlib.Path) -> int:
    from tether.cli._runtime_kit import run_runtime_kit
    from tether.execution_worker import discover_runtimes

    runtimes = discover_runtimes()
    if name not in runtimes:
        raise click.UsageError(f"no runtime {name!r} here; this installation offers {', '.join(sorted(runtimes))}")
    code = asyncio.run(run_runtime_kit(name, runtimes[name], turn_input, root, lambda line: click.echo(line)))
    if code == 0:
        click.echo(f"runtime {name!r} moves the way it declares")
    return code
