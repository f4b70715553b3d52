"""The chaos run's checks: what the driver sent (SessionRun, Attempt), the check of each
session's log against it, reading the logs back, and the figures (ChaosResult, report).

The run itself is bench/chaos.py, whose docstring lists the checks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pathlib
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from tether import sdk

from ._harness import (
    Retries,
    emit,
    retry,
)

TERMINAL = ("turn_completed", "turn_failed", "turn_interrupted")


@dataclass
class Attempt:
    j: int
    a: int
    key: str
    turn_id: str = ""
    outcome: str = ""  # turn_completed / turn_failed / turn_interrupted / "" (never ended)
    worker_lost: bool = False
    message: str = ""


@dataclass
class SessionRun:
    index: int
    n_turns: int
    session_id: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    completed: int = 0
    error: str = ""
    stream_gaps: int = 0

    def command(self, j: int, sleep_s: float) -> str:
        return f"echo s{self.index}-t{j}-a; sleep {sleep_s:.2f}; echo s{self.index}-t{j}-b"

    def expected(self, j: int) -> str:
        return f"s{self.index}-t{j}-a\ns{self.index}-t{j}-b\n"


@dataclass
class ChaosResult:
    sessions_total: int = 0
    sessions_lost: int = 0
    events_duplicated: int = 0
    stale_writes_accepted: int = 0
    worker_kills: int = 0
    worker_freezes: int = 0
    cp_restarts: int = 0
    duration_s: float = 0.0
    turns_intended: int = 0
    turns_sent: int = 0
    turns_lost_to_worker_death: int = 0
    turns_failed_other: int = 0
    turns_interrupted: int = 0
    failure_samples: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # first few, for the report
    retries: dict[str, int] = field(default_factory=dict)
    stream_gaps: int = 0
    missing_cp_flags: list[str] = field(default_factory=list)
    epoch_source: str = ""
    logs_kept_at: str = ""

    @property
    def ok(self) -> bool:
        return self.sessions_lost == 0 and self.events_duplicated == 0 and self.stale_writes_accepted == 0


# ------------------------------------------------------------------------------- checking


@dataclass
class _Tally:
    duplicated: int = 0
    stale: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def check_session(run: SessionRun, events: list[sdk.Event], epochs: list[int], turns: dict[str, Any]) -> _Tally:
    """Check one session's full log against what its driver sent. `epochs[k]` is the
    lease_epoch of `events[k]`; `turns` maps turn id to GetTurn's answer."""
    t = _Tally()
    sid = run.session_id
    seqs = [e.seq for e in events]
    if seqs != list(range(1, len(seqs) + 1)):
        dup = len(seqs) - len(set(seqs))
        t.duplicated += dup
        t.problem(f"{sid}: seq not 1..{len(seqs)} (duplicates {dup}, first seqs {seqs[:5]})")
    # Stale writes: worker epochs (0 = written by the control plane) never go down.
    top = 0
    for e, ep in zip(events, epochs, strict=True):
        if ep and ep < top:
            t.stale += 1
            t.problem(f"{sid}: seq {e.seq} has lease_epoch {ep} after epoch {top}")
        top = max(top, ep)
    by_key = {a.key: a for a in run.attempts}
    by_turn: dict[str, list[tuple[sdk.Event, int]]] = collections.defaultdict(list)
    order: list[str] = []
    for e, ep in zip(events, epochs, strict=True):
        if e.turn_id not in by_turn:
            order.append(e.turn_id)
        by_turn[e.turn_id].append((e, ep))
    completed_for: collections.Counter[int] = collections.Counter()
    for turn_id in order:
        evs = by_turn[turn_id]
        info = turns.get(turn_id)
        attempt = by_key.get(info.idempotency_key) if info is not None else None
        if attempt is None or attempt.turn_id != turn_id:
            t.duplicated += 1
            t.problem(
                f"{sid}: turn {turn_id} (key {getattr(info, 'idempotency_key', '?')!r}) was not sent by the driver as such"
            )
            continue
        kinds = [e.kind.value for e, _ in evs]
        if kinds[0] != "input_received" or kinds.count("input_received") != 1:
            t.duplicated += max(0, kinds.count("input_received") - 1)
            t.problem(f"{sid}: turn {turn_id} events {kinds}: not one input_received first")
        if kinds.count("turn_started") > 1:
            t.duplicated += kinds.count("turn_started") - 1
            t.problem(f"{sid}: turn {turn_id} started {kinds.count('turn_started')} times")
        ends = [k for k in kinds if k in TERMINAL]
        if len(ends) != 1:
            t.duplicated += max(0, len(ends) - 1)
            t.problem(f"{sid}: turn {turn_id} has {len(ends)} terminal events ({kinds})")
        elif kinds[-1] not in TERMINAL:
            t.problem(f"{sid}: turn {turn_id} has events after its terminal event ({kinds})")
        seen_output: set[tuple[str, str]] = set()  # a resend prints the same lines again, in its own turn
        for e, _ in evs:
            if e.kind == sdk.EventKind.OUTPUT:
                for line in e.text.splitlines(keepends=True):
                    if (line, e.stream) in seen_output:
                        t.duplicated += 1
                        t.problem(f"{sid}: output {line!r} stored twice (seq {e.seq})")
                    seen_output.add((line, e.stream))
        worker_epochs = {ep for _, ep in evs if ep}
        if len(worker_epochs) > 1 or (worker_epochs and info.lease_epoch not in worker_epochs):
            t.stale += 1
            t.problem(
                f"{sid}: turn {turn_id} has worker events under epochs {sorted(worker_epochs)}, turn epoch {info.lease_epoch}"
            )
        end = evs[-1][0]
        if not info.is_terminal:
            t.problem(f"{sid}: turn {turn_id} is still {info.state.name} at the end")
        elif (
            end.kind.value in TERMINAL
            and end.kind.value != {4: "turn_completed", 5: "turn_failed", 6: "turn_interrupted"}[int(info.state)]
        ):
            t.problem(f"{sid}: turn {turn_id} ended {end.kind.value} in the log but is {info.state.name}")
        if end.kind == sdk.EventKind.TURN_COMPLETED:
            completed_for[attempt.j] += 1
            out = "".join(e.text for e, _ in evs if e.kind == sdk.EventKind.OUTPUT and e.stream == "stdout")
            err = "".join(e.text for e, _ in evs if e.kind == sdk.EventKind.OUTPUT and e.stream != "stdout")
            if out != run.expected(attempt.j) or err or end.exit_code != 0:
                t.problem(f"{sid}: turn {turn_id} completed with stdout {out!r} stderr {err!r} exit {end.exit_code}")
    logged = set(order)
    for a in run.attempts:
        if a.turn_id and a.turn_id not in logged:
            t.problem(f"{sid}: turn {a.turn_id} (key {a.key}) the driver stored is not in the log")
    for j in range(run.n_turns):
        if completed_for[j] > 1:
            t.duplicated += completed_for[j] - 1
            t.problem(f"{sid}: intended turn {j} completed {completed_for[j]} times")
        last = [a for a in run.attempts if a.j == j]
        if completed_for[j] != 1 or not last or last[-1].outcome != "turn_completed":
            t.problem(f"{sid}: intended turn {j} did not complete exactly once (attempts {[a.outcome for a in last]})")
    if run.error:
        t.problem(f"{sid}: driver: {run.error}")
    return t


async def _read_back(client: sdk.AsyncClient, runs: list[SessionRun], retries: Retries, deadline: float):
    """Every session's full log and every logged turn, over the API."""
    sem = asyncio.Semaphore(16)
    logs: dict[str, list[sdk.Event]] = {}
    turns: dict[str, dict[str, Any]] = {}

    async def one(run: SessionRun) -> None:
        async with sem:

            async def read() -> list[sdk.Event]:
                return [e async for e in client.stream_events(run.session_id, stop_at_end=True, timeout_s=60)]

            events = await retry(read, deadline=deadline, retries=retries)
            logs[run.session_id] = events
            got = {}
            for turn_id in dict.fromkeys(e.turn_id for e in events):
                got[turn_id] = await retry(
                    lambda turn_id=turn_id: client.get_turn(run.session_id, turn_id), deadline=deadline, retries=retries
                )
            turns[run.session_id] = got

    await asyncio.gather(*(one(r) for r in runs if r.session_id))
    return logs, turns


def _db_epochs(db: pathlib.Path) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT session_id, seq, lease_epoch FROM events").fetchall()
    epochs = {(s, q): ep for s, q, ep in rows}
    counts: dict[str, int] = collections.Counter(s for s, _, _ in rows)
    return epochs, counts


# ------------------------------------------------------------------------------- the run


def report(res: ChaosResult) -> None:
    emit(
        "chaos_sessions_total",
        res.sessions_total,
        "sessions",
        turns_intended=res.turns_intended,
        turns_sent=res.turns_sent,
    )
    emit(
        "chaos_sessions_lost",
        res.sessions_lost,
        "sessions",
        must_be=0,
        problems=res.problems[:10],
        logs=res.logs_kept_at,
    )
    emit("chaos_events_duplicated", res.events_duplicated, "events", must_be=0)
    emit("chaos_stale_writes_accepted", res.stale_writes_accepted, "events", must_be=0, epoch_source=res.epoch_source)
    emit("chaos_worker_kills", res.worker_kills, "kills")
    emit("chaos_worker_freezes", res.worker_freezes, "freezes")
    emit("chaos_cp_restarts", res.cp_restarts, "restarts")
    emit("chaos_duration_s", res.duration_s, "s")
    emit("chaos_turns_lost_to_worker_death", res.turns_lost_to_worker_death, "turns")
    emit(
        "chaos_turns_failed_other",
        res.turns_failed_other + res.turns_interrupted,
        "turns",
        interrupted=res.turns_interrupted,
        samples=res.failure_samples,
        retried_calls=res.retries,
        stream_gaps=res.stream_gaps,
        missing_cp_flags=res.missing_cp_flags,
    )
