"""Chaos: many multi-turn sessions while workers are SIGKILLed and the control plane crashes.

    python -m bench chaos                       # 200 sessions, 4 workers, default timings
    python -m bench.chaos --sessions 20 ...     # other sizes (see --help)

What runs: one control plane (a process, SQLite file, fixed port) and M shell workers (processes,
a few slots each). N sessions each run K turns (3-5) one after another, the driver pausing
0-0.3 s before each next one; attempt a of turn j of session i is
``echo si-tj-a; echo si-tj-attempt<a> >> ledger.txt; sleep 0.05-0.4; echo si-tj-b``, so its
whole output is known in advance, and the session's workspace keeps a ledger of the attempts
that ran in it. The workspace moves with the session: the worker checkpoints it after a turn
(unless the next turn starts within 50 ms: its end covers both), and a worker taking the session
at a new epoch restores the latest checkpoint first. After the chaos, one more turn per session
prints the ledger (``cat ledger.txt``; nothing when there is none).

Chaos, all at random intervals and bounded in count:

- a worker is SIGKILLed (never the last one alive) and started again after a random pause
  (0.2-3 s) with the same workdir, so it comes back with the same worker id: depending on the
  pause the control plane learns of the death from the worker-dead grace / lease expiry, or
  from the worker re-attaching without the session. Its running turn is lost.
- now and then (at most `max_worker_freezes` times) a worker is SIGSTOPped instead, for longer
  than the liveness timeout plus the worker-dead grace, so the control plane gives it up and
  its sessions move on; then SIGCONTed: it wakes up believing it still holds them, and its
  commands that finished meanwhile try to write under the old epochs. Those writes must be
  refused: this is what makes the stale-write check mean something.
- the control plane is SIGKILLed and started again on the same database file and port, exactly
  `cp_restarts` times (at 30 % and 60 % of the intended turns done, for two). With
  `cp_crash_kills_worker` (the default) a random worker is SIGKILLed just before it, as if
  both ran on one host, and comes back after the control plane (counted in the worker kills).

The driver is an application doing the right thing: every SendInput carries an idempotency key
per intended turn and attempt (``chaos-s<i>-t<j>-a<a>``) and is retried with that key through
UNAVAILABLE and deadlines; each session follows its own log from its cursor and re-subscribes
after a failure; a turn that ends failed (worker lost, or anything else) or interrupted is sent
again as a new attempt with a new key, at most `max_attempts` times. The channel reconnects
with a 100 ms-1 s backoff (gRPC's default grows to 120 s).

At the end every session's full log is read back (over the API, and the SQLite file is read
after the control plane stops) and checked:

- seq is 1, 2, 3, ... with no gap and no duplicate;
- every turn in the log is one the driver sent (one per key), opens with its input_received,
  has at most one turn_started, exactly one terminal event and nothing after it; no output
  event is stored twice (each line of output is unique in the whole run);
- every completed turn printed exactly its two lines and exited 0; every intended turn
  completed exactly once, as the last attempt for it; GetTurn agrees with the log;
- lease_epoch never goes down along the log and is the same for all worker-written events of
  a turn (and equals the turn's epoch): anything else is a stale write the control plane took;
- the ledger (check_ledger): every checkpoint of the session stored in the SQLite file is read
  back as a restore reads it (manifest chunks, the ledger's entry, its blob's pieces, checked
  against the digest). In seq order, with what the read printed placed at the read's first
  seq, each ledger is a prefix of the next: above all, the latest checkpoint stored before the
  read is a prefix of what it printed (lines may only have been appended since). Every ledger,
  printed or stored, holds only whole lines of attempts the driver sent, each at most once and
  in the order sent. An attempt lost with its worker may or may not have written its line, and a
  completed turn's line is gone when its worker died before the checkpoint after it: both are
  counted, not failed, since no checkpoint held them.

Figures (one JSON line each): chaos_sessions_total, chaos_sessions_lost (must be 0: sessions
that did not complete all intended turns and the ledger read, or whose log failed a check),
chaos_events_duplicated (must be 0), chaos_stale_writes_accepted (must be 0),
chaos_checkpointed_lines_lost (must be 0: lines of a stored checkpoint's ledger missing in place
from a later checkpoint or from what the read printed; an unreadable checkpoint counts 1),
chaos_ledger_lines_bad (must be 0), chaos_sessions_checkpointed (sessions with a checkpoint
stored before the read, of those that completed a turn), chaos_workspace_restored (events, and
how many came with the ledger reads), chaos_worker_kills, chaos_worker_freezes, chaos_cp_restarts,
chaos_duration_s (the intended turns; the reads are timed apart), chaos_turns_lost_to_worker_death,
chaos_turns_failed_other (informational).
The process exits non-zero when a must-be-0 figure is not 0; logs are then kept and their path
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tether import sdk

from ._chaos_checks import (
    LEDGER_READ,
    Attempt,
    ChaosResult,
    SessionRun,
    StoredLedger,
    _db_epochs,
    _db_ledgers,
    _read_back,
    check_ledger,
    check_session,
    report,
)
from ._harness import (
    ControlPlaneProc,
    Procs,
    Retries,
    client_options,
    cp_timing_args,
    procs,
    retry,
    transient,
)


@dataclass
class ChaosConfig:
    sessions: int = 200
    workers: int = 4
    slots: int = 2
    turns: tuple[int, int] = (3, 5)  # turns per session, inclusive range
    sleep_s: tuple[float, float] = (0.05, 0.4)  # each turn's `sleep`
    # The driver's pause before each next turn: past the worker's 50 ms snapshot debounce, the
    # turn before is checkpointed on its own (back to back, the next turn's end covers it).
    pause_s: tuple[float, float] = (0.0, 0.3)
    cp_restarts: int = 2
    max_worker_kills: int = 40
    kill_interval_s: tuple[float, float] = (1.0, 3.0)
    worker_down_s: tuple[float, float] = (0.2, 3.0)
    cp_down_s: tuple[float, float] = (0.2, 1.0)
    # Freezes: a worker is SIGSTOPped for longer than liveness timeout + worker-dead grace (its
    # sessions move on), then SIGCONTed: it wakes up still believing it holds them, and
    # whatever it then writes under its old epochs must be refused (stale writes).
    max_worker_freezes: int = 3
    freeze_margin_s: tuple[float, float] = (0.5, 2.5)
    # Each control-plane crash takes a worker down with it (one host running both), back
    # after its own random pause.
    cp_crash_kills_worker: bool = True
    # Aim each kill and freeze at a worker that is running a turn, when one is (any live worker
    # otherwise). A small run then moves sessions mid-turn however the machine's load shifts
    # its timing; random aim can hit only idle workers, which come back before their sessions
    # move. The benchmark keeps random aim.
    aim_at_running_turns: bool = False
    time_cap_s: float = 180.0  # about 3.5x a normal run of the defaults on 2 cores
    ledger_read_cap_s: float = 60.0
    max_attempts: int = 6
    # Control-plane flags (name without dashes -> value); flags this build lacks are reported.
    cp_timings: dict[str, float] = field(default_factory=dict)
    worker_args: tuple[str, ...] = ()
    seed: int | None = None
    keep_logs_on_failure: bool = True


class _Chaos:
    """The control plane, the workers, and the chaos task that kills them."""

    def __init__(self, ps: Procs, cfg: ChaosConfig, rng: random.Random) -> None:
        self.ps = ps
        self.cfg = cfg
        self.rng = rng
        self.cp: ControlPlaneProc | None = None
        self.workers: dict[str, subprocess.Popen | None] = {}
        self.kills = 0
        self.freezes = 0
        self.frozen: set[str] = set()
        self.cp_restarts = 0
        self.cp_up = asyncio.Event()
        self._restarts: set[asyncio.Task[None]] = set()
        self.cp_args: list[str] = []
        # Ids of the workers running a turn now (aim_at_running_turns); set by run_chaos.
        self.running: Callable[[], Awaitable[set[str]]] | None = None

    def start(self) -> str:
        self.cp_args, missing = cp_timing_args(**self.cfg.cp_timings)
        self.missing_flags = missing
        self.cp = self.ps.start_control_plane(*self.cp_args)
        self.cp_up.set()
        for k in range(self.cfg.workers):
            self._start_worker(f"w{k}")
        return self.cp.target

    def _start_worker(self, name: str) -> None:
        assert self.cp is not None
        self.workers[name] = self.ps.worker(
            self.cp.target, name, self.cfg.slots, extra=self.cfg.worker_args, log_level="info"
        )

    def alive(self) -> list[str]:
        """Workers running and not frozen."""
        return [n for n, p in self.workers.items() if p is not None and p.poll() is None and n not in self.frozen]

    def freeze_s(self) -> float:
        """Long enough for the control plane to give the worker up: liveness timeout (default
        3 heartbeats) plus worker-dead grace, plus a margin."""
        t = self.cfg.cp_timings
        liveness = t.get("liveness_timeout_s", 3 * t.get("heartbeat_interval_s", 2.0))
        return liveness + t.get("worker_dead_grace_s", 1.0) + self.rng.uniform(*self.cfg.freeze_margin_s)

    async def _victim(self) -> str | None:
        """The worker to kill or freeze: never the last one alive; with aim_at_running_turns, one
        running a turn when the control plane names one."""
        alive = self.alive()
        if len(alive) < 2:
            return None
        if self.cfg.aim_at_running_turns and self.running is not None:
            try:
                busy = await self.running()
            except sdk.TetherError:  # the control plane is down or slow: aim at random
                busy = set()
            aimed = [n for n in alive if self._worker_id(n) in busy]
            alive = aimed or alive
        return self.rng.choice(alive)

    def _worker_id(self, name: str) -> str | None:
        try:
            return self.ps.worker_id(name, timeout_s=0)
        except RuntimeError:  # just started: no id written yet
            return None

    async def freeze_worker(self) -> bool:
        name = await self._victim()
        if name is None:
            return False
        p = self.workers[name]
        assert p is not None
        p.send_signal(signal.SIGSTOP)
        self.frozen.add(name)
        self.freezes += 1
        task = asyncio.create_task(self._thaw(name, p, self.freeze_s()))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
        return True

    async def _thaw(self, name: str, p: subprocess.Popen, after: float) -> None:
        try:
            await asyncio.sleep(after)
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
            self.frozen.discard(name)

    async def kill_worker(self, *, fixed_down_s: float | None = None) -> bool:
        name = await self._victim()
        if name is None:
            return False
        p = self.workers[name]
        assert p is not None
        await asyncio.to_thread(self.ps.kill, p)
        self.workers[name] = None
        self.kills += 1
        down = self.rng.uniform(*self.cfg.worker_down_s) if fixed_down_s is None else fixed_down_s
        task = asyncio.create_task(self._restart_worker(name, down))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
        return True

    async def _restart_worker(self, name: str, down: float) -> None:
        await asyncio.sleep(down)
        self._start_worker(name)

    async def restart_control_plane(self) -> None:
        assert self.cp is not None
        self.cp_up.clear()
        down = self.rng.uniform(*self.cfg.cp_down_s)
        if self.cfg.cp_crash_kills_worker:
            await self.kill_worker(fixed_down_s=down + self.rng.uniform(*self.cfg.worker_down_s))
        await asyncio.to_thread(self.cp.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.cp.start)
        self.cp_restarts += 1
        self.cp_up.set()

    async def run(self, progress, done: asyncio.Event) -> None:
        await asyncio.gather(self._kill_workers(progress, done), self._restart_control_plane(progress, done))

    async def _kill_workers(self, progress, done: asyncio.Event) -> None:
        """Kill (or now and then freeze) a worker at random intervals, until the last turns."""
        cfg = self.cfg
        while not done.is_set() and (self.kills < cfg.max_worker_kills or self.freezes < cfg.max_worker_freezes):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.rng.uniform(*cfg.kill_interval_s))
                return
            if progress() >= 0.97:
                continue
            if self.freezes < cfg.max_worker_freezes and (
                self.kills >= cfg.max_worker_kills or self.rng.random() < 0.25
            ):
                await self.freeze_worker()
            elif self.kills < cfg.max_worker_kills:
                await self.kill_worker()

    async def _restart_control_plane(self, progress, done: asyncio.Event) -> None:
        """Crash and restart the control plane at progress marks: 30 % and 60 % for two."""
        n = self.cfg.cp_restarts
        marks = [0.9 * (k + 1) / (n + 1) for k in range(n)]
        while not done.is_set() and self.cp_restarts < n:
            if progress() >= marks[self.cp_restarts]:
                await self.restart_control_plane()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.1)

    async def settle(self) -> None:
        """After the run: no restart or thaw left pending, every worker process up again."""
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        for name in list(self.frozen):  # a thaw cancelled before its `finally` ran
            p = self.workers.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
            self.frozen.discard(name)
        for name, p in self.workers.items():
            if p is None or p.poll() is not None:
                self._start_worker(name)


async def _follow_to_end(
    client: sdk.AsyncClient, run: SessionRun, turn_id: str, cursor: int, deadline: float, retries: Retries
) -> tuple[sdk.Event | None, int]:
    """Follow the session's log from `cursor` until `turn_id` ends; re-subscribe from the
    cursor after any transient failure. Returns the terminal event (None at the deadline)."""
    delay = 0.05
    while time.monotonic() < deadline:
        events = client.stream_events(
            run.session_id, after_seq=cursor, timeout_s=max(0.1, min(30.0, deadline - time.monotonic()))
        )
        try:
            async for e in events:
                if e.seq != cursor + 1:
                    run.stream_gaps += 1
                cursor = max(cursor, e.seq)
                if e.turn_id == turn_id and e.is_terminal:
                    return e, cursor
                delay = 0.05
        except Exception as exc:
            if not transient(exc):
                raise
            retries.note(exc)
        finally:
            await events.aclose()
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(1.0, delay * 2)
    return None, cursor


async def _turn(
    client: sdk.AsyncClient,
    run: SessionRun,
    j: int,
    command: Callable[[int], str],
    cfg: ChaosConfig,
    deadline: float,
    retries: Retries,
) -> bool:
    """Send turn j (attempt a runs `command(a)`) until an attempt completes, at most
    `max_attempts` times. False, with `run.error` set, when none did."""
    for a in range(cfg.max_attempts):
        at = Attempt(j, a, f"chaos-s{run.index}-t{j}-a{a}")
        run.attempts.append(at)
        text = command(a)
        turn = await retry(
            lambda text=text, at=at: client.send_input(run.session_id, text, idempotency_key=at.key),
            deadline=deadline,
            retries=retries,
        )
        at.turn_id = turn.turn_id
        end, run.cursor = await _follow_to_end(client, run, turn.turn_id, run.cursor, deadline, retries)
        if end is None:
            run.error = f"turn {j} attempt {a} ({turn.turn_id}) did not end before the time cap"
            return False
        at.outcome = end.kind.value
        if end.kind == sdk.EventKind.TURN_COMPLETED:
            return True
        if end.kind == sdk.EventKind.TURN_FAILED:
            at.worker_lost = end.worker_lost
            at.message = end.error_message
        else:
            at.message = end.reason
    run.error = f"turn {j} did not complete in {cfg.max_attempts} attempts"
    return False


async def _drive(
    client: sdk.AsyncClient,
    run: SessionRun,
    cfg: ChaosConfig,
    rng: random.Random,
    deadline: float,
    retries: Retries,
    on_done,
) -> None:
    try:
        for j in range(run.n_turns):
            if j:
                await asyncio.sleep(rng.uniform(*cfg.pause_s))
            sleep_s = rng.uniform(*cfg.sleep_s)
            if not await _turn(
                client, run, j, lambda a, j=j, sleep_s=sleep_s: run.command(j, a, sleep_s), cfg, deadline, retries
            ):
                return
            run.completed += 1
            on_done()
    except Exception as exc:  # a non-transient error, or the time cap in the middle of a retry
        run.error = f"{type(exc).__name__}: {exc}"


async def _read_ledger(
    client: sdk.AsyncClient, run: SessionRun, cfg: ChaosConfig, deadline: float, retries: Retries
) -> None:
    """After the chaos: one more turn that prints the session's ledger file."""
    try:
        await _turn(client, run, run.n_turns, lambda a: LEDGER_READ, cfg, deadline, retries)
    except Exception as exc:
        run.error = f"ledger read: {type(exc).__name__}: {exc}"


async def run_chaos(cfg: ChaosConfig, tmp: pathlib.Path | None = None) -> ChaosResult:
    rng = random.Random(cfg.seed)
    res = ChaosResult(sessions_total=cfg.sessions)
    retries = Retries()
    own_tmp = tmp is None
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tether-chaos-")) if tmp is None else tmp
    runs = [SessionRun(i, rng.randint(*cfg.turns)) for i in range(cfg.sessions)]
    res.turns_intended = sum(r.n_turns for r in runs)
    done_turns = 0

    def on_done() -> None:
        nonlocal done_turns
        done_turns += 1

    try:
        with procs(tmp) as ps:
            chaos = _Chaos(ps, cfg, rng)
            target = chaos.start()
            res.missing_cp_flags = chaos.missing_flags
            t0 = time.monotonic()
            deadline = t0 + cfg.time_cap_s
            async with sdk.AsyncClient(target, options=client_options()) as client:

                async def running() -> set[str]:
                    workers = await client.list_workers(timeout_s=1.0)
                    return {w.worker_id for w in workers if w.connected and w.running_turns}

                chaos.running = running
                for run in runs:
                    run.session_id = (
                        await retry(lambda: client.create_session("shell"), deadline=deadline, retries=retries)
                    ).session_id
                finished = asyncio.Event()
                chaos_task = asyncio.create_task(chaos.run(lambda: done_turns / max(1, res.turns_intended), finished))
                drivers = [
                    _drive(client, run, cfg, random.Random(rng.random()), deadline, retries, on_done) for run in runs
                ]
                await asyncio.gather(*drivers)
                res.duration_s = time.monotonic() - t0
                finished.set()
                await chaos_task
                await chaos.settle()
                await asyncio.wait_for(chaos.cp_up.wait(), 60)
                t1 = time.monotonic()
                await asyncio.gather(
                    *(
                        _read_ledger(client, run, cfg, t1 + cfg.ledger_read_cap_s, retries)
                        for run in runs
                        if not run.error
                    )
                )
                res.ledger_read_s = time.monotonic() - t1
                logs, turns = await _read_back(client, runs, retries, time.monotonic() + 120)
            res.worker_kills = chaos.kills
            res.worker_freezes = chaos.freezes
            res.cp_restarts = chaos.cp_restarts
            ps.stop_all()
            db_epochs, db_counts = _db_epochs(ps.tmp / "bench.db")
            stored = _db_ledgers(ps.tmp / "bench.db")
        api_has_epochs = any(e.lease_epoch for evs in logs.values() for e in evs)
        res.epoch_source = "api" if api_has_epochs else "sqlite events.lease_epoch (the API sends none)"
        for run in runs:
            events = logs.get(run.session_id, [])
            if api_has_epochs:
                epochs = [e.lease_epoch for e in events]
            else:
                epochs = [db_epochs.get((run.session_id, e.seq), 0) for e in events]
            tally = check_session(run, events, epochs, turns.get(run.session_id, {}))
            if db_counts.get(run.session_id, 0) != len(events):
                tally.problem(
                    f"{run.session_id}: {db_counts.get(run.session_id, 0)} events stored, {len(events)} served"
                )
            res.events_duplicated += tally.duplicated
            res.stale_writes_accepted += tally.stale
            if tally.problems:
                res.sessions_lost += 1
                res.problems.extend(tally.problems[:3])
            _tally_ledger(res, run, events, stored.get(run.session_id, []))
            res.stream_gaps += run.stream_gaps
            for a in run.attempts:
                res.turns_sent += 1
                if a.outcome == "turn_failed":
                    if a.worker_lost:
                        res.turns_lost_to_worker_death += 1
                    else:
                        res.turns_failed_other += 1
                        if len(res.failure_samples) < 5:
                            res.failure_samples.append(a.message)
                elif a.outcome == "turn_interrupted":
                    res.turns_interrupted += 1
                    if len(res.failure_samples) < 5:
                        res.failure_samples.append("interrupted: " + a.message)
        res.problems = res.problems[:20]
        res.retries = retries.counts
        return res
    finally:
        if not res.ok and cfg.keep_logs_on_failure:
            kept = pathlib.Path(tempfile.gettempdir()) / f"tether-chaos-logs-{int(time.time())}"
            shutil.copytree(tmp, kept, ignore=shutil.ignore_patterns("sessions"), dirs_exist_ok=True)
            res.logs_kept_at = str(kept)
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _tally_ledger(res: ChaosResult, run: SessionRun, events: list[sdk.Event], stored: list[StoredLedger]) -> None:
    """One session's restores and ledger check, added to the figures."""
    reads = {a.turn_id for a in run.attempts if a.j == run.n_turns}
    for e in events:
        if e.kind == sdk.EventKind.WORKSPACE_RESTORED:
            res.workspace_restored += 1
            res.workspace_restored_at_read += e.turn_id in reads
    res.sessions_with_a_turn += run.completed > 0
    ledger = check_ledger(run, events, stored)
    if ledger is None:
        return  # no ledger read completed: check_session failed the session
    res.checkpointed_lines_lost += ledger.lines_lost
    res.ledger_lines_bad += ledger.lines_bad
    res.problems.extend(ledger.problems[:3])
    res.sessions_checkpointed += run.completed > 0 and ledger.checkpoints > 0
    res.checkpoints += ledger.checkpoints
    res.lines_checkpointed += ledger.lines_checkpointed
    res.completed_turns_not_kept += ledger.completed_not_kept
    res.lost_attempts_kept += ledger.lost_attempts_kept


async def main(cfg: ChaosConfig | None = None) -> bool:
    res = await run_chaos(cfg or ChaosConfig())
    report(res)
    return res.ok


def _cli() -> None:
    d = ChaosConfig()
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=d.sessions)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--slots", type=int, default=d.slots)
    p.add_argument("--turns", type=int, nargs=2, default=d.turns)
    p.add_argument("--sleep-s", type=float, nargs=2, default=d.sleep_s)
    p.add_argument("--pause-s", type=float, nargs=2, default=d.pause_s)
    p.add_argument("--cp-restarts", type=int, default=d.cp_restarts)
    p.add_argument("--max-worker-kills", type=int, default=d.max_worker_kills)
    p.add_argument("--time-cap-s", type=float, default=d.time_cap_s)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--independent-cp-crash", action="store_true", help="do not take a worker down with each control-plane crash"
    )
    p.add_argument(
        "--cp",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="control-plane timing flag, e.g. lease_ttl_s=3 (repeatable)",
    )
    a = p.parse_args()
    cfg = dataclasses.replace(
        d,
        sessions=a.sessions,
        workers=a.workers,
        slots=a.slots,
        turns=tuple(a.turns),
        sleep_s=tuple(a.sleep_s),
        pause_s=tuple(a.pause_s),
        cp_restarts=a.cp_restarts,
        max_worker_kills=a.max_worker_kills,
        time_cap_s=a.time_cap_s,
        seed=a.seed,
        cp_crash_kills_worker=not a.independent_cp_crash,
        cp_timings={k: float(v) for k, v in (x.split("=", 1) for x in a.cp)},
    )
    sys.exit(0 if asyncio.run(main(cfg)) else 1)


if __name__ == "__main__":
    _cli()
