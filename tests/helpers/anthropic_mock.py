"""A scripted mock of the Anthropic Messages API on 127.0.0.1, for driving the real Claude Code
CLI offline in tests and benchmarks (`ANTHROPIC_BASE_URL` pointing here, a dummy key).

Claude Code POSTs `{base_url}/v1/messages` (`stream: true`) with the whole conversation in
`messages` and reads server-sent events back: `message_start`, `content_block_start` /
`content_block_delta` / `content_block_stop` per block (text or `tool_use`), `message_delta`
(stop reason and usage) and `message_stop`. The mock decides what to answer from the latest user
text of the request (the "script word") and records every request, whatever its path, so a test
can check exactly what the model was sent:

- `RUN: <cmd>`   a `Bash` tool use running `<cmd>`, then (once its result comes back) a reply
                 quoting the result
- `SLOW`         a reply streamed at one delta per `slow_delay_s`
- `FAIL500`      HTTP 500 with an `api_error` body
- anything else  "Hello from mock. You said: <text>", streamed as a few deltas

Requests Claude Code makes besides the conversation (token counting, a model list, a quota
probe with `max_tokens` 1, side questions without tools such as a title) are answered with a
short reply and recorded too; `conversation_requests()` keeps only the conversation's own (the
ones that offer tools).

Only loopback: the server binds 127.0.0.1 and an ephemeral port.
"""

from __future__ import annotations

import http.server
import json
import pathlib
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

_ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The pinned Claude Code CLI, as `npm ci` installs it (package.json pins the version).
PINNED_CLAUDE = _ROOT / "node_modules/.bin/claude"
#: A key the mock accepts; Claude Code only needs one to be set.
DUMMY_KEY = "sk-ant-tether-mock-key"
MODEL = "claude-mock-1"


def claude_bin() -> pathlib.Path | None:
    """The Claude Code binary the tests drive: the pinned one, else `claude` on PATH."""
    if PINNED_CLAUDE.exists():
        return PINNED_CLAUDE
    found = shutil.which("claude")
    return pathlib.Path(found) if found else None


@dataclass(frozen=True)
class Recorded:
    """One request the mock got: its path and its JSON body ({} for a GET)."""

    method: str
    path: str
    body: dict[str, Any]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")


def last_user_text(body: dict[str, Any]) -> str:
    """The latest user text of a request that is not one Claude Code adds itself (its
    `<system-reminder>` and command blocks start with "<")."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for block in reversed(blocks):
            if isinstance(block, dict) and block.get("type") == "text":
                text = str(block.get("text", "")).strip()
                if text and not text.startswith("<"):
                    return text
    return ""


def _trailing_tool_result(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool result the request ends with, if the previous answer was a tool use."""
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return None
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            return block
    return None


class MockAnthropic:
    """The mock server; use as a context manager or call `start()` / `stop()`."""

    def __init__(self, *, slow_delay_s: float = 0.5) -> None:
        self.slow_delay_s = slow_delay_s
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> MockAnthropic:
        mock = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                mock._record("GET", self.path, {})
                path = self.path.split("?", 1)[0]
                if path.endswith("/v1/models"):
                    model = {"type": "model", "id": MODEL, "display_name": "Mock", "created_at": "2026-01-01T00:00:00Z"}
                    _send_json(self, 200, {"data": [model], "has_more": False, "first_id": MODEL, "last_id": MODEL})
                else:
                    _send_json(self, 404, _error("not_found_error", f"mock: no such endpoint {path}"))

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    _send_json(self, 400, _error("invalid_request_error", "body is not JSON"))
                    return
                n = mock._record("POST", self.path, body)
                path = self.path.split("?", 1)[0]
                if path.endswith("/v1/messages/count_tokens"):
                    _send_json(self, 200, {"input_tokens": 100})
                elif path.endswith("/v1/messages"):
                    mock._answer(self, body, n)
                else:
                    _send_json(self, 404, _error("not_found_error", f"mock: no such endpoint {path}"))

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

    def __enter__(self) -> MockAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "mock not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment that sends Claude Code's model traffic to this mock."""
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": DUMMY_KEY}

    def worker_flags(self) -> list[str]:
        """`tether worker` flags for a claude runtime on the pinned binary talking to this mock
        (the environment comes from `env()`)."""
        return ["--runtime", "claude", "--claude-bin", str(claude_bin()), "--claude-model", MODEL]

    def conversation_requests(self) -> list[dict[str, Any]]:
        """The bodies of the conversation's own requests (streamed, offering tools), in order."""
        with self._lock:
            return [
                r.body
                for r in self.requests
                if r.method == "POST" and r.path.split("?", 1)[0].endswith("/v1/messages") and r.body.get("tools")
            ]

    def requests_containing(self, text: str) -> list[dict[str, Any]]:
        """Conversation requests whose body mentions `text` anywhere."""
        return [r for r in self.conversation_requests() if text in json.dumps(r)]

    def _record(self, method: str, path: str, body: dict[str, Any]) -> int:
        with self._lock:
            self.requests.append(Recorded(method, path, body))
            self._counter += 1
            return self._counter

    # -- answers --------------------------------------------------------------------------

    def _answer(self, h: http.server.BaseHTTPRequestHandler, body: dict[str, Any], n: int) -> None:
        text = last_user_text(body)
        if text.startswith("FAIL500"):
            _send_json(h, 500, _error("api_error", "mock: internal server error"))
            return
        tool_result = _trailing_tool_result(body)
        if not body.get("tools"):
            reply, tool = "Mock title", None  # a side question of Claude Code's own
        elif tool_result is not None:
            reply, tool = f"Done. The tool said: {_text_of(tool_result.get('content'))[-200:]}", None
        elif text.startswith("RUN:"):
            reply, tool = "", {"command": text.removeprefix("RUN:").strip(), "description": "run it"}
        else:
            reply, tool = f"Hello from mock. You said: {text}", None
        if not body.get("stream"):
            content: list[dict[str, Any]] = [{"type": "text", "text": reply}] if reply else []
            if tool is not None:
                content.append({"type": "tool_use", "id": f"toolu_mock{n}", "name": "Bash", "input": tool})
            _send_json(h, 200, _message(n, body, content, "tool_use" if tool else "end_turn"))
            return
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("cache-control", "no-cache")
        h.send_header("connection", "close")
        h.end_headers()

        def send(kind: str, data: dict[str, Any], delay: float = 0.0) -> None:
            if delay:
                time.sleep(delay)
            h.wfile.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())
            h.wfile.flush()

        send("message_start", {"message": _message(n, body, [], None, output_tokens=1)})
        index = 0
        if reply:
            send("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            slow = text.startswith("SLOW")
            pieces = [reply[i : i + 8] for i in range(0, len(reply), 8)] if not slow else reply.split(" ")
            for i, piece in enumerate(pieces):
                chunk = piece if not slow or i == len(pieces) - 1 else piece + " "
                send(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "text_delta", "text": chunk}},
                    self.slow_delay_s if slow else 0.0,
                )
            send("content_block_stop", {"index": index})
            index += 1
        if tool is not None:
            block = {"type": "tool_use", "id": f"toolu_mock{n}", "name": "Bash", "input": {}}
            send("content_block_start", {"index": index, "content_block": block})
            raw = json.dumps(tool)
            for i in range(0, len(raw), 16):
                send(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": raw[i : i + 16]}},
                )
            send("content_block_stop", {"index": index})
        stop = "tool_use" if tool is not None else "end_turn"
        send("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 7}})
        send("message_stop", {})


def _message(
    n: int, body: dict[str, Any], content: list[dict[str, Any]], stop: str | None, output_tokens: int = 7
) -> dict[str, Any]:
    return {
        "id": f"msg_mock{n}",
        "type": "message",
        "role": "assistant",
        "model": str(body.get("model") or MODEL),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 11,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _send_json(h: http.server.BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
