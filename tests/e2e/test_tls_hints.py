"""TLS mistakes say what to set: a plaintext client on a TLS control plane, a client without a
certificate on a mutual-TLS one, a TLS client on a plaintext one, and a client that trusts the
wrong CA each get a message naming the setting, from the SDK, the `tether` command and the
worker; and the command prints none of gRPC's own C-core log lines (ssl_transport_security.cc)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tests.helpers.certs import CertificateAuthority, Issued
from tests.helpers.processes import FAST, ROOT, eventually, start_worker
from tether import sdk
from tether.control_plane import ControlPlane, Settings


@pytest.fixture
def certs(tmp_path: pathlib.Path) -> tuple[CertificateAuthority, Issued, CertificateAuthority, Issued]:
    server_ca = CertificateAuthority(tmp_path / "certs", "server-ca")
    client_ca = CertificateAuthority(tmp_path / "certs", "client-ca")
    return server_ca, server_ca.issue_server(), client_ca, client_ca.issue_client("alice")


async def _serve(tmp_path: pathlib.Path, name: str, **tls: str) -> ControlPlane:
    cp = ControlPlane(Settings(port=0, db=str(tmp_path / f"{name}.db"), timings=FAST, dev_owner="local", **tls))
    await cp.start()
    return cp


@pytest.fixture
async def targets(tmp_path, certs) -> AsyncIterator[dict[str, str]]:
    """A plaintext, a TLS and a mutual-TLS control plane, in process."""
    server_ca, server, client_ca, _ = certs
    files = {"tls_cert_file": str(server.cert_file), "tls_key_file": str(server.key_file)}
    planes = {
        "plain": await _serve(tmp_path, "plain"),
        "tls": await _serve(tmp_path, "tls", **files),
        "mtls": await _serve(tmp_path, "mtls", **files, tls_client_ca_file=str(client_ca.cert_file)),
    }
    try:
        yield {name: f"127.0.0.1:{cp.port}" for name, cp in planes.items()}
    finally:
        for cp in planes.values():
            await cp.close()


async def _refusal(target: str, **tls: str) -> str:
    async with sdk.AsyncClient(target, timeout_s=5, **tls) as client:
        with pytest.raises(sdk.UnavailableError) as refused:
            await client.list_sessions()
    return refused.value.message


async def test_the_sdk_says_what_to_set(targets, certs) -> None:
    server_ca, _, client_ca, alice = certs
    ca = {"tls_ca_file": str(server_ca.cert_file)}
    assert "probably serves TLS: set TETHER_TLS_CA (tls_ca_file" in await _refusal(targets["tls"])
    assert "requires a client certificate (mutual TLS): set TETHER_TLS_CLIENT_CERT and TETHER_TLS_CLIENT_KEY" in (
        await _refusal(targets["mtls"], **ca)
    )
    assert "does not serve TLS" in await _refusal(targets["plain"], **ca)
    assert "not signed by the CA this client trusts" in await _refusal(
        targets["tls"], tls_ca_file=str(client_ca.cert_file)
    )
    # A client that gets in is not told anything.
    async with sdk.AsyncClient(
        targets["mtls"], **ca, tls_cert_file=str(alice.cert_file), tls_key_file=str(alice.key_file)
    ) as client:
        assert (await client.list_sessions()).sessions == []


async def _tether(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "TETHER_"))}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tether.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, **env},
    )


async def test_the_command_says_what_to_set_and_prints_no_c_core_lines(targets, certs) -> None:
    server_ca = certs[0]
    plaintext = await _tether("session", "--control-plane", targets["tls"], "list")
    assert plaintext.returncode == 1 and "set TETHER_TLS_CA" in plaintext.stderr, plaintext.stderr
    no_cert = await _tether(
        "session", "--control-plane", targets["mtls"], "list", TETHER_TLS_CA=str(server_ca.cert_file)
    )
    assert no_cert.returncode == 1 and "set TETHER_TLS_CLIENT_CERT" in no_cert.stderr, no_cert.stderr
    # A TLS handshake that fails on the client's side is what gRPC's C core logs on its own.
    wrong_way = await _tether(
        "session", "--control-plane", targets["plain"], "list", TETHER_TLS_CA=str(server_ca.cert_file)
    )
    assert wrong_way.returncode == 1 and "does not serve TLS" in wrong_way.stderr, wrong_way.stderr
    for done in (plaintext, no_cert, wrong_way):
        assert "ssl_transport_security" not in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_the_worker_says_what_to_set(targets, procs, tmp_path) -> None:
    worker = start_worker(procs, targets["tls"], tmp_path / "w1", "w1", 1)
    await eventually(
        lambda: "probably serves TLS: set TETHER_TLS_CA (tls_ca_file; --tls-ca for a worker)" in worker.output(),
        timeout=20,
        what="the worker to say what to set",
    )
