"""The HTTP port (`tether serve --http-port`): the contract for browsers and curl.

`SessionService` and `AdminService` over the Connect protocol, gRPC-Web and gRPC, on HTTP/1.1
and HTTP/2, served by connectrpc's ASGI application on Hypercorn from the same process and
the same hub as the gRPC port, through the same servicers (`_context.CallContext` adapts a
Connect call to what they read). `HttpApp` routes the contract, `/metrics` and the web
console's `/console/`, and keeps browsers to the CORS allowlist.
"""

from ._app import ALLOWED_HEADERS, EXPOSED_HEADERS, HttpApp
from ._console import PACKAGED_CONSOLE, Console, ConsoleNotBuilt
from ._endpoints import ServiceApp
from ._gate import ServingGate
from ._server import HttpServer, TlsFiles

__all__ = [
    "ALLOWED_HEADERS",
    "EXPOSED_HEADERS",
    "PACKAGED_CONSOLE",
    "Console",
    "ConsoleNotBuilt",
    "HttpApp",
    "HttpServer",
    "ServiceApp",
    "ServingGate",
    "TlsFiles",
]
