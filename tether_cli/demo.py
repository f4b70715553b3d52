"""`make demo`: Tether's main job on the embedded default, in about ten seconds.

It starts a control plane on a fresh SQLite file and two workers, each as its own process;
creates sessions; runs turns whose output streams live; shows two workers sharing the load,
an interrupt, a snapshot of the model-visible history, a subscriber replaying the durable log
from a cursor, then the heart of Tether: it SIGKILLs the worker holding a session in the middle
of a conversation, and the next turn runs on the other worker and remembers what was said,
because that worker's runtime was rehydrated from the control plane, and finds the files a
session wrote there, restored from its workspace checkpoint; and `RestoreSession` moves the
session onto a worker it names. Everything runs on 127.0.0.1 and stops by itself.

Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import TextIO

from tether import sdk

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKERS = ("worker-a", "worker-b")
START_TIMEOUT_S = 60.0  # a first run after `make setup` compiles every module it imports
TURN_TIMEOUT_S = 30.0


class DemoFailed(SystemExit):
    """The demo did not see what it shows (exit status 1, with what went wrong)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"demo: {message}")


def colour_enabled(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour on a terminal only, and never when NO_COLOR is set to anything."""
    return stream.isatty() and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


class Style:
    """ANSI styles, or plain text when colour is off."""

    _CODES = {
        "bold": "1",
        "dim": "2",
        "red": "31",
        "green": "32",
        "yellow": "33",
        "blue": "34",
        "magenta": "35",
        "cyan": "36",
    }

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(self._CODES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def worker(self, worker_id: str) -> str:
        return self(worker_id, "magenta" if worker_id.endswith("-a") else "cyan")


style = Style(False)


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say("\n" + style(text, "bold"))


class Progress:
    """One line that says what the demo is waiting for, redrawn in place on a terminal."""

    _SPINNER = "|/-\\"

    def __init__(self, what: str) -> None:
        self._what = what
        self._started = time.monotonic()
        self._frames = itertools.cycle(self._SPINNER)
        self._live = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        if not self._live:
            say(f"{what} ...")

    def tick(self, doing: str) -> None:
        if self._live:
            elapsed = time.monotonic() - self._started
            line = f"{next(self._frames)} {self._what}: {doing} ({elapsed:.1f} s)"
            sys.stdout.write("\r\x1b[2K" + style(line, "dim"))
            sys.stdout.flush()

    def done(self) -> None:
        if self._live:
            sys.stdout.write("\r\x1b[2K")
            sys.stdout.flush()


def start(args: list[str], log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def start_worker(target: str, name: str, tmp: pathlib.Path) -> subprocess.Popen:
    """A worker offering the shell and script runtimes, one turn at a time."""
    args = ["tether.execution_worker", "--control-plane", target, "--runtime", "shell", "--runtime", "script"]
    args += ["--workdir", str(tmp / name), "--slots", "1", "--worker-id", name, "--name", name]
    return start(args, tmp / f"{name}.log")


async def follow(client: sdk.AsyncClient, session_id: str, turn_id: str, label: str) -> sdk.Event:
    """Print a turn's events as they arrive; return its terminal event."""
    async for e in client.stream_events(session_id):
        if e.turn_id != turn_id:
            continue
        tag = style(f"  {label} #{e.seq:<3}", "dim")
        if e.kind == "input_received":
            say(f"{tag} $ {e.input.replace(chr(10), '; ')}")
        elif e.kind == "turn_started":
            say(f"{tag} started on {style.worker(e.worker_id)}")
        elif e.kind == "workspace_restored" and e.workspace_restored is not None:
            w = e.workspace_restored
            say(f"{tag} workspace restored: {w.file_count} files, {w.total_bytes} bytes ({w.files_written} written)")
        elif e.kind == "output":
            for line in e.text.splitlines():
                say(f"{tag} {e.stream}: {style(line, 'red') if e.stream == 'stderr' else line}")
        elif e.is_terminal:
            detail, colour = {
                "turn_completed": (f"exit code {e.exit_code}", "green" if e.exit_code == 0 else "yellow"),
                "turn_failed": (e.error_message, "red"),
                "turn_interrupted": (e.reason, "yellow"),
            }[e.kind.value]
            say(f"{tag} {style(f'{e.kind.value}: {detail}', colour)}")
            return e
    raise DemoFailed("the event stream ended early")


async def run_turn(client: sdk.AsyncClient, session_id: str, command: str, label: str) -> sdk.Turn:
    turn = await client.send_input(session_id, command)
    await asyncio.wait_for(follow(client, session_id, turn.turn_id, label), TURN_TIMEOUT_S)
    return await client.get_turn(session_id, turn.turn_id)


async def output_of(client: sdk.AsyncClient, turn: sdk.Turn) -> str:
    events = client.stream_events(turn.session_id, stop_at_end=True)
    return "".join([e.text async for e in events if e.turn_id == turn.turn_id and e.kind == "output"])


async def wait_for_workers(client: sdk.AsyncClient, names: set[str], progress: Progress | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        connected = {w.worker_id for w in await client.list_workers() if w.connected}
        if names <= connected:
            return
        if time.monotonic() > deadline:
            raise DemoFailed(f"workers {', '.join(sorted(names - connected))} did not connect")
        if progress is not None:
            progress.tick(f"waiting for {', '.join(sorted(names - connected))} to connect")
        await asyncio.sleep(0.1)


async def start_control_plane(tmp: pathlib.Path, progress: Progress) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "cp.port"
    args = ["tether.control_plane", "--port", "0", "--dev", "--db", str(tmp / "tether.db")]
    proc = start([*args, "--port-file", str(port_file)], tmp / "control-plane.log")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            progress.done()
            raise DemoFailed("the control plane did not start:\n" + (tmp / "control-plane.log").read_text())
        progress.tick("starting the control plane")
        await asyncio.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text()}"


async def tour(client: sdk.AsyncClient) -> str:
    """Steps 1 to 5 on shell sessions; returns the main session's id."""
    session = await client.create_session("shell", labels={"demo": "yes"})
    say(f"session        : {session.session_id}")

    heading("1. Turns stream their output live, and the session keeps its workspace between turns:")
    await run_turn(client, session.session_id, "echo 'hello from Tether'; uname -s", "s1")
    await run_turn(client, session.session_id, "echo 'notes' > notes.txt; ls; echo 'to stderr' >&2; exit 3", "s1")

    heading("2. Two sessions at once: the scheduler gives each to a free worker:")
    other = await client.create_session("shell")
    results = await asyncio.gather(
        run_turn(client, session.session_id, "sleep 0.5; echo 'session one done'", "s1"),
        run_turn(client, other.session_id, "sleep 0.5; echo 'session two done'", "s2"),
    )
    say(f"   ran on: {', '.join(style.worker(w) for w in sorted({t.worker_id for t in results}))}")

    heading("3. Interrupt stops a running command; the session goes on:")
    long = await client.send_input(session.session_id, "echo 'working...'; sleep 30")
    watcher = asyncio.create_task(follow(client, session.session_id, long.turn_id, "s1"))
    async for e in client.stream_events(session.session_id):
        if e.turn_id == long.turn_id and e.kind == "output":
            break
    await client.interrupt_turn(session.session_id, long.turn_id, reason="stopped by the demo")
    await asyncio.wait_for(watcher, 20)

    heading("4. A snapshot holds the model-visible history a fresh runtime is rehydrated from:")
    snap = await client.create_snapshot(session.session_id)
    for item in snap.history:
        say(f"   {item.role.name.lower():<6} {item.text.strip()[:60]!r}")
    say(f"   (covers events up to seq {snap.seq})")

    heading("5. The log is durable and gapless: a late subscriber replays it from any cursor:")
    cursor = 3
    replay = [e async for e in client.stream_events(session.session_id, after_seq=cursor, stop_at_end=True)]
    seqs = [e.seq for e in replay]
    gapless = seqs == list(range(cursor + 1, cursor + 1 + len(seqs)))
    say(f"   from cursor {cursor}: {len(replay)} events, seq {seqs[0]}..{seqs[-1]}, gapless: {gapless}")
    return session.session_id


# The script runtime (docs/runtimes.md) prints the inputs its history holds on `recall`: on a
# worker that never saw the session, that history can only have come from the control plane.
REMEMBER = ("say my name is Ada", "say I keep bees")


async def survive_a_kill(
    client: sdk.AsyncClient, workers: dict[str, subprocess.Popen], target: str, tmp: pathlib.Path, files_session: str
) -> None:
    heading("6. A session outlives its worker: SIGKILL the worker that holds it mid-conversation:")
    session = (await client.create_session("script")).session_id
    say(f"   session {session} (script runtime: `recall` prints what its history remembers)")
    for line in REMEMBER:
        turn = await run_turn(client, session, line, "s3")
    holder = turn.worker_id
    epoch = (await client.get_session(session)).lease_epoch
    # Session s1's files (notes.txt, from step 1) go down with the same worker.
    if (await client.get_session(files_session)).worker_id != holder:
        await client.restore_session(files_session, worker_id=holder, timeout_s=TURN_TIMEOUT_S)
    say(f"   session s1 (its workspace holds notes.txt from step 1) is on {style.worker(holder)} too")
    doomed = workers[holder]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    say(
        style(
            f"   SIGKILL {holder} (pid {doomed.pid}): no drain, no goodbye; it held the session at lease epoch {epoch}",
            "red",
            "bold",
        )
    )
    recalled = await run_turn(client, session, "recall", "s3")
    survivor = recalled.worker_id
    moved = await client.get_session(session)
    if survivor == holder or recalled.state != sdk.TurnState.COMPLETED:
        raise DemoFailed(
            f"the turn after the SIGKILL ran on {survivor or 'no worker'} ({recalled.state.name}), not on the other worker"
        )
    missing = [line for line in REMEMBER if f"recalled: {line}" not in await output_of(client, recalled)]
    if missing:
        raise DemoFailed(f"the rehydrated runtime on {survivor} did not remember {missing}")
    say(
        f"   failover: the next turn ran on {style.worker(survivor)} at lease epoch {moved.lease_epoch}, and it "
        + style("remembers", "green", "bold")
        + f" both earlier turns: its runtime was rehydrated from the control plane's log, not from {holder}"
    )

    files = await run_turn(client, files_session, "cat notes.txt", "s1")
    if files.worker_id == holder or "notes" not in await output_of(client, files):
        raise DemoFailed(f"session s1's notes.txt did not survive the SIGKILL of {holder} (ran on {files.worker_id})")
    say(
        f"   and its files came too: notes.txt, written on {holder} in step 1, is on {style.worker(files.worker_id)}, "
        "restored from the session's last workspace checkpoint"
    )

    heading(f"7. RestoreSession moves an idle session onto a worker you choose: {holder} is back, move it there:")
    workers[holder] = start_worker(target, holder, tmp)
    await wait_for_workers(client, {holder})
    say(f"   {style.worker(holder)} restarted and connected")
    restored = await client.restore_session(session, worker_id=holder, timeout_s=TURN_TIMEOUT_S)
    say(
        f"   RestoreSession: {session} now held by {style.worker(restored.worker_id)}, lease epoch {restored.lease_epoch}"
    )
    back = await run_turn(client, session, "recall\nsay and still counting", "s3")
    if back.worker_id != holder or restored.worker_id != holder:
        raise DemoFailed(f"RestoreSession onto {holder} left the next turn on {back.worker_id}")
    missing = [line for line in REMEMBER if f"recalled: {line}" not in await output_of(client, back)]
    if missing:
        raise DemoFailed(f"after RestoreSession, {holder} did not remember {missing}")
    say(f"   restore: the turn ran on {style.worker(holder)}, rehydrated again, with the whole conversation")


async def demo(tmp: pathlib.Path) -> None:
    progress = Progress("setting up the control plane and two workers")
    procs: list[subprocess.Popen] = []
    workers: dict[str, subprocess.Popen] = {}
    try:
        cp, target = await start_control_plane(tmp, progress)
        procs.append(cp)
        workers.update({name: start_worker(target, name, tmp) for name in WORKERS})
        async with sdk.AsyncClient(target) as client:
            await wait_for_workers(client, set(WORKERS), progress)
            progress.done()
            say(f"control plane  : {target}, SQLite at {tmp / 'tether.db'}")
            say(
                f"workers        : {' and '.join(style.worker(w) for w in WORKERS)} "
                "(shell and script runtimes, 1 slot each), dialing out to the control plane"
            )
            main_session = await tour(client)
            await survive_a_kill(client, workers, target, tmp, main_session)

            heading("Summary:")
            final = await client.get_session(main_session)
            say(
                f"   {final.session_id}: {final.turn_count} turns, {final.last_seq} events, state {final.state.name.lower()}"
            )
            async for s in client.iter_sessions():
                say(f"   listed: {s.session_id} runtime={s.runtime} state={s.state.name.lower()}")
    finally:
        progress.done()
        running = [*workers.values(), *procs]
        for p in running:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    say("\nAll processes stopped. Logs and the database were in a temporary directory.")


def main() -> None:
    global style
    style = Style(colour_enabled(sys.stdout, os.environ))
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as d:
        asyncio.run(demo(pathlib.Path(d)))


if __name__ == "__main__":
    main()
