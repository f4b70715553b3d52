"""The worker registry: registration, the Lease stream's attach and detach, the worker-dead
grace, drain, and what each worker has in flight.

Owns every `WorkerConn` (one per registered worker id): its registration, its outbox (the
open Lease stream, if any), the slots its offered and running turns (and restores) occupy,
the sessions whose lease it holds as its current stream confirmed them, whether it drains,
and its worker-dead timer. Other parts use a connection only through its public methods.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import errors
from ._shared import Committer, log
from .messages import CloseMsg, DrainMsg, Timings, WorkerMsg, WorkerStatus
from .model import WorkerInfo, new_id, now_us
from .ports import Changes

#: The worker feature by which LeaseOpen.turn_ids is heeded (see `Workers.attach`).
REPORTS_TURNS = "reports_turns"

if TYPE_CHECKING:
    from ._leases import Leases
    from ._pending import PendingRequests
    from ._scheduling import Scheduler
    from ._sessions import SessionCache
    from ._turns import Turns


def lease_digest_part(session_id: str, epoch: int) -> int:
    """One lease's share of a LeaseDigest (see worker_service.proto): the first 8 bytes,
    big-endian, of SHA-256 of "<session_id>/<epoch>"; a set's digest XORs its leases' parts."""
    return int.from_bytes(hashlib.sha256(f"{session_id}/{epoch}".encode()).digest()[:8], "big")


class HeldLeases:
    """The leases a worker holds as its current stream confirmed them, and their digest,
    kept as they change so a digest renewal is compared in O(1)."""

    def __init__(self) -> None:
        self.epochs: dict[str, int] = {}  # session id -> lease epoch
        self.digest = 0

    def add(self, session_id: str, epoch: int) -> None:
        old = self.epochs.get(session_id)
        if old == epoch:
            return
        if old is not None:
            self.digest ^= lease_digest_part(session_id, old)
        self.epochs[session_id] = epoch
        self.digest ^= lease_digest_part(session_id, epoch)

    def discard(self, session_id: str) -> None:
        old = self.epochs.pop(session_id, None)
        if old is not None:
            self.digest ^= lease_digest_part(session_id, old)

    def clear(self) -> None:
        self.epochs.clear()
        self.digest = 0


class WorkerConn:
    """One registered worker as this control plane sees it."""

    def __init__(self, info: WorkerInfo) -> None:
        self.info = info
        self._outbox: asyncio.Queue[WorkerMsg] | None = None
        self._in_flight: set[str] = set()  # turn ids offered or running, restore slots
        self._sessions = HeldLeases()  # sessions whose lease it holds
        self._draining = False
        self._dead_timer: asyncio.TimerHandle | None = None  # worker-dead grace after its stream closed

    @property
    def connected(self) -> bool:
        return self._outbox is not None

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def free_slots(self) -> int:
        return self.info.slots - len(self._in_flight)

    def push(self, msg: WorkerMsg) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(msg)

    def occupy(self, slot: str) -> None:
        self._in_flight.add(slot)

    def free(self, slot: str) -> None:
        self._in_flight.discard(slot)

    def hold(self, session_id: str, epoch: int) -> None:
        self._sessions.add(session_id, epoch)

    def let_go(self, session_id: str) -> None:
        self._sessions.discard(session_id)

    def holds(self, session_id: str) -> bool:
        return session_id in self._sessions.epochs

    def held(self) -> list[str]:
        return list(self._sessions.epochs)

    def digest_matches(self, count: int, digest: int) -> bool:
        """Whether a worker's LeaseDigest names exactly the leases this connection holds."""
        return count == len(self._sessions.epochs) and digest == self._sessions.digest

    @property
    def idle(self) -> bool:
        """Holding no lease and with nothing offered or running."""
        return not self._sessions.epochs and not self._in_flight

    def status(self) -> WorkerStatus:
        return WorkerStatus(self.info, len(self._in_flight), len(self._sessions.epochs), self.connected, self._draining)

    # The registry's side (`Workers`): the stream, the timer, the registration.

    def successor(self, info: WorkerInfo) -> WorkerConn:
        """A newer registration of the same worker (often a new process): it starts holding
        and running nothing; its LeaseOpen says which leases it still holds, and `attach`
        settles the rest before anything is offered to it."""
        return WorkerConn(info)

    def bind(self, outbox: asyncio.Queue[WorkerMsg] | None) -> None:
        self._outbox = outbox

    def bound_to(self, outbox: asyncio.Queue[WorkerMsg]) -> bool:
        return self._outbox is outbox

    def arm_dead_timer(self, delay_s: float, callback: Callable[[WorkerConn], None]) -> None:
        self.disarm_dead_timer()
        self._dead_timer = asyncio.get_running_loop().call_later(delay_s, callback, self)

    def disarm_dead_timer(self) -> None:
        if self._dead_timer is not None:
            self._dead_timer.cancel()
            self._dead_timer = None

    def start_draining(self) -> None:
        self._draining = True

    def forget_held(self) -> None:
        self._sessions.clear()

    def reset(self) -> None:
        """Unbound, holding and running nothing (until its next stream says otherwise)."""
        self._outbox = None
        self._in_flight.clear()
        self._sessions.clear()


class Workers:
    def __init__(self, committer: Committer, timings: Timings) -> None:
        self._committer = committer
        self._timings = timings
        self._workers: dict[str, WorkerConn] = {}

    def connect(
        self,
        *,
        sessions: SessionCache,
        leases: Leases,
        scheduler: Scheduler,
        turns: Turns,
        requests: PendingRequests,
    ) -> None:
        self._sessions = sessions
        self._leases = leases
        self._scheduler = scheduler
        self._turns = turns
        self._requests = requests

    # ----------------------------------------------------------------- lookups

    def get(self, worker_id: str) -> WorkerConn | None:
        return self._workers.get(worker_id)

    def all(self) -> list[WorkerConn]:
        return list(self._workers.values())

    def honours_output_schema(self, owner: str, runtime: str) -> bool | None:
        """Whether `owner`'s connected workers offering `runtime` can honour an output schema:
        True when one can, False when none can, None when none offers the runtime."""
        offered = False
        for w in self._workers.values():
            info = w.info
            if info.owner == owner and w.connected and runtime in info.runtimes:
                if runtime in info.output_schema_runtimes:
                    return True
                offered = True
        return False if offered else None

    def portability(self, owner: str, runtime: str, worker_id: str = "") -> str:
        """How sessions of `owner`'s `runtime` move: what `worker_id` (the worker that last held
        the session) declared when it is registered and offers the runtime; otherwise "none"
        when any of the owner's registered workers offering it declares "none" (the cautious
        answer), else "history"."""
        w = self._workers.get(worker_id) if worker_id else None
        if w is not None and w.info.owner == owner and runtime in w.info.runtimes:
            return w.info.runtime_portability.get(runtime, "history")
        for w in self._workers.values():
            info = w.info
            if info.owner == owner and runtime in info.runtimes and info.runtime_portability.get(runtime) == "none":
                return "none"
        return "history"

    def require(self, worker_id: str, registration_id: str | None = None) -> WorkerConn:
        w = self._workers.get(worker_id)
        if w is None or (registration_id is not None and w.info.registration_id != registration_id):
            raise errors.WorkerNotRegistered(
                f"worker {worker_id!r} has no current registration {registration_id or ''}; call Register again",
                worker_id=worker_id,
            )
        return w

    def owner_of(self, worker_id: str) -> str | None:
        """The owner of a worker registered since this control plane started, else None."""
        w = self._workers.get(worker_id)
        return w.info.owner if w is not None else None

    def free_slot(self, worker_id: str, slot: str) -> None:
        w = self._workers.get(worker_id)
        if w is not None:
            w.free(slot)

    def free_everywhere(self, slot: str) -> None:
        for w in self._workers.values():
            w.free(slot)

    def statuses(self, owner: str | None) -> list[WorkerStatus]:
        """`owner`'s workers (every owner's when None: an admin), connected first."""
        statuses = [w.status() for w in self._workers.values() if owner is None or w.info.owner == owner]
        statuses.sort(key=lambda st: (not st.connected, st.info.worker_id))
        return statuses

    # ----------------------------------------------------------------- registration and streams

    async def register(self, info: WorkerInfo) -> str:
        old = self._workers.get(info.worker_id)
        if old is not None and old.info.owner != info.owner:
            raise errors.PermissionDenied(
                f"worker id {info.worker_id!r} is taken by a worker of another credential; choose another --worker-id",
                worker_id=info.worker_id,
            )
        info.registration_id = new_id("reg")
        await self._committer.commit(Changes(worker_upserts=[info]))
        old = self._workers.get(info.worker_id)
        conn = WorkerConn(info) if old is None else old.successor(info)
        if old is not None and old.connected:
            old.push(CloseMsg("replaced by a newer registration of the same worker"))
            old.bind(None)
            self._scheduler.requeue_offers_of(old)
        self._workers[info.worker_id] = conn
        return info.registration_id

    async def attach(
        self,
        worker_id: str,
        registration_id: str,
        held: list[tuple[str, int]],
        outbox: asyncio.Queue[WorkerMsg],
        known_turns: set[str] | None = None,
    ) -> list[tuple[str, int]]:
        """Bind a Lease stream to its registration. Returns the held leases it no longer has.
        A worker that reports the turns it knows (the "reports_turns" feature) and leaves out
        one this control plane has running on it never got that turn's grant (it went down
        with the previous stream, or with the control plane): the turn is queued again, not
        left running with nobody to run it. It never began, so this runs nothing twice."""
        self.require(worker_id, registration_id)
        for session_id, _ in held:  # after a control-plane restart they may not be loaded yet
            await self._sessions.load(session_id)
        held_ids = {sid for sid, _ in held}
        # Settle first: the leases this control plane has the worker holding (after a
        # control-plane restart, as loaded from the database) that the worker no longer knows
        # about (it restarted and lost those runtimes) are freed, and their running turns end,
        # before the stream is bound, so nothing is offered to it at an old epoch meanwhile.
        for rec in self._leases.held_by(worker_id):
            if not rec.deleted and rec.session_id not in held_ids:
                await self._leases.drop(
                    rec, "the worker restarted and no longer holds the session", revoke=True, cause="worker_restarted"
                )
        w = self.require(worker_id, registration_id)
        if w.connected:
            w.push(CloseMsg("replaced by a newer Lease stream"))
        w.bind(outbox)
        w.disarm_dead_timer()  # back within the grace: nothing moves
        # Rebuild its slot count from the turns it runs.
        known = known_turns if REPORTS_TURNS in w.info.features else None
        for rec in self._leases.held_by(worker_id):
            if rec.deleted or rec.session_id not in held_ids:
                continue
            running = self._turns.running(rec)
            if running is None or running.worker_id != worker_id:
                continue
            if known is not None and running.turn_id not in known:
                log.warning(
                    "turn %s of session %s never reached worker %s (its grant was lost with the previous stream): "
                    "queued again",
                    running.turn_id,
                    rec.session_id,
                    worker_id,
                )
                self._committer.submit(self._turns.unstart(rec, running))
                continue
            w.occupy(running.turn_id)
            self._requests.redeliver(rec)  # answers it may have missed meanwhile
        lost = self._leases.renew_held(w, held)
        log.info("worker %s attached (%d slots, runtimes %s)", worker_id, w.info.slots, w.info.runtimes)
        self._scheduler.dispatch_waiting()
        return lost

    def detach(self, worker_id: str, outbox: asyncio.Queue[WorkerMsg]) -> None:
        w = self._workers.get(worker_id)
        if w is None or not w.bound_to(outbox):
            return
        w.bind(None)
        self._scheduler.requeue_offers_of(w)
        grace = self._timings.worker_dead_grace_s
        w.arm_dead_timer(grace, self._worker_dead)
        log.info("worker %s detached; its sessions move unless it is back within %gs", worker_id, grace)

    def _worker_dead(self, w: WorkerConn) -> None:
        w.disarm_dead_timer()  # it fired
        if self._workers.get(w.info.worker_id) is not w or w.connected:
            return
        why = (
            f"worker {w.info.worker_id} did not reconnect within the worker-dead grace "
            f"({self._timings.worker_dead_grace_s:g}s)"
        )
        for session_id in w.held():
            rec = self._sessions.get(session_id)
            if rec is not None and self._leases.holder(rec) == w.info.worker_id and not rec.deleted:
                self._leases.drop_soon(rec, why, f"tether-worker-dead-{session_id}", cause="worker_lost")
        w.forget_held()

    # ----------------------------------------------------------------- drain

    def worker_draining(self, worker_id: str) -> None:
        """The worker said it is draining: no more offers; its idle sessions with queued work
        move now, the rest when it releases them at the end of its drain."""
        w = self._workers.get(worker_id)
        if w is None or w.draining:
            return
        w.start_draining()
        log.info("worker %s is draining", worker_id)
        self._scheduler.requeue_offers_of(w)
        for session_id in w.held():
            rec = self._sessions.get(session_id)
            if rec is not None:
                self._scheduler.dispatch(rec)
        self._scheduler.dispatch_waiting()

    def drain_worker(self, owner: str | None, worker_id: str, grace_s: float | None) -> WorkerStatus:
        """Drain one of `owner`'s workers (any owner's when `owner` is None: an admin)."""
        w = self._workers.get(worker_id)
        if w is None or (owner is not None and w.info.owner != owner):
            raise errors.WorkerNotFound(
                f"no worker {worker_id!r} has registered since this control plane started", worker_id=worker_id
            )
        if not w.connected:
            raise errors.WorkerNotConnected(
                f"worker {worker_id!r} is not connected; a worker drains on SIGTERM too",
                worker_id=worker_id,
            )
        w.push(DrainMsg(now_us() + int(grace_s * 1e6) if grace_s is not None else 0))
        self.worker_draining(worker_id)
        return w.status()

    # ----------------------------------------------------------------- shutdown and recovery

    def close_all(self, reason: str) -> None:
        """End every open Lease stream with `reason`."""
        for w in self._workers.values():
            w.push(CloseMsg(reason))

    def disconnect_all(self, reason: str) -> None:
        """After a failed write: close every stream and forget what each worker holds and runs,
        so workers re-attach and say it again."""
        for w in self._workers.values():
            w.push(CloseMsg(reason))
            w.reset()
