"""The errors of the Codex runtime's modules: one base, `CodexError`, for whatever app-server
could not do; `CodexRpcError` for a JSON-RPC error answer; `CodexExited` once it is gone."""

from __future__ import annotations


class CodexError(Exception):
    """app-server could not do what the runtime asked."""


class CodexRpcError(CodexError):
    """app-server answered a request with a JSON-RPC error."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method} failed: {message} (code {code})")
        self.method = method
        self.code = code
        self.rpc_message = message


class CodexExited(CodexError):
    """app-server is gone."""
