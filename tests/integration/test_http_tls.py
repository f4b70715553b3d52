"""The HTTP port over TLS: by default with the gRPC port's certificate and key, or its own
(--http-tls-cert, --http-tls-key); HTTP/2 by ALPN and HTTP/1.1 on the same port."""

from __future__ import annotations

import asyncio
import http.client
import json
import pathlib
import ssl

import pytest

from tests.helpers.certs import CertificateAuthority
from tests.helpers.processes import FAST
from tether.control_plane import ControlPlane, Settings
from tether.control_plane._server import StartupError


def _handshake(port: int, ca_file: pathlib.Path, alpn: list[str]) -> tuple[str | None, int, dict]:
    """(the protocol ALPN chose, the HTTP/1.1 status and JSON of a ListWorkers call)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(alpn)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.connect()
        chosen = conn.sock.selected_alpn_protocol() if isinstance(conn.sock, ssl.SSLSocket) else None
        if chosen == "h2":
            return chosen, 0, {}
        conn.request("POST", "/tether.v1.AdminService/ListWorkers", b"{}", {"content-type": "application/json"})
        resp = conn.getresponse()
        return chosen, resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def test_http_port_reuses_the_grpc_ports_tls(tmp_path: pathlib.Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca")
    server = ca.issue_server()
    settings = Settings(
        port=0,
        http_port=0,
        db=str(tmp_path / "t.db"),
        timings=FAST,
        dev_owner="local",
        tls_cert_file=str(server.cert_file),
        tls_key_file=str(server.key_file),
    )
    async with ControlPlane(settings) as cp:
        assert cp.http is not None and cp.http.scheme == "https"
        assert await asyncio.to_thread(_handshake, cp.http.port, ca.cert_file, ["h2", "http/1.1"]) == ("h2", 0, {})
        assert await asyncio.to_thread(_handshake, cp.http.port, ca.cert_file, ["http/1.1"]) == ("http/1.1", 200, {})
        # A client that does not trust the CA is refused at the handshake.
        (tmp_path / "other").mkdir()
        other = CertificateAuthority(tmp_path / "other", "other")
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(_handshake, cp.http.port, other.cert_file, ["http/1.1"])


async def test_http_port_with_its_own_certificate_and_a_bad_one(tmp_path: pathlib.Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca")
    web = ca.issue_server("web")
    settings = Settings(
        port=0,
        http_port=0,
        db=str(tmp_path / "t.db"),
        timings=FAST,
        dev_owner="local",
        http_tls_cert_file=str(web.cert_file),
        http_tls_key_file=str(web.key_file),
    )
    async with ControlPlane(settings) as cp:
        assert cp.http is not None
        assert await asyncio.to_thread(_handshake, cp.http.port, ca.cert_file, ["http/1.1"]) == ("http/1.1", 200, {})
    # A key that is not the certificate's is refused at start, naming the files.
    other = ca.issue_server("other")
    bad = Settings(
        port=0,
        http_port=0,
        db=str(tmp_path / "bad.db"),
        http_tls_cert_file=str(web.cert_file),
        http_tls_key_file=str(other.key_file),
    )
    with pytest.raises(StartupError, match="cannot use the HTTP port's TLS files"):
        async with ControlPlane(bad):
            pass
    assert not (tmp_path / "bad.db").exists()


async def test_busy_http_port_is_a_startup_error(tmp_path: pathlib.Path) -> None:
    async with ControlPlane(Settings(port=0, http_port=0, db=str(tmp_path / "a.db"), timings=FAST)) as first:
        assert first.http is not None
        taken = Settings(port=0, http_port=first.http.port, db=str(tmp_path / "b.db"), timings=FAST)
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{first.http.port} \\(--http-port\\)"):
            async with ControlPlane(taken):
                pass
        assert not (tmp_path / "b.db").exists()
