"""Session snapshots: when the worker uploads one, and the upload itself.

A session's runtime is checkpointed after every `snapshot_every_turns` finished turns (once the
turn's events are acknowledged, unless the next turn already started). That upload is skipped
when it would carry nothing the log lacks: the runtime rebuilds from the log (portability
history), its files are as the latest checkpoint has them, and fewer than `snapshot_log_turns`
turns have finished since the latest stored snapshot. A snapshot is also taken on a SnapshotRequested,
right after a restore-only placement (the control plane takes the first snapshot at the new
epoch as the confirmation that the restore worked), and before the session leaves the worker's
memory: at the end of a drain, and when it is cooled (`_session`). Each upload captures the
history synchronously and sends it in a task of its own, so it never holds up the next turn.

When the control plane takes deltas (RegisterResponse.snapshot_deltas) and the history still
begins with what the session's latest stored snapshot sent (at least DELTA_MIN_BASE_ITEMS
items), an upload sends only the items that follow, naming that snapshot as its base: a long
session does not resend its whole history after every turn. A base the control plane no longer
has (SNAPSHOT_BASE_UNKNOWN) costs one retry with the whole history.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from tether.execution_worker._checkpoints import (
    INVALID_WORKSPACE,
    WORKSPACE_LIMIT_EXCEEDED,
    Checkpoints,
    SessionWorkspace,
    WorkspaceError,
    WorkspaceLimit,
)
from tether.execution_worker._context import Link, TaskGroup
from tether.execution_worker._convert import history_to_proto
from tether.execution_worker._errors import describe, error_reason, is_lease_lost
from tether.execution_worker._session import Session, SessionTable, SnapshotBase
from tether.execution_worker._settings import WorkerSettings
from tether.execution_worker._workspace import Checkpoint
from tether.execution_worker.runtime import HistoryItem
from tether.v1 import worker_service_pb2

_log = logging.getLogger("tether.execution_worker")

#: History items per SnapshotRequest chunk.
SNAPSHOT_CHUNK_ITEMS = 500

#: The control plane's answer to a base it does not have.
SNAPSHOT_BASE_UNKNOWN = "SNAPSHOT_BASE_UNKNOWN"

#: A delta costs the control plane a read of its base; below this many items in the base,
#: sending the whole history is cheaper (about 1 us an item on each side, docs/benchmarks.md).
DELTA_MIN_BASE_ITEMS = 256


class WorkspaceHold:
    """A session's workspace gate, held from a capture until its scan is done (idempotent)."""

    def __init__(self, workspace: SessionWorkspace) -> None:
        self.workspace: SessionWorkspace | None = workspace
        workspace.gate.hold()

    def release(self) -> None:
        if self.workspace is not None:
            self.workspace.gate.release()
            self.workspace = None


@dataclass(frozen=True)
class SnapshotCapture:
    """What a snapshot upload sends, taken in one synchronous step so it is consistent: the
    history now, and the workspace held still (no turn starts) until it is scanned."""

    session_id: str
    lease_epoch: int
    seq: int
    history: list[HistoryItem]
    metadata_json: str
    workspace: SessionWorkspace | None = None
    hold: WorkspaceHold | None = None
    turns_finished: int = 0  # the session's finished turns the history covers


class Snapshots:
    """Captures and uploads snapshots of the sessions in `sessions`."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        worker_id: str,
        link: Link,
        tasks: TaskGroup,
        sessions: SessionTable,
        drop_later: Callable[[str, int, str], None],
        checkpoints: Checkpoints,
        rebuilds_from_log: Callable[[str], bool],
    ) -> None:
        """`rebuilds_from_log(runtime_name)`: whether that runtime's sessions continue from the
        history alone (portability history), which Resume rebuilds from the log after a snapshot."""
        self._checkpoints = checkpoints
        self._rebuilds_from_log = rebuilds_from_log
        self._settings = settings
        self._worker_id = worker_id
        self._link = link
        self._tasks = tasks
        self._sessions = sessions
        self._drop_later = drop_later

    # -- policies ---------------------------------------------------------------------------------

    def after_turn(self, session: Session) -> None:
        """A turn of `session`'s ended: once its events are acknowledged, snapshot when the
        after-turn policy says so (every `snapshot_every_turns` finished turns)."""
        if session.dropped:
            return
        every = self._settings.snapshot_every_turns
        due = False
        session.turns_finished += 1
        if session.runtime is not None and every > 0:
            session.turns_since_snapshot += 1
            due = session.turns_since_snapshot >= every
        if session.after_turn_task is not None:
            session.after_turn_task.cancel()  # it would skip anyway: a newer turn ended
        session.after_turn_task = self._tasks.spawn(
            self._after_turn(session, session.turn_generation, due), f"after turn {session.session_id}"
        )

    async def _after_turn(self, session: Session, generation: int, due: bool) -> None:
        try:
            # Waits only for the events emitted so far (the ended turn's); the outbox closing
            # (lease lost, session dropped) ends the wait with False.
            if not await session.outbox.wait_acked() or not due:
                return
            # Debounced: a session that gets its next turn within the idle time snapshots after
            # that turn instead, so back-to-back turns do not pay for an upload each. Nothing
            # is at risk meanwhile: Resume replays the log after the last snapshot.
            if self._settings.snapshot_idle_s > 0:
                await asyncio.sleep(self._settings.snapshot_idle_s)
            if session.dropped or session.runtime is None:
                return
            if session.turn_generation != generation or session.turn_task is not None:
                return  # the next turn started: its end covers this one
            session.turns_since_snapshot = 0
            optional = (
                self._rebuilds_from_log(session.runtime_name)
                and session.turns_finished - session.turns_stored < self._settings.snapshot_log_turns
            )
            self.spawn_upload(session, self.capture(session), request_id="", why="after turn", optional=optional)
        finally:
            if session.after_turn_task is asyncio.current_task():
                session.after_turn_task = None
                self._sessions.trim_soon()

    async def requested(self, request: worker_service_pb2.SnapshotRequested) -> None:
        """Answer a SnapshotRequested once the session is quiet: no turn or restore half-way,
        and every event the history reflects stored (so the watermark covers them)."""
        session = self._sessions.get(request.session_id)
        if session is None or session.lease_epoch != request.lease_epoch:
            _log.warning(
                "snapshot of session %s (epoch %d) requested but its lease is not held here",
                request.session_id,
                request.lease_epoch,
            )
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.snapshot_timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or session.dropped:
                _log.warning("snapshot of session %s abandoned: session never became quiet", request.session_id)
                return
            task = session.turn_task or session.restore_task
            if task is not None:
                await asyncio.wait({task}, timeout=remaining)
                continue
            if not session.outbox.all_acked:
                await session.outbox.wait_acked(remaining)
                continue
            break
        if session.runtime is None:
            _log.warning("snapshot of session %s requested but its runtime is not held here", request.session_id)
            return
        self._sessions.touch(session)
        await self.upload(self.capture(session), request_id=request.request_id, timeout_s=deadline - loop.time())

    async def final(self, session: Session) -> None:
        """Before the session's runtime leaves the worker (drain, cooling): upload a
        snapshot unless the stored one already covers the runtime's history."""
        if session.runtime is None:
            return
        if not session.outbox.all_acked:
            # The watermark would not cover what the history holds; the log has it all anyway.
            _log.warning("no final snapshot of session %s: its last events were not acknowledged", session.session_id)
            return
        if session.snapshot_tasks:
            await asyncio.wait(set(session.snapshot_tasks), timeout=self._settings.snapshot_timeout_s)
        if session.dropped or session.runtime is None:
            return
        if session.snapshot_seq is not None and session.snapshot_seq >= session.watermark:
            _log.debug("session %s: the stored snapshot already covers seq %d", session.session_id, session.watermark)
            return
        await self.upload(self.capture(session), request_id="")

    # -- uploads ----------------------------------------------------------------------------------

    def capture(self, session: Session) -> SnapshotCapture:
        """The session's history and watermark, now. Call with the session quiet."""
        assert session.runtime is not None
        workspace = session.workspace
        return SnapshotCapture(
            session_id=session.session_id,
            lease_epoch=session.lease_epoch,
            seq=session.watermark,
            history=session.runtime.export_history(),
            metadata_json=json.dumps(session.runtime.runtime_metadata()),
            workspace=workspace,
            hold=WorkspaceHold(workspace) if workspace is not None else None,
            turns_finished=session.turns_finished,
        )

    def spawn_upload(
        self, session: Session, capture: SnapshotCapture, *, request_id: str, why: str, optional: bool = False
    ) -> None:
        task = self._tasks.spawn(
            self.upload(capture, request_id=request_id, optional=optional), f"{why} snapshot {session.session_id}"
        )
        session.snapshot_tasks.add(task)

        def done(task: asyncio.Task[bool]) -> None:
            if capture.hold is not None:
                capture.hold.release()  # a task cancelled before it ran never scanned
            session.snapshot_tasks.discard(task)
            self._sessions.trim_soon()

        task.add_done_callback(done)

    async def upload(
        self, capture: SnapshotCapture, *, request_id: str, timeout_s: float | None = None, optional: bool = False
    ) -> bool:
        """Upload one captured snapshot (every snapshot path ends here). True once stored; a
        LEASE_LOST answer drops the session. An `optional` one is not sent when the workspace
        has no change to checkpoint (False)."""
        timeout = self._settings.snapshot_timeout_s if timeout_s is None else max(0.1, timeout_s)
        checkpoint = await self._scan(capture)
        workspace = capture.workspace
        if checkpoint is not None and workspace is not None and self._checkpoints.unchanged(workspace, checkpoint):
            checkpoint = None  # the files are as the latest checkpoint has them: it stays the session's
        if optional and checkpoint is None:
            _log.debug(
                "session %s: no snapshot after this turn (the log holds what it would carry)", capture.session_id
            )
            return False
        try:
            if checkpoint is not None and workspace is not None:
                async with workspace.upload_lock:
                    checkpoint = await self._put_blobs(capture, workspace, checkpoint, timeout)
                    response = await self._send(capture, request_id, checkpoint, timeout)
            else:
                response = await self._send(capture, request_id, None, timeout)
        except grpc.aio.AioRpcError as error:
            if is_lease_lost(error):
                self._drop_later(capture.session_id, capture.lease_epoch, "LEASE_LOST on Snapshot")
            else:
                _log.warning("snapshot of session %s failed: %s", capture.session_id, describe(error))
            return False
        session = self._sessions.get(capture.session_id)
        if session is not None and session.lease_epoch == capture.lease_epoch:
            session.snapshot_seq = max(session.snapshot_seq or 0, capture.seq)
            session.turns_stored = max(session.turns_stored, capture.turns_finished)
            session.snapshot_base = SnapshotBase(response.snapshot_id, capture.history)
        _log.info(
            "snapshot %s of session %s stored (seq %d, %d items)",
            response.snapshot_id,
            capture.session_id,
            capture.seq,
            len(capture.history),
        )
        return True

    async def _scan(self, capture: SnapshotCapture) -> Checkpoint | None:
        """The workspace checkpoint that goes with the captured history (None: no workspace, or
        the scan failed and the session keeps its previous checkpoint)."""
        if capture.workspace is None:
            return None
        try:
            return await self._checkpoints.scan(capture.workspace)
        except (WorkspaceError, OSError) as error:
            _log.warning(
                "session %s: workspace not checkpointed (%s); it keeps its previous checkpoint",
                capture.session_id,
                error,
            )
            return None
        finally:
            if capture.hold is not None:
                capture.hold.release()

    async def _put_blobs(
        self, capture: SnapshotCapture, workspace: SessionWorkspace, checkpoint: Checkpoint, timeout: float
    ) -> Checkpoint | None:
        try:
            async with asyncio.timeout(timeout):
                await self._checkpoints.upload(workspace, checkpoint, capture.lease_epoch)
        except (WorkspaceLimit, WorkspaceError) as problem:
            _log.warning(
                "session %s: workspace not checkpointed: %s; it keeps its previous checkpoint",
                capture.session_id,
                problem,
            )
            return None
        return checkpoint

    async def _send(
        self, capture: SnapshotCapture, request_id: str, checkpoint: Checkpoint | None, timeout: float
    ) -> worker_service_pb2.SnapshotResponse:
        """The Snapshot call; a manifest refused for a workspace limit is dropped and the
        snapshot sent without it (the session keeps its previous checkpoint), and a delta whose
        base the control plane no longer has is sent again whole."""
        base = self._delta_base(capture)
        while True:
            try:
                response = await self._link.stub.Snapshot(
                    self._chunks(capture, request_id, checkpoint, base), timeout=timeout
                )
                break
            except grpc.aio.AioRpcError as error:
                reason = error_reason(error)
                if base is not None and reason == SNAPSHOT_BASE_UNKNOWN:
                    _log.info("session %s: %s; sending the whole history", capture.session_id, describe(error))
                    base = None
                    continue
                if checkpoint is None or reason not in (WORKSPACE_LIMIT_EXCEEDED, INVALID_WORKSPACE):
                    raise
                _log.warning(
                    "session %s: workspace checkpoint refused (%s); it keeps its previous checkpoint",
                    capture.session_id,
                    describe(error),
                )
                checkpoint = None
        if checkpoint is not None and capture.workspace is not None:
            self._checkpoints.stored(capture.workspace, checkpoint)
        return response

    def _delta_base(self, capture: SnapshotCapture) -> SnapshotBase | None:
        """The stored snapshot this one can send only the rest of the history after: the
        session's latest, when the control plane takes deltas and the captured history still
        begins with the history that snapshot sent (a revert or a compaction rewrites it)."""
        session = self._sessions.get(capture.session_id)
        base = session.snapshot_base if session is not None else None
        if base is None or len(base.history) < DELTA_MIN_BASE_ITEMS or not self._link.lease.timings.snapshot_deltas:
            return None
        sent, history = base.history, capture.history
        if len(history) < len(sent) or not all(a is b or a == b for a, b in zip(sent, history, strict=False)):
            return None
        return base

    def _chunks(
        self, capture: SnapshotCapture, request_id: str, checkpoint: Checkpoint | None, base: SnapshotBase | None
    ) -> Iterator[worker_service_pb2.SnapshotRequest]:
        history = capture.history
        header = worker_service_pb2.SnapshotRequest(
            worker_id=self._worker_id,
            session_id=capture.session_id,
            lease_epoch=capture.lease_epoch,
            seq=capture.seq,
            runtime_metadata_json=capture.metadata_json,
            request_id=request_id,
        )
        if base is not None:
            header.base_snapshot_id = base.snapshot_id
            history = history[len(base.history) :]
        if checkpoint is not None:
            header.workspace.CopyFrom(checkpoint.manifest)
        header.history.extend(history_to_proto(h) for h in history[:SNAPSHOT_CHUNK_ITEMS])
        yield header
        for start in range(SNAPSHOT_CHUNK_ITEMS, len(history), SNAPSHOT_CHUNK_ITEMS):
            yield worker_service_pb2.SnapshotRequest(
                history=[history_to_proto(h) for h in history[start : start + SNAPSHOT_CHUNK_ITEMS]]
            )
