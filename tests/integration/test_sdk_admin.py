"""The SDK's restore, worker listing and drain calls, and the CLI commands over them, against a
small in-process fake control plane (SessionService.RestoreSession and AdminService) on port 0.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tether import sdk
from tether.cli._group import worker_group
from tether.sdk import _convert
from tether.sdk._errors import translate_rpc_error
from tether.sdk.cli import session as session_cli
from tether.v1 import admin_service_pb2 as apb
from tether.v1 import admin_service_pb2_grpc as agrpc
from tether.v1 import resources_pb2, session_service_pb2, session_service_pb2_grpc

# `tether worker`: the worker's group with the SDK's operator commands, as the umbrella CLI composes it.
worker_cli = worker_group()


def _status_metadata(code: grpc.StatusCode, reason: str, message: str) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=code.value[0], message=message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tether.dev"))
    status.details.append(detail)
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def _abort(context, code: grpc.StatusCode, reason: str, message: str) -> None:
    await context.abort(code, message, trailing_metadata=_status_metadata(code, reason, message))


def _worker(worker_id: str, *, connected: bool = True, draining: bool = False) -> apb.WorkerStatus:
    return apb.WorkerStatus(
        worker_id=worker_id,
        name=f"host-{worker_id}",
        runtimes=["shell"],
        labels={"pool": "a"},
        slots=4,
        running_turns=1,
        held_sessions=2,
        connected=connected,
        draining=draining,
        register_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        version="0.1.0",
    )


class FakeSessions(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(self) -> None:
        self.restores: list[session_service_pb2.RestoreSessionRequest] = []

    async def RestoreSession(self, request, context):
        self.restores.append(request)
        if request.session_id == "ses_busy":
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "SESSION_BUSY", "a turn is running")
        if request.session_id == "ses_broken":
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "REHYDRATION_FAILED", "rehydration failed: Resume failed"
            )
        return session_service_pb2.RestoreSessionResponse(
            session=resources_pb2.Session(
                session_id=request.session_id,
                runtime="shell",
                worker_id=request.worker_id or "wkr_any",
                lease_epoch=4,
                state=resources_pb2.SESSION_STATE_IDLE,
            )
        )


class FakeAdmin(agrpc.AdminServiceServicer):
    def __init__(self) -> None:
        self.drains: list[apb.DrainWorkerRequest] = []

    async def ListWorkers(self, request, context):
        return apb.ListWorkersResponse(workers=[_worker("wkr_1"), _worker("wkr_2", connected=False)])

    async def DrainWorker(self, request, context):
        self.drains.append(request)
        if request.worker_id != "wkr_1":
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "WORKER_NOT_CONNECTED",
                f"worker {request.worker_id} is not connected",
            )
        return apb.DrainWorkerResponse(worker=_worker("wkr_1", draining=True))


async def _start() -> tuple[grpc.aio.Server, FakeSessions, FakeAdmin, str]:
    sessions, admin = FakeSessions(), FakeAdmin()
    server = grpc.aio.server()
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(sessions, server)
    agrpc.add_AdminServiceServicer_to_server(admin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, sessions, admin, f"127.0.0.1:{port}"


@pytest.fixture
async def fake():
    server, sessions, admin, target = await _start()
    try:
        yield sessions, admin, target
    finally:
        await server.stop(None)


@pytest.fixture
def threaded_fake():
    """The fake on its own loop, for the blocking client and the CLI."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, sessions, admin, target = asyncio.run_coroutine_threadsafe(_start(), loop).result(5)
    try:
        yield sessions, admin, target
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# -- errors and conversion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "cls"),
    [
        ("SESSION_BUSY", sdk.SessionBusyError),
        ("WORKER_NOT_CONNECTED", sdk.WorkerNotConnectedError),
        ("REHYDRATION_FAILED", sdk.RehydrationFailedError),
        ("NO_WORKER", sdk.FailedPreconditionError),
    ],
)
def test_new_reasons_have_typed_errors_under_failed_precondition(reason, cls):
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*_status_metadata(grpc.StatusCode.FAILED_PRECONDITION, reason, "no")),
        details="no",
    )
    translated = translate_rpc_error(error)
    assert type(translated) is cls and translated.reason == reason
    assert isinstance(translated, sdk.FailedPreconditionError)


def test_the_exception_tree_docstring_names_every_exported_error():
    from tether.sdk import _errors

    exported = [name for name in sdk.__all__ if name.endswith("Error")]
    assert exported and all(name in _errors.__doc__ for name in exported)


def test_events_carry_worker_lost_and_lease_epoch():
    lost = _convert.event_from_proto(
        resources_pb2.Event(
            session_id="ses_1",
            seq=9,
            turn_id="trn_1",
            lease_epoch=0,
            body=resources_pb2.EventBody(turn_failed=resources_pb2.TurnFailed(error_message="gone", worker_lost=True)),
        )
    )
    assert lost.kind == "turn_failed" and lost.worker_lost and lost.lease_epoch == 0 and lost.is_terminal
    written = _convert.event_from_proto(
        resources_pb2.Event(
            session_id="ses_1",
            seq=3,
            turn_id="trn_1",
            lease_epoch=2,
            body=resources_pb2.EventBody(output=resources_pb2.OutputChunk(text="x")),
        )
    )
    assert written.lease_epoch == 2 and not written.worker_lost


def test_worker_status_conversion():
    status = _convert.worker_status_from_proto(_worker("wkr_1", draining=True))
    assert status == sdk.WorkerStatus(
        worker_id="wkr_1",
        name="host-wkr_1",
        runtimes=["shell"],
        labels={"pool": "a"},
        slots=4,
        running_turns=1,
        held_sessions=2,
        connected=True,
        draining=True,
        register_time=status.register_time,
        version="0.1.0",
    )
    assert status.register_time.tzinfo is UTC
    assert _convert.worker_status_from_proto(apb.WorkerStatus(worker_id="w")).register_time is None


# -- the async client ----------------------------------------------------------------------------


async def test_restore_session_sends_selector_and_worker_id(fake):
    sessions, _, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        restored = await client.restore_session("ses_1", {"gpu": "yes"}, "wkr_9")
        assert (restored.session_id, restored.worker_id, restored.lease_epoch) == ("ses_1", "wkr_9", 4)
        await client.restore_session("ses_2")
    first, second = sessions.restores
    assert (dict(first.worker_selector), first.worker_id) == ({"gpu": "yes"}, "wkr_9")
    assert (dict(second.worker_selector), second.worker_id) == ({}, "")


async def test_restore_session_errors_are_typed(fake):
    _, _, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        with pytest.raises(sdk.SessionBusyError):
            await client.restore_session("ses_busy")
        with pytest.raises(sdk.RehydrationFailedError) as info:
            await client.restore_session("ses_broken", worker_id="wkr_2")
        assert "Resume failed" in info.value.message


async def test_list_and_drain_workers(fake):
    _, admin, target = fake
    async with sdk.AsyncClient(target, timeout_s=5) as client:
        workers = await client.list_workers()
        assert [(w.worker_id, w.connected) for w in workers] == [("wkr_1", True), ("wkr_2", False)]
        assert all(isinstance(w, sdk.WorkerStatus) for w in workers)
        drained = await client.drain_worker("wkr_1", grace_s=2.5)
        assert drained.draining and drained.worker_id == "wkr_1"
        await client.drain_worker("wkr_1")
        with pytest.raises(sdk.WorkerNotConnectedError):
            await client.drain_worker("wkr_2")
        with pytest.raises(ValueError):
            await client.drain_worker("wkr_1", grace_s=-1)
    with_grace, without_grace, _ = admin.drains
    assert with_grace.HasField("grace") and with_grace.grace.ToTimedelta().total_seconds() == 2.5
    assert not without_grace.HasField("grace")


def test_sync_client_has_the_same_calls(threaded_fake):
    sessions, admin, target = threaded_fake
    with sdk.Client(target, timeout_s=5) as client:
        assert client.restore_session("ses_1", worker_id="wkr_3").worker_id == "wkr_3"
        assert [w.worker_id for w in client.list_workers()] == ["wkr_1", "wkr_2"]
        assert client.drain_worker("wkr_1", 1.0).draining
        with pytest.raises(sdk.WorkerNotConnectedError):
            client.drain_worker("wkr_2")


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_session_restore(threaded_fake):
    sessions, _, target = threaded_fake
    runner = CliRunner()
    result = runner.invoke(
        session_cli,
        [
            "--control-plane",
            target,
            "restore",
            "ses_1",
            "--selector",
            "gpu=yes",
            "--selector",
            "zone=b",
            "--worker-id",
            "wkr_7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ses_1 worker=wkr_7 epoch=4"
    assert dict(sessions.restores[-1].worker_selector) == {"gpu": "yes", "zone": "b"}

    busy = runner.invoke(session_cli, ["--control-plane", target, "restore", "ses_busy"])
    assert busy.exit_code == 1
    assert busy.stderr.strip() == "error: a turn is running (SESSION_BUSY)"


def test_cli_worker_list_and_drain(threaded_fake, monkeypatch):
    _, admin, target = threaded_fake
    monkeypatch.delenv("TETHER_CONTROL_PLANE", raising=False)
    runner = CliRunner()
    # --control-plane before the subcommand (the group's) or after it (the command's own).
    listed = runner.invoke(worker_cli, ["--control-plane", target, "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("wkr_1  connected") and lines[1].startswith("wkr_2  disconnected")
    as_json = runner.invoke(worker_cli, ["list", "--control-plane", target, "--json"])
    assert [w["worker_id"] for w in json.loads(as_json.stdout)["workers"]] == ["wkr_1", "wkr_2"]

    drained = runner.invoke(worker_cli, ["drain", "wkr_1", "--grace-s", "3", "--control-plane", target])
    assert drained.exit_code == 0, drained.output
    assert drained.stdout.strip() == "wkr_1 draining"
    assert admin.drains[-1].grace.seconds == 3
    missing = runner.invoke(worker_cli, ["--control-plane", target, "drain", "wkr_2"])
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: worker wkr_2 is not connected (WORKER_NOT_CONNECTED)"


def test_cli_worker_admin_reads_the_environment_but_a_flag_wins(threaded_fake, monkeypatch):
    _, _, target = threaded_fake
    runner = CliRunner()
    monkeypatch.setenv("TETHER_CONTROL_PLANE", target)
    assert runner.invoke(worker_cli, ["list"]).exit_code == 0
    monkeypatch.setenv("TETHER_CONTROL_PLANE", "127.0.0.1:1")
    assert runner.invoke(worker_cli, ["--control-plane", target, "list"]).exit_code == 0


def test_cli_worker_help_shows_both_forms():
    result = CliRunner().invoke(worker_cli, ["--help"])
    assert result.exit_code == 0
    assert "Usage: worker [OPTIONS] [COMMAND [ARGS]...]" in result.stdout
    for expected in ("--runtime", "--snapshot-every-turns", "drain", "list"):
        assert expected in result.stdout
    assert "WORKER_ID" in CliRunner().invoke(worker_cli, ["drain", "--help"]).stdout


def test_cli_worker_without_a_command_still_runs_a_worker(monkeypatch, tmp_path):
    """`tether worker --control-plane ... --runtime ...` builds settings and runs the worker."""
    from tether.execution_worker import _process

    seen = {}

    async def fake_serve(settings, *runtime_settings):
        seen["settings"] = settings
        return 0

    monkeypatch.setattr(_process, "serve", fake_serve)
    result = CliRunner().invoke(
        worker_cli,
        [
            "--control-plane",
            "127.0.0.1:9",
            "--runtime",
            "shell",
            "--workdir",
            str(tmp_path),
            "--slots",
            "3",
            "--snapshot-every-turns",
            "0",
            "--log-level",
            "ERROR",
        ],
    )
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert (settings.control_plane, settings.slots, settings.snapshot_every_turns) == ("127.0.0.1:9", 3, 0)
    monkeypatch.setenv("TETHER_SNAPSHOT_EVERY_TURNS", "5")
    CliRunner().invoke(worker_cli, ["--workdir", str(tmp_path), "--log-level", "ERROR"])
    assert seen["settings"].snapshot_every_turns == 5
