"""The conformance kit: its control plane, the TCP proxy and the worker processes it launches.

The scenarios that drive it, and the `tether conformance` command, are in conformance.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import click

from tether import sdk
from tether.cli._proxy import TcpProxy
from tether.control_plane import ControlPlane, Settings, Timings

#: The kit's control-plane timings: short, so the whole run takes about a minute. The worker
#: learns them at Register. The worker-dead grace is longer than the events-resend blip (the
#: worker must come back without losing its lease) and shorter than the lease-loss partition.
KIT_TIMINGS = Timings(
    heartbeat_interval_s=0.25,
    liveness_timeout_s=1.5,
    lease_ttl_s=5.0,
    worker_dead_grace_s=3.0,
    offer_timeout_s=3.0,
    sticky_timeout_s=1.0,
    reconnect_backoff_initial_s=0.05,
    reconnect_backoff_max_s=0.5,
    snapshot_timeout_s=10.0,
)

#: How long the events-resend scenario cuts the worker off (less than the worker-dead grace).
BLIP_S = 1.5
#: How long the lease-loss scenario freezes the worker (more than liveness, grace and lease TTL).
FREEZE_S = KIT_TIMINGS.lease_ttl_s + 1.0
#: How long a worker gets to exit after SIGTERM when it has nothing left to finish.
DRAIN_EXIT_S = 15.0


class ScenarioFailed(Exception):
    """A scenario's expectation did not hold; the message says which and what was seen."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise ScenarioFailed(message)


async def until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    failure: str | Callable[[], str],
    period: float = 0.05,
) -> None:
    """Poll `predicate` until it holds; after `timeout` seconds raise ScenarioFailed with
    `failure` (called then, when it is a function, so it can show what happened meanwhile)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            raise ScenarioFailed(failure() if callable(failure) else failure)
        await asyncio.sleep(period)


@dataclass
class Launched:
    """One launch of a worker process and what the kit learned about it."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: pathlib.Path
    under_test: bool
    worker_id: str = ""

    @property
    def exited(self) -> bool:
        return self.popen.poll() is not None

    def signal_group(self, sig: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text)


@dataclass
class Kit:
    worker_cmd: str
    root: pathlib.Path
    cp: ControlPlane | None = None
    proxy: TcpProxy | None = None
    _client: sdk.AsyncClient | None = field(default=None, init=False, repr=False)
    launches: list[Launched] = field(default_factory=list)
    worker: Launched | None = None  # the worker under test, once registered
    resume_session: str = ""  # prepared on the reference worker before the worker under test starts
    resume_inputs: tuple[str, ...] = ("say apple", "say banana", "say cherry")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        settings = Settings(
            host="127.0.0.1", port=0, db=str(self.root / "conformance.db"), timings=KIT_TIMINGS, dev_owner="local"
        )
        self.cp = ControlPlane(settings)
        await self.cp.start()
        port = self.cp.port
        if port is None:
            raise RuntimeError("the kit's control plane started without a port")
        self.proxy = TcpProxy(port)
        await self.proxy.start()
        self._client = sdk.AsyncClient(f"127.0.0.1:{port}", timeout_s=10)

    async def close(self) -> None:
        for launched in self.launches:
            launched.kill()
        if self._client is not None:
            await self._client.close()
        if self.proxy is not None:
            await self.proxy.close()
        if self.cp is not None:
            await self.cp.close()

    @property
    def client(self) -> sdk.AsyncClient:
        """The SDK client of the kit's control plane, once started."""
        assert self._client is not None
        return self._client

    def launch_under_test(self) -> Launched:
        """Start the worker under test, dialling the proxy, in a fresh work directory."""
        assert self.proxy is not None
        n = sum(launched.under_test for launched in self.launches) + 1
        workdir = self.root / f"worker-{n}"
        workdir.mkdir()
        values = {"control_plane": self.proxy.target, "workdir": str(workdir)}
        try:
            args = shlex.split(self.worker_cmd.format(**values))
        except (KeyError, IndexError, ValueError) as exc:
            raise click.UsageError(f"--worker-cmd: {exc}; placeholders are {{control_plane}} and {{workdir}}") from None
        env = {
            **os.environ,
            "TETHER_CONTROL_PLANE": self.proxy.target,
            "TETHER_WORKDIR": str(workdir),
            "TETHER_RUNTIME": "script",
            "TETHER_SLOTS": "2",
            "TETHER_WORKER_NAME": f"conformance-{n}",
            "PYTHONUNBUFFERED": "1",
        }
        return self._spawn(f"conformance-{n}", args, env, under_test=True)

    def launch_reference(self, workdir_name: str, *extra: str) -> Launched:
        """The kit's own Python worker, dialling the control plane directly (no proxy)."""
        assert self.cp is not None
        workdir = self.root / workdir_name
        args = [
            sys.executable,
            "-m",
            "tether.execution_worker",
            "--control-plane",
            f"127.0.0.1:{self.cp.port}",
            "--runtime",
            "script",
            "--workdir",
            str(workdir),
            "--slots",
            "2",
            "--name",
            workdir_name,
            "--drain-grace-s",
            "5",
            *extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        return self._spawn(workdir_name, args, {**env, "PYTHONUNBUFFERED": "1"}, under_test=False)

    def _spawn(self, name: str, args: list[str], env: dict[str, str], *, under_test: bool) -> Launched:
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            try:
                popen = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # so the kit can kill whatever the worker started
                )
            except OSError as exc:
                raise ScenarioFailed(f"could not start {args[0]!r}: {exc}") from None
        launched = Launched(name, popen, log_path, under_test)
        self.launches.append(launched)
        return launched

    async def registered(self, launched: Launched, timeout: float = 20.0) -> sdk.WorkerStatus:
        """Wait until the launched process shows up as a connected worker named after it."""
        found: list[sdk.WorkerStatus] = []

        async def connected() -> bool:
            found[:] = [w for w in await self.client.list_workers() if w.name == launched.name and w.connected]
            if not found and launched.exited:
                raise ScenarioFailed(
                    f"the worker exited with status {launched.popen.returncode} before registering:\n" + launched.tail()
                )
            return bool(found)

        await until(
            connected,
            timeout,
            lambda: (
                f"no connected worker named {launched.name!r} after {timeout:g}s "
                f"(does it read TETHER_WORKER_NAME?); its log:\n" + launched.tail()
            ),
            period=0.1,
        )
        launched.worker_id = found[0].worker_id
        return found[0]

    async def worker_status(self, worker_id: str) -> sdk.WorkerStatus | None:
        return next((w for w in await self.client.list_workers() if w.worker_id == worker_id), None)

    # -- sessions --------------------------------------------------------------------------

    async def events(self, session_id: str) -> list[sdk.Event]:
        return [e async for e in self.client.stream_events(session_id, stop_at_end=True)]

    async def wait_event(
        self, session_id: str, what: str, predicate: Callable[[sdk.Event], bool], timeout: float = 10.0
    ) -> sdk.Event:
        try:
            async with asyncio.timeout(timeout):
                async for event in self.client.stream_events(session_id):
                    if predicate(event):
                        return event
        except TimeoutError:
            pass
        raise ScenarioFailed(f"timed out after {timeout:g}s waiting for {what}")

    async def wait_turn(self, session_id: str, turn_id: str, timeout: float = 10.0) -> sdk.Turn:
        try:
            return await self.client.wait_for_turn(session_id, turn_id, timeout_s=timeout)
        except sdk.DeadlineExceededError:
            turn = await self.client.get_turn(session_id, turn_id)
            raise ScenarioFailed(f"turn {turn_id} still {turn.state.name} after {timeout:g}s") from None

    async def run(self, session_id: str, script: str, timeout: float = 10.0) -> tuple[sdk.Turn, list[sdk.Event]]:
        """Send `script` as a turn, wait for it to end; return it with its events."""
        turn = await self.client.send_input(session_id, script)
        done = await self.wait_turn(session_id, turn.turn_id, timeout)
        return done, [e for e in await self.events(session_id) if e.turn_id == turn.turn_id]

    async def prepare_resume(self) -> None:
        """Three turns of a session on the reference worker, snapshotting every second turn,
        then the worker killed: the session's history is a snapshot plus a tail of events."""
        ref = self.launch_reference("reference-1", "--snapshot-every-turns", "2", "--snapshot-log-turns", "1")
        try:
            await self.registered(ref)
        except ScenarioFailed as exc:
            raise RuntimeError(f"the kit's reference worker did not start: {exc}") from None
        session = await self.client.create_session(runtime="script")
        for i, script in enumerate(self.resume_inputs):
            turn, _ = await self.run(session.session_id, script)
            if turn.state is not sdk.TurnState.COMPLETED:
                raise RuntimeError(f"the reference worker's turn {script!r} ended {turn.state.name}")
            if i == 1:  # the snapshot after the second turn, before the third starts
                await self._wait_snapshot(session.session_id)
        ref.kill()
        self.resume_session = session.session_id

    async def _wait_snapshot(self, session_id: str) -> None:
        async def stored() -> bool:
            try:
                return len((await self.client.get_snapshot(session_id)).history) >= 4
            except sdk.NotFoundError:
                return False

        try:
            await until(stored, 10, "the reference worker uploaded no snapshot after its second turn")
        except ScenarioFailed as exc:
            raise RuntimeError(str(exc)) from None


def outputs(events: list[sdk.Event]) -> list[str]:
    return [e.text for e in events if e.kind is sdk.EventKind.OUTPUT]


def check_gapless(events: list[sdk.Event]) -> None:
    seqs = [e.seq for e in events]
    expect(seqs == list(range(1, len(seqs) + 1)), f"the log's sequence numbers are not gapless: {seqs}")
