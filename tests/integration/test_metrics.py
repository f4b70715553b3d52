"""Prometheus metrics (control_plane/observability) on a real in-process control plane with
real shell workers: the exposition served by `metrics_asgi_app` moves with real traffic (turns
completed, interrupted, and failed when its worker is SIGKILLed mid-turn, after which the
session moves and rehydrates elsewhere; a queued turn; a refused credential), and no label value names a session, turn, worker
or owner.
"""

from __future__ import annotations

import signal

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.processes import FAST, eventually, start_worker
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.observability import MAX_RUNTIMES, Metrics, metrics_asgi_app
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(metrics: Metrics) -> tuple[int, Samples, str]:
    """GET /metrics through the ASGI app, as the HTTP port serves it: (status, samples, text)."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"", "headers": []}
    await metrics_asgi_app(metrics)(scope, receive, send)
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return sent[0]["status"], samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value, 0 when it does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_with_real_traffic_and_name_no_session_turn_worker_or_owner(tmp_path, procs):
    settings = Settings(port=0, db=str(tmp_path / "tether.db"), timings=FAST, dev_owner="local")
    async with ControlPlane(settings) as cp:
        target = f"127.0.0.1:{cp.port}"
        metrics = cp.metrics
        status, before, _ = await scrape(metrics)
        assert status == 200
        assert value(before, "tether_sessions_loaded") == 0 and value(before, "tether_workers_connected") == 0

        workers = {
            worker_id: start_worker(procs, target, tmp_path / worker_id, worker_id, 2, "--worker-id", worker_id)
            for worker_id in ("wkr_metrics_a", "wkr_metrics_b")
        }

        async def connected(n: int) -> bool:
            return value((await scrape(metrics))[1], "tether_workers_connected") == n

        await eventually(lambda: connected(2), timeout=30, what="two workers connected, as the gauge says")
        _, idle, _ = await scrape(metrics)
        assert value(idle, "tether_worker_slots") == 4 and value(idle, "tether_worker_slots_in_use") == 0

        async with sdk.AsyncClient(target) as client:
            s = await client.create_session("shell")
            done = await client.send_input(s.session_id, "echo one")
            first = await client.wait_for_turn(s.session_id, done.turn_id, timeout_s=20)
            assert first.state == sdk.TurnState.COMPLETED

            # A turn no worker can take waits in the queue: depth and age are read when scraped.
            waiting = await client.create_session("shell", worker_selector={"pool": "nowhere"})
            queued = await client.send_input(waiting.session_id, "echo never")
            _, mid, _ = await scrape(metrics)
            assert value(mid, "tether_turns_queued") == 1
            assert value(mid, "tether_oldest_queued_turn_age_seconds") > 0
            assert value(mid, "tether_sessions_loaded") == 2
            assert value(mid, "tether_sessions_live") == 2  # one leased, one with a turn queued
            await client.interrupt_turn(waiting.session_id, queued.turn_id)
            _, after_interrupt, _ = await scrape(metrics)
            assert value(after_interrupt, "tether_turns_queued") == 0
            assert value(after_interrupt, "tether_oldest_queued_turn_age_seconds") == 0

            # A credential this control plane never issued, and a pairing code it never made, are
            # refused, and counted by reason.
            async with sdk.AsyncClient(target, api_key="tak_" + "x" * 43) as stranger:
                with pytest.raises(sdk.UnauthenticatedError):
                    await stranger.list_sessions()
            async with grpc.aio.insecure_channel(target) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await wgrpc.WorkerServiceStub(channel).Pair(wpb.PairRequest(code="ZZZZ-ZZZZ"), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

            # The holder dies mid-turn: past the worker-dead grace its lease is dropped and its
            # turn fails; the next turn runs on the other worker, which rehydrates the session.
            holder = (await client.get_session(s.session_id)).worker_id
            lost = await client.send_input(s.session_id, "sleep 30")

            async def running() -> bool:
                return (await client.get_turn(s.session_id, lost.turn_id)).state == sdk.TurnState.RUNNING

            await eventually(running, timeout=20, what="the long turn running")
            workers[holder].send_signal(signal.SIGKILL)
            await eventually(lambda: connected(1), timeout=10, what="the killed worker's stream gone")
            assert (await client.wait_for_turn(s.session_id, lost.turn_id, timeout_s=20)).state == (
                sdk.TurnState.FAILED
            )
            moved = await client.send_input(s.session_id, "echo two")
            second = await client.wait_for_turn(s.session_id, moved.turn_id, timeout_s=30)
            assert second.state == sdk.TurnState.COMPLETED and second.worker_id != holder
            worker_ids = {holder, second.worker_id}
            ids = {s.session_id, waiting.session_id, done.turn_id, lost.turn_id, queued.turn_id, moved.turn_id}

        status, after, text = await scrape(metrics)
        assert status == 200
        moved_by = {"worker_lost", "lease_expired"}

        def grew(name: str, by: float = 1, **labels: str) -> bool:
            return value(after, name, **labels) - value(before, name, **labels) >= by

        assert grew("tether_turns_total", 2, runtime="shell", outcome="completed")
        assert grew("tether_turns_total", 1, runtime="shell", outcome="failed")
        assert grew("tether_turns_total", 1, runtime="shell", outcome="interrupted")
        assert grew("tether_turn_dispatch_seconds_count", 3)  # every turn that ran was accepted once
        assert grew("tether_turn_duration_seconds_count", 3, runtime="shell")  # the interrupted one never ran
        assert grew("tether_lease_grants_total", 2, kind="turn")  # the first worker, then the other
        assert sum(value(after, "tether_lease_moves_total", reason=r) for r in moved_by) >= 1
        assert grew("tether_rehydration_seconds_count", 1, kind="start")
        assert grew("tether_rehydration_seconds_count", 1, kind="move")
        assert grew("tether_events_ingested_total", 6)  # started, output, completed, per turn
        assert grew("tether_fanout_lag_seconds_count", 3)
        assert grew("tether_db_commit_seconds_count", 5)
        assert grew("tether_db_commit_batch_size_count", 5)
        assert value(after, "tether_db_commit_batch_size_sum") >= value(after, "tether_db_commit_batch_size_count")
        assert grew("tether_auth_failures_total", 1, reason="unknown_credential")
        assert grew("tether_auth_failures_total", 1, reason="pairing_code_invalid")
        assert value(after, "tether_workers_connected") == 1
        assert value(after, "tether_worker_slots") == 2
        assert value(after, "tether_sessions_loaded") == 2

        # Bounded labels: no value is (or contains) an id of this run, nor its owner.
        named = ids | worker_ids | {"local"}
        labels = {v for (_, label_set) in after for _, v in label_set}
        assert not [v for v in labels if any(i in v for i in named)], labels
        assert all(i not in text for i in ids | worker_ids)


async def test_runtime_label_is_capped_so_an_application_cannot_grow_the_series_without_bound() -> None:
    metrics = Metrics()
    for i in range(MAX_RUNTIMES + 5):
        metrics.turn_ended(f"runtime{i}", "failed", None)
    _, samples, _ = await scrape(metrics)
    runtimes = {dict(labels)["runtime"] for (name, labels) in samples if name == "tether_turns_total"}
    assert len(runtimes) == MAX_RUNTIMES + 1 and "other" in runtimes
    assert value(samples, "tether_turns_total", runtime="other", outcome="failed") == 5


async def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.auth_refused("revoked")
    _, in_a, _ = await scrape(a)
    _, in_b, _ = await scrape(b)
    assert value(in_a, "tether_auth_failures_total", reason="revoked") == 1
    assert value(in_b, "tether_auth_failures_total", reason="revoked") == 0
