"""In-memory fakes of the control plane's domain ports, for unit tests of the rules.

`MemoryStore` is both storage ports at once, over dicts: the `SessionReader` the hub loads and
pages from, and the `GroupCommitWriter` it submits `Changes` to. Like the real writer, it
copies the records at submission (a record changed afterwards does not change what that unit
stores), commits units in submission order on a later turn of the event loop, runs their
on_commit callbacks after the commit, and can be told to fail the next commits
(`fail_next`), calling `on_failure` first. Like the real reader, it hands out copies, stores
an offered turn as queued, and reports open turns and their requests for reloading.

`FakeCodec` encodes the bodies the control plane writes itself as readable bytes.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.control_plane.domain.model import (
    TERMINAL_KINDS,
    Checkpoint,
    Event,
    Lease,
    PendingRequest,
    RequestState,
    Session,
    Snapshot,
    Turn,
    TurnState,
    WorkerInfo,
)
from tether.control_plane.domain.ports import Changes, ListedSession, LoadedSession, SessionQuery, WriteFailed

SNAPSHOTS_KEPT = 3


@dataclass
class _Unit:
    changes: Changes
    done: asyncio.Future[None]


@dataclass
class MemoryStore:
    """What is durable, and the two storage ports over it."""

    sessions: dict[str, Session] = field(default_factory=dict)
    turns: dict[str, Turn] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=dict)  # by session, in seq order
    leases: dict[str, Lease] = field(default_factory=dict)
    snapshots: dict[str, list[Snapshot]] = field(default_factory=dict)  # by session, oldest first
    checkpoints: dict[tuple[str, int], Checkpoint] = field(default_factory=dict)  # by (session, seq)
    requests: dict[str, PendingRequest] = field(default_factory=dict)
    workers: dict[str, WorkerInfo] = field(default_factory=dict)
    on_failure: Callable[[], None] | None = None
    fail_next: int = 0  # how many of the next commits fail
    commits: int = 0
    # While paused, submitted commits wait, in order, for `resume()` (a commit in flight).
    paused: bool = False
    _held: list[_Unit] = field(default_factory=list)

    # ----------------------------------------------------------------- GroupCommitWriter

    def submit(self, changes: Changes) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        unit = _Unit(_frozen(changes), done)
        if self.paused:
            self._held.append(unit)
        else:
            asyncio.get_running_loop().call_soon(self._commit, unit)
        return done

    def resume(self) -> None:
        """Carry out the commits held while paused, in order, and stop pausing."""
        self.paused = False
        held, self._held = self._held, []
        for unit in held:
            asyncio.get_running_loop().call_soon(self._commit, unit)

    def lose_held(self) -> None:
        """The process died with the held commits in flight: they never happen."""
        self.paused = False
        self._held = []

    def _commit(self, unit: _Unit) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            if self.on_failure is not None:
                self.on_failure()
            if not unit.done.done():
                unit.done.set_exception(WriteFailed("injected failure"))
            return
        self.commits += 1
        self._apply(unit.changes)
        for callback in unit.changes.on_commit:
            callback()
        if not unit.done.done():
            unit.done.set_result(None)

    def _apply(self, c: Changes) -> None:
        for s in c.session_inserts:
            self.sessions[s.session_id] = s
        for t in c.turn_inserts:
            self.turns[t.turn_id] = _durable_turn(t)
        for e in c.event_inserts:
            log = self.events.setdefault(e.session_id, [])
            assert not log or log[-1].seq < e.seq, f"seq {e.seq} stored out of order"
            log.append(e)
        for snap in c.snapshot_inserts:
            self.snapshots.setdefault(snap.session_id, []).append(snap)
        for session_id in c.snapshot_prunes:
            kept = sorted(self.snapshots.get(session_id, []), key=lambda s: (s.seq, s.create_time_us))
            self.snapshots[session_id] = kept[-SNAPSHOTS_KEPT:]
        for checkpoint in c.checkpoint_inserts:
            self.checkpoints[(checkpoint.session_id, checkpoint.seq)] = checkpoint
        for w in c.worker_upserts:
            self.workers[w.worker_id] = w
        for lease in c.lease_upserts:
            self.leases[lease.session_id] = lease
        for s in c.session_updates:
            stored = self.sessions[s.session_id]
            # The session's mutable fields, as the real store's update row has them.
            stored.archived, stored.runtime_thread_id, stored.update_time_us = (
                s.archived,
                s.runtime_thread_id,
                s.update_time_us,
            )
            stored.title, stored.labels, stored.delete_time_us = s.title, dict(s.labels), s.delete_time_us
            stored.compacted_seq = s.compacted_seq
        for t in c.turn_updates:
            self.turns[t.turn_id] = _durable_turn(t)
        for r in c.request_inserts:
            self.requests[r.request_id] = r
        for r in c.request_updates:
            self.requests[r.request_id] = r
        for session_id, upto in c.event_compactions:
            self.events[session_id] = [e for e in self.events.get(session_id, []) if e.seq > upto]
        for session_id in c.session_deletes:
            self.sessions.pop(session_id, None)
            self.events.pop(session_id, None)
            self.leases.pop(session_id, None)
            self.snapshots.pop(session_id, None)
            self.checkpoints = {k: c for k, c in self.checkpoints.items() if k[0] != session_id}
            self.turns = {k: t for k, t in self.turns.items() if t.session_id != session_id}
            self.requests = {k: r for k, r in self.requests.items() if r.session_id != session_id}

    # ----------------------------------------------------------------- SessionReader

    async def load_session(self, session_id: str) -> LoadedSession | None:
        session = self.sessions.get(session_id)
        if session is None:
            return None
        log = self.events.get(session_id, [])
        turns = [t for t in self.turns.values() if t.session_id == session_id]
        open_turns = sorted((t for t in turns if not t.state.ended), key=lambda t: t.ordinal)
        lease = self.leases.get(session_id)
        last_worker_seq = max((e.worker_seq for e in log if lease and e.lease_epoch == lease.epoch), default=0)
        open_ids = {t.turn_id for t in open_turns}
        requests = sorted(
            (r for r in self.requests.values() if r.session_id == session_id and r.turn_id in open_ids),
            key=lambda r: r.create_time_us,
        )
        loaded_session = copy.copy(session)
        loaded_session.turn_count = max((t.ordinal for t in turns), default=0)
        return LoadedSession(
            loaded_session,
            log[-1].seq if log else 0,
            copy.copy(lease),
            [copy.copy(t) for t in open_turns],
            last_worker_seq,
            [copy.copy(r) for r in requests],
            log[-1].create_time_us if log else 0,
        )

    async def list_sessions(self, query: SessionQuery) -> list[ListedSession]:
        rows = []
        for s in self.sessions.values():
            if s.owner != query.owner:
                continue
            has_open = any(t.session_id == s.session_id and not t.state.ended for t in self.turns.values())
            log = self.events.get(s.session_id, [])
            activity = max(s.create_time_us, log[-1].create_time_us if log else 0)
            if query.archived is not None and s.archived != query.archived:
                continue
            if query.active is not None and has_open != query.active:
                continue
            if query.runtime and s.runtime != query.runtime:
                continue
            if any(s.labels.get(k) != v for k, v in query.labels):
                continue
            rows.append(ListedSession(copy.copy(s), has_open, activity))

        def key(row: ListedSession) -> tuple[int, str]:
            return (row.last_activity_us if query.by_activity else 0, row.session.session_id)

        rows.sort(key=key, reverse=query.descending)
        if query.after_id:
            after = (query.after_activity_us if query.by_activity else 0, query.after_id)
            rows = [r for r in rows if (key(r) < after if query.descending else key(r) > after)]
        return rows[: query.limit]

    async def list_turns(self, session_id: str, limit: int, after_ordinal: int, descending: bool) -> list[Turn]:
        found = sorted(
            (t for t in self.turns.values() if t.session_id == session_id), key=lambda t: t.ordinal, reverse=descending
        )
        if after_ordinal:
            found = [t for t in found if (t.ordinal < after_ordinal if descending else t.ordinal > after_ordinal)]
        return [copy.copy(t) for t in found[:limit]]

    async def get_turn(self, session_id: str, turn_id: str) -> Turn | None:
        turn = self.turns.get(turn_id)
        return copy.copy(turn) if turn is not None and turn.session_id == session_id else None

    async def find_turn_by_key(self, session_id: str, key: str) -> Turn | None:
        for turn in self.turns.values():
            if turn.session_id == session_id and turn.idempotency_key == key:
                return copy.copy(turn)
        return None

    async def events_after(self, session_id: str, after_seq: int, limit: int) -> list[Event]:
        return [e for e in self.events.get(session_id, []) if e.seq > after_seq][:limit]

    async def inputs_open_at(self, session_id: str, upto: int) -> list[Event]:
        found: list[Event] = []
        last_ended = None
        for e in reversed([e for e in self.events.get(session_id, []) if e.seq <= upto]):
            if e.kind in TERMINAL_KINDS:
                last_ended = last_ended or e.turn_id
            elif e.kind == "input_received":
                if e.turn_id == last_ended:
                    break
                found.append(e)
        return found[::-1]

    async def latest_snapshot(self, session_id: str) -> Snapshot | None:
        snaps = sorted(self.snapshots.get(session_id, []), key=lambda s: (s.seq, s.create_time_us))
        return snaps[-1] if snaps else None

    async def get_snapshot(self, session_id: str, snapshot_id: str) -> Snapshot | None:
        return next((s for s in self.snapshots.get(session_id, []) if s.snapshot_id == snapshot_id), None)

    async def list_snapshots(self, session_id: str) -> list[Snapshot]:
        return sorted(self.snapshots.get(session_id, []), key=lambda s: (s.seq, s.create_time_us))

    async def sessions_due_for_deletion(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        due = sorted(
            (s.delete_time_us, s.session_id, s.owner) for s in self.sessions.values() if 0 < s.delete_time_us <= now_us
        )
        return [(sid, owner) for _, sid, owner in due[:limit]]

    async def idle_sessions(
        self, cutoff_us: int, *, owner: str | None, exclude_owners: tuple[str, ...], include_archived: bool, limit: int
    ) -> list[tuple[str, str]]:
        found = []
        for s in self.sessions.values():
            log = self.events.get(s.session_id, [])
            activity = max(s.create_time_us, log[-1].create_time_us if log else 0)
            open_turn = any(t.session_id == s.session_id and not t.state.ended for t in self.turns.values())
            if open_turn or activity >= cutoff_us or (s.archived and not include_archived):
                continue
            if (owner is not None and s.owner != owner) or (owner is None and s.owner in exclude_owners):
                continue
            found.append((activity, s.session_id, s.owner))
        return [(sid, who) for _, sid, who in sorted(found)[:limit]]

    async def compaction_candidates(
        self, cutoff_us: int, *, owner: str | None, exclude_owners: tuple[str, ...], limit: int
    ) -> list[tuple[str, str]]:
        found = []
        for s in sorted(self.sessions.values(), key=lambda s: s.session_id):
            if (owner is not None and s.owner != owner) or (owner is None and s.owner in exclude_owners):
                continue
            log = self.events.get(s.session_id, [])
            covered = any(p.seq > s.compacted_seq for p in self.snapshots.get(s.session_id, []))
            if covered and log and log[0].seq == s.compacted_seq + 1 and log[0].create_time_us < cutoff_us:
                found.append((s.session_id, s.owner))
        return found[:limit]

    async def compaction_facts(self, session_id: str, cutoff_us: int) -> tuple[int, int, int]:
        watermark = max((p.seq for p in self.snapshots.get(session_id, [])), default=0)
        open_at = [
            t
            for t in self.turns.values()
            if t.session_id == session_id and (not t.state.ended or t.last_seq > watermark or t.last_seq == 0)
        ]
        first = min((t.first_seq for t in open_at), default=0)
        if open_at and first == 0:
            first = 1
        log = self.events.get(session_id, [])
        aged = max((e.seq for e in log if e.seq <= watermark and e.create_time_us < cutoff_us), default=0)
        return watermark, first, aged

    async def session_ids_of(self, owner: str, limit: int) -> list[str]:
        return sorted(s.session_id for s in self.sessions.values() if s.owner == owner)[:limit]

    async def ids_taken(self, session_id: str, turn_ids: list[str]) -> list[str]:
        return [session_id] * (session_id in self.sessions) + [t for t in turn_ids if t in self.turns]

    async def turns_upto(self, session_id: str, ordinal: int) -> list[Turn]:
        found = [t for t in self.turns.values() if t.session_id == session_id and t.ordinal <= ordinal]
        return [copy.copy(t) for t in sorted(found, key=lambda t: t.ordinal)]

    async def turns_after(self, session_id: str, ordinal: int) -> list[Turn]:
        found = [t for t in self.turns.values() if t.session_id == session_id and t.ordinal > ordinal]
        return [copy.copy(t) for t in sorted(found, key=lambda t: t.ordinal)]

    async def last_completed_turn(self, session_id: str) -> Turn | None:
        done = [t for t in self.turns.values() if t.session_id == session_id and t.state == TurnState.COMPLETED]
        return copy.copy(max(done, key=lambda t: t.ordinal)) if done else None

    async def get_request(self, session_id: str, request_id: str) -> PendingRequest | None:
        request = self.requests.get(request_id)
        return copy.copy(request) if request is not None and request.session_id == session_id else None

    async def list_requests(self, session_id: str, state: RequestState | None) -> list[PendingRequest]:
        found = [
            copy.copy(r)
            for r in self.requests.values()
            if r.session_id == session_id and (state is None or r.state == state)
        ]
        return sorted(found, key=lambda r: (r.create_time_us, r.request_id))

    async def sessions_with_open_turns(self) -> list[str]:
        return sorted({t.session_id for t in self.turns.values() if not t.state.ended})

    async def current_checkpoint(self, session_id: str) -> Checkpoint | None:
        kept = [
            c
            for c in await self.list_checkpoints(session_id)
            if c.turn_id not in self.turns or not self.turns[c.turn_id].reverted
        ]
        return kept[-1] if kept else None

    async def list_checkpoints(self, session_id: str) -> list[Checkpoint]:
        return sorted((c for (sid, _), c in self.checkpoints.items() if sid == session_id), key=lambda c: c.seq)

    async def checkpoint_chunks_of(self, owner: str) -> set[str]:
        return {
            d
            for (sid, _), c in self.checkpoints.items()
            if sid in self.sessions and self.sessions[sid].owner == owner
            for d in c.chunk_digests
        }

    async def turn_ended_upto(self, session_id: str, seq: int) -> str:
        ended = [
            t for t in self.turns.values() if t.session_id == session_id and t.state.ended and 0 < t.last_seq <= seq
        ]
        return max(ended, key=lambda t: t.last_seq).turn_id if ended else ""

    # ----------------------------------------------------------------- for assertions

    def kinds(self, session_id: str) -> list[str]:
        """The kinds of the session's stored events, in log order."""
        return [e.kind for e in self.events.get(session_id, [])]


def _frozen(changes: Changes) -> Changes:
    """`changes` with every record copied as it is now; callbacks stay as they are."""
    copied = Changes(on_commit=list(changes.on_commit))
    for name in Changes.__dataclass_fields__:
        if name != "on_commit":
            setattr(copied, name, [copy.copy(item) for item in getattr(changes, name)])
    return copied


def _durable_turn(turn: Turn) -> Turn:
    # An offer dies with the process, so an offered turn is stored as queued.
    return dataclasses.replace(turn, state=TurnState.QUEUED) if turn.state == TurnState.OFFERED else turn


class FakeCodec:
    """The `BodyCodec` port: readable bytes instead of the contract's EventBody."""

    def input_received(self, text: str) -> bytes:
        return f"input_received:{text}".encode()

    def turn_failed(self, message: str, worker_lost: bool = False) -> bytes:
        return f"turn_failed:{message}:{worker_lost}".encode()

    def turn_interrupted(self, reason: str) -> bytes:
        return f"turn_interrupted:{reason}".encode()

    def turn_waiting(self, reason: str) -> bytes:
        return f"turn_waiting:{reason}".encode()

    def request_resolved(self, request: PendingRequest) -> bytes:
        return f"request_resolved:{request.request_id}:{request.state.name}".encode()

    def session_reverted(self, turn_id: str, reverted_turn_ids: list[str]) -> bytes:
        return f"session_reverted:{turn_id}:{','.join(reverted_turn_ids)}".encode()

    def rebind_history(self, history: bytes, turn_ids: dict[str, str]) -> bytes:
        """Readable history bytes: each turn id named in them replaced."""
        for old, new in turn_ids.items():
            history = history.replace(old.encode(), new.encode())
        return history

    def history_of_turns(self, history: bytes, turn_ids: dict[str, str]) -> tuple[bytes, int]:
        """Readable history: one line per item, "turn_id:text"; items of other turns dropped."""
        kept = []
        for line in history.decode().splitlines():
            turn_id, _, text = line.partition(":")
            if not turn_id or turn_id in turn_ids:
                kept.append(f"{turn_ids.get(turn_id, turn_id)}:{text}")
        return "\n".join(kept).encode(), len(kept)

    def agent_message_text(self, body: bytes) -> str | None:
        """Bodies made by `agent_message` (and nothing else) are agent messages."""
        prefix = b"agent_message:"
        return body[len(prefix) :].decode() if body.startswith(prefix) else None

    def rebind(
        self,
        kind: str,
        body: bytes,
        session_id: str,
        turn_id: str,
        request_ids: dict[str, str],
        turn_ids: dict[str, str] | None = None,
    ) -> bytes:
        """Names the copy's turn in place of the source's, so tests can see the rewrite."""
        if kind == "request_opened" or kind == "request_resolved":
            for old, new in request_ids.items():
                body = body.replace(old.encode(), new.encode())
        if kind == "session_reverted":
            for old, new in (turn_ids or {}).items():
                body = body.replace(old.encode(), new.encode())
        return body
