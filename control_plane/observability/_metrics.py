"""The control plane's Prometheus metrics: one `Metrics` per control plane, in its own registry.

`Metrics` is the domain's `Observer` (counters and histograms updated as turns, leases and
events move; each update is a lock and an add), the writer's transaction hook, the
authenticator's refusal hook, and a collector that reads the hub's gauges (`Hub.load`) only
when scraped. No label ever names a session, turn, worker or owner: `runtime` is capped at
`MAX_RUNTIMES` values (later names count as "other"), every other label comes from a fixed set.

A scrape reads the hub's state, which the event loop owns: scrape on the loop (the ASGI app of
`metrics_asgi_app` runs there when served by the control plane's own HTTP server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..domain.hub import HubLoad
from ..domain.ports import LeaseMove

__all__ = ["MAX_RUNTIMES", "Metrics", "metrics_asgi_app"]

# Distinct runtime names a label takes; a session's runtime is the application's word, so an
# unbounded set is possible in principle.
MAX_RUNTIMES = 32

# Seconds: a dispatch within a millisecond up to a turn queued for minutes.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Seconds: a shell turn of milliseconds up to an agent's turn of an hour.
_TURN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_REHYDRATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Every metric of one control plane, registered in `registry` (a new one by default, so
    several control planes in one process, and tests, keep theirs apart)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry(auto_describe=True)
        self._runtimes: set[str] = set()
        self._load: Callable[[], HubLoad] | None = None
        self.turns = Counter(
            "tether_turns",
            "Turns ended, by the session's runtime and how the turn ended (completed, failed, interrupted).",
            ["runtime", "outcome"],
            registry=registry,
        )
        self.dispatch_seconds = Histogram(
            "tether_turn_dispatch_seconds",
            "From a turn's input being queued to a worker accepting the turn (queue wait included).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.turn_seconds = Histogram(
            "tether_turn_duration_seconds",
            "From a worker accepting a turn to the turn's end, for turns that ran, by runtime.",
            ["runtime"],
            buckets=_TURN_BUCKETS,
            registry=registry,
        )
        self.lease_grants = Counter(
            "tether_lease_grants",
            "Leases granted to a worker at a new epoch, for a turn or a RestoreSession.",
            ["kind"],
            registry=registry,
        )
        self.lease_moves = Counter(
            "tether_lease_moves",
            "Leases taken from the worker holding them, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rehydration_seconds = Histogram(
            "tether_rehydration_seconds",
            "From a lease's grant to its worker's runtime being up (its first event, or a restore's "
            "confirming snapshot), by kind: start (a session's first lease), move, restore.",
            ["kind"],
            buckets=_REHYDRATION_BUCKETS,
            registry=registry,
        )
        self.events = Counter("tether_events_ingested", "Events workers added to session logs.", registry=registry)
        self.fanout_lag_seconds = Histogram(
            "tether_fanout_lag_seconds",
            "From events being numbered to their subscribers being woken, once committed.",
            buckets=_COMMIT_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "tether_db_commit_seconds",
            "How long each group-commit transaction took, committed or failed.",
            buckets=_COMMIT_BUCKETS,
            registry=registry,
        )
        self.commit_batch = Histogram(
            "tether_db_commit_batch_size",
            "Write sets merged into each group-commit transaction.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_failures = Counter(
            "tether_db_commit_failures", "Group-commit transactions that failed and rolled back.", registry=registry
        )
        self.auth_failures = Counter(
            "tether_auth_failures",
            "Calls refused for their credentials, by reason.",
            ["reason"],
            registry=registry,
        )
        registry.register(_HubCollector(self))

    def watch(self, load: Callable[[], HubLoad]) -> None:
        """Read the gauges from `load` (the hub's `load`) at each scrape."""
        self._load = load

    def _runtime(self, runtime: str) -> str:
        if runtime in self._runtimes:
            return runtime
        if len(self._runtimes) < MAX_RUNTIMES:
            self._runtimes.add(runtime)
            return runtime
        return "other"

    # -- the domain's Observer ----------------------------------------------------------------------

    def turn_started(self, queued_s: float) -> None:
        self.dispatch_seconds.observe(queued_s)

    def turn_ended(self, runtime: str, outcome: str, ran_s: float | None) -> None:
        label = self._runtime(runtime)
        self.turns.labels(label, outcome).inc()
        if ran_s is not None:
            self.turn_seconds.labels(label).observe(ran_s)

    def lease_granted(self, kind: str) -> None:
        self.lease_grants.labels(kind).inc()

    def lease_moved(self, reason: LeaseMove) -> None:
        self.lease_moves.labels(reason).inc()

    def rehydrated(self, kind: str, seconds: float) -> None:
        self.rehydration_seconds.labels(kind).observe(seconds)

    def events_ingested(self, count: int) -> None:
        self.events.inc(count)

    def events_published(self, lag_s: float) -> None:
        self.fanout_lag_seconds.observe(lag_s)

    # -- the writer's and the authenticator's hooks -------------------------------------------------

    def transaction(self, seconds: float, write_sets: int, committed: bool) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(write_sets)
        if not committed:
            self.commit_failures.inc()

    def auth_refused(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()


_GAUGES = (
    ("tether_sessions_loaded", "Sessions held in memory (live ones and recently used ones).", "sessions_loaded"),
    (
        "tether_sessions_live",
        "Loaded sessions with a turn queued, offered or running, or a worker holding the lease.",
        "sessions_live",
    ),
    ("tether_turns_queued", "Turns waiting in a queue for a worker (queue depth).", "turns_queued"),
    ("tether_oldest_queued_turn_age_seconds", "How long the oldest queued turn has waited.", "oldest_queued_s"),
    ("tether_workers_connected", "Workers with an open Lease stream.", "workers_connected"),
    ("tether_worker_slots", "Turn slots of the connected workers.", "slots"),
    (
        "tether_worker_slots_in_use",
        "Slots of the connected workers taken by offered and running turns.",
        "slots_in_use",
    ),
)


class _HubCollector(Collector):
    """The gauges, read from the hub when scraped (nothing on the hot path)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        for name, doc, _ in _GAUGES:
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        load_of = self._metrics._load
        if load_of is None:  # no hub to read yet: no gauges
            return
        load = load_of()
        for name, doc, field in _GAUGES:
            yield GaugeMetricFamily(name, doc, value=getattr(load, field))


def metrics_asgi_app(metrics: Metrics) -> Callable:
    """An ASGI app serving `metrics` in the Prometheus exposition format (GET; gzip when asked)."""
    return make_asgi_app(registry=metrics.registry)
