"""The HTTP port's listener: Hypercorn serving one ASGI app on a socket bound up front.

Hypercorn speaks HTTP/1.1 and HTTP/2 on one port: cleartext HTTP/2 with prior knowledge
(h2c, what gRPC and connect-node's HTTP/2 transport send) or by upgrade, and over TLS by ALPN
(`h2`, `http/1.1`). ASGI trailers, which gRPC needs, come with HTTP/2. The socket is bound in
`bind()`, before the control plane opens its database (a busy port creates no file), and
served from `start(app)` once the services exist; `close()` stops accepting, lets calls in
flight finish for up to the grace, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
from typing import cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.typing import Framework
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str
    client_ca_file: str = ""  # require client certificates signed by this CA (mutual TLS)


class HttpServer:
    """`bind()`, then `await start(app)`, then `await close()` (idempotent)."""

    def __init__(self, host: str, port: int, tls: TlsFiles | None = None, *, shutdown_grace_s: float = 5.0) -> None:
        self.host = host
        self.requested_port = port
        self.tls = tls
        self.port: int | None = None
        self._grace_s = shutdown_grace_s
        self._sock: socket.socket | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def bind(self) -> int:
        """Check the TLS files and bind the port; raises OSError (ssl.SSLError is one) saying which."""
        config = self._config()
        if self.tls is not None:
            config.create_ssl_context()  # a bad certificate or key fails here, not on the first call
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.host, self.requested_port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def start(self, app: ASGIApp) -> None:
        assert self._sock is not None, "bind() first"
        config = self._config()
        # Hypercorn takes the bound socket over by its descriptor.
        config.bind = [f"fd://{self._sock.detach()}"]
        self._sock = None
        self._task = asyncio.create_task(
            serve(cast(Framework, app), config, shutdown_trigger=self._stop.wait, mode="asgi"), name="tether-http"
        )
        # Serving starts within a turn or two of the loop; fail start() if it could not.
        await asyncio.sleep(0)
        if self._task.done():
            self._task.result()

    def _config(self) -> Config:
        config = Config()
        config.graceful_timeout = self._grace_s
        config.errorlog = log
        config.accesslog = None
        config.include_server_header = False
        config.backlog = 1024
        if self.tls is not None:
            config.certfile = self.tls.cert_file
            config.keyfile = self.tls.key_file
            if self.tls.client_ca_file:
                config.ca_certs = self.tls.client_ca_file
                config.verify_mode = ssl.CERT_REQUIRED
        return config

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._task is None:
            return
        task, self._task = self._task, None
        self._stop.set()
        try:
            async with asyncio.timeout(self._grace_s + 5):
                await task
        except TimeoutError:
            log.warning("the HTTP port did not stop within %.1f s; cancelling its calls", self._grace_s + 5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:
            log.exception("the HTTP port failed")
