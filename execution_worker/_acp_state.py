"""An ACP agent's state directory as snapshot metadata, and back.

An agent that offers `session/load` keeps what it needs to load a session in its own files
(codex-acp: its CODEX_HOME's `sessions/` rollouts). With `--acp-state-dir-env NAME` each session
gets a state directory of its own, handed to the agent in $NAME; its files (less
`--acp-state-exclude`) ride in every snapshot's runtime metadata, base64-encoded, and are written
back on the worker that takes the session over. Bounded: state over `max_state_bytes` is not
carried, and the metadata says why, so the move fails closed with that reason rather than
loading a session from half its files.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from tether.execution_worker._acp_settings import AcpSettings


class StateError(Exception):
    """The carried state cannot be written back; str() says why."""


def pack_state(settings: AcpSettings, state_dir: Path) -> dict[str, Any]:
    """The files of `state_dir` as `{"files": {relative: base64}, "bytes": n, "sha256": ...}`,
    or `{"error": why}` when they are over the bound."""
    files: dict[str, str] = {}
    total = 0
    digest = hashlib.sha256()
    for path in sorted(_files(state_dir)):
        relative = path.relative_to(state_dir).as_posix()
        if settings.excluded(relative):
            continue
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # the agent removed it meanwhile
            continue
        total += len(data)
        if total > settings.max_state_bytes:
            return {
                "error": f"the agent's state directory is over {settings.max_state_bytes} bytes "
                f"(at {relative}); exclude its caches with --acp-state-exclude or raise --acp-state-max-mib"
            }
        digest.update(relative.encode() + b"\0" + data)
        files[relative] = base64.b64encode(data).decode()
    return {"files": files, "bytes": total, "sha256": digest.hexdigest()}


def unpack_state(settings: AcpSettings, packed: Any, state_dir: Path) -> int:
    """Write the files `pack_state` packed into `state_dir`; the number of files. Raises
    StateError for state that was not carried, is malformed, or would escape `state_dir`."""
    if not isinstance(packed, dict):
        raise StateError("the snapshot carries no agent state")
    if "error" in packed:
        raise StateError(f"the agent's state was not carried: {packed['error']}")
    files = packed.get("files")
    if not isinstance(files, dict):
        raise StateError("the snapshot's agent state has no files")
    root = state_dir.resolve()
    digest = hashlib.sha256()
    decoded: list[tuple[Path, bytes]] = []
    total = 0
    for relative, encoded in sorted(files.items()):
        target = (root / relative).resolve()
        if not isinstance(encoded, str) or not target.is_relative_to(root) or target == root:
            raise StateError(f"the snapshot's agent state names a bad file {relative!r}")
        try:
            data = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise StateError(f"the snapshot's agent state file {relative!r} is not base64") from None
        total += len(data)
        if total > settings.max_state_bytes:
            raise StateError(f"the snapshot's agent state is over {settings.max_state_bytes} bytes")
        digest.update(relative.encode() + b"\0" + data)
        decoded.append((target, data))
    if packed.get("sha256") != digest.hexdigest():
        raise StateError("the snapshot's agent state does not match its checksum")
    for target, data in decoded:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(decoded)


def _files(root: Path) -> list[Path]:
    """Regular files under `root`, not following symbolic links."""
    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(directory) / name
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    found.append(path)
            except FileNotFoundError:
                continue
        dirnames.sort()
    return found
