"""`/metrics` on the HTTP port: a real control plane's Prometheus exposition, scraped over
HTTP/1.1, moves with a real turn; without `--http-port` nothing listens for it."""

from __future__ import annotations

import asyncio
import pathlib

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.execution_worker import ShellRuntime, Worker, WorkerSettings


async def _get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return int(lines[0].split()[1]), headers, body.decode()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_are_scraped_over_http_and_move_with_a_turn(tmp_path: pathlib.Path) -> None:
    settings = Settings(port=0, http_port=0, db=str(tmp_path / "t.db"), timings=FAST, dev_owner="local")
    async with ControlPlane(settings) as cp:
        assert cp.http is not None and cp.http.port
        status, headers, text = await _get(cp.http.port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        completed = ("tether_turns_total", frozenset({("runtime", "shell"), ("outcome", "completed")}))
        assert _samples(text).get(completed, 0.0) == 0.0

        worker = Worker(
            WorkerSettings(workdir=tmp_path / "w", control_plane=f"127.0.0.1:{cp.port}"),
            runtimes={"shell": ShellRuntime},
        )
        running = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: worker.connected, timeout=10, what="worker connected")
            async with sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
                sid = (await client.create_session("shell")).session_id
                sent = await client.send_input(sid, "echo scraped")
                done = await client.wait_for_turn(sid, sent.turn_id, timeout_s=20)
                assert done.state == sdk.TurnState.COMPLETED
            _, _, text = await _get(cp.http.port, "/metrics")
            samples = _samples(text)
            assert samples[completed] == 1.0
            assert samples[("tether_workers_connected", frozenset())] == 1.0
            assert samples[("tether_sessions_loaded", frozenset())] >= 1.0
        finally:
            await worker.close()
            await asyncio.gather(running, return_exceptions=True)
