"""API keys, worker tokens and pairing codes: few rows, written outside the group-commit
writer (each is its own small transaction), read through the authenticator's cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..domain import errors
from ..domain.access import (
    API_KEY_PREFIX,
    WORKER_TOKEN_PREFIX,
    ApiKey,
    WorkerToken,
    new_pairing_code,
    new_secret,
    normalize_code,
    secret_hash,
)
from ..domain.model import new_id, now_us
from ._schema import ApiKeyRow, PairingCodeRow, WorkerRow, WorkerTokenRow, table_of
from ._whole import runs_to_the_end

_keys = table_of(ApiKeyRow)
_tokens = table_of(WorkerTokenRow)
_codes = table_of(PairingCodeRow)


def _key(r: Any) -> ApiKey:
    return ApiKey(r.key_id, r.kind, r.owner_id, r.name, r.create_time_us, r.revoke_time_us)


def _token(r: Any) -> WorkerToken:
    return WorkerToken(r.token_id, r.owner_id, r.worker_id, r.name, r.create_time_us, r.revoke_time_us)


class AccessStore:
    """The domain's `CredentialStore` port (and the key management `tether keys` uses)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise errors.Unavailable(f"the database did not answer: {type(exc).__name__}") from exc

    # -- API keys -----------------------------------------------------------------------------

    async def create_api_key(self, kind: str, owner: str, name: str) -> tuple[ApiKey, str]:
        """A new key and its secret, which is never stored or shown again."""
        secret = new_secret(API_KEY_PREFIX)
        key = ApiKey(new_id("key"), kind, owner, name, now_us())
        async with self._tx() as conn:
            await conn.execute(
                insert(_keys).values(
                    key_id=key.key_id,
                    secret_hash=secret_hash(secret),
                    kind=kind,
                    owner_id=owner,
                    name=name,
                    create_time_us=key.create_time_us,
                    revoke_time_us=0,
                )
            )
        return key, secret

    @runs_to_the_end
    async def find_api_key(self, secret: str) -> ApiKey | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(_keys).where(_keys.c.secret_hash == secret_hash(secret)))).first()
        return _key(row) if row else None

    @runs_to_the_end
    async def list_api_keys(self) -> list[ApiKey]:
        async with self._tx() as conn:
            rows = (await conn.execute(select(_keys).order_by(_keys.c.key_id.desc()))).all()
        return [_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKey | None:
        async with self._tx() as conn:
            await conn.execute(
                update(_keys)
                .where(and_(_keys.c.key_id == key_id, _keys.c.revoke_time_us == 0))
                .values(revoke_time_us=now_us())
            )
            row = (await conn.execute(select(_keys).where(_keys.c.key_id == key_id))).first()
        return _key(row) if row else None

    # -- pairing and worker tokens ------------------------------------------------------------

    async def create_pairing_code(self, owner: str, ttl_us: int, max_pending: int) -> tuple[str, int]:
        """A new code for `owner` and when it expires; LimitExceeded past `max_pending` codes
        of the owner issued and neither used nor expired."""
        now = now_us()
        code = new_pairing_code()
        async with self._tx() as conn:
            pending = (
                await conn.execute(
                    select(func.count())
                    .select_from(_codes)
                    .where(
                        and_(_codes.c.owner_id == owner, _codes.c.consumed_time_us == 0, _codes.c.expire_time_us > now)
                    )
                )
            ).scalar_one()
            if pending >= max_pending:
                raise errors.LimitExceeded(
                    "max_pending_pairing_codes_per_owner",
                    max_pending,
                    f"{pending} pairing codes are waiting to be used; use them or let them expire",
                )
            await conn.execute(
                insert(_codes).values(
                    code_hash=secret_hash(normalize_code(code)),
                    owner_id=owner,
                    create_time_us=now,
                    expire_time_us=now + ttl_us,
                    consumed_time_us=0,
                    token_id="",
                )
            )
        return code, now + ttl_us

    async def pair(self, code: str, name: str) -> tuple[WorkerToken, str] | None:
        """Consume `code` and issue a worker token bound to a new worker id, in one transaction.

        The conditional UPDATE is the race's referee: only one exchange finds the code unused,
        so only one token is ever issued per code. None when the code is unknown, expired or
        used (the caller cannot tell which, and neither can a guesser).
        """
        now = now_us()
        secret = new_secret(WORKER_TOKEN_PREFIX)
        token_id = new_id("wtk")
        code_hash = secret_hash(normalize_code(code))
        async with self._tx() as conn:
            won = await conn.execute(
                update(_codes)
                .where(
                    and_(_codes.c.code_hash == code_hash, _codes.c.consumed_time_us == 0, _codes.c.expire_time_us > now)
                )
                .values(consumed_time_us=now, token_id=token_id)
            )
            if won.rowcount != 1:
                return None
            owner = (await conn.execute(select(_codes.c.owner_id).where(_codes.c.code_hash == code_hash))).scalar_one()
            token = WorkerToken(token_id, owner, new_id("wrk").lower(), name, now)
            await conn.execute(
                insert(_tokens).values(
                    token_id=token_id,
                    secret_hash=secret_hash(secret),
                    owner_id=owner,
                    worker_id=token.worker_id,
                    name=name,
                    create_time_us=now,
                    revoke_time_us=0,
                )
            )
        return token, secret

    @runs_to_the_end
    async def find_worker_token(self, secret: str) -> WorkerToken | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(_tokens).where(_tokens.c.secret_hash == secret_hash(secret)))).first()
        return _token(row) if row else None

    @runs_to_the_end
    async def worker_id_bound(self, worker_id: str) -> bool:
        """Whether a token (revoked or not) owns `worker_id`, so no other caller may use it."""
        async with self._tx() as conn:
            row = (await conn.execute(select(_tokens.c.token_id).where(_tokens.c.worker_id == worker_id))).first()
        return row is not None

    @runs_to_the_end
    async def list_worker_tokens(self, owner: str) -> list[WorkerToken]:
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(_tokens).where(_tokens.c.owner_id == owner).order_by(_tokens.c.create_time_us.desc())
                )
            ).all()
        return [_token(r) for r in rows]

    async def revoke_worker_token(self, owner: str, token_id: str) -> WorkerToken:
        async with self._tx() as conn:
            mine = and_(_tokens.c.token_id == token_id, _tokens.c.owner_id == owner)
            await conn.execute(
                update(_tokens).where(and_(mine, _tokens.c.revoke_time_us == 0)).values(revoke_time_us=now_us())
            )
            row = (await conn.execute(select(_tokens).where(mine))).first()
        if row is None:
            raise errors.WorkerTokenNotFound(token_id)  # another owner's token does not exist
        return _token(row)

    # -- purging an owner ---------------------------------------------------------------------

    async def purge_owner(self, owner: str) -> tuple[int, int, int]:
        """Delete the owner's worker tokens (revoke them first: `revoke_worker_token`), worker
        registrations and pairing codes in one transaction; returns how many of each."""
        workers = table_of(WorkerRow)
        codes = table_of(PairingCodeRow)
        async with self._tx() as conn:
            tokens = (await conn.execute(delete(_tokens).where(_tokens.c.owner_id == owner))).rowcount
            registered = (await conn.execute(delete(workers).where(workers.c.owner_id == owner))).rowcount
            pairing = (await conn.execute(delete(codes).where(codes.c.owner_id == owner))).rowcount
        return tokens or 0, registered or 0, pairing or 0
