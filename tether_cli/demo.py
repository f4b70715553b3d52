"""`make demo`: Tether's main job on the embedded default, in about ten seconds.

It starts a control plane on a fresh SQLite file and two workers, each as its own process;
creates sessions; runs turns whose output streams live; shows two workers sharing the load,
an interrupt, a snapshot of the model-visible history, and a subscriber replaying the durable
log from a cursor. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from tether import sdk

ROOT = pathlib.Path(__file__).resolve().parent.parent


def say(text: str = "") -> None:
    print(text, flush=True)


def start(args: list[str], log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def follow(client: sdk.AsyncClient, session_id: str, turn_id: str, label: str) -> sdk.Event:
    """Print a turn's events as they arrive; return its terminal event."""
    async for e in client.stream_events(session_id):
        if e.turn_id != turn_id:
            continue
        if e.kind == "input_received":
            say(f"  {label} #{e.seq:<3} $ {e.input}")
        elif e.kind == "turn_started":
            say(f"  {label} #{e.seq:<3} started on {e.worker_id}")
        elif e.kind == "output":
            for line in e.text.splitlines():
                say(f"  {label} #{e.seq:<3} {e.stream}: {line}")
        elif e.is_terminal:
            detail = {
                "turn_completed": f"exit code {e.exit_code}",
                "turn_failed": e.error_message,
                "turn_interrupted": e.reason,
            }[e.kind.value]
            say(f"  {label} #{e.seq:<3} {e.kind.value}: {detail}")
            return e
    raise RuntimeError("event stream ended early")


async def run_turn(client: sdk.AsyncClient, session_id: str, command: str, label: str) -> sdk.Turn:
    turn = await client.send_input(session_id, command)
    await asyncio.wait_for(follow(client, session_id, turn.turn_id, label), 30)
    return await client.get_turn(session_id, turn.turn_id)


async def demo(tmp: pathlib.Path) -> None:
    port_file = tmp / "cp.port"
    procs = [
        start(
            [
                "tether.control_plane",
                "--port",
                "0",
                "--dev",
                "--db",
                str(tmp / "tether.db"),
                "--port-file",
                str(port_file),
            ],
            tmp / "control-plane.log",
        )
    ]
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if procs[0].poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the control plane did not start:\n" + (tmp / "control-plane.log").read_text())
        await asyncio.sleep(0.05)
    target = f"127.0.0.1:{port_file.read_text()}"
    say(f"control plane  : {target}, SQLite at {tmp / 'tether.db'}")
    for name in ("worker-a", "worker-b"):
        procs.append(
            start(
                [
                    "tether.execution_worker",
                    "--control-plane",
                    target,
                    "--runtime",
                    "shell",
                    "--workdir",
                    str(tmp / name),
                    "--slots",
                    "1",
                    "--worker-id",
                    name,
                    "--name",
                    name,
                ],
                tmp / f"{name}.log",
            )
        )
    say("workers        : worker-a and worker-b (shell runtime, 1 slot each), dialing out to the control plane")
    try:
        async with sdk.AsyncClient(target) as client:
            session = await client.create_session("shell", labels={"demo": "yes"})
            say(f"session        : {session.session_id}\n")

            say("1. Turns stream their output live, and the session keeps its workspace between turns:")
            await run_turn(client, session.session_id, "echo 'hello from Tether'; uname -s", "s1")
            await run_turn(
                client, session.session_id, "echo 'notes' > notes.txt; ls; echo 'to stderr' >&2; exit 3", "s1"
            )

            say("\n2. Two sessions at once: the scheduler gives each to a free worker:")
            other = await client.create_session("shell")
            results = await asyncio.gather(
                run_turn(client, session.session_id, "sleep 0.5; echo 'session one done'", "s1"),
                run_turn(client, other.session_id, "sleep 0.5; echo 'session two done'", "s2"),
            )
            say(f"   ran on: {', '.join(sorted({t.worker_id for t in results}))}")

            say("\n3. Interrupt stops a running command; the session goes on:")
            long = await client.send_input(session.session_id, "echo 'working...'; sleep 30")
            watcher = asyncio.create_task(follow(client, session.session_id, long.turn_id, "s1"))
            async for e in client.stream_events(session.session_id):
                if e.turn_id == long.turn_id and e.kind == "output":
                    break
            await client.interrupt_turn(session.session_id, long.turn_id, reason="stopped by the demo")
            await asyncio.wait_for(watcher, 20)

            say("\n4. A snapshot holds the model-visible history a fresh runtime is rehydrated from:")
            snap = await client.create_snapshot(session.session_id)
            for item in snap.history:
                say(f"   {item.role.name.lower():<6} {item.text.strip()[:60]!r}")
            say(f"   (covers events up to seq {snap.seq})")

            say("\n5. The log is durable and gapless: a late subscriber replays it from any cursor:")
            cursor = 3
            replay = [e async for e in client.stream_events(session.session_id, after_seq=cursor, stop_at_end=True)]
            seqs = [e.seq for e in replay]
            say(
                f"   from cursor {cursor}: {len(replay)} events, seq {seqs[0]}..{seqs[-1]}, gapless: {seqs == list(range(cursor + 1, cursor + 1 + len(seqs)))}"
            )

            say("\nSummary:")
            final = await client.get_session(session.session_id)
            say(
                f"   {final.session_id}: {final.turn_count} turns, {final.last_seq} events, state {final.state.name.lower()}"
            )
            async for s in client.iter_sessions():
                say(f"   listed: {s.session_id} runtime={s.runtime} state={s.state.name.lower()}")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    say("\nAll processes stopped. Logs and the database were in a temporary directory.")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as d:
        asyncio.run(demo(pathlib.Path(d)))


if __name__ == "__main__":
    main()
