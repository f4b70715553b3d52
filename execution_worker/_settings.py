"""The worker's settings, built once at the CLI edge (or by a test) and passed down; and the
worker's stable identity on disk."""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tether.execution_worker._codex_settings import CodexSettings, absolute_path
from tether.execution_worker._workspace import DEFAULT_IGNORES

DEFAULT_CONTROL_PLANE = "127.0.0.1:7670"

_WORKER_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a `Worker` needs to know. Durations are seconds, named `_s`."""

    workdir: Path
    control_plane: str = DEFAULT_CONTROL_PLANE
    runtimes: tuple[str, ...] = ("shell",)
    slots: int = 4
    labels: Mapping[str, str] = field(default_factory=dict)
    #: None: read `<workdir>/.tether/worker_id`, creating it on first start.
    worker_id: str | None = None
    name: str = field(default_factory=socket.gethostname)
    #: How long running turns may take to finish once a drain starts.
    drain_grace_s: float = 30.0
    #: Deadline of unary calls (Register) and of waiting for the LeaseOpened answer.
    rpc_timeout_s: float = 10.0
    #: Deadline of a whole Resume download and of a whole Snapshot upload.
    resume_timeout_s: float = 60.0
    snapshot_timeout_s: float = 60.0
    #: How long a drain waits for the control plane to acknowledge the last events.
    flush_timeout_s: float = 10.0
    #: Upload a snapshot of a session after every N turns it finishes (once the turn's events
    #: are acknowledged); 0 turns the after-turn policy off. Drains and restores snapshot
    #: regardless.
    snapshot_every_turns: int = 1
    #: ... once the session has then been idle this long (a turn that starts meanwhile takes
    #: the snapshot over at its own end).
    snapshot_idle_s: float = 0.05
    #: ... but a session whose runtime rebuilds from the log (portability history) and whose
    #: files are as its latest checkpoint has them skips that upload until this many turns have
    #: finished since its latest stored snapshot: the upload would carry only history that the
    #: log already holds and that a restore replays from it. 1: an upload after every turn.
    snapshot_log_turns: int = 16
    #: Gitignore patterns left out of every workspace checkpoint (besides each workspace's own
    #: `.tetherignore`); what they match stays on the worker that wrote it.
    workspace_ignores: tuple[str, ...] = DEFAULT_IGNORES
    #: How many quiet sessions keep their runtime warm; beyond that, the least recently used
    #: are cooled: final snapshot, then their lease is released (their next turn is placed at
    #: the next epoch and rehydrates), which bounds what the worker and the control plane keep
    #: live whatever the number of sessions the worker has run.
    warm_sessions: int = 32
    #: Used until the first RegisterResponse says otherwise.
    reconnect_backoff_initial_s: float = 0.2
    reconnect_backoff_max_s: float = 5.0
    #: When set, the worker appends "<turn_id> <CLOCK_MONOTONIC ns>" here on receiving each
    #: offer: the benchmark's view of when the worker holds the offer.
    offer_trace: Path | None = None
    #: A turn still running after this long is interrupted; 0: no limit. Codex has no cap of
    #: its own on a turn's tool-call loop.
    turn_timeout_s: float = 1800.0
    #: How the "codex" runtime runs `codex app-server`.
    codex: CodexSettings = field(default_factory=CodexSettings)
    #: The worker token from pairing (sent on every call); "" for a --dev control plane.
    #: With a token, `worker_id` must be the id the token is bound to.
    token: str = field(default="", repr=False)
    #: TLS: the CA that signed the control plane's certificate; with a client certificate
    #: and key, mutual TLS.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __post_init__(self) -> None:
        # Absolute from here on: runtimes run their children in other directories (Codex's
        # app-server runs in the session's workspace), where a relative path means another place.
        object.__setattr__(self, "workdir", absolute_path(self.workdir))
        if self.offer_trace is not None:
            object.__setattr__(self, "offer_trace", absolute_path(self.offer_trace))
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            value = getattr(self, name)
            if value:
                object.__setattr__(self, name, str(absolute_path(value)))
        object.__setattr__(self, "runtimes", tuple(self.runtimes))
        object.__setattr__(self, "labels", dict(self.labels))
        if not 1 <= self.slots <= 1024:
            raise ValueError(f"slots must be between 1 and 1024, got {self.slots}")
        if not self.runtimes:
            raise ValueError("at least one runtime is required")
        if self.snapshot_every_turns < 0:
            raise ValueError(f"snapshot_every_turns must be 0 or more, got {self.snapshot_every_turns}")
        if self.snapshot_log_turns < 1:
            raise ValueError(f"snapshot_log_turns must be 1 or more, got {self.snapshot_log_turns}")
        if self.warm_sessions < 0:
            raise ValueError(f"warm_sessions must be 0 or more, got {self.warm_sessions}")
        if self.turn_timeout_s < 0:
            raise ValueError(f"turn_timeout_s must be 0 (no limit) or more, got {self.turn_timeout_s}")
        if not isinstance(self.codex, CodexSettings):
            raise TypeError(f"codex must be CodexSettings, got {type(self.codex).__name__}")
        if self.token and not self.worker_id:
            raise ValueError("a worker token is bound to one worker id: give worker_id with token")
        if self.worker_id is not None and not _WORKER_ID.match(self.worker_id):
            raise ValueError(f"worker id {self.worker_id!r} must be 1-128 characters of [A-Za-z0-9._-]")


def resolve_worker_id(workdir: Path, override: str | None = None) -> str:
    """The worker's stable id: `override`, else the one stored under the workdir (created on
    first start), so a restarted worker comes back as itself and keeps its sticky sessions."""
    if override:
        return override
    path = Path(workdir) / ".tether" / "worker_id"
    try:
        stored = path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if _WORKER_ID.match(stored):
        return stored
    worker_id = "wkr_" + secrets.token_hex(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(worker_id + "\n")
    tmp.replace(path)  # atomic: a crash never leaves a half-written id behind
    return worker_id
