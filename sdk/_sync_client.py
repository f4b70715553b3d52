"""`Client`: the blocking client, a thin wrapper over `AsyncClient`.

It owns a private event loop running in a daemon thread; the `AsyncClient` (and its channel)
lives on that loop, and every method submits a coroutine to it and waits. Streams stay open
across `next()` calls, which `asyncio.run` per call could not do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ._async_client import (
    DEFAULT_CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    AsyncClient,
)
from ._models import (
    Event,
    InputPolicy,
    PairingCode,
    PendingRequest,
    PurgeProgress,
    RequestState,
    Session,
    SessionPage,
    SessionState,
    Snapshot,
    Turn,
    TurnPage,
    WorkerStatus,
    WorkerToken,
)

__all__ = ["Client"]

_T = TypeVar("_T")


class Client:
    """Blocking client of the Tether control plane; same methods as `AsyncClient`.

    Use it as ``with Client("host:7670") as client: ...`` or call `close()`, which is
    idempotent. `stream_events` returns a plain iterator; closing it (or leaving a ``for`` loop
    and dropping it) cancels the stream.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
        api_key: str | None = None,
        owner: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.owner = owner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tether-sdk-loop", daemon=True)
        self._thread.start()
        self._closed = False
        self._lock = threading.Lock()

        async def make() -> AsyncClient:  # the channel must be created on its own loop
            return AsyncClient(
                target,
                timeout_s=timeout_s,
                options=options,
                api_key=api_key,
                owner=owner,
                tls_ca_file=tls_ca_file,
                tls_cert_file=tls_cert_file,
                tls_key_file=tls_key_file,
            )

        try:
            self._async = self._run(make())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)  # no thread left behind
            self._thread.join()
            self._loop.close()
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, grace_s: float | None = None) -> None:
        """Close the channel and stop the loop thread; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(grace_s), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise RuntimeError("Client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C in the caller's thread must not leave the call running on the loop.
            if not future.done():
                future.cancel()
                try:
                    future.result()
                except (concurrent.futures.CancelledError, Exception):
                    pass
            raise

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        runtime: str,
        *,
        worker_selector: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Session:
        return self._run(
            self._async.create_session(runtime, worker_selector=worker_selector, labels=labels, timeout_s=timeout_s)
        )

    def get_session(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        return self._run(self._async.get_session(session_id, timeout_s=timeout_s))

    def list_sessions(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: SessionState | str | None = None,
        archived: bool | None = None,
        runtime: str = "",
        labels: Mapping[str, str] | None = None,
        order_by: str = "",
        timeout_s: float | None = None,
    ) -> SessionPage:
        """See `AsyncClient.list_sessions`."""
        return self._run(
            self._async.list_sessions(
                page_size=page_size,
                page_token=page_token,
                state=state,
                archived=archived,
                runtime=runtime,
                labels=labels,
                order_by=order_by,
                timeout_s=timeout_s,
            )
        )

    def iter_sessions(
        self,
        *,
        page_size: int = 0,
        state: SessionState | str | None = None,
        archived: bool | None = None,
        runtime: str = "",
        labels: Mapping[str, str] | None = None,
        order_by: str = "",
        timeout_s: float | None = None,
    ) -> Iterator[Session]:
        """See `AsyncClient.iter_sessions`."""
        page_token = ""
        while True:
            page = self.list_sessions(
                page_size=page_size,
                page_token=page_token,
                state=state,
                archived=archived,
                runtime=runtime,
                labels=labels,
                order_by=order_by,
                timeout_s=timeout_s,
            )
            yield from page.sessions
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def update_session(
        self,
        session_id: str,
        *,
        title: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Session:
        """See `AsyncClient.update_session`."""
        return self._run(self._async.update_session(session_id, title=title, labels=labels, timeout_s=timeout_s))

    def archive_session(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        return self._run(self._async.archive_session(session_id, timeout_s=timeout_s))

    def unarchive_session(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        return self._run(self._async.unarchive_session(session_id, timeout_s=timeout_s))

    def delete_session(
        self, session_id: str, *, delete_after_s: float | None = None, timeout_s: float | None = None
    ) -> Session | None:
        """See `AsyncClient.delete_session`."""
        return self._run(self._async.delete_session(session_id, delete_after_s=delete_after_s, timeout_s=timeout_s))

    def cancel_session_deletion(self, session_id: str, *, timeout_s: float | None = None) -> Session:
        """See `AsyncClient.cancel_session_deletion`."""
        return self._run(self._async.cancel_session_deletion(session_id, timeout_s=timeout_s))

    def restore_session(
        self,
        session_id: str,
        worker_selector: Mapping[str, str] | None = None,
        worker_id: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Session:
        return self._run(self._async.restore_session(session_id, worker_selector, worker_id, timeout_s=timeout_s))

    def fork_session(self, session_id: str, turn_id: str | None = None, *, timeout_s: float | None = None) -> Session:
        """See `AsyncClient.fork_session`."""
        return self._run(self._async.fork_session(session_id, turn_id, timeout_s=timeout_s))

    def revert_session(self, session_id: str, turn_id: str, *, timeout_s: float | None = None) -> Session:
        """See `AsyncClient.revert_session`."""
        return self._run(self._async.revert_session(session_id, turn_id, timeout_s=timeout_s))

    def export_session(self, session_id: str, *, timeout_s: float | None = None) -> Generator[bytes, None, None]:
        """See `AsyncClient.export_session`; `close()` the iterator to cancel."""
        chunks = self._async.export_session(session_id, timeout_s=timeout_s)
        try:
            while True:
                try:
                    chunk = self._run(_anext(chunks))
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            if not self._closed:
                self._run(chunks.aclose())

    def import_session(
        self,
        bundle: bytes | Iterable[bytes] | AsyncIterable[bytes],
        *,
        keep_session_id: bool = False,
        timeout_s: float | None = None,
    ) -> Session:
        """See `AsyncClient.import_session`."""
        return self._run(self._async.import_session(bundle, keep_session_id=keep_session_id, timeout_s=timeout_s))

    # -- turns ----------------------------------------------------------------------------

    def send_input(
        self,
        session_id: str,
        input: str,
        *,
        idempotency_key: str = "",
        policy: InputPolicy = InputPolicy.ENQUEUE,
        output_schema: Mapping[str, Any] | str | None = None,
        timeout_s: float | None = None,
    ) -> Turn:
        """See `AsyncClient.send_input`."""
        return self._run(
            self._async.send_input(
                session_id,
                input,
                idempotency_key=idempotency_key,
                policy=policy,
                output_schema=output_schema,
                timeout_s=timeout_s,
            )
        )

    def list_turns(
        self,
        session_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        order_by: str = "",
        timeout_s: float | None = None,
    ) -> TurnPage:
        """See `AsyncClient.list_turns`."""
        return self._run(
            self._async.list_turns(
                session_id, page_size=page_size, page_token=page_token, order_by=order_by, timeout_s=timeout_s
            )
        )

    def iter_turns(
        self, session_id: str, *, page_size: int = 0, order_by: str = "", timeout_s: float | None = None
    ) -> Iterator[Turn]:
        """See `AsyncClient.iter_turns`."""
        page_token = ""
        while True:
            page = self.list_turns(
                session_id, page_size=page_size, page_token=page_token, order_by=order_by, timeout_s=timeout_s
            )
            yield from page.turns
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def get_turn(self, session_id: str, turn_id: str, *, timeout_s: float | None = None) -> Turn:
        return self._run(self._async.get_turn(session_id, turn_id, timeout_s=timeout_s))

    def interrupt_turn(
        self,
        session_id: str,
        turn_id: str = "",
        *,
        reason: str = "",
        timeout_s: float | None = None,
    ) -> Turn:
        return self._run(self._async.interrupt_turn(session_id, turn_id, reason=reason, timeout_s=timeout_s))

    # -- pending requests -----------------------------------------------------------------

    def respond_to_request(
        self,
        session_id: str,
        request_id: str,
        response_json: str | None = None,
        *,
        decision: str | None = None,
        answers: Mapping[str, Sequence[str]] | None = None,
        timeout_s: float | None = None,
    ) -> PendingRequest:
        return self._run(
            self._async.respond_to_request(
                session_id,
                request_id,
                response_json,
                decision=decision,
                answers=answers,
                timeout_s=timeout_s,
            )
        )

    def list_requests(
        self,
        session_id: str,
        *,
        state: RequestState | str | None = None,
        timeout_s: float | None = None,
    ) -> list[PendingRequest]:
        return self._run(self._async.list_requests(session_id, state=state, timeout_s=timeout_s))

    # -- events ---------------------------------------------------------------------------

    def stream_events(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        stop_at_end: bool = False,
        timeout_s: float | None = None,
        reconnect: bool = True,
    ) -> Generator[Event, None, None]:
        """Blocking form of `AsyncClient.stream_events` (it reopens a stream the control plane
        dropped, unless `reconnect=False`); `close()` the iterator to cancel."""
        events = self._async.stream_events(
            session_id, after_seq=after_seq, stop_at_end=stop_at_end, timeout_s=timeout_s, reconnect=reconnect
        )
        try:
            while True:
                try:
                    event = self._run(_anext(events))
                except StopAsyncIteration:
                    return
                yield event
        finally:
            if not self._closed:
                self._run(events.aclose())

    def wait_for_turn(
        self,
        session_id: str,
        turn_id: str,
        *,
        after_seq: int = 0,
        timeout_s: float | None = None,
    ) -> Turn:
        return self._run(self._async.wait_for_turn(session_id, turn_id, after_seq=after_seq, timeout_s=timeout_s))

    # -- workers (AdminService) -----------------------------------------------------------

    def list_workers(self, *, timeout_s: float | None = None) -> list[WorkerStatus]:
        return self._run(self._async.list_workers(timeout_s=timeout_s))

    def drain_worker(
        self, worker_id: str, grace_s: float | None = None, *, timeout_s: float | None = None
    ) -> WorkerStatus:
        return self._run(self._async.drain_worker(worker_id, grace_s, timeout_s=timeout_s))

    def create_pairing_code(self, ttl_s: float | None = None, *, timeout_s: float | None = None) -> PairingCode:
        return self._run(self._async.create_pairing_code(ttl_s, timeout_s=timeout_s))

    def list_worker_tokens(self, *, timeout_s: float | None = None) -> list[WorkerToken]:
        return self._run(self._async.list_worker_tokens(timeout_s=timeout_s))

    def revoke_worker_token(self, token_id: str, *, timeout_s: float | None = None) -> WorkerToken:
        return self._run(self._async.revoke_worker_token(token_id, timeout_s=timeout_s))

    def purge_owner_data(
        self, owner: str = "", *, timeout_s: float | None = None
    ) -> Generator[PurgeProgress, None, None]:
        """See `AsyncClient.purge_owner_data`; `close()` the iterator to stop waiting for it."""
        steps = self._async.purge_owner_data(owner, timeout_s=timeout_s)
        try:
            while True:
                try:
                    step = self._run(_anext(steps))
                except StopAsyncIteration:
                    return
                yield step
        finally:
            if not self._closed:
                self._run(steps.aclose())

    # -- snapshots and health -------------------------------------------------------------

    def get_snapshot(self, session_id: str, *, timeout_s: float | None = None) -> Snapshot:
        return self._run(self._async.get_snapshot(session_id, timeout_s=timeout_s))

    def create_snapshot(self, session_id: str, *, timeout_s: float | None = None) -> Snapshot:
        return self._run(self._async.create_snapshot(session_id, timeout_s=timeout_s))

    def health(self, service: str = "", *, timeout_s: float | None = None) -> bool:
        return self._run(self._async.health(service, timeout_s=timeout_s))


async def _anext(iterator: AsyncIterator[_T]) -> _T:
    # A coroutine, which run_coroutine_threadsafe needs and the awaitable anext() returns is not.
    return await anext(iterator)
