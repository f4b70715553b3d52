"""Channels and credentials: public, for the SDK and for custom workers (the execution worker uses it).

A channel is plaintext unless a CA file is given: then it is TLS, verifying the server against
that CA, and with a client certificate and key it is mutual TLS. Credentials ride as call
metadata (`authorization: Bearer <secret>`, and `x-tether-owner` for a backend key).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from typing import Any

import grpc

OWNER_HEADER = "x-tether-owner"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path!r}: {exc.strerror or exc}") from None


def make_channel(
    target: str,
    *,
    options: Sequence[tuple[str, Any]] = (),
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
) -> grpc.aio.Channel:
    """A `grpc.aio` channel to `target`: TLS when `tls_ca_file` is given, mutual TLS when the
    client certificate and key are given too."""
    if bool(tls_cert_file) != bool(tls_key_file):
        raise ValueError("a client certificate and its key go together")
    if not tls_ca_file:
        if tls_cert_file:
            raise ValueError("a client certificate needs TLS: give the CA that signed the server's certificate too")
        return grpc.aio.insecure_channel(target, options=list(options))
    root = _read(tls_ca_file, "CA certificate")
    try:  # gRPC would only fail later, at connect time, with a bare UNAVAILABLE
        ssl.create_default_context(cadata=root.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"the CA certificate {tls_ca_file!r} is not a PEM certificate: {exc}") from None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_read(tls_key_file, "client key") if tls_key_file else None,
        certificate_chain=_read(tls_cert_file, "client certificate") if tls_cert_file else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=list(options))


def credential_metadata(secret: str | None, owner: str | None = None) -> tuple[tuple[str, str], ...] | None:
    """The call metadata that carries a key or token (and the owner a backend key acts for)."""
    metadata: list[tuple[str, str]] = []
    if secret:
        metadata.append(("authorization", f"Bearer {secret}"))
    if owner:
        metadata.append((OWNER_HEADER, owner))
    return tuple(metadata) or None


def tls_hint(details: str, *, tls: bool, client_cert: bool) -> str:
    """What to set when a connection failed the way a TLS mistake makes it fail, else "".

    gRPC reports a plaintext client on a TLS server, and a client without an accepted
    certificate on a mutual-TLS server, only as "Socket closed" while connecting; `tls` and
    `client_cert` say how this client dialled, which tells the likely mistake apart."""
    if "WRONG_VERSION_NUMBER" in details:
        return (
            "the control plane does not serve TLS: dial it in plaintext (unset TETHER_TLS_CA; no tls_ca_file), "
            "or start it with --tls-cert and --tls-key"
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            "the control plane's certificate is not signed by the CA this client trusts: set TETHER_TLS_CA "
            "(tls_ca_file; --tls-ca for a worker) to the CA that signed it"
        )
    if "Socket closed" not in details or "failed to connect" not in details:
        return ""
    if not tls:
        return (
            "the control plane closed the connection before gRPC could speak; it probably serves TLS: set "
            "TETHER_TLS_CA (tls_ca_file; --tls-ca for a worker) to the CA that signed its certificate"
        )
    if not client_cert:
        return (
            "the control plane closed the TLS handshake; it probably requires a client certificate (mutual "
            "TLS): set TETHER_TLS_CLIENT_CERT and TETHER_TLS_CLIENT_KEY (tls_cert_file and tls_key_file; "
            "--tls-cert and --tls-key for a worker)"
        )
    return (
        "the control plane closed the TLS handshake; it probably does not accept this client certificate: "
        "use one signed by the CA it was started with (--tls-client-ca)"
    )


class WithMetadata:
    """A stub whose every call carries `metadata` (one seam instead of one per call site)."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...] | None) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not self._metadata:
            return method
        return functools.partial(method, metadata=self._metadata)


__all__ = ["OWNER_HEADER", "WithMetadata", "credential_metadata", "make_channel", "tls_hint"]
