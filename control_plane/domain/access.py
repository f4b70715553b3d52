"""Who is calling, the secrets that say so, and the limits that keep one owner from degrading
another.

An owner is an opaque string of the application's own (a user, an account, a workspace, a
system job). Every session and every worker belongs to one. Callers reach the control plane as:

- an `AppCaller` (an API key): bound to one owner, or a trusted backend or admin key that names
  the owner it acts for on each call;
- a `WorkerCaller` (a worker token from pairing): bound to one owner and one worker id.

Secrets are random and kept only as SHA-256 hashes; pairing codes are short, so they also
expire fast, work once, and failed guesses are rate-limited (`FailureLimiter`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

API_KEY_PREFIX = "tak_"
WORKER_TOKEN_PREFIX = "twt_"
OWNER_MAX_LEN = 256
KEY_KINDS = ("owner", "backend", "admin")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_LEN = 8  # 40 bits: guessing is bounded by the TTL, one use, and the failure limiter


@dataclass(frozen=True)
class AppCaller:
    """An application (or operator) acting for `owner`."""

    owner: str
    admin: bool = False  # an admin key also sees every owner's workers (AdminService)
    key_id: str = ""  # "" for an anonymous caller of a --dev control plane
    bound: bool = False  # an owner key: it acts for its own owner only


@dataclass(frozen=True)
class WorkerCaller:
    """An execution worker of `owner`. `worker_id` is the id its token is bound to; "" for an
    anonymous worker of a --dev control plane, which names its own id."""

    owner: str
    worker_id: str = ""
    token_id: str = ""


@dataclass(frozen=True)
class Limits:
    """Per-owner and per-session limits. Exceeding one is RESOURCE_EXHAUSTED naming it."""

    # Sessions of one owner with a turn queued or running at once.
    max_active_sessions_per_owner: int = 1000
    # Turns of one owner waiting for a worker (queued, not yet offered).
    max_queued_turns_per_owner: int = 10_000
    # Events one session's worker may write per second, with a burst allowance.
    events_per_second_per_session: float = 2000.0
    event_burst_per_session: int = 20_000
    # Pairing codes of one owner issued and not yet used or expired.
    max_pending_pairing_codes_per_owner: int = 20
    # Failed pairing codes one client address may present per minute (and ten times that
    # from all addresses together, so a distributed guesser is bounded too).
    pairing_failures_per_minute: int = 10
    # Bytes of one ImportSession bundle less its workspace blobs (the rest is read whole before the
    # session is stored; blobs are stored as they arrive, within the workspace limits below).
    max_import_mib: int = 256
    # A session's workspace checkpoint: bytes of file content and files (with symlinks).
    max_workspace_bytes: int = 1 << 30
    max_workspace_files: int = 100_000
    # Bytes of workspace blobs (file contents and manifest chunks) one owner stores in all.
    max_blob_bytes_per_owner: int = 10 << 30


def secret_hash(secret: str) -> str:
    """What the store keeps of a key, a token or a code. Keys and tokens carry 256 random bits,
    so one fast hash is enough; a code's short life and the failure limiter cover its size."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def new_pairing_code() -> str:
    raw = "".join(secrets.choice(_CROCKFORD) for _ in range(_CODE_LEN))
    return f"{raw[:4]}-{raw[4:]}"


def normalize_code(code: str) -> str:
    """Case, spaces and dashes do not matter; I and L read as 1, O as 0 (Crockford)."""
    out = code.upper().replace("-", "").replace(" ", "")
    return out.translate(str.maketrans("ILO", "110"))


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take(n)` says whether n are available now."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self) -> float:
        self._refill()
        return self.tokens

    def take(self, n: float = 1.0) -> bool:
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def spend(self, n: float) -> bool:
        """Like `take`, but a batch larger than what is left (even than the burst) passes
        whenever anything is left, and puts the bucket in debt: the long-run rate still holds,
        and no batch is refused forever for its size."""
        self._refill()
        if self.tokens <= 0:
            return False
        self.tokens -= n
        return True


class FailureLimiter:
    """Counts failed pairing codes per client address and overall, refilled per minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._peers: dict[str, TokenBucket] = {}
        self._all = TokenBucket(per_minute * 10 / 60.0, per_minute * 10)

    def _bucket(self, peer: str) -> TokenBucket:
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) > 10_000:  # forget full buckets: they are the default state
                self._peers = {p: b for p, b in self._peers.items() if b.tokens < b.burst}
            bucket = self._peers[peer] = TokenBucket(self.per_minute / 60.0, self.per_minute)
        return bucket

    def allowed(self, peer: str) -> bool:
        """Whether `peer` may try a code now (it has failures left, and so does everyone)."""
        return self._bucket(peer).available() >= 1 and self._all.available() >= 1

    def failed(self, peer: str) -> None:
        self._bucket(peer).take(1)
        self._all.take(1)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    kind: str  # one of KEY_KINDS
    owner: str  # "" for backend and admin keys
    name: str
    create_time_us: int
    revoke_time_us: int = 0


@dataclass(frozen=True)
class WorkerToken:
    token_id: str
    owner: str
    worker_id: str
    name: str
    create_time_us: int
    revoke_time_us: int = 0
