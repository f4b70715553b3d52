"""`tether conformance --runtime NAME`: check that a runtime plugin moves the way it declares.

A runtime declares its portability (`execution_worker.runtime.Portability`); the control plane
trusts the declaration when it moves a session. This kit checks the declaration against what
the runtime really does, with two in-process workers offering it on an in-process control
plane (temporary SQLite, 127.0.0.1). Every runtime instance the workers make is wrapped, so the
kit sees what each one was started with and what it exported:

- `declared`: ListWorkers shows the declaration the factory makes.
- `turn`: a turn with the given input completes, and a snapshot stores it.
- `history`: the runtime moves with the recorded history: on the other worker a new instance
  starts from exactly the history the first one exported, a second turn completes there, and
  the history it then exports continues the earlier one.
- `state`: the runtime moves with its own state: the snapshot carries a non-empty metadata
  object, the new instance gets exactly that back in `restore_state()` before it starts, and
  a second turn completes there.
- `none`: the runtime cannot move: RestoreSession is refused RUNTIME_NOT_PORTABLE.
- `fails-closed`: a fresh instance asked to continue a session it cannot continue raises
  rather than starting empty (for `state`: empty state with history; for `none`: any
  history). A `history` runtime instead must start from history alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tether import sdk
from tether.cli._kit import KIT_TIMINGS, ScenarioFailed, expect, until
from tether.control_plane import ControlPlane, Settings
from tether.execution_worker import (
    HistoryItem,
    HistoryRole,
    Portability,
    Runtime,
    RuntimeEvent,
    RuntimeFactory,
    Worker,
    WorkerSettings,
    runtime_portability,
)


@dataclass
class Instance:
    """What one runtime instance was given and gave back."""

    worker: str
    started_with: list[HistoryItem] | None = None
    restored_with: dict[str, Any] | None = None
    runtime: Runtime | None = None


class _Recorded(Runtime):
    """A runtime instance, delegating everything and recording what the kit judges."""

    def __init__(self, inner: Runtime, record: Instance) -> None:
        self._inner = inner
        self._record = record

    async def start(self, session_id: str, workdir: pathlib.Path, history: list[HistoryItem]) -> None:
        self._record.started_with = list(history)
        await self._inner.start(session_id, workdir, history)

    def run_turn(self, turn_id: str, input: str, **kwargs: Any) -> AsyncIterator[RuntimeEvent]:
        return self._inner.run_turn(turn_id, input, **kwargs)

    async def interrupt(self, reason: str) -> None:
        await self._inner.interrupt(reason)

    async def respond(self, request_id: str, answer: dict[str, Any]) -> bool:
        return await self._inner.respond(request_id, answer)

    def export_history(self) -> list[HistoryItem]:
        return self._inner.export_history()

    def runtime_metadata(self) -> dict[str, Any]:
        return self._inner.runtime_metadata()

    def restore_state(self, state: dict[str, Any]) -> None:
        self._record.restored_with = dict(state)
        self._inner.restore_state(state)

    def workspace_dir(self, session_id: str, workdir: pathlib.Path) -> pathlib.Path | None:
        return self._inner.workspace_dir(session_id, workdir)

    @property
    def runtime_thread_id(self) -> str:
        return self._inner.runtime_thread_id

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class RuntimeKit:
    """The control plane, the two workers and the instances they made."""

    name: str
    factory: RuntimeFactory
    root: pathlib.Path
    turn_input: str
    declared: Portability = field(init=False)
    instances: list[Instance] = field(default_factory=list)
    cp: ControlPlane | None = None
    client: sdk.AsyncClient = field(init=False)
    workers: list[Worker] = field(default_factory=list)
    _running: list[asyncio.Task[None]] = field(default_factory=list)
    session_id: str = ""

    def __post_init__(self) -> None:
        self.declared = runtime_portability(self.factory)

    def _wrapped(self, worker: str) -> RuntimeFactory:
        def make() -> Runtime:
            record = Instance(worker)
            self.instances.append(record)
            record.runtime = _Recorded(self.factory(), record)
            return record.runtime

        # The workers declare what the plugin's own factory declares.
        make.portability = self.declared  # type: ignore[attr-defined]
        make.honours_output_schema = getattr(self.factory, "honours_output_schema", False)  # type: ignore[attr-defined]
        return make

    async def start(self) -> None:
        settings = Settings(
            host="127.0.0.1", port=0, db=str(self.root / "runtime-kit.db"), timings=KIT_TIMINGS, dev_owner="local"
        )
        self.cp = ControlPlane(settings)
        await self.cp.start()
        target = f"127.0.0.1:{self.cp.port}"
        self.client = sdk.AsyncClient(target, timeout_s=30)
        for n in ("a", "b"):
            settings_w = WorkerSettings(workdir=self.root / f"worker-{n}", control_plane=target, name=f"kit-{n}")
            worker = Worker(settings_w, runtimes={self.name: self._wrapped(f"kit-{n}")})
            self.workers.append(worker)
            self._running.append(asyncio.create_task(worker.run()))
        await until(lambda: _true(all(w.connected for w in self.workers)), 20, "both workers never connected")

    async def close(self) -> None:
        for worker in self.workers:
            await worker.close()
        await asyncio.gather(*self._running, return_exceptions=True)
        with contextlib.suppress(AttributeError):
            await self.client.close()
        if self.cp is not None:
            await self.cp.close()

    async def turn(self, timeout: float = 120.0) -> sdk.Turn:
        sent = await self.client.send_input(self.session_id, self.turn_input)
        done = await self.client.wait_for_turn(self.session_id, sent.turn_id, timeout_s=timeout)
        expect(
            done.state == sdk.TurnState.COMPLETED,
            f"the turn ended {done.state.name}, not COMPLETED: {done.error_message or 'no message'}",
        )
        return done

    def last_on(self, worker: str) -> Instance:
        found = [i for i in self.instances if i.worker == worker]
        expect(bool(found), f"no runtime instance was made on {worker}")
        return found[-1]

    async def holder(self) -> str:
        worker_id = (await self.client.get_session(self.session_id)).worker_id
        for w in self.workers:
            if w.worker_id == worker_id:
                return w.settings.name
        raise ScenarioFailed(f"the session is held by {worker_id or 'no worker'}, not by one of the kit's")


async def _true(value: bool) -> bool:
    return value


# -- scenarios -------------------------------------------------------------------------------


async def declared(kit: RuntimeKit) -> None:
    statuses = await kit.client.list_workers()
    shown = {s.runtime_portability.get(kit.name, "") for s in statuses}
    expect(
        shown == {kit.declared.value}, f"ListWorkers shows {sorted(shown)}, the factory declares {kit.declared.value!r}"
    )


async def turn(kit: RuntimeKit) -> None:
    kit.session_id = (await kit.client.create_session(kit.name)).session_id
    await kit.turn()
    await kit.client.create_snapshot(kit.session_id, timeout_s=60)


async def _moved(kit: RuntimeKit) -> tuple[Instance, Instance, dict[str, Any]]:
    """Restore the session onto the other worker; the instances before and after, and the
    metadata of the snapshot the move came from."""
    expect(bool(kit.session_id), "no session: the turn scenario failed")
    before = kit.last_on(await kit.holder())
    snapshot = await kit.client.get_snapshot(kit.session_id)
    metadata = json.loads(snapshot.runtime_metadata_json or "{}")
    await kit.client.restore_session(kit.session_id, timeout_s=60)
    after = kit.last_on(await kit.holder())
    expect(after is not before, "RestoreSession left the session on the same runtime instance")
    return before, after, metadata


async def history(kit: RuntimeKit) -> None:
    snapshot = await kit.client.get_snapshot(kit.session_id)
    recorded = [(h.role, h.text) for h in snapshot.history]
    expect(bool(recorded), "the snapshot holds no model-visible history: export_history() returned nothing")
    _, after, _ = await _moved(kit)
    expect(after.started_with is not None, "the new instance was never started")
    got = [(h.role.value, h.text) for h in after.started_with or []]
    want = [(HistoryRole[role.name].value, text) for role, text in recorded]
    expect(got == want, f"the new instance started from {got!r}, not the recorded history {want!r}")
    await kit.turn()
    # It continued from that history, rather than taking it and starting over.
    assert after.runtime is not None
    exported = [(h.role.value, h.text) for h in after.runtime.export_history()]
    expect(
        exported[: len(want)] == want and len(exported) > len(want),
        f"after a turn on the new worker the runtime exports {exported!r}: the earlier history {want!r} "
        "is not where it continues from",
    )


async def state(kit: RuntimeKit) -> None:
    _, after, metadata = await _moved(kit)
    expect(bool(metadata), "the snapshot's runtime metadata is empty: runtime_metadata() carries no state")
    expect(after.restored_with is not None, "restore_state() was never called on the new instance")
    expect(after.restored_with == metadata, "restore_state() got something other than the snapshot's metadata")
    expect(after.started_with is not None, "the new instance was never started")
    await kit.turn()


async def none(kit: RuntimeKit) -> None:
    expect(bool(kit.session_id), "no session: the turn scenario failed")
    try:
        await kit.client.restore_session(kit.session_id, timeout_s=60)
    except sdk.FailedPreconditionError as refused:
        expect(
            refused.reason == "RUNTIME_NOT_PORTABLE",
            f"RestoreSession was refused {refused.reason}, not RUNTIME_NOT_PORTABLE",
        )
        return
    raise ScenarioFailed("RestoreSession moved a session whose runtime declares portability none")


async def fails_closed(kit: RuntimeKit) -> None:
    """A fresh instance asked to continue: only a `history` runtime may start."""
    earlier = [HistoryItem(HistoryRole.INPUT, kit.turn_input), HistoryItem(HistoryRole.OUTPUT, "done\n")]
    runtime = kit.factory()
    workdir = kit.root / "fresh"
    workdir.mkdir(exist_ok=True)
    try:
        if kit.declared is Portability.STATE:
            runtime.restore_state({})
        await runtime.start("ses_conformance_fresh", workdir, earlier)
    except Exception as error:
        expect(
            kit.declared is not Portability.HISTORY,
            f"a history runtime must start from history alone; it raised {type(error).__name__}: {error}",
        )
        return
    finally:
        await runtime.close()
    expect(
        kit.declared is Portability.HISTORY,
        f"declared {kit.declared.value} but started with history it cannot have: it must raise, never run empty",
    )


Scenario = Callable[[RuntimeKit], Awaitable[None]]


def scenarios(declared_as: Portability) -> list[tuple[str, Scenario]]:
    move: dict[Portability, tuple[str, Scenario]] = {
        Portability.HISTORY: ("history", history),
        Portability.STATE: ("state", state),
        Portability.NONE: ("none", none),
    }
    return [("declared", declared), ("turn", turn), move[declared_as], ("fails-closed", fails_closed)]


async def run_runtime_kit(
    name: str, factory: RuntimeFactory, turn_input: str, root: pathlib.Path, echo: Callable[[str], None]
) -> int:
    """Run the scenarios for `name`'s declared portability; 0 when all passed, else 1."""
    kit = RuntimeKit(name, factory, root, turn_input)
    echo(f"runtime {name!r} declares portability {kit.declared.value}")
    failed = 0
    try:
        await kit.start()
        for scenario_name, scenario in scenarios(kit.declared):
            started = time.monotonic()
            try:
                await asyncio.wait_for(scenario(kit), timeout=180)
            except ScenarioFailed as problem:
                failed += 1
                echo(f"FAIL {scenario_name}: {problem}")
                continue
            except TimeoutError:
                failed += 1
                echo(f"FAIL {scenario_name}: did not finish within 180s")
                continue
            except sdk.TetherError as error:
                failed += 1
                echo(f"FAIL {scenario_name}: the control plane answered {error.code.name}: {error}")
                continue
            echo(f"PASS {scenario_name} ({time.monotonic() - started:.1f}s)")
    finally:
        await kit.close()
    return 1 if failed else 0
