"""A scripted mock of the OpenAI Responses API on 127.0.0.1, for driving the real Codex CLI
offline in tests and benchmarks.

Codex POSTs `{base_url}/responses` with the whole model-visible history in `input` and reads a
server-sent event stream back. The mock decides what to answer from the latest user text of the
request (the "script word"), and records every request body so a test can check exactly what the
model was sent:

- `RUN: <cmd>`            an `exec_command` tool call, then (once its output comes back) a reply
- `RUN_ESCALATED: <cmd>`  the same, asking for escalated permissions (needs approval)
- `PATCH: <path>`         an `apply_patch` through `exec_command` adding `<path>` (a file change)
- `SLOW`                  a reply streamed at one delta per `slow_delay_s`
- `LOOP`                  tool calls forever (Codex has no cap of its own)
- `FAIL500`               HTTP 500
- `JSON: <text>`          the reply is `<text>` exactly (a structured result, when the request
                          asks for one with `text.format` of type `json_schema`)
- anything else           "Hello from mock. You said: <text>", streamed as a few deltas

Only loopback: the server binds 127.0.0.1 and an ephemeral port.
"""

from __future__ import annotations

import http.server
import json
import pathlib
import shutil
import threading
import time
from typing import Any

_ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The pinned Codex CLI's native binary, as `npm ci` installs it (package.json pins the version).
NATIVE_CODEX = _ROOT / "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"


def codex_bin() -> pathlib.Path | None:
    """The Codex binary the tests drive: the pinned native build, else `codex` on PATH."""
    if NATIVE_CODEX.exists():
        return NATIVE_CODEX
    found = shutil.which("codex")
    return pathlib.Path(found) if found else None


SCRIPT_WORDS = ("RUN_ESCALATED:", "RUN:", "PATCH:", "SLOW", "LOOP", "FAIL500", "JSON:")


def _user_text(item: dict[str, Any]) -> str:
    if item.get("type") != "message" or item.get("role") != "user":
        return ""
    parts = item.get("content") or []
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict))


def last_user_text(body: dict[str, Any]) -> str:
    """The latest user message of a request that is not Codex's own environment context."""
    for item in reversed(body.get("input") or []):
        text = _user_text(item)
        if text and not text.lstrip().startswith("<"):
            return text
    return ""


def _after_tool_output(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool output the request ends with, if the previous response was a tool call."""
    items = body.get("input") or []
    if items and items[-1].get("type") in ("function_call_output", "custom_tool_call_output"):
        return items[-1]
    return None


class MockResponses:
    """The mock server; use as a context manager or call `start()` / `stop()`."""

    def __init__(self, *, slow_delay_s: float = 0.5) -> None:
        self.slow_delay_s = slow_delay_s
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> MockResponses:
        mock = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self.send_error(400, "body is not JSON")
                    return
                if not self.path.endswith("/responses"):
                    self.send_error(404, f"no such endpoint {self.path}")
                    return
                with mock._lock:
                    mock.requests.append(body)
                    mock._counter += 1
                    n = mock._counter
                mock._answer(self, body, n)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MockResponses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "mock not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def codex_config(self) -> tuple[str, str]:
        """The Codex `-c KEY=TOML` overrides that send all model traffic to this mock."""
        provider = (
            f'{{name="mock", base_url="{self.base_url}", wire_api="responses", '
            "request_max_retries=0, stream_max_retries=0}"
        )
        return ('model_provider="mock"', f"model_providers.mock={provider}")

    def worker_flags(self) -> list[str]:
        """`tether worker` flags for a codex runtime on the pinned binary talking to this mock."""
        flags = ["--runtime", "codex", "--codex-bin", str(codex_bin()), "--codex-model", "mock-model"]
        for override in self.codex_config():
            flags += ["--codex-config", override]
        return flags

    def requests_containing(self, text: str) -> list[dict[str, Any]]:
        """Recorded requests whose body mentions `text` anywhere."""
        with self._lock:
            return [r for r in self.requests if text in json.dumps(r)]

    # -- answers --------------------------------------------------------------------------

    def _answer(self, h: http.server.BaseHTTPRequestHandler, body: dict[str, Any], n: int) -> None:
        text = last_user_text(body)
        tool_output = _after_tool_output(body)
        if text.startswith("FAIL500"):
            payload = b'{"error":{"message":"mock: internal error","type":"server_error"}}'
            h.send_response(500)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            return
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("cache-control", "no-cache")
        h.send_header("connection", "close")
        h.end_headers()
        rid = f"resp_{n}"

        def send(kind: str, data: dict[str, Any], delay: float = 0.0) -> None:
            if delay:
                time.sleep(delay)
            data = {"type": kind, **data}
            h.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            h.wfile.flush()

        send("response.created", {"response": {"id": rid}})
        call = None if tool_output is not None and not text.startswith("LOOP") else _tool_call(text, n)
        if call is not None:
            send("response.output_item.done", {"item": call})
        else:
            if tool_output is not None:
                out = str(tool_output.get("output", ""))
                reply = f"Done. The tool said: {out[-200:]}"
            elif text.startswith("JSON:"):
                reply = text.removeprefix("JSON:").strip()
            else:
                reply = f"Hello from mock. You said: {text}"
            slow = text.startswith("SLOW")
            msg_id = f"msg_{n}"
            send(
                "response.output_item.added",
                {"item": {"type": "message", "role": "assistant", "id": msg_id, "content": []}},
            )
            pieces = [reply[i : i + 12] for i in range(0, len(reply), 12)] or [""]
            for piece in pieces:
                send(
                    "response.output_text.delta",
                    {"item_id": msg_id, "delta": piece},
                    self.slow_delay_s if slow else 0.0,
                )
            send(
                "response.output_item.done",
                {
                    "item": {
                        "type": "message",
                        "role": "assistant",
                        "id": msg_id,
                        "content": [{"type": "output_text", "text": reply}],
                    }
                },
            )
        usage = {
            "input_tokens": 10 * n,
            "input_tokens_details": None,
            "output_tokens": 5,
            "output_tokens_details": None,
            "total_tokens": 10 * n + 5,
        }
        send("response.completed", {"response": {"id": rid, "usage": usage}})


def _tool_call(text: str, n: int) -> dict[str, Any] | None:
    call_id = f"call_{n}"
    if text.startswith("RUN_ESCALATED:"):
        args = {
            "cmd": text.split(":", 1)[1].strip(),
            "yield_time_ms": 2000,
            "sandbox_permissions": "require_escalated",
            "justification": "the mock wants to run this outside the sandbox",
        }
    elif text.startswith("RUN:"):
        args = {"cmd": text.split(":", 1)[1].strip(), "yield_time_ms": 2000}
    elif text.startswith("PATCH:"):
        path = text.split(":", 1)[1].strip() or "hello.txt"
        patch = f"*** Begin Patch\n*** Add File: {path}\n+patched by the mock\n*** End Patch\n"
        args = {"cmd": f"apply_patch <<'EOF'\n{patch}EOF\n", "yield_time_ms": 2000}
    elif text.startswith("LOOP"):
        args = {"cmd": "true", "yield_time_ms": 500}
    else:
        return None
    return {
        "type": "function_call",
        "id": f"fc_{n}",
        "call_id": call_id,
        "name": "exec_command",
        "arguments": json.dumps(args),
    }
