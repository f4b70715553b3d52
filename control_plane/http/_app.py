"""The HTTP port's one ASGI application: what each path serves, and who may call from a browser.

Routes:
- `/tether.v1.SessionService/*`, `/tether.v1.AdminService/*`: the contract (`ServiceApp`),
  POST only: a GET needs no CORS preflight, so a page on any site could otherwise make one.
- `/metrics`: the ASGI app given as `metrics` (Prometheus exposition), when there is one.
- `/console/`: the web console's files, when `console` is given (`tether serve --console`).
- anything else: 404.

CORS: a request from a browser carries `Origin`. One from the port's own origin (the console)
or from an origin in the allowlist (`--http-cors-origin`) is served, with the headers that let
the page read the answer (the gRPC-Web and Connect status headers among them); a preflight is
answered for those alone. Any other origin gets 403 before anything runs: without that, a page
on another site could still make a "simple" request even though it could not read the answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._console import PREFIX as CONSOLE_PREFIX

# What a browser may send and read on a Connect, gRPC-Web or gRPC call.
ALLOWED_HEADERS = (
    "authorization",
    "x-tether-owner",
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "grpc-timeout",
    "grpc-accept-encoding",
    "x-grpc-web",
    "x-user-agent",
)
EXPOSED_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "connect-content-encoding",
    "content-encoding",
)
_PREFLIGHT_MAX_AGE_S = 7200


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _answer(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    content_type = b"application/json" if body[:1] == b"{" else b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _not_found(path: str) -> bytes:
    return json.dumps({"code": "not_found", "message": f"nothing is served at {path}"}).encode()


class HttpApp:
    """Routes a request to the contract, the metrics or the console (see the module's doc)."""

    def __init__(
        self,
        rpc: ASGIApp,
        rpc_paths: frozenset[str],
        *,
        cors_origins: Iterable[str] = (),
        metrics: ASGIApp | None = None,
        console: ASGIApp | None = None,
    ) -> None:
        self._rpc = rpc
        self._rpc_services = frozenset(p.rsplit("/", 1)[0] + "/" for p in rpc_paths)
        self.cors_origins = frozenset(o.rstrip("/") for o in cors_origins)
        self.metrics = metrics
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websocket: nothing here speaks it
            await send({"type": "websocket.close", "code": 1008})
            return
        origin = _header(scope, b"origin")
        cross_origin = origin is not None and origin != _own_origin(scope)
        if cross_origin and origin not in self.cors_origins:
            message = (
                f"origin {origin} may not call this control plane; "
                "start it with --http-cors-origin for each origin a browser app is served from"
            )
            await _answer(send, 403, json.dumps({"code": "permission_denied", "message": message}).encode())
            return
        if cross_origin and scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await _answer(send, 204, b"", _preflight_headers(origin or ""))
            return
        if cross_origin:
            send = _with_cors(send, origin or "")
        await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if any(path.startswith(service) for service in self._rpc_services):
            if scope["method"] != "POST":
                message = f"{scope['method']} is not allowed on {path}: the contract's calls are POSTs"
                body = json.dumps({"code": "unimplemented", "message": message}).encode()
                await _answer(send, 405, body, [(b"allow", b"POST")])
                return
            await self._rpc(scope, receive, send)
        elif path == "/metrics" and self.metrics is not None:
            await self.metrics(scope, receive, send)
        elif self.console is not None and path == CONSOLE_PREFIX:
            await _answer(send, 308, b"", [(b"location", (CONSOLE_PREFIX + "/").encode())])
        elif self.console is not None and path.startswith(CONSOLE_PREFIX + "/"):
            await self.console(scope, receive, send)
        else:
            await _answer(send, 404, _not_found(path))


def _own_origin(scope: Scope) -> str | None:
    host = _header(scope, b"host") or _header(scope, b":authority")
    return f"{scope.get('scheme', 'http')}://{host}" if host else None


def _preflight_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode()),
        (b"access-control-allow-methods", b"POST"),
        (b"access-control-allow-headers", ", ".join(ALLOWED_HEADERS).encode()),
        (b"access-control-max-age", str(_PREFLIGHT_MAX_AGE_S).encode()),
        (b"vary", b"Origin"),
    ]


def _with_cors(send: Send, origin: str) -> Send:
    extra = [
        (b"access-control-allow-origin", origin.encode()),
        (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode()),
        (b"vary", b"Origin"),
    ]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
