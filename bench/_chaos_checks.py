"""The chaos run's checks: what the driver sent (SessionRun, Attempt), the check of each
session's log against it, the check of its workspace's ledger file against its stored
checkpoints, reading the logs and the checkpoints back, and the figures (ChaosResult, report).

The run itself is bench/chaos.py, whose docstring lists the checks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import pathlib
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from tether import sdk
from tether.v1 import resources_pb2

from ._harness import (
    Retries,
    emit,
    retry,
)

TERMINAL = ("turn_completed", "turn_failed", "turn_interrupted")

#: The file every turn of a session appends its line to, in the session's workspace.
LEDGER = "ledger.txt"
#: The last turn of each session, after the chaos: prints the ledger (nothing when there is none).
LEDGER_READ = f"[ ! -e {LEDGER} ] || cat {LEDGER}"


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
    cursor: int = 0  # the last seq the driver saw

    def command(self, j: int, a: int, sleep_s: float) -> str:
        """Turn j, attempt a. Its ledger line goes in before the sleep: an attempt lost with its
        worker has often written it there, on that worker's disk only."""
        i = self.index
        return f"echo s{i}-t{j}-a; echo {self.ledger_line(j, a)} >> {LEDGER}; sleep {sleep_s:.2f}; echo s{i}-t{j}-b"

    def ledger_line(self, j: int, a: int) -> str:
        return f"s{self.index}-t{j}-attempt{a}"

    def expected(self, j: int) -> str | None:
        """Turn j's whole stdout; None for the ledger read after the intended turns."""
        return f"s{self.index}-t{j}-a\ns{self.index}-t{j}-b\n" if j < self.n_turns else None


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
    # The workspace ledger (check_ledger).
    checkpointed_lines_lost: int = 0
    ledger_lines_bad: int = 0
    sessions_with_a_turn: int = 0  # sessions that completed at least one intended turn
    sessions_checkpointed: int = 0  # ... and had a checkpoint stored before the ledger read
    checkpoints: int = 0  # stored before the ledger reads, all sessions
    lines_checkpointed: int = 0  # lines of each session's latest such checkpoint, summed
    completed_turns_not_kept: int = 0
    lost_attempts_kept: int = 0
    workspace_restored: int = 0  # workspace_restored events in the logs
    workspace_restored_at_read: int = 0  # ... of them with the ledger reads
    ledger_read_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.sessions_lost == 0
            and self.events_duplicated == 0
            and self.stale_writes_accepted == 0
            and self.checkpointed_lines_lost == 0
            and self.ledger_lines_bad == 0
        )


# ------------------------------------------------------------------------------- checking


@dataclass
class _Tally:
    duplicated: int = 0
    stale: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def check_session(
    run: SessionRun, events: list[sdk.Event], epochs: list[int], turns: dict[str, Any], *, ledger_read: bool = True
) -> _Tally:
    """Check one session's full log against what its driver sent. `epochs[k]` is the
    lease_epoch of `events[k]`; `turns` maps turn id to GetTurn's answer; `ledger_read`: the
    driver ended the session with one more turn that read its ledger (the chaos run does)."""
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
            expected = run.expected(attempt.j)  # None: the ledger read, whose stdout check_ledger checks
            if (expected is not None and out != expected) or err or end.exit_code != 0:
                t.problem(f"{sid}: turn {turn_id} completed with stdout {out!r} stderr {err!r} exit {end.exit_code}")
    logged = set(order)
    for a in run.attempts:
        if a.turn_id and a.turn_id not in logged:
            t.problem(f"{sid}: turn {a.turn_id} (key {a.key}) the driver stored is not in the log")
    for j in range(run.n_turns + (1 if ledger_read else 0)):  # the intended turns, then the ledger read
        if completed_for[j] > 1:
            t.duplicated += completed_for[j] - 1
            t.problem(f"{sid}: intended turn {j} completed {completed_for[j]} times")
        last = [a for a in run.attempts if a.j == j]
        if completed_for[j] != 1 or not last or last[-1].outcome != "turn_completed":
            t.problem(f"{sid}: intended turn {j} did not complete exactly once (attempts {[a.outcome for a in last]})")
    if run.error:
        t.problem(f"{sid}: driver: {run.error}")
    return t


@dataclass
class StoredLedger:
    """One stored checkpoint of a session and its ledger file's content ("" without one)."""

    seq: int
    text: str
    unreadable: str = ""  # why the checkpoint could not be read back ("" when it could)


@dataclass
class LedgerTally:
    checkpoints: int = 0  # stored before the ledger read
    lines_checkpointed: int = 0  # lines of the latest of them
    lines_lost: int = 0
    lines_bad: int = 0
    completed_not_kept: int = 0  # completed turns whose line the read did not print
    lost_attempts_kept: int = 0  # lines of attempts that did not complete, printed by the read
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def check_ledger(run: SessionRun, events: list[sdk.Event], stored: list[StoredLedger]) -> LedgerTally | None:
    """Check the session's ledger file: what the ledger read printed, against every checkpoint
    of the session stored (`stored`, in seq order). None when no read completed (check_session
    then fails the session).

    - Nothing checkpointed is lost: each stored checkpoint's ledger is a prefix of the next
      one's, the read (placed at its first event's seq) printed a ledger that starts with the
      latest one stored before it, and those stored after it start with what it printed. A
      line not kept in place is a checkpointed line lost.
    - Every ledger, printed or stored, is lines the driver wrote: whole lines, of attempts this
      session sent, each at most once and in the order sent. Anything else is a bad line.

    An attempt lost with its worker may have written its line or not, on a disk the session may
    or may not come back to; a completed turn's line is gone when its worker died before the
    checkpoint after it was stored. Both are counted, not failed: no checkpoint held them.
    """
    reads = {a.turn_id: a for a in run.attempts if a.j == run.n_turns and a.turn_id}
    done = [a for a in reads.values() if a.outcome == "turn_completed"]
    read_events = [e for e in events if e.turn_id in reads]
    if len(done) != 1 or not read_events:
        return None
    t = LedgerTally()
    sid = run.session_id
    printed = "".join(
        e.text
        for e in read_events
        if e.turn_id == done[0].turn_id and e.kind == sdk.EventKind.OUTPUT and e.stream == "stdout"
    )
    read_seq = read_events[0].seq
    sent = {run.ledger_line(a.j, a.a) + "\n": k for k, a in enumerate(run.attempts) if a.j < run.n_turns}
    for c in stored:
        if c.unreadable:
            t.lines_lost += 1
            t.problem(f"{sid}: the checkpoint at seq {c.seq} cannot be read back: {c.unreadable}")
    before = [c for c in stored if c.seq < read_seq]
    t.checkpoints = len(before)
    t.lines_checkpointed = len(before[-1].text.splitlines()) if before else 0
    states = [
        *((f"the checkpoint at seq {c.seq}", c.text) for c in before if not c.unreadable),
        ("the read's output", printed),
        *((f"the checkpoint at seq {c.seq}", c.text) for c in stored if c.seq >= read_seq and not c.unreadable),
    ]
    for name, text in states:
        lines = text.splitlines(keepends=True)
        last = -1
        for line in lines:
            k = sent.get(line, -1)
            if k <= last:
                t.lines_bad += 1
                t.problem(f"{sid}: {name} has {line!r}: not a whole line the driver wrote, or not in its order")
            last = max(last, k)
    for (name, text), (next_name, next_text) in zip(states, states[1:], strict=False):
        lines, next_lines = text.splitlines(keepends=True), next_text.splitlines(keepends=True)
        kept = 0
        while kept < min(len(lines), len(next_lines)) and lines[kept] == next_lines[kept]:
            kept += 1
        if kept < len(lines):
            t.lines_lost += len(lines) - kept
            t.problem(
                f"{sid}: {len(lines) - kept} of the {len(lines)} lines of {name} are not in {next_name} (first {lines[kept]!r})"
            )
    printed_lines = set(printed.splitlines(keepends=True))
    for a in run.attempts:
        if a.j < run.n_turns:
            kept_line = run.ledger_line(a.j, a.a) + "\n" in printed_lines
            if a.outcome == "turn_completed" and not kept_line:
                t.completed_not_kept += 1
            elif a.outcome != "turn_completed" and kept_line:
                t.lost_attempts_kept += 1
    return t


class _Unreadable(Exception):
    pass


def _db_ledgers(db: pathlib.Path) -> dict[str, list[StoredLedger]]:
    """Every session's stored checkpoints in seq order, each with its ledger file read from the
    SQLite file as a restore reads it: the manifest chunks, the file's entry, its blob's pieces
    (each blob checked against its size and digest)."""
    stored: dict[str, list[StoredLedger]] = collections.defaultdict(list)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        owners = dict(conn.execute("SELECT session_id, owner_id FROM sessions").fetchall())
        cache: dict[tuple[str, str], bytes] = {}

        def blob(owner: str, digest: str) -> bytes:
            if (owner, digest) not in cache:
                held = conn.execute(
                    "SELECT size FROM blobs WHERE owner_id = ? AND digest = ?", (owner, digest)
                ).fetchone()
                if held is None:
                    raise _Unreadable(f"blob {digest} is not stored")
                pieces = conn.execute(
                    "SELECT data FROM blob_chunks WHERE owner_id = ? AND digest = ? ORDER BY idx", (owner, digest)
                ).fetchall()
                data = b"".join(piece for (piece,) in pieces)
                if len(data) != held[0] or hashlib.sha256(data).hexdigest() != digest:
                    raise _Unreadable(f"the pieces of blob {digest} are not its content ({len(data)} bytes)")
                cache[owner, digest] = data
            return cache[owner, digest]

        def ledger(owner: str, chunk_digests: str) -> str:
            for digest in filter(None, chunk_digests.split(",")):
                try:
                    chunk = resources_pb2.WorkspaceManifestChunk.FromString(blob(owner, digest))
                except _Unreadable:
                    raise
                except Exception as exc:
                    raise _Unreadable(f"manifest chunk {digest} does not parse: {exc}") from None
                for entry in chunk.entries:
                    if entry.path == LEDGER:
                        if entry.kind != resources_pb2.WORKSPACE_ENTRY_KIND_FILE:
                            raise _Unreadable(f"{LEDGER} is not a file (kind {entry.kind})")
                        data = blob(owner, entry.digest)
                        if len(data) != entry.size:
                            raise _Unreadable(f"{LEDGER} is {entry.size} bytes in the manifest, {len(data)} stored")
                        return data.decode("utf-8", errors="replace")
            return ""

        rows = conn.execute(
            "SELECT session_id, seq, chunk_digests FROM workspace_checkpoints ORDER BY session_id, seq"
        ).fetchall()
        for session_id, seq, chunk_digests in rows:
            try:
                stored[session_id].append(StoredLedger(seq, ledger(owners.get(session_id, ""), chunk_digests)))
            except _Unreadable as exc:
                stored[session_id].append(StoredLedger(seq, "", unreadable=str(exc)))
    return stored


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
    emit(
        "chaos_checkpointed_lines_lost",
        res.checkpointed_lines_lost,
        "lines",
        must_be=0,
        lines_checkpointed=res.lines_checkpointed,
        completed_turns_not_kept=res.completed_turns_not_kept,
        lost_attempts_kept=res.lost_attempts_kept,
    )
    emit("chaos_ledger_lines_bad", res.ledger_lines_bad, "lines", must_be=0)
    emit(
        "chaos_sessions_checkpointed",
        res.sessions_checkpointed,
        "sessions",
        of_sessions_with_a_turn=res.sessions_with_a_turn,
        checkpoints=res.checkpoints,
    )
    emit(
        "chaos_workspace_restored",
        res.workspace_restored,
        "events",
        at_ledger_read=res.workspace_restored_at_read,
        ledger_read_s=round(res.ledger_read_s, 2),
    )
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
