"""A scripted ACP agent (run as `python -m tests.helpers.acp_fake_agent`) that calls the client's
own methods, which codex-acp never does: it runs its commands and edits its files itself.

It offers no `session/load` (so the worker declares it `none`). Each prompt's text is a script:

- `READ <path>`          `fs/read_text_file`, then says the content (or the error it got)
- `WRITE <path> <text>`  `fs/write_text_file`, then says "wrote" (or the error)
- `CAPS`                 says the clientCapabilities the client sent at initialize (JSON)
- `TERM <shell command>` a `tool_call` of kind execute backed by `terminal/create` (`sh -c`),
                         `terminal/wait_for_exit`, `terminal/output`, then `terminal/release`
- anything else          says "echo: <text>"
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

_ids = itertools.count(1)
_client_capabilities: dict[str, Any] = {}


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    sys.stdout.flush()


def call(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A request to the client, answered before anything else arrives (the client sends nothing
    else while a prompt runs here)."""
    request_id = next(_ids)
    send({"id": request_id, "method": method, "params": params})
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("id") == request_id and "method" not in message:
            return message
    raise SystemExit(0)


def say(session_id: str, text: str) -> None:
    update = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
    send({"method": "session/update", "params": {"sessionId": session_id, "update": update}})


def tool(session_id: str, **update: Any) -> None:
    send({"method": "session/update", "params": {"sessionId": session_id, "update": update}})


def outcome(reply: dict[str, Any], ok: str) -> str:
    return f"error: {reply['error']['message']}" if "error" in reply else ok


def prompt(session_id: str, text: str) -> None:
    word, _, rest = text.partition(" ")
    if word == "READ":
        reply = call("fs/read_text_file", {"sessionId": session_id, "path": rest})
        say(session_id, outcome(reply, f"content: {(reply.get('result') or {}).get('content')}"))
    elif word == "WRITE":
        path, _, content = rest.partition(" ")
        reply = call("fs/write_text_file", {"sessionId": session_id, "path": path, "content": content})
        say(session_id, outcome(reply, "wrote"))
    elif word == "CAPS":
        say(session_id, json.dumps(_client_capabilities, sort_keys=True))
    elif word == "TERM":
        created = call("terminal/create", {"sessionId": session_id, "command": "sh", "args": ["-c", rest]})
        if "error" in created:
            say(session_id, outcome(created, ""))
            return
        terminal = created["result"]["terminalId"]
        content = [{"type": "terminal", "terminalId": terminal}]
        tool(session_id, sessionUpdate="tool_call", toolCallId="t1", kind="execute", title=rest, content=content)
        ids = {"sessionId": session_id, "terminalId": terminal}
        status = call("terminal/wait_for_exit", ids)["result"]
        output = call("terminal/output", ids)["result"]["output"]
        tool(
            session_id,
            sessionUpdate="tool_call_update",
            toolCallId="t1",
            status="completed" if status["exitCode"] == 0 else "failed",
            content=content,
        )
        call("terminal/release", ids)
        say(session_id, f"ran: {output.strip()}")
    else:
        say(session_id, f"echo: {text}")


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        method, params = message.get("method"), message.get("params") or {}
        if method == "initialize":
            _client_capabilities.update(params.get("clientCapabilities") or {})
            capabilities = {"loadSession": False}
            result: Any = {"protocolVersion": 1, "agentCapabilities": capabilities, "agentInfo": {"name": "fake"}}
        elif method == "session/new":
            result = {"sessionId": "fake-session"}
        elif method == "session/prompt":
            text = "".join(block.get("text", "") for block in params.get("prompt") or [])
            prompt(params["sessionId"], text)
            result = {"stopReason": "end_turn"}
        elif method == "session/cancel":
            continue
        else:
            send({"id": message.get("id"), "error": {"code": -32601, "message": f"no {method}"}})
            continue
        send({"id": message["id"], "result": result})


if __name__ == "__main__":
    main()
