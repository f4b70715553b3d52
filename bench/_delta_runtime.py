"""The `deltas` runtime of `bench/deltas.py`, and the worker that offers it.

A turn's input is ``COUNT INTERVAL_MS``: the turn opens one agent-message item, yields COUNT
`ItemDelta`s of it, one every INTERVAL_MS on a fixed schedule (the n-th, from 0, due at start +
n x INTERVAL_MS, so a late one does not push the others back), then completes the item and the
turn. SIGUSR1 to the worker ends every turn before its next delta, as completed, and an
interrupt ends one as interrupted; the item, completed either way, says ``K deltas``: how many
the turn yielded. The n-th delta's text is ``N:T``, T being
``time.time_ns()`` read just before the delta is yielded to the worker: the moment the worker
has the delta, on CLOCK_REALTIME, which the subscriber in another process on the same machine
reads too (`parse_delta`).

``python -m bench._delta_runtime --control-plane HOST:PORT --workdir DIR ...`` runs the real
`Worker` (the public in-process API, `tether.execution_worker.Worker`) with this runtime
offered as `deltas` beside the runtimes named by `--runtime` (as `Procs.worker` passes them),
on uvloop as `tether worker` runs; the first SIGTERM drains it, a second stops it, and SIGUSR1
ends its turns.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tether.execution_worker.runtime import (
    DeltaKind,
    HistoryItem,
    HistoryRole,
    Item,
    ItemCompleted,
    ItemDelta,
    ItemKind,
    ItemStarted,
    Runtime,
    RuntimeEvent,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
)

#: The name the worker offers the runtime under.
NAME = "deltas"


def turn_input(count: int, interval_ms: float) -> str:
    """The input of a turn that yields `count` deltas, one every `interval_ms`."""
    return f"{count} {interval_ms}"


def parse_delta(text: str) -> tuple[int, int]:
    """A delta's (index in its turn, emit time in CLOCK_REALTIME ns)."""
    n, _, t = text.partition(":")
    return int(n), int(t)


class DeltaRuntime(Runtime):
    """Yields timestamped deltas at a fixed rate (see the module docstring)."""

    #: Set on SIGUSR1: every turn of this process ends, completed, before its next delta.
    stopping = False

    def __init__(self) -> None:
        self._history: list[HistoryItem] = []
        self._interrupted: str | None = None

    async def start(self, session_id: str, workdir: Path, history: list[HistoryItem]) -> None:
        self._history = list(history)

    def workspace_dir(self, session_id: str, workdir: Path) -> Path | None:
        return None  # nothing on disk: no workspace checkpoints

    async def run_turn(self, turn_id: str, input: str) -> AsyncIterator[RuntimeEvent]:
        try:
            count_text, interval_text = input.split()
            count, interval_s = int(count_text), float(interval_text) / 1000
        except ValueError:
            yield TurnFailed(f"input must be 'COUNT INTERVAL_MS', got {input!r}")
            return
        self._interrupted = None
        item = Item(item_id=f"msg_{turn_id}", kind=ItemKind.AGENT_MESSAGE)
        yield ItemStarted(item)
        start = time.monotonic()
        sent = 0
        while sent < count and self._interrupted is None and not DeltaRuntime.stopping:
            delay = start + sent * interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                if self._interrupted is not None or DeltaRuntime.stopping:
                    break
            yield ItemDelta(item.item_id, DeltaKind.AGENT_MESSAGE, f"{sent}:{time.time_ns()}")
            sent += 1
        text = f"{sent} deltas"
        status = "completed" if self._interrupted is None else "interrupted"
        yield ItemCompleted(Item(item_id=item.item_id, kind=ItemKind.AGENT_MESSAGE, text=text, status=status))
        if self._interrupted is not None:
            yield TurnInterrupted(self._interrupted)
            return
        self._history += [
            HistoryItem(HistoryRole.INPUT, input, turn_id),
            HistoryItem(HistoryRole.OUTPUT, text, turn_id),
        ]
        yield TurnCompleted()

    async def interrupt(self, reason: str) -> None:
        self._interrupted = reason  # seen before the next delta (within one interval)

    def export_history(self) -> list[HistoryItem]:
        return list(self._history)

    async def close(self) -> None:
        self._interrupted = "closed"


async def _serve(args: argparse.Namespace) -> int:
    from tether.execution_worker import Worker, WorkerSettings, discover_runtimes

    available = discover_runtimes()
    names = [n for value in args.runtimes for n in value.replace(",", " ").split()]
    unknown = [n for n in names if n != NAME and n not in available]
    if unknown:
        print(f"unknown runtime {', '.join(unknown)}", file=sys.stderr)
        return 2
    runtimes = {n: available[n] for n in names if n != NAME}
    runtimes[NAME] = DeltaRuntime
    settings = WorkerSettings(
        workdir=args.workdir,
        control_plane=args.control_plane,
        runtimes=tuple(runtimes),
        slots=args.slots,
        snapshot_every_turns=args.snapshot_every_turns,
    )
    loop = asyncio.get_running_loop()
    async with Worker(settings, runtimes=runtimes) as worker:
        run = asyncio.create_task(worker.run(), name="worker")

        def on_signal() -> None:
            if worker.draining:
                run.cancel()
            else:
                worker.request_drain()

        def stop_turns() -> None:
            DeltaRuntime.stopping = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        loop.add_signal_handler(signal.SIGUSR1, stop_turns)
        try:
            await run
        except asyncio.CancelledError:
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    import uvloop

    from tether import logs

    p = argparse.ArgumentParser(prog="python -m bench._delta_runtime")
    p.add_argument("--control-plane", required=True)
    p.add_argument("--runtime", dest="runtimes", action="append", default=[])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--snapshot-every-turns", type=int, default=1)
    args = p.parse_args(argv)
    logs.configure(args.log_level.upper())
    return uvloop.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
