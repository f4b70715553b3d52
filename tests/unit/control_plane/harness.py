"""Driving a `Hub` the way `api/` does, over the in-memory ports: no gRPC, no database.

`new_hub` builds a hub on a `MemoryStore` with short timings. A `Worker` is a worker as the hub
sees one: a registration, and a Lease stream whose outbox the test reads directly; it writes
events with its own worker_seq per lease epoch, as a real worker does. `stop_wall_clock` holds
the time the hub stamps still, for tests of idle times and schedules to move by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import pytest

from tether.control_plane.domain import model
from tether.control_plane.domain.hub import Hub
from tether.control_plane.domain.messages import IncomingEvent, IngestResult, OfferMsg, Timings, WorkerMsg
from tether.control_plane.domain.model import PendingRequest, RequestKind, RequestState, WorkerInfo, new_id

from ...helpers.fake_store import FakeCodec, MemoryStore

OWNER = "owner-a"
OTHER_OWNER = "owner-b"

# Long enough never to fire by accident; tests that need a clock to fire set their own.
TIMINGS = Timings(
    lease_ttl_s=30.0,
    offer_timeout_s=30.0,
    sticky_timeout_s=30.0,
    worker_dead_grace_s=30.0,
    snapshot_timeout_s=30.0,
    waiting_notice_s=0.0,  # a waiting turn says why at once; test_turn_endings pins the notice
)

Msg = TypeVar("Msg", bound=WorkerMsg)


class WallClock:
    """The domain's wall clock (`model.now_us`: every time the hub stamps and compares), stopped;
    `advance` moves it. Ids keep the real time (`model.new_id` reads `time.time()`)."""

    def __init__(self) -> None:
        self._ns = time.time_ns()

    def time_ns(self) -> int:
        return self._ns

    def advance(self, seconds: float) -> None:
        self._ns += int(seconds * 1e9)

    def __getattr__(self, name: str) -> Any:  # the rest of the time module, as it is
        return getattr(time, name)


def stop_wall_clock(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    """Stop the domain's wall clock for this test: it moves only by `WallClock.advance`."""
    clock = WallClock()
    monkeypatch.setattr(model, "time", clock)
    return clock


def new_hub(store: MemoryStore | None = None, **timings: float) -> tuple[Hub, MemoryStore]:
    store = store if store is not None else MemoryStore()
    return Hub(store, store, FakeCodec(), dataclasses.replace(TIMINGS, **timings)), store


class Worker:
    def __init__(
        self,
        hub: Hub,
        worker_id: str,
        *,
        owner: str = OWNER,
        slots: int = 1,
        runtimes: Sequence[str] = ("shell",),
        labels: dict[str, str] | None = None,
        schema_runtimes: Sequence[str] = (),
        features: Sequence[str] = (),
    ) -> None:
        self.hub = hub
        self.features = frozenset(features)
        self.schema_runtimes = list(schema_runtimes)
        self.worker_id = worker_id
        self.owner = owner
        self.slots = slots
        self.runtimes = list(runtimes)
        self.labels = dict(labels or {})
        self.registration_id = ""
        self.outbox: asyncio.Queue[WorkerMsg] = asyncio.Queue()
        self._worker_seq: dict[tuple[str, int], int] = {}

    async def connect(
        self, held: Sequence[tuple[str, int]] = (), known_turns: set[str] | None = None
    ) -> list[tuple[str, int]]:
        """Register and open a Lease stream claiming `held` (and, when given, saying it knows
        `known_turns`); returns the leases it lost."""
        info = WorkerInfo(self.worker_id, self.worker_id, "", self.runtimes, self.labels, self.slots, "test")
        info.owner = self.owner
        info.output_schema_runtimes = list(self.schema_runtimes)
        info.features = self.features
        self.registration_id = await self.hub.register(info)
        self.outbox = asyncio.Queue()
        return await self.hub.attach(self.worker_id, self.registration_id, list(held), self.outbox, known_turns)

    def disconnect(self) -> None:
        """The Lease stream closes (the worker-dead grace starts)."""
        self.hub.detach(self.worker_id, self.outbox)

    def inbox(self) -> list[WorkerMsg]:
        """Every message pushed to the worker since the last look."""
        messages = []
        while not self.outbox.empty():
            messages.append(self.outbox.get_nowait())
        return messages

    def only(self, kind: type[Msg]) -> list[Msg]:
        """The messages of `kind` since the last look (the others are dropped)."""
        return [m for m in self.inbox() if isinstance(m, kind)]

    def offer(self) -> OfferMsg:
        """The one offer pushed since the last look."""
        offers = self.only(OfferMsg)
        assert len(offers) == 1, f"{self.worker_id} got offers {offers}"
        return offers[0]

    async def accept(self, offer: OfferMsg) -> None:
        await self.hub.accept(self.worker_id, offer.session_id, offer.turn_id, offer.lease_epoch)

    def ingest(self, session_id: str, epoch: int, turn_id: str, *kinds: str | tuple[str, bytes]) -> IngestResult:
        """Write one event per kind for `turn_id`, numbered on from the last under `epoch`; a
        kind's body is its name, unless it comes as a (kind, body) pair."""
        events = []
        for entry in kinds:
            kind, body = entry if isinstance(entry, tuple) else (entry, entry.encode())
            seq = self._worker_seq.get((session_id, epoch), 0) + 1
            self._worker_seq[session_id, epoch] = seq
            events.append(IncomingEvent(seq, turn_id, kind, body))
        return self.hub.ingest(self.worker_id, session_id, epoch, events, self.owner)

    async def write(self, session_id: str, epoch: int, turn_id: str, *kinds: str | tuple[str, bytes]) -> IngestResult:
        """`ingest` and wait until the events are durable."""
        result = self.ingest(session_id, epoch, turn_id, *kinds)
        if result.committed is not None:
            await result.committed
        return result

    async def open_request(self, offer: OfferMsg) -> PendingRequest:
        """The running turn asks a question (a request_opened event)."""
        request = PendingRequest(
            request_id=new_id("req"),
            session_id="",
            turn_id="",
            kind=RequestKind.USER_INPUT,
            method="item/tool/requestUserInput",
            params_json="{}",
            summary="which file?",
            item_id="item-1",
            available_decisions=[],
            state=RequestState.PENDING,
            create_time_us=0,
        )
        seq = self._worker_seq.get((offer.session_id, offer.lease_epoch), 0) + 1
        self._worker_seq[offer.session_id, offer.lease_epoch] = seq
        event = IncomingEvent(seq, offer.turn_id, "request_opened", b"request_opened", request=request)
        result = self.hub.ingest(self.worker_id, offer.session_id, offer.lease_epoch, [event], self.owner)
        assert result.committed is not None
        await result.committed
        return request


async def settle() -> None:
    """Let what is ready on the event loop run: background tasks, commits, their callbacks."""
    for _ in range(20):
        await asyncio.sleep(0)


async def new_session(hub: Hub, owner: str = OWNER) -> str:
    view = await hub.create_session(owner, "shell", {}, {})
    return view.session.session_id


async def run_turn(hub: Hub, worker: Worker, session_id: str, text: str = "hi") -> OfferMsg:
    """Send input, have `worker` accept the offer and start the turn; returns the offer."""
    await hub.send_input(OWNER, session_id, text, "")
    offer = worker.offer()
    await worker.accept(offer)
    await worker.write(session_id, offer.lease_epoch, offer.turn_id, "turn_started")
    return offer


async def finish_turn(worker: Worker, offer: OfferMsg) -> None:
    await worker.write(offer.session_id, offer.lease_epoch, offer.turn_id, "turn_completed")
