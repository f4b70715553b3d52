"""The HTTP port (`tether serve --http-port`) as a browser app sees it.

    browser_first_event_ms_p50          a Connect client in Node (connect-web's transport over
                                        fetch, HTTP/1.1, on the HTTP port): SendInput -> the
                                        turn's first event after input_received on its stream
    grpc_first_event_ms_p50             the same client code over gRPC (connect-node, HTTP/2, on
                                        the gRPC port), in the same run
    browser_minus_grpc_first_event_ms_p50  median of the per-pair differences (target: within 2 ms)
    browser_proto_first_event_ms_p50    connect-web with binary protobuf instead of its default
                                        JSON, in the same rounds (and its difference to gRPC)
    http_stream_subscribers_1k_rss_mib  the control plane's RSS with 1,000 Connect streams open
                                        over HTTP/1.1 (100 sessions, 10 each), every one caught up
    http_stream_subscribers_1k_rss_growth_mib and http_stream_subscriber_kib: the growth from
                                        before the streams opened, in all and per stream

First event: one control plane process with --http-port, one Python worker (`--runtime script`,
input `say ping`), and three processes of tests/e2e/http_ts/http_client.js in `bench` mode
(Connect with JSON and with binary protobuf on the HTTP port, gRPC on the gRPC port), each on
its own session, each holding one event stream open and timing each event as it reads it on its
own monotonic clock (performance.now()). Samples are taken in rounds of one per side, each side
first, second and last in turn, so all see the same machine noise; the first rounds are
warm-up. This is the measure bench/typescript.py takes, with the transport the
only difference between the two sides.

Subscribers: a fresh control plane with --http-port and no worker; 100 sessions each get one
input (so each log has an event to catch up on); the RSS (VmRSS in /proc) is read after a
settle, then one Node process opens 1,000 streams with connect-web's Connect transport, each
on its own HTTP/1.1 connection; once every one has read its first batch and a settle has passed
the RSS is read again. Then the client closes them, and every connection to the HTTP port must
be gone within 10 s (http_stream_connections_left_after_close, must be 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from tether import sdk

from ._footprint import rss_mib
from ._harness import ROOT, ControlPlaneProc, emit, percentile, procs

PAIRS = int(os.environ.get("TETHER_BENCH_HTTP_PAIRS", "400"))
WARMUP = max(PAIRS // 10, 5)
TIME_LIMIT_S = 240
INPUT = "say ping"
SUBSCRIBER_SESSIONS = 100
PER_SESSION = 10
SETTLE_S = 3.0
TS_DIR = ROOT / "tests" / "e2e" / "http_ts"
TSC = ROOT / "node_modules" / ".bin" / "tsc"
CLIENT_JS = TS_DIR / "dist" / "tests" / "e2e" / "http_ts" / "http_client.js"
HTTP_LINE = re.compile(r"tether HTTP listening on (http://\S+)")


def build() -> None:
    """Compile the Node client; a figure that cannot be measured is an error, not a skip."""
    if shutil.which("node") is None or not TSC.exists():
        raise RuntimeError("node or TypeScript is not installed: run `npm install` (make bench does it)")
    done = subprocess.run([str(TSC), "-p", str(TS_DIR)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("tsc failed:\n" + done.stdout + done.stderr)


def http_url(cp: ControlPlaneProc) -> str:
    log = cp.procs.tmp / f"{cp.name}.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = HTTP_LINE.search(log.read_text(errors="replace"))
        if found:
            return found[1]
        time.sleep(0.02)
    raise RuntimeError("the control plane did not print its HTTP port:\n" + log.read_text(errors="replace")[-2000:])


class NodeSide:
    """`http_client.js bench`: one sample per line written to it, one JSON line back."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, base_url: str, transport: str, session_id: str) -> NodeSide:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(CLIENT_JS),
            "bench",
            "--base-url",
            base_url,
            "--transport",
            transport,
            "--session",
            session_id,
            "--input",
            INPUT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        return cls(proc)

    async def sample(self) -> tuple[str, float, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"http_client.js bench exited with status {await self.proc.wait()}")
        got = json.loads(line)
        return got["turn_id"], got["ms"], got["end"]

    async def stop(self) -> int:
        """Close its stdin (it ends its stream and exits 0); its exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


async def first_event() -> None:
    with procs() as ps:
        cp = ps.start_control_plane("--http-port", "0")
        base_url = http_url(cp)
        ps.spawn(
            [
                sys.executable,
                "-m",
                "tether.execution_worker",
                "--control-plane",
                cp.target,
                "--runtime",
                "script",
                "--workdir",
                str(ps.tmp / "w0"),
                "--slots",
                "2",
                "--log-level",
                "warning",
            ],
            "w0",
        )
        http_ms: list[float] = []
        grpc_ms: list[float] = []
        proto_ms: list[float] = []
        async with sdk.AsyncClient(cp.target) as client, asyncio.timeout(TIME_LIMIT_S):
            http_session = (await client.create_session("script")).session_id
            grpc_session = (await client.create_session("script")).session_id
            proto_session = (await client.create_session("script")).session_id
            browser = await NodeSide.start(base_url, "connect-web", http_session)
            grpc_side = await NodeSide.start(f"http://{cp.target}", "grpc", grpc_session)
            proto_side = await NodeSide.start(base_url, "connect-web-proto", proto_session)
            try:
                for i in range(WARMUP + PAIRS):
                    # Each side goes first, second and last in turn.
                    order = [("http", browser), ("grpc", grpc_side), ("proto", proto_side)]
                    order = order[i % 3 :] + order[: i % 3]
                    pair: dict[str, float] = {}
                    for name, side in order:
                        turn_id, ms, end = await side.sample()
                        if end != "turnCompleted":
                            raise RuntimeError(f"{name} turn {turn_id} ended {end}")
                        pair[name] = ms
                    if i >= WARMUP:
                        http_ms.append(pair["http"])
                        grpc_ms.append(pair["grpc"])
                        proto_ms.append(pair["proto"])
            finally:
                statuses = [await browser.stop(), await grpc_side.stop(), await proto_side.stop()]
            if statuses != [0, 0, 0]:
                raise RuntimeError(f"http_client.js bench exited with statuses {statuses} (Connect, gRPC, proto)")
    n = len(http_ms)
    diffs = [h - g for h, g in zip(http_ms, grpc_ms, strict=True)]
    emit("browser_first_event_ms_p50", percentile(http_ms, 50), "ms", turns=n, transport="connect-web over HTTP/1.1")
    emit("browser_first_event_ms_p99", percentile(http_ms, 99), "ms", turns=n)
    emit("grpc_first_event_ms_p50", percentile(grpc_ms, 50), "ms", turns=n, transport="connect-node gRPC over HTTP/2")
    emit("grpc_first_event_ms_p99", percentile(grpc_ms, 99), "ms", turns=n)
    emit("browser_minus_grpc_first_event_ms_p50", statistics.median(diffs), "ms", pairs=n)
    emit("browser_proto_first_event_ms_p50", percentile(proto_ms, 50), "ms", turns=n, transport="connect-web, binary")
    proto_diffs = [p - g for p, g in zip(proto_ms, grpc_ms, strict=True)]
    emit("browser_proto_minus_grpc_first_event_ms_p50", statistics.median(proto_diffs), "ms", pairs=n)


async def subscribers() -> bool:
    count = SUBSCRIBER_SESSIONS * PER_SESSION
    with procs() as ps:
        cp = ps.start_control_plane("--http-port", "0")
        assert cp.proc is not None
        base_url = http_url(cp)
        async with sdk.AsyncClient(cp.target) as client:
            session_ids = []
            for _ in range(SUBSCRIBER_SESSIONS):
                session_id = (await client.create_session("shell")).session_id
                await client.send_input(session_id, "true")
                session_ids.append(session_id)
        await asyncio.sleep(SETTLE_S)
        before = rss_mib(cp.proc.pid)
        node = await asyncio.create_subprocess_exec(
            "node",
            str(CLIENT_JS),
            "subscribe",
            "--base-url",
            base_url,
            "--transport",
            "connect-web",
            "--session",
            ",".join(session_ids),
            "--per-session",
            str(PER_SESSION),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert node.stdin is not None and node.stdout is not None
        try:
            line = await asyncio.wait_for(node.stdout.readline(), 120)
            if json.loads(line or b"{}").get("ready") != count:
                raise RuntimeError(f"the subscribers did not all catch up: {line!r}")
            await asyncio.sleep(SETTLE_S)
            during = rss_mib(cp.proc.pid)
        finally:
            node.stdin.close()
            try:
                status = await asyncio.wait_for(node.wait(), 30)
            except TimeoutError:
                node.kill()
                status = await node.wait()
        left = await _connections_left(int(base_url.rsplit(":", 1)[1]))
    emit("http_stream_subscribers_1k_rss_mib", during, "MiB", subscribers=count, before_mib=round(before, 1))
    emit("http_stream_subscribers_1k_rss_growth_mib", during - before, "MiB", subscribers=count)
    emit("http_stream_subscriber_kib", (during - before) * 1024 / count, "KiB", subscribers=count)
    emit("http_stream_connections_left_after_close", left, "count")
    if status != 0:
        raise RuntimeError(f"http_client.js subscribe exited with status {status}")
    return left == 0


def _established(port: int) -> int:
    """The server's TCP connections on `port` still open on its side (ESTABLISHED, or
    CLOSE_WAIT: the client closed and the server has not yet), from /proc/net/tcp."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in ("01", "08"):
                    count += 1
    return count


async def _connections_left(port: int, timeout_s: float = 10.0) -> int:
    """The HTTP port's connections still open after the client closed its streams (0 once the
    control plane has ended every stream and closed its connection)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = _established(port)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


async def main() -> bool:
    build()
    await first_event()
    return await subscribers()
