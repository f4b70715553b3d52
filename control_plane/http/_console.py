"""The web console's static files under `/console/` (`tether serve --console`).

`make web` builds the console (web/) into `control_plane/http/console/`, which ships in the
package; `Settings.console_dir` points elsewhere. Starlette's StaticFiles serves them: content
types from the file name, 404 for what is not there, `index.html` for the directory, and no
path that resolves outside the directory.
"""

from __future__ import annotations

import pathlib

from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

PACKAGED_CONSOLE = pathlib.Path(__file__).resolve().parent / "console"
PREFIX = "/console"


class ConsoleNotBuilt(Exception):
    """--console was given but there is no built console to serve; the message says how."""


class Console:
    """An ASGI app serving the console directory for requests under `/console/`."""

    def __init__(self, directory: str | pathlib.Path = "") -> None:
        root = pathlib.Path(directory) if directory else PACKAGED_CONSOLE
        if not (root / "index.html").is_file():
            how = "run `make web`" if not directory else "point it at a directory holding the built console"
            raise ConsoleNotBuilt(f"--console: no web console at {root} (index.html is missing); {how}")
        self.directory = root
        self._files = StaticFiles(directory=root, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # StaticFiles serves the path below root_path, and raises for what it does not serve (404,
        # 405) before it answers anything.
        try:
            await self._files({**scope, "root_path": scope.get("root_path", "") + PREFIX}, receive, send)
        except HTTPException as exc:
            answer = PlainTextResponse(f"{exc.detail}: {scope['path']}", exc.status_code, headers=exc.headers)
            await answer(scope, receive, send)
