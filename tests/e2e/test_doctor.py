"""`tether doctor` as a user runs it: the real command in a process, against real control
planes (`tether serve` processes, plaintext, TLS and mutual TLS, with and without --dev), real
databases, a real worker token, and real runtimes (the pinned Codex CLI when installed).

Every check that can fail has a test that makes it fail and checks the fix it names; one test
makes every check pass. Two failures need a server that misbehaves, which a real control plane
never does on demand: a health service that reports NOT_SERVING and a contract that differs
from this installation's are served by a small gRPC server of the test's own (`_odd_server`),
serving the standard health and reflection services. Clock skew is made by handing the check a
skewed clock (`clock_check`'s `clock` parameter), against a real control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import click
import grpc
import pytest
from alembic import command
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tests.helpers.certs import CertificateAuthority
from tests.helpers.codex_mock import codex_bin
from tests.helpers.processes import ROOT, ControlPlaneProcess
from tether import sdk
from tether.cli._doctor_checks import Dial, clock_check
from tether.control_plane.store import SCHEMA_HEAD, _migrate, create_engine, database_url, describe_database
from tether.v1 import session_service_pb2

DOCTOR_TIMEOUT_S = 120
#: Codex credentials this machine may hold, which would make a "no credentials" test pass.
AMBIENT_CREDENTIALS = ("OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_HOME")


@dataclass
class Report:
    returncode: int
    stdout: str
    stderr: str

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def check(self, name: str) -> dict[str, Any]:
        found = [c for c in self.document["checks"] if c["name"] == name]
        assert len(found) == 1, f"no single check {name!r} in:\n{self.stdout}\n{self.stderr}"
        return found[0]

    def status(self, name: str) -> str:
        return str(self.check(name)["status"])

    def statuses(self) -> dict[str, str]:
        return {c["name"]: c["status"] for c in self.document["checks"]}


async def doctor(*args: str, env: dict[str, str] | None = None, as_json: bool = True) -> Report:
    """Run `tether doctor ARGS` in a process (so an in-process server keeps answering), with no
    TETHER_* variable or model-provider credential but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_") and k not in AMBIENT_CREDENTIALS}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.cli",
        "doctor",
        *args,
        *(["--json"] if as_json else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, **(env or {})},
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), DOCTOR_TIMEOUT_S)
    report = Report(proc.returncode if proc.returncode is not None else -1, out.decode(), err.decode())
    assert "Traceback" not in report.stderr, report.stderr
    return report


def nothing_listens() -> str:
    """An address on which nothing listens (a port that was free a moment ago)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def tether(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"tether {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def assert_fails_with_fix(report: Report, name: str, *fix_words: str) -> dict[str, Any]:
    assert report.returncode == 1, report.stdout + report.stderr
    assert report.document["ok"] is False
    check = report.check(name)
    assert check["status"] == "FAIL", check
    assert check["fix"] and "\n" not in check["fix"] and "\n" not in check["detail"], check
    for word in fix_words:
        assert word in check["fix"], check
    return check


# -- all pass ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    server_ca: CertificateAuthority
    client_ca: CertificateAuthority
    rogue_ca: CertificateAuthority
    server_cert: pathlib.Path
    server_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    certs = tmp_path / "certs"
    server_ca, client_ca = CertificateAuthority(certs, "server-ca"), CertificateAuthority(certs, "client-ca")
    server, client = server_ca.issue_server(), client_ca.issue_client("operator")
    return Pki(
        server_ca,
        client_ca,
        CertificateAuthority(certs, "rogue-ca"),
        server.cert_file,
        server.key_file,
        client.cert_file,
        client.key_file,
    )


@pytest.fixture
def mtls_cp(tmp_path: pathlib.Path, db_url: str, pki: Pki):
    """`tether serve` without --dev, serving mutual TLS: keys, tokens and certificates required."""
    cp = ControlPlaneProcess(
        tmp_path,
        db_url,
        dev=False,
        extra=[
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-client-ca",
            str(pki.client_ca.cert_file),
        ],
    )
    cp.start()
    yield cp
    cp.stop()


async def test_every_check_passes_against_a_real_control_plane_and_a_paired_worker(
    mtls_cp: ControlPlaneProcess, pki: Pki, db_url: str, tmp_path: pathlib.Path
) -> None:
    tls = [
        "--tls-ca",
        str(pki.server_ca.cert_file),
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.client_key),
    ]
    key = tether("keys", "create", "--owner", "alice", "--db", db_url)
    async with sdk.AsyncClient(
        mtls_cp.target,
        api_key=key,
        tls_ca_file=str(pki.server_ca.cert_file),
        tls_cert_file=str(pki.client_cert),
        tls_key_file=str(pki.client_key),
    ) as alice:
        code = (await alice.create_pairing_code()).code
    workdir = tmp_path / "worker"
    tether("worker", "--workdir", str(workdir), *tls, "pair", "--control-plane", mtls_cp.target, "--code", code)

    runtimes = "shell,script"
    env = {"TETHER_API_KEY": key}
    codex = codex_bin()
    extra: list[str] = []
    if codex is not None:  # the pinned Codex CLI, with a key it never gets to use
        runtimes += ",codex"
        extra = ["--codex-bin", str(codex)]
        (tmp_path / "codex-home").mkdir()
        env |= {"OPENAI_API_KEY": "sk-doctor-test", "CODEX_HOME": str(tmp_path / "codex-home")}
    report = await doctor(
        "--control-plane", mtls_cp.target, *tls, "--db", db_url, "--workdir", str(workdir), "--runtime", runtimes,
        *extra, env=env,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    assert report.document["ok"] is True
    expected = [
        "reachable", "tls", "health", "version", "clock_skew", "database", "workdir", "worker_token",
        "runtime.shell", "runtime.script",
    ]  # fmt: skip
    if codex is not None:
        expected += ["runtime.codex.binary", "runtime.codex.credentials", "runtime.codex.dry_start"]
    assert report.statuses() == dict.fromkeys(expected, "PASS"), report.stdout
    assert "with this client certificate" in report.check("tls")["detail"]
    assert f"revision {SCHEMA_HEAD}" in report.check("database")["detail"]
    assert "CreatePairingCode" in report.check("clock_skew")["detail"]
    assert "valid and not revoked" in report.check("worker_token")["detail"]

    # The text report: one line per check, and a summary.
    text = await doctor("--control-plane", mtls_cp.target, *tls, env=env, as_json=False)
    assert text.returncode == 0, text.stdout + text.stderr
    assert [line.split()[:2] for line in text.stdout.splitlines()[:3]] == [
        ["PASS", "reachable"],
        ["PASS", "tls"],
        ["PASS", "health"],
    ]
    assert text.stdout.splitlines()[-1] == "0 failed, 5 passed, 1 skipped"  # the database: no --db


# -- the control plane ---------------------------------------------------------------------------


async def test_nothing_at_the_address_fails_reachable_and_skips_what_needs_it() -> None:
    target = nothing_listens()
    report = await doctor("--control-plane", target)
    check = assert_fails_with_fix(report, "reachable", "tether serve", "--control-plane")
    assert "Connection refused" in check["detail"]
    for name in ("tls", "health", "version", "clock_skew"):
        assert report.status(name) == "SKIP" and "`reachable`" in report.check(name)["detail"]

    text = await doctor("--control-plane", target, as_json=False)
    lines = text.stdout.splitlines()
    assert text.returncode == 1
    assert lines[0].startswith("FAIL  reachable") and lines[1].split()[:2] == ["fix:", "start"]
    assert lines[-1] == "1 failed, 0 passed, 5 skipped"


async def test_tls_mistakes_fail_the_tls_check_with_what_to_set(mtls_cp: ControlPlaneProcess, pki: Pki) -> None:
    # A CA that did not sign the server's certificate.
    wrong_ca = await doctor("--control-plane", mtls_cp.target, "--tls-ca", str(pki.rogue_ca.cert_file))
    check = assert_fails_with_fix(wrong_ca, "tls", "TETHER_TLS_CA")
    assert "does not verify" in check["detail"]
    assert wrong_ca.status("health") == "SKIP"

    # The right CA, but no client certificate for a control plane that requires one.
    no_cert = await doctor("--control-plane", mtls_cp.target, "--tls-ca", str(pki.server_ca.cert_file))
    assert_fails_with_fix(no_cert, "tls", "TETHER_TLS_CLIENT_CERT", "TETHER_TLS_CLIENT_KEY")

    # Plaintext to a TLS control plane: nothing to verify, and the health call says what to set.
    plaintext = await doctor("--control-plane", mtls_cp.target)
    assert plaintext.status("tls") == "SKIP"
    assert_fails_with_fix(plaintext, "health", "TETHER_TLS_CA")


async def test_tls_to_a_plaintext_control_plane_says_it_does_not_serve_tls(
    cp_process: ControlPlaneProcess, pki: Pki
) -> None:
    report = await doctor("--control-plane", cp_process.target, "--tls-ca", str(pki.server_ca.cert_file))
    assert_fails_with_fix(report, "tls", "does not serve TLS")


@contextlib.asynccontextmanager
async def _odd_server(
    status: health_pb2.HealthCheckResponse.ServingStatus.ValueType, pool: descriptor_pool.DescriptorPool | None = None
) -> AsyncIterator[str]:
    """A gRPC server with the health service reporting `status` and reflection over `pool`
    (this installation's descriptors by default) for Tether's three services."""
    server = grpc.aio.server()
    healthy = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    await healthy.set("", status)
    names = [f"tether.v1.{s}" for s in ("SessionService", "WorkerService", "AdminService")]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names, pool), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_a_control_plane_not_serving_fails_health() -> None:
    async with _odd_server(health_pb2.HealthCheckResponse.NOT_SERVING) as target:
        report = await doctor("--control-plane", target)
    check = assert_fails_with_fix(report, "health", "restart `tether serve`")
    assert check["detail"] == "the control plane reports NOT_SERVING"
    assert report.status("reachable") == "PASS"
    assert report.status("version") == "SKIP" and report.status("clock_skew") == "SKIP"


def _contract_pool(edit) -> descriptor_pool.DescriptorPool:
    """A descriptor pool with this installation's tether.v1 files, session_service.proto
    passed through `edit` first."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        if proto.name == session_service_pb2.DESCRIPTOR.name:
            edit(proto)
        pool.Add(proto)
        added.add(file.name)

    from tether.v1 import admin_service_pb2, worker_service_pb2

    for module in (session_service_pb2, worker_service_pb2, admin_service_pb2):
        add(module.DESCRIPTOR)
    return pool


def _drop_fork(proto: descriptor_pb2.FileDescriptorProto) -> None:
    (service,) = [s for s in proto.service if s.name == "SessionService"]
    (fork,) = [m for m in service.method if m.name == "ForkSession"]
    service.method.remove(fork)


def _add_field(proto: descriptor_pb2.FileDescriptorProto) -> None:
    (message,) = [m for m in proto.message_type if m.name == "CreateSessionRequest"]
    message.field.add(name="doctor_test_field", number=999, type=9, label=1, json_name="doctorTestField")


@pytest.mark.parametrize(
    ("edit", "said", "fix"),
    [
        (_drop_fork, "it lacks rpc tether.v1.SessionService.ForkSession", "upgrade the control plane to tether"),
        (_add_field, "it has field tether.v1.CreateSessionRequest.doctor_test_field", "upgrade tether here"),
    ],
    ids=["older-control-plane", "newer-control-plane"],
)
async def test_a_control_plane_with_another_contract_fails_version(edit, said: str, fix: str) -> None:
    async with _odd_server(health_pb2.HealthCheckResponse.SERVING, _contract_pool(edit)) as target:
        report = await doctor("--control-plane", target)
    check = assert_fails_with_fix(report, "version", fix)
    assert said in check["detail"], check
    assert report.status("health") == "PASS"


async def test_the_same_contract_passes_version_on_the_test_server() -> None:
    """The fake above is a fair stand-in: unedited, it passes."""
    async with _odd_server(health_pb2.HealthCheckResponse.SERVING, _contract_pool(lambda proto: None)) as target:
        report = await doctor("--control-plane", target)
    assert report.status("version") == "PASS", report.check("version")


async def test_a_skewed_clock_fails_clock_skew(cp_process: ControlPlaneProcess) -> None:
    dial = Dial(cp_process.target)
    on_time = await clock_check(dial)
    assert on_time.status == "PASS", on_time
    behind = await clock_check(dial, clock=lambda: time.time() - 30)
    assert behind.status == "FAIL" and "ahead of this host's" in behind.detail, behind
    assert "NTP" in behind.fix
    ahead = await clock_check(dial, clock=lambda: time.time() + 30, max_skew_s=60)
    assert ahead.status == "PASS" and "behind this host's" in ahead.detail, ahead


async def test_clock_skew_is_skipped_without_credentials_that_can_read_it(tmp_path: pathlib.Path, db_url: str) -> None:
    cp = ControlPlaneProcess(tmp_path, db_url, dev=False)
    cp.start()
    try:
        report = await doctor("--control-plane", cp.target)
    finally:
        cp.stop()
    assert report.returncode == 0, report.stdout
    assert report.status("clock_skew") == "SKIP" and "TETHER_API_KEY" in report.check("clock_skew")["detail"]


def _migrate_to(db: str, revision: str) -> None:
    async def run() -> None:
        engine = create_engine(database_url(db))
        try:
            await _migrate._migration_transaction(
                engine, lambda conn: command.upgrade(_migrate._config(conn, legacy_owner="x"), revision)
            )
        finally:
            await engine.dispose()

    asyncio.run(run())


async def test_a_database_behind_the_release_fails_and_the_named_fix_fixes_it(db_url: str) -> None:
    previous = _migrate._SCRIPTS.get_revision(SCHEMA_HEAD).down_revision
    assert isinstance(previous, str)
    await asyncio.to_thread(_migrate_to, db_url, previous)
    report = await doctor("--control-plane", nothing_listens(), "--db", db_url)
    name = describe_database(database_url(db_url))
    check = assert_fails_with_fix(report, "database", f"tether db upgrade --db {name}")
    assert f"at revision {previous}, this release needs {SCHEMA_HEAD}" in check["detail"]

    fix = check["fix"].removeprefix("run `").removesuffix("`").split()
    assert fix[:3] == ["tether", "db", "upgrade"]
    tether(*fix[1:])
    fixed = await doctor("--control-plane", nothing_listens(), "--db", db_url)
    assert fixed.status("database") == "PASS", fixed.check("database")


async def test_a_missing_sqlite_file_fails_without_being_made(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "no-such.db"
    report = await doctor("--control-plane", nothing_listens(), "--db", str(path))
    assert_fails_with_fix(report, "database", "--db")
    assert not path.exists()


# -- the worker's setup --------------------------------------------------------------------------


async def test_a_workdir_that_cannot_be_written_fails(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    report = await doctor("--control-plane", nothing_listens(), "--workdir", str(blocker / "worker"))
    check = assert_fails_with_fix(report, "workdir", "--workdir")
    assert "is not a directory" in check["detail"]
    assert report.status("worker_token") == "SKIP"
    assert report.status("runtime.shell") == "PASS"  # the runtimes do not need the control plane

    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        report = await doctor("--control-plane", nothing_listens(), "--workdir", str(locked))
        assert "cannot write" in assert_fails_with_fix(report, "workdir", "--workdir")["detail"]

    ok = await doctor("--control-plane", nothing_listens(), "--workdir", str(tmp_path / "new" / "worker"))
    assert ok.status("workdir") == "PASS" and "will create it" in ok.check("workdir")["detail"]
    assert not (tmp_path / "new").exists()  # the doctor made nothing


async def test_a_missing_unreadable_or_revoked_token_fails(tmp_path: pathlib.Path, db_url: str) -> None:
    cp = ControlPlaneProcess(tmp_path, db_url, dev=False)
    cp.start()
    try:
        workdir = tmp_path / "worker"
        missing = await doctor("--control-plane", cp.target, "--workdir", str(workdir))
        check = assert_fails_with_fix(missing, "worker_token", "tether worker pair --code CODE")
        assert "no worker token" in check["detail"] and "UNAUTHENTICATED" in check["detail"]

        key = tether("keys", "create", "--owner", "alice", "--db", db_url)
        code = tether("pair", "--control-plane", cp.target, "--json", env={"TETHER_API_KEY": key})
        tether(
            "worker",
            "--workdir",
            str(workdir),
            "pair",
            "--control-plane",
            cp.target,
            "--code",
            json.loads(code)["code"],
        )
        paired = await doctor("--control-plane", cp.target, "--workdir", str(workdir))
        assert paired.status("worker_token") == "PASS", paired.check("worker_token")

        token_id = json.loads((workdir / ".tether" / "token.json").read_text())["token_id"]
        tether("worker", "revoke", token_id, "--control-plane", cp.target, env={"TETHER_API_KEY": key})
        revoked = await doctor("--control-plane", cp.target, "--workdir", str(workdir))
        assert "TOKEN_REVOKED" in assert_fails_with_fix(revoked, "worker_token", "tether pair")["detail"]

        garbled = tmp_path / "garbled.json"
        garbled.write_text('{"not": "a token"}')
        unreadable = await doctor("--control-plane", cp.target, "--token-file", str(garbled))
        assert "is not one `tether worker pair` wrote" in assert_fails_with_fix(unreadable, "worker_token")["detail"]
    finally:
        cp.stop()


def _fake_codex(path: pathlib.Path, version: str, app_server: str) -> str:
    path.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "codex-cli {version}"; exit 0; fi\n{app_server}\n')
    path.chmod(0o755)
    return str(path)


async def test_codex_problems_each_fail_their_check(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "codex-home"
    home.mkdir()
    no_key = {"CODEX_HOME": str(home)}
    common = ("--control-plane", nothing_listens(), "--runtime", "codex")

    missing = await doctor(*common, "--codex-bin", str(tmp_path / "no-codex"), env=no_key)
    check = assert_fails_with_fix(missing, "runtime.codex.binary", "--codex-bin node_modules/.bin/codex")
    assert "no codex binary" in check["detail"]
    assert missing.status("runtime.codex.dry_start") == "SKIP"
    assert_fails_with_fix(missing, "runtime.codex.credentials", "codex login", "OPENAI_API_KEY")

    old = _fake_codex(tmp_path / "old-codex", "0.100.0", "exit 1")
    assert (
        "not a supported version"
        in assert_fails_with_fix(await doctor(*common, "--codex-bin", old, env=no_key), "runtime.codex.binary")[
            "detail"
        ]
    )

    # The right version, but app-server exits instead of answering initialize.
    mute = _fake_codex(tmp_path / "mute-codex", "0.169.0", "echo 'config error: bad model' >&2; exit 3")
    report = await doctor(*common, "--codex-bin", mute, env={**no_key, "OPENAI_API_KEY": "sk-doctor-test"})
    assert report.status("runtime.codex.binary") == "PASS" and report.status("runtime.codex.credentials") == "PASS"
    check = assert_fails_with_fix(report, "runtime.codex.dry_start", "app-server")
    assert "did not answer initialize" in check["detail"] and "config error: bad model" in check["detail"]


async def test_an_unknown_runtime_fails(tmp_path: pathlib.Path) -> None:
    report = await doctor("--control-plane", nothing_listens(), "--runtime", "shell,no-such-runtime")
    assert report.status("runtime.shell") == "PASS"
    assert (
        "no runtime 'no-such-runtime'"
        in assert_fails_with_fix(report, "runtime.no-such-runtime", "--runtime")["detail"]
    )


def test_the_worker_options_are_read_as_tether_worker_reads_them() -> None:
    """The doctor repeats the worker's options it needs (the worker's group cannot be loaded
    where only the control plane's extra is installed); they must not drift apart."""
    from tether.cli.doctor import doctor as command
    from tether.execution_worker.cli import worker

    theirs = {p.name: p for p in worker.params if isinstance(p, click.Option)}
    shared = [
        "control_plane", "workdir", "runtimes", "token_file", "tls_ca", "tls_cert", "tls_key",
        "codex_bin", "codex_model", "codex_config", "codex_home_from",
    ]  # fmt: skip
    for param in command.params:
        if param.name not in shared:
            continue
        other = theirs[param.name]
        assert (param.opts, param.envvar, param.multiple) == (other.opts, other.envvar, other.multiple), param.name
        if param.name not in {"tls_ca", "tls_cert", "tls_key"}:  # the doctor reports a missing file itself
            assert param.default == other.default, param.name
    assert sorted(p.name for p in command.params if p.name in shared) == sorted(shared)
