"""Authentication at the edge: call metadata in, an `AppCaller` or a `WorkerCaller` out.

Credentials travel as `authorization: Bearer <secret>`; a backend or admin key also names the
owner it acts for in `x-tether-owner`. Known credentials are cached for a few seconds so a
call costs no database read; a revocation through this control plane evicts at once and ends
the worker's open streams (`watch`). Secrets are never logged and never put in a message.
Every refusal is reported to `on_refused` with a reason from a fixed set (`REFUSALS`), for the
auth-failure metric; an accepted caller's owner (and worker id) name the call in the logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from tether import logs

from ..domain import errors
from ..domain.access import (
    API_KEY_PREFIX,
    OWNER_MAX_LEN,
    WORKER_TOKEN_PREFIX,
    ApiKey,
    AppCaller,
    WorkerCaller,
    WorkerToken,
    secret_hash,
)
from ..domain.ports import CredentialStore

log = logging.getLogger(__name__)

OWNER_HEADER = "x-tether-owner"
# Why a call's credentials were refused (the `reason` label of tether_auth_failures_total).
REFUSALS = (
    "missing_credential",  # no authorization metadata
    "malformed_credential",  # not 'Bearer <secret>'
    "unknown_credential",  # a secret this control plane did not issue
    "wrong_credential_kind",  # a worker token on the session API, an API key on WorkerService
    "revoked",  # an API key or worker token that was revoked
    "owner_missing",  # a backend key without x-tether-owner
    "owner_mismatch",  # an owner-bound key naming another owner
    "owner_invalid",  # x-tether-owner that is not an owner name
    "pairing_code_invalid",  # Pair with a code that is unknown, expired or used
)
_Credential = TypeVar("_Credential", ApiKey, WorkerToken)
_CACHE_TTL_S = 2.0
_MAX_SECRET = 256


def owner_name(value: str, where: str = OWNER_HEADER) -> str:
    """An owner is opaque to Tether, but printable: 1 to 256 characters, no control characters."""
    if not value:
        raise errors.InvalidArgument(where, "is required")
    if len(value) > OWNER_MAX_LEN:
        raise errors.InvalidArgument(where, f"must be at most {OWNER_MAX_LEN} characters (got {len(value)})")
    if not value.isprintable():
        raise errors.InvalidArgument(where, "must not contain control characters")
    return value


def _metadata(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    secret = owner = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, rest = value.partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                raise errors.Unauthenticated("the authorization metadata must be 'Bearer <secret>'")
            secret = rest.strip()
        elif key == OWNER_HEADER and isinstance(value, str):
            owner = value
    if len(secret) > _MAX_SECRET:
        raise errors.Unauthenticated("the credential is not one this control plane issued")
    return secret, owner


class Authenticator:
    def __init__(
        self, store: CredentialStore, dev_owner: str = "", on_refused: Callable[[str], None] | None = None
    ) -> None:
        self._store = store
        self.dev_owner = dev_owner
        self._on_refused = on_refused
        self._keys: dict[str, tuple[ApiKey, float]] = {}  # by secret hash
        self._tokens: dict[str, tuple[WorkerToken, float]] = {}  # by secret hash
        self._revoked_tokens: set[str] = set()  # token ids revoked through this process
        self._watchers: dict[str, set[Callable[[errors.DomainError], None]]] = {}

    def _refuse(self, reason: str, err: errors.DomainError) -> errors.DomainError:
        """`err`, once `on_refused` heard why (one of REFUSALS)."""
        if self._on_refused is not None:
            self._on_refused(reason)
        return err

    def pairing_refused(self, err: errors.DomainError) -> errors.DomainError:
        """`err`, once `on_refused` heard of a pairing code refused (Pair checks codes itself)."""
        return self._refuse("pairing_code_invalid", err)

    def _metadata(self, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        try:
            return _metadata(context)
        except errors.Unauthenticated as err:
            raise self._refuse("malformed_credential", err) from None

    def _owner(self, value: str) -> str:
        try:
            return owner_name(value)
        except errors.InvalidArgument as err:
            raise self._refuse("owner_invalid", err) from None

    async def app(self, context: grpc.aio.ServicerContext, *, owner_required: bool = True) -> AppCaller:
        """The application calling SessionService or AdminService. An admin key may leave the
        owner out (`owner_required=False`) to act across owners; its `owner` is then ""."""
        caller = await self._app(context, owner_required)
        logs.bind(owner=caller.owner)
        return caller

    async def _app(self, context: grpc.aio.ServicerContext, owner_required: bool) -> AppCaller:
        secret, owner = self._metadata(context)
        if not secret:
            if self.dev_owner:  # --dev: a local caller is trusted, and may name an owner
                return AppCaller(self._owner(owner) if owner else self.dev_owner, admin=True)
            raise self._refuse(
                "missing_credential",
                errors.Unauthenticated(
                    "this call needs an API key: send 'authorization: Bearer <key>' (tether keys create)"
                ),
            )
        key = await self._api_key(secret)
        if key is None:
            if secret.startswith(WORKER_TOKEN_PREFIX) and await self._worker_token(secret) is not None:
                raise self._refuse(
                    "wrong_credential_kind",
                    errors.PermissionDenied("a worker token cannot call the session API; use an API key"),
                )
            raise self._refuse(
                "unknown_credential", errors.Unauthenticated("the API key is not one this control plane issued")
            )
        if key.revoke_time_us:
            raise self._refuse("revoked", errors.TokenRevoked(f"API key {key.key_id} was revoked", key_id=key.key_id))
        if key.kind == "owner":
            if owner and owner != key.owner:
                raise self._refuse(
                    "owner_mismatch",
                    errors.PermissionDenied(
                        f"API key {key.key_id} is bound to one owner and cannot act for another; drop {OWNER_HEADER}",
                        key_id=key.key_id,
                    ),
                )
            return AppCaller(key.owner, key_id=key.key_id, bound=True)
        admin = key.kind == "admin"
        if not owner:
            if admin and not owner_required:
                return AppCaller("", admin=True, key_id=key.key_id)
            raise self._refuse(
                "owner_missing",
                errors.InvalidArgument(OWNER_HEADER, f"a {key.kind} key must name the owner it acts for on this call"),
            )
        return AppCaller(self._owner(owner), admin=admin, key_id=key.key_id)

    async def worker(self, context: grpc.aio.ServicerContext) -> WorkerCaller:
        """The execution worker calling WorkerService."""
        caller = await self._worker(context)
        logs.bind(owner=caller.owner)
        if caller.worker_id:  # a token's worker (a --dev worker names its id in its requests)
            logs.bind(worker_id=caller.worker_id)
        return caller

    async def _worker(self, context: grpc.aio.ServicerContext) -> WorkerCaller:
        secret, _ = self._metadata(context)
        if not secret:
            if self.dev_owner:
                return WorkerCaller(self.dev_owner)
            raise self._refuse(
                "missing_credential",
                errors.Unauthenticated(
                    "WorkerService needs a worker token: pair the worker first (tether worker pair --code CODE)"
                ),
            )
        token = await self._worker_token(secret)
        if token is None:
            if secret.startswith(API_KEY_PREFIX) and await self._api_key(secret) is not None:
                raise self._refuse(
                    "wrong_credential_kind",
                    errors.PermissionDenied("an API key cannot call WorkerService; pair the worker for a worker token"),
                )
            raise self._refuse(
                "unknown_credential",
                errors.Unauthenticated("the worker token is not one this control plane issued; pair the worker again"),
            )
        self._check_token(token)
        return WorkerCaller(token.owner, token.worker_id, token.token_id)

    def _check_token(self, token: WorkerToken) -> None:
        if token.revoke_time_us or token.token_id in self._revoked_tokens:
            raise self._refuse(
                "revoked",
                errors.TokenRevoked(
                    f"worker token {token.token_id} was revoked; pair the worker again", token_id=token.token_id
                ),
            )

    def check_still_valid(self, caller: WorkerCaller) -> None:
        """For long calls: raise if the caller's token was revoked since the call began."""
        if caller.token_id and caller.token_id in self._revoked_tokens:
            raise errors.TokenRevoked(f"worker token {caller.token_id} was revoked; pair the worker again")

    async def _api_key(self, secret: str) -> ApiKey | None:
        return await _cached(self._keys, secret, API_KEY_PREFIX, self._store.find_api_key)

    async def _worker_token(self, secret: str) -> WorkerToken | None:
        return await _cached(self._tokens, secret, WORKER_TOKEN_PREFIX, self._store.find_worker_token)

    # -- revocation -----------------------------------------------------------------------------

    def watch(self, caller: WorkerCaller, on_revoked: Callable[[errors.DomainError], None]) -> Callable[[], None]:
        """Call `on_revoked` if the caller's token is revoked; returns the call that stops it."""
        if not caller.token_id:
            return lambda: None
        watchers = self._watchers.setdefault(caller.token_id, set())
        watchers.add(on_revoked)

        def unwatch() -> None:
            watchers.discard(on_revoked)
            if not watchers and self._watchers.get(caller.token_id) is watchers:
                del self._watchers[caller.token_id]

        return unwatch

    def revoked(self, token: WorkerToken) -> None:
        """A token was revoked: forget it and end every open stream that authenticated with it."""
        self._revoked_tokens.add(token.token_id)
        self._tokens = {h: hit for h, hit in self._tokens.items() if hit[0].token_id != token.token_id}
        err = errors.TokenRevoked(
            f"worker token {token.token_id} was revoked; pair the worker again", token_id=token.token_id
        )
        for on_revoked in list(self._watchers.get(token.token_id, ())):
            on_revoked(err)
        log.info("worker token %s of worker %s revoked", token.token_id, token.worker_id)


async def _cached(
    cache: dict[str, tuple[_Credential, float]],
    secret: str,
    prefix: str,
    find: Callable[[str], Awaitable[_Credential | None]],
) -> _Credential | None:
    """A known credential from `cache` (by secret hash) or, on a miss, from the store. Unknown
    secrets are not cached, so a key issued a moment ago works at once; a secret without the
    kind's prefix is never looked up."""
    h = secret_hash(secret)
    now = time.monotonic()
    hit = cache.get(h)
    if hit is not None and hit[1] > now:
        return hit[0]
    found = await find(secret) if secret.startswith(prefix) else None
    if found is not None:
        cache[h] = (found, now + _CACHE_TTL_S)
    return found


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The client's address without its port ("ipv4:10.0.0.5:41234" -> "ipv4:10.0.0.5")."""
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
