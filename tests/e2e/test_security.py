"""Owners, keys, pairing, worker tokens and limits: nobody reaches work that is not theirs.

The cross-owner probe (`bench/security.py`, also `make bench`) calls every RPC of every
service across the owner boundary; the tests here cover the rest of the adversarial ground:
credentials of the wrong kind, backend keys, replayed, expired and raced pairing codes, guessed
codes, a token revoked mid-stream, per-owner limits, and secrets kept out of logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from bench.security import run_probe
from tests.helpers.processes import FAST, ROOT, ControlPlaneProcess, eventually, worker_args
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.domain.access import Limits, normalize_code, secret_hash
from tether.execution_worker import Worker, WorkerSettings
from tether.execution_worker._credentials import load_credentials, pair
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wpb_grpc


@pytest.fixture
async def secure_cp(tmp_path: pathlib.Path) -> AsyncIterator[ControlPlane]:
    """An in-process control plane that requires credentials (no --dev)."""
    async with ControlPlane(Settings(port=0, db=str(tmp_path / "secure.db"), timings=FAST)) as cp:
        yield cp


def _target(cp: ControlPlane) -> str:
    return f"127.0.0.1:{cp.port}"


async def _client(cp: ControlPlane, owner: str) -> sdk.AsyncClient:
    return sdk.AsyncClient(_target(cp), api_key=await cp.create_api_key("owner", owner))


async def _turn_ended(client: sdk.AsyncClient, session_id: str, turn_id: str) -> bool:
    return (await client.get_turn(session_id, turn_id)).state in (
        sdk.TurnState.COMPLETED,
        sdk.TurnState.FAILED,
        sdk.TurnState.INTERRUPTED,
    )


async def _reason(coro) -> tuple[grpc.StatusCode | None, str, str]:
    try:
        await coro
    except sdk.TetherError as err:
        return err.code, err.reason, str(err)
    except grpc.aio.AioRpcError as err:
        return err.code(), "", err.details() or ""
    return None, "", ""


class _InProcessWorker:
    """A real `Worker` on the test's loop, with a token from pairing."""

    def __init__(self, target: str, workdir: pathlib.Path, worker_id: str, token: str, **kw: object) -> None:
        settings = WorkerSettings(
            workdir=workdir, control_plane=target, runtimes=("script",), worker_id=worker_id, token=token, **kw
        )
        self.worker = Worker(settings)
        self.task = asyncio.create_task(self.worker.run())

    async def close(self) -> None:
        await self.worker.close()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_cross_owner_probe_finds_no_leak(tmp_path: pathlib.Path) -> None:
    probe = await run_probe(tmp_path)
    assert probe.calls >= 50
    assert probe.leaks == []


async def test_offers_only_reach_workers_of_the_sessions_owner(secure_cp: ControlPlane, tmp_path: pathlib.Path) -> None:
    alice, bob = await _client(secure_cp, "alice"), await _client(secure_cp, "bob")
    target = _target(secure_cp)
    bob_creds = await pair(target, (await bob.create_pairing_code()).code, "bob-1")
    bob_worker = _InProcessWorker(target, tmp_path / "bob", bob_creds.worker_id, bob_creds.token)
    alice_worker = None
    try:
        a = await alice.create_session("script")
        a_turn = await alice.send_input(a.session_id, "say alice")
        b = await bob.create_session("script")
        b_turn = await bob.send_input(b.session_id, "say bob")
        await eventually(lambda: _turn_ended(bob, b.session_id, b_turn.turn_id), what="bob's turn on bob's worker")
        # Bob's worker was free all along and never got Alice's turn.
        assert (await alice.get_turn(a.session_id, a_turn.turn_id)).state == sdk.TurnState.QUEUED
        alice_creds = await pair(target, (await alice.create_pairing_code()).code, "alice-1")
        alice_worker = _InProcessWorker(target, tmp_path / "alice", alice_creds.worker_id, alice_creds.token)
        await eventually(lambda: _turn_ended(alice, a.session_id, a_turn.turn_id), what="alice's turn on her worker")
        started = [
            e async for e in alice.stream_events(a.session_id, stop_at_end=True) if e.kind == sdk.EventKind.TURN_STARTED
        ]
        assert [e.worker_id for e in started] == [alice_creds.worker_id]
        assert [w.worker_id for w in await alice.list_workers()] == [alice_creds.worker_id]
        assert [w.owner for w in await bob.list_workers()] == ["bob"]
        assert (await alice.get_session(a.session_id)).owner == "alice"
    finally:
        for w in (bob_worker, alice_worker):
            if w is not None:
                await w.close()
        await alice.close()
        await bob.close()


async def test_credentials_of_the_wrong_kind_and_backend_keys(secure_cp: ControlPlane) -> None:
    target = _target(secure_cp)
    alice = await _client(secure_cp, "alice")
    session = await alice.create_session("shell")
    creds = await pair(target, (await alice.create_pairing_code()).code, "w")
    backend_key = await secure_cp.create_api_key("backend", name="host app")
    admin_key = await secure_cp.create_api_key("admin")
    channel = grpc.aio.insecure_channel(target)
    workers = wpb_grpc.WorkerServiceStub(channel)
    try:
        async with sdk.AsyncClient(target) as anonymous:
            code, reason, _ = await _reason(anonymous.get_session(session.session_id))
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        async with sdk.AsyncClient(target, api_key="tak_made-up") as unknown:
            code, reason, message = await _reason(unknown.list_sessions())
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
            assert "made-up" not in message
        async with sdk.AsyncClient(target, api_key=creds.token) as token_as_key:
            code, reason, message = await _reason(token_as_key.get_session(session.session_id))
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
            assert creds.token not in message
        key_as_token = (("authorization", f"Bearer {backend_key}"),)
        code, _, _ = await _reason(
            workers.Register(
                wpb.RegisterRequest(worker_id="w1", runtimes=["shell"], slots=1), metadata=key_as_token, timeout=5
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _, _ = await _reason(
            workers.Register(wpb.RegisterRequest(worker_id="w1", runtimes=["shell"], slots=1), timeout=5)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        async with sdk.AsyncClient(target, api_key=backend_key) as no_owner:
            code, reason, message = await _reason(no_owner.list_sessions())
            assert (code, reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_ARGUMENT",
            ) and "x-tether-owner" in message
        async with sdk.AsyncClient(target, api_key=backend_key, owner="alice") as as_alice:
            assert (await as_alice.get_session(session.session_id)).owner == "alice"
        async with sdk.AsyncClient(target, api_key=backend_key, owner="mallory") as as_mallory:
            code, reason, _ = await _reason(as_mallory.get_session(session.session_id))
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
            assert (await as_mallory.list_sessions()).sessions == []
        async with sdk.AsyncClient(
            target, api_key=(await secure_cp.create_api_key("owner", "bob")), owner="alice"
        ) as bob_as_alice:
            code, _, _ = await _reason(bob_as_alice.get_session(session.session_id))
            assert code == grpc.StatusCode.PERMISSION_DENIED
        async with sdk.AsyncClient(target, api_key=admin_key) as admin:
            # An admin key without an owner sees every owner's workers, and no sessions.
            await workers.Register(
                wpb.RegisterRequest(worker_id=creds.worker_id, runtimes=["shell"], slots=1),
                metadata=(("authorization", f"Bearer {creds.token}"),),
                timeout=5,
            )
            assert [w.owner for w in await admin.list_workers()] == ["alice"]
            code, _, message = await _reason(admin.list_sessions())
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "x-tether-owner" in message
        # A token is bound to its worker id: it cannot register as another worker.
        code, _, message = await _reason(
            workers.Register(
                wpb.RegisterRequest(worker_id="someone-else", runtimes=["shell"], slots=1),
                metadata=(("authorization", f"Bearer {creds.token}"),),
                timeout=5,
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and creds.worker_id in message
    finally:
        await channel.close()
        await alice.close()


async def test_a_revoked_api_key_stops_working(secure_cp: ControlPlane) -> None:
    key = await secure_cp.create_api_key("owner", "alice")
    async with sdk.AsyncClient(_target(secure_cp), api_key=key) as alice:
        await alice.list_sessions()
        (listed,) = await secure_cp.access.list_api_keys()
        await secure_cp.access.revoke_api_key(listed.key_id)

        async def refused() -> bool:
            code, reason, _ = await _reason(alice.list_sessions())
            return (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")

        await eventually(refused, timeout=5, what="the revoked key to be refused (cache of 2s)")


async def test_pairing_codes_work_once_expire_and_race(secure_cp: ControlPlane) -> None:
    target = _target(secure_cp)
    async with await _client(secure_cp, "alice") as alice:
        code = await alice.create_pairing_code()
        assert code.owner == "alice" and len(code.code) == 9
        first = await pair(target, code.code.lower().replace("-", ""), "w1")  # case and dash do not matter
        assert first.owner == "alice" and first.worker_id.startswith("wrk_") and first.token.startswith("twt_")
        with pytest.raises(grpc.aio.AioRpcError) as replay:
            await pair(target, code.code, "w2")
        assert replay.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "PAIRING_CODE_INVALID" in str(replay.value.trailing_metadata())

        short = await alice.create_pairing_code(ttl_s=1)
        await eventually(lambda: datetime.now(UTC) > short.expire_time, timeout=3, what="the code to expire")
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await pair(target, short.code, "late")
        assert expired.value.code() == grpc.StatusCode.UNAUTHENTICATED

        raced = await alice.create_pairing_code()
        results = await asyncio.gather(
            *(pair(target, raced.code, f"racer-{i}") for i in range(8)), return_exceptions=True
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [
            r for r in results if isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.UNAUTHENTICATED
        ]
        assert len(winners) == 1 and len(losers) == 7
        tokens = await alice.list_worker_tokens()
        assert sorted(t.worker_id for t in tokens) == sorted([first.worker_id, winners[0].worker_id])
        # Codes and tokens are stored hashed only.
        db = pathlib.Path(secure_cp.settings.db)
        dump = "\n".join(sqlite3.connect(db).iterdump())
        for secret in (code.code, raced.code, first.token, winners[0].token):
            assert secret not in dump and secret.replace("-", "") not in dump


async def test_guessed_pairing_codes_are_rate_limited(tmp_path: pathlib.Path) -> None:
    limits = Limits(pairing_failures_per_minute=3)
    async with ControlPlane(Settings(port=0, db=str(tmp_path / "x.db"), timings=FAST, limits=limits)) as cp:
        target = _target(cp)
        async with await _client(cp, "alice") as alice:
            good = await alice.create_pairing_code()
            for guess in ("AAAA-AAAA", "BBBB-BBBB", "CCCC-CCCC"):
                with pytest.raises(grpc.aio.AioRpcError) as wrong:
                    await pair(target, guess, "guesser")
                assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as limited:
                await pair(target, good.code, "guesser")  # even a good code waits out the limit
            assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "pairing_failures_per_minute=3" in limited.value.details()
            # The limited attempt did not burn the good code.
            assert _consumed_times(cp, good.code) == [(0,)]


def _consumed_times(cp: ControlPlane, code: str) -> list[tuple[int]]:
    rows = sqlite3.connect(cp.settings.db).execute(
        "SELECT consumed_time_us FROM pairing_codes WHERE code_hash = ?", (secret_hash(normalize_code(code)),)
    )
    return rows.fetchall()


async def test_a_token_revoked_mid_stream_cuts_the_worker_off_and_its_session_moves(
    tmp_path: pathlib.Path, procs
) -> None:
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", dev=False)
    cp.start()
    try:
        key = subprocess.run(
            [sys.executable, "-m", "tether.cli", "keys", "create", "--owner", "alice", "--db", str(cp.db)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
        async with sdk.AsyncClient(cp.target, api_key=key) as alice:
            first_code = (await alice.create_pairing_code()).code
            w1 = procs(
                worker_args(cp.target, tmp_path / "w1", 2, "--runtime", "script", "--pairing-code", first_code), "w1"
            )
            token_file = tmp_path / "w1" / ".tether" / "token.json"
            await eventually(lambda: token_file.exists(), what="the worker to pair")
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            creds = load_credentials(token_file)
            session = await alice.create_session("script")
            long_turn = await alice.send_input(session.session_id, "say started\nsleep 30000")

            async def running() -> bool:
                return (await alice.get_turn(session.session_id, long_turn.turn_id)).state == sdk.TurnState.RUNNING

            await eventually(running, what="the long turn to run on w1")
            revoked = await alice.revoke_worker_token(creds.token_id)
            assert revoked.revoked
            assert await asyncio.to_thread(w1.popen.wait, 15) == 3
            assert "TOKEN_REVOKED" in w1.output() and creds.token not in w1.output()
            await eventually(
                lambda: _turn_ended(alice, session.session_id, long_turn.turn_id),
                timeout=15,
                what="the revoked worker's turn to end by the lease rules",
            )
            assert (await alice.get_turn(session.session_id, long_turn.turn_id)).state == sdk.TurnState.FAILED
            # A new worker takes the session over by rehydration.
            w2 = procs(
                worker_args(
                    cp.target,
                    tmp_path / "w2",
                    2,
                    "--runtime",
                    "script",
                    "--pairing-code",
                    (await alice.create_pairing_code()).code,
                ),
                "w2",
            )
            nxt = await alice.send_input(session.session_id, "recall")
            await eventually(
                lambda: _turn_ended(alice, session.session_id, nxt.turn_id), timeout=20, what="the next turn on w2"
            )
            assert (await alice.get_turn(session.session_id, nxt.turn_id)).state == sdk.TurnState.COMPLETED
            w2.stop()
            # The revoked token is refused everywhere, at once.
            channel = grpc.aio.insecure_channel(cp.target)
            try:
                stub = wpb_grpc.WorkerServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Register(
                        wpb.RegisterRequest(worker_id=creds.worker_id, runtimes=["script"], slots=1),
                        metadata=(("authorization", f"Bearer {creds.token}"),),
                        timeout=5,
                    )
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            finally:
                await channel.close()
    finally:
        cp.stop()
        assert creds.token not in cp.proc.output() and key not in cp.proc.output()


async def test_revocation_ends_open_worker_streams_at_once(secure_cp: ControlPlane) -> None:
    target = _target(secure_cp)
    async with await _client(secure_cp, "alice") as alice:
        creds = await pair(target, (await alice.create_pairing_code()).code, "w")
        md = (("authorization", f"Bearer {creds.token}"),)
        channel = grpc.aio.insecure_channel(target)
        try:
            stub = wpb_grpc.WorkerServiceStub(channel)
            reg = await stub.Register(
                wpb.RegisterRequest(worker_id=creds.worker_id, runtimes=["script"], slots=1), metadata=md, timeout=5
            )
            requests: asyncio.Queue = asyncio.Queue()

            async def outgoing():
                while (item := await requests.get()) is not None:
                    yield item

            lease = stub.Lease(outgoing(), metadata=md, timeout=30)
            requests.put_nowait(
                wpb.LeaseRequest(open=wpb.LeaseOpen(worker_id=creds.worker_id, registration_id=reg.registration_id))
            )
            assert (await lease.read()).WhichOneof("kind") == "opened"
            loop = asyncio.get_running_loop()
            started = loop.time()
            await alice.revoke_worker_token(creds.token_id)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    msg = await lease.read()
                    assert msg is not grpc.aio.EOF
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert loop.time() - started < 1.0  # at once, not at the next heartbeat deadline
            requests.put_nowait(None)
        finally:
            await channel.close()


async def test_limits_are_per_owner_and_named(tmp_path: pathlib.Path) -> None:
    limits = Limits(
        max_active_sessions_per_owner=2, max_queued_turns_per_owner=3, max_pending_pairing_codes_per_owner=2
    )
    async with ControlPlane(Settings(port=0, db=str(tmp_path / "x.db"), timings=FAST, limits=limits)) as cp:
        async with await _client(cp, "alice") as alice, await _client(cp, "bob") as bob:
            # No worker: every turn stays queued.
            s1, s2, s3 = [await alice.create_session("script") for _ in range(3)]
            await alice.send_input(s1.session_id, "say 1")
            await alice.send_input(s2.session_id, "say 2")
            code, reason, message = await _reason(alice.send_input(s3.session_id, "say 3"))
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED")
            assert "max_active_sessions_per_owner=2" in message
            await alice.send_input(s1.session_id, "say 1b")  # an already active session may queue more
            code, _, message = await _reason(alice.send_input(s2.session_id, "say 2b"))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_turns_per_owner=3" in message
            # Nothing was written for the refused input.
            assert (await alice.get_session(s3.session_id)).turn_count == 0
            assert (await alice.get_session(s2.session_id)).turn_count == 1
            # Bob is not degraded by Alice's limits.
            b = await bob.create_session("script")
            await bob.send_input(b.session_id, "say bob")
            await bob.send_input(b.session_id, "say bob again")
            await alice.create_pairing_code()
            await alice.create_pairing_code()
            code, _, message = await _reason(alice.create_pairing_code())
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_pending_pairing_codes_per_owner=2" in message
            await bob.create_pairing_code()


async def test_the_event_rate_limit_slows_a_worker_but_loses_nothing(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(events_per_second_per_session=40, event_burst_per_session=20)
    async with ControlPlane(Settings(port=0, db=str(tmp_path / "x.db"), timings=FAST, limits=limits)) as cp:
        async with await _client(cp, "alice") as alice:
            creds = await pair(_target(cp), (await alice.create_pairing_code()).code, "w")
            worker = _InProcessWorker(_target(cp), tmp_path / "w", creds.worker_id, creds.token, snapshot_every_turns=0)
            try:
                session = await alice.create_session("script")
                # Small pauses keep the worker's batches small, so the bucket runs dry mid-turn.
                lines = [f"say line {i}\nsleep 5" for i in range(60)]
                turn = await alice.send_input(session.session_id, "\n".join(lines))
                await eventually(
                    lambda: _turn_ended(alice, session.session_id, turn.turn_id), timeout=30, what="the chatty turn"
                )
                out = "".join(
                    [
                        e.text
                        async for e in alice.stream_events(session.session_id, stop_at_end=True)
                        if e.kind == sdk.EventKind.OUTPUT
                    ]
                )
                assert out.splitlines() == [f"line {i}" for i in range(60)]
                # The worker was refused with the limit named, and resent until all were stored.
                assert "limit events_per_second_per_session=40 reached" in caplog.text
            finally:
                await worker.close()


def test_secrets_stay_out_of_logs_and_messages(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[str]:
        async with ControlPlane(Settings(port=0, db=str(tmp_path / "x.db"), timings=FAST)) as cp:
            key = await cp.create_api_key("owner", "alice")
            async with sdk.AsyncClient(_target(cp), api_key=key) as alice:
                code = (await alice.create_pairing_code()).code
                creds = await pair(_target(cp), code, "w")
                await alice.revoke_worker_token(creds.token_id)
                errors = []
                for secret in (key + "x", creds.token, "twt_guess"):
                    async with sdk.AsyncClient(_target(cp), api_key=secret) as c:
                        errors.append((await _reason(c.list_sessions()))[2])
                try:
                    await pair(_target(cp), code, "again")
                except grpc.aio.AioRpcError as err:
                    errors.append(err.details() or "")
                return [key, code, code.replace("-", ""), creds.token, *errors]

    with caplog.at_level(logging.DEBUG):
        key, code, bare, token, *messages = asyncio.run(scenario())
    text = caplog.text + "\n".join(messages)
    assert messages and all(m for m in messages)
    for secret in (key, code, bare, token):
        assert secret not in text


def test_a_database_from_before_owners_is_refused_by_serve_and_upgraded_by_tether_db(tmp_path: pathlib.Path) -> None:
    from sqlalchemy import create_engine as create_sync_engine

    from tests.helpers import legacy_schema
    from tether.control_plane.store import SCHEMA_HEAD

    db = tmp_path / "old.db"
    engine = create_sync_engine(f"sqlite:///{db}")
    legacy_schema.Base.metadata.create_all(engine)  # as the release before owners did
    engine.dispose()
    serve = [sys.executable, "-m", "tether.control_plane", "--port", "0", "--db", str(db)]
    done = subprocess.run(serve, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"Error: the database {db} was made before migrations (its tables are revision 0001), this release needs "
        f"{SCHEMA_HEAD}: run `tether db upgrade --db {db}` (or start with --migrate)"
    )
    upgraded = subprocess.run(
        [sys.executable, "-m", "tether.cli", "db", "upgrade", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert upgraded.returncode == 0 and f"from 0001 to {SCHEMA_HEAD}" in upgraded.stdout, upgraded.stderr
    cp = ControlPlaneProcess(tmp_path, db, dev=False)
    cp.start()  # an owner-less database is now one with owners: served with keys, not refused
    cp.stop()


def test_dev_mode_is_refused_off_loopback(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.control_plane",
            "--dev",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "TETHER_DEV": ""},
    )
    assert done.returncode == 2 and "loopback" in done.stderr


def test_worker_pair_command_writes_an_owner_only_token_file(tmp_path: pathlib.Path) -> None:
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", dev=False)
    cp.start()
    try:

        def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, **kw
            )

        key = run("keys", "create", "--owner", "carol", "--db", str(cp.db)).stdout.strip()
        env = {**os.environ, "TETHER_API_KEY": key, "TETHER_CONTROL_PLANE": cp.target}
        printed = run("pair", env=env)
        assert printed.returncode == 0, printed.stderr
        code = printed.stdout.split()[0]
        paired = run(
            "worker", "--control-plane", cp.target, "--workdir", str(tmp_path / "w"), "pair", "--code", code, env=env
        )
        assert paired.returncode == 0, paired.stderr
        token_file = tmp_path / "w" / ".tether" / "token.json"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        creds = load_credentials(token_file)
        assert creds.owner == "carol" and creds.token not in paired.stdout + paired.stderr
        again = run(
            "worker", "--control-plane", cp.target, "--workdir", str(tmp_path / "w2"), "pair", "--code", code, env=env
        )
        assert again.returncode == 1 and "PAIRING_CODE_INVALID" in again.stderr
        listed = run("worker", "tokens", env=env)
        assert creds.token_id in listed.stdout and "valid" in listed.stdout
    finally:
        cp.stop()
