"""TLS and mutual TLS end to end, with certificates each test generates (`tests.certs`): the
control plane serving TLS, real workers and SDK clients verifying it against a CA, client
certificates required with --tls-client-ca, and clear refusals of misconfigurations."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.certs import CertificateAuthority, Issued
from tests.helpers.processes import FAST, ROOT, ControlPlaneProcess, eventually, start_worker
from tether import sdk
from tether.control_plane import ControlPlane, Settings

# A refused handshake must surface as UNAVAILABLE well inside this, never as a deadline.
REFUSAL_DEADLINE_S = 5.0


@dataclass(frozen=True)
class Pki:
    """The server's CA and certificate, a separate CA for client certificates, and a rogue CA
    that neither side trusts."""

    server_ca: CertificateAuthority
    server: Issued
    client_ca: CertificateAuthority
    alice: Issued
    worker: Issued
    rogue_ca: CertificateAuthority
    mallory: Issued


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    certs = tmp_path / "certs"
    server_ca = CertificateAuthority(certs, "server-ca")
    client_ca = CertificateAuthority(certs, "client-ca")
    rogue_ca = CertificateAuthority(certs, "rogue-ca")
    return Pki(
        server_ca=server_ca,
        server=server_ca.issue_server(),
        client_ca=client_ca,
        alice=client_ca.issue_client("alice"),
        worker=client_ca.issue_client("worker"),
        rogue_ca=rogue_ca,
        mallory=rogue_ca.issue_client("mallory"),
    )


@pytest.fixture
def tls_cp(tmp_path: pathlib.Path, pki: Pki, db_url: str) -> Iterator[ControlPlaneProcess]:
    """`tether serve --dev` as a process, serving TLS with the server certificate."""
    cp = ControlPlaneProcess(
        tmp_path,
        db_url,
        extra=["--tls-cert", str(pki.server.cert_file), "--tls-key", str(pki.server.key_file)],
    )
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture
async def mtls_cp(pki: Pki, db_url: str) -> AsyncIterator[ControlPlane]:
    """An in-process control plane that requires client certificates signed by the client CA."""
    settings = Settings(
        port=0,
        db=db_url,
        migrate=True,
        timings=FAST,
        dev_owner="local",
        tls_cert_file=str(pki.server.cert_file),
        tls_key_file=str(pki.server.key_file),
        tls_client_ca_file=str(pki.client_ca.cert_file),
    )
    async with ControlPlane(settings) as cp:
        yield cp


def _tls(ca: CertificateAuthority, client: Issued | None = None) -> dict[str, str]:
    files = {"tls_ca_file": str(ca.cert_file)}
    if client is not None:
        files |= {"tls_cert_file": str(client.cert_file), "tls_key_file": str(client.key_file)}
    return files


async def _run_echo(client: sdk.AsyncClient, word: str) -> list[sdk.Event]:
    """Create a shell session, run `echo word` in it and return the session's events."""
    s = await client.create_session("shell")
    turn = await client.send_input(s.session_id, f"echo {word}")
    done = await client.wait_for_turn(s.session_id, turn.turn_id, timeout_s=20)
    assert done.state == sdk.TurnState.COMPLETED and done.exit_code == 0
    return [e async for e in client.stream_events(s.session_id, stop_at_end=True)]


def _stdout(events: list[sdk.Event]) -> str:
    return "".join(e.text for e in events if e.kind == "output" and e.stream == "stdout")


async def _assert_refused(target: str, **tls: str) -> None:
    """A client with these TLS files cannot create a session: the handshake fails (UNAVAILABLE)."""
    async with sdk.AsyncClient(target, timeout_s=REFUSAL_DEADLINE_S, **tls) as client:
        with pytest.raises(sdk.UnavailableError):
            await client.create_session("shell")
        with pytest.raises(sdk.UnavailableError):
            await client.list_sessions()


# -- TLS ----------------------------------------------------------------------------------


async def test_turn_runs_over_tls_between_real_processes(tls_cp, procs, tmp_path, pki):
    start_worker(procs, tls_cp.target, tmp_path / "w1", "w1", 1, "--tls-ca", str(pki.server_ca.cert_file))
    async with sdk.AsyncClient(tls_cp.target, **_tls(pki.server_ca)) as client:
        events = await _run_echo(client, "over-tls")
    assert _stdout(events) == "over-tls\n"
    assert events[-1].kind == "turn_completed" and events[-1].exit_code == 0
    assert ", TLS, --dev:" in tls_cp.proc.output()  # the listening line names the transport


async def test_clients_that_cannot_verify_the_server_are_refused_and_create_nothing(tls_cp, pki):
    await _assert_refused(tls_cp.target)  # plaintext
    await _assert_refused(tls_cp.target, **_tls(pki.rogue_ca))  # a CA that did not sign the server
    async with sdk.AsyncClient(tls_cp.target, **_tls(pki.server_ca)) as client:
        assert (await client.list_sessions()).sessions == []


# -- mutual TLS ---------------------------------------------------------------------------


async def test_mtls_admits_only_client_certificates_of_the_client_ca(mtls_cp, procs, tmp_path, pki):
    target = f"127.0.0.1:{mtls_cp.port}"
    worker = start_worker(
        procs,
        target,
        tmp_path / "w1",
        "w1",
        1,
        "--tls-ca",
        str(pki.server_ca.cert_file),
        "--tls-cert",
        str(pki.worker.cert_file),
        "--tls-key",
        str(pki.worker.key_file),
    )
    await _assert_refused(target, **_tls(pki.server_ca))  # no client certificate
    await _assert_refused(target, **_tls(pki.server_ca, pki.mallory))  # signed by another CA
    await _assert_refused(target)  # plaintext
    async with sdk.AsyncClient(target, **_tls(pki.server_ca, pki.alice)) as client:
        events = await _run_echo(client, "over-mtls")
        assert _stdout(events) == "over-mtls\n" and events[-1].kind == "turn_completed"
        # Only the session of the admitted client exists; the refused ones created nothing.
        sessions = (await client.list_sessions()).sessions
        assert [s.session_id for s in sessions] == [events[0].session_id]

    def list_with_the_blocking_client() -> list[str]:
        with sdk.Client(target, **_tls(pki.server_ca, pki.alice)) as blocking:
            return [s.session_id for s in blocking.list_sessions().sessions]

    assert await asyncio.to_thread(list_with_the_blocking_client) == [events[0].session_id]
    # Drain the worker while this loop still serves the control plane it talks to.
    worker.send_signal(signal.SIGTERM)
    await eventually(lambda: worker.popen.poll() is not None, timeout=15, what="worker drained")
    assert worker.popen.returncode == 0, worker.output()


# -- misconfiguration ---------------------------------------------------------------------


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.control_plane", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_serve_refuses_a_certificate_without_its_key(tmp_path, pki):
    done = _serve("--tls-cert", str(pki.server.cert_file), "--port", "0", "--db", str(tmp_path / "x.db"))
    assert done.returncode != 0
    assert "--tls-cert" in done.stderr and "--tls-key" in done.stderr and "Traceback" not in done.stderr
    done = _serve("--tls-client-ca", str(pki.client_ca.cert_file), "--port", "0", "--db", str(tmp_path / "x.db"))
    assert done.returncode != 0
    assert "--tls-client-ca" in done.stderr and "Traceback" not in done.stderr


def test_serve_refuses_dev_on_a_non_loopback_address(tmp_path):
    done = _serve("--dev", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "x.db"))
    assert done.returncode != 0
    assert "--dev" in done.stderr and "loopback" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("broken", ["certificate", "key"])
def test_serve_explains_tls_files_that_are_not_a_certificate_and_its_key(tmp_path, pki, broken):
    cert, key = pki.server.cert_file, pki.server.key_file
    if broken == "certificate":
        cert = tmp_path / "not-a-cert.pem"
        cert.write_text("not a certificate\n")
    else:
        key = pki.alice.key_file  # a valid key, but not the certificate's
    done = _serve("--tls-cert", str(cert), "--tls-key", str(key), "--port", "0", "--db", str(tmp_path / "x.db"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]  # click's "Error: ..." line, after gRPC's own logs
    assert "TLS" in error and "another process using the port" not in error


async def test_plaintext_on_a_non_loopback_address_serves_with_a_warning(procs, tmp_path):
    port_file = tmp_path / "cp.port"
    cp = procs(
        [
            sys.executable,
            "-m",
            "tether.control_plane",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--db",
            str(tmp_path / "x.db"),
        ],
        "plaintext-cp",
    )
    await eventually(lambda: port_file.exists() or cp.popen.poll() is not None, timeout=20, what="control plane up")
    assert port_file.exists(), cp.output()
    assert "serving plaintext gRPC on non-loopback address 0.0.0.0" in cp.output()
    assert "--tls-cert" in cp.output()
    assert cp.stop(signal.SIGTERM) == 0


async def test_sdk_names_the_tls_file_it_cannot_read(pki):
    with pytest.raises(ValueError, match="/nonexistent"):
        sdk.AsyncClient("127.0.0.1:1", tls_ca_file="/nonexistent")
    with pytest.raises(ValueError, match="/nonexistent"):
        sdk.AsyncClient(
            "127.0.0.1:1",
            tls_ca_file=str(pki.server_ca.cert_file),
            tls_cert_file=str(pki.alice.cert_file),
            tls_key_file="/nonexistent",
        )
    with pytest.raises(ValueError, match="key"):
        sdk.AsyncClient("127.0.0.1:1", tls_ca_file=str(pki.server_ca.cert_file), tls_cert_file=str(pki.alice.cert_file))
    with pytest.raises(ValueError, match="CA"):
        sdk.AsyncClient("127.0.0.1:1", tls_cert_file=str(pki.alice.cert_file), tls_key_file=str(pki.alice.key_file))
