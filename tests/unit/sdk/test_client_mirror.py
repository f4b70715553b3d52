"""`Client` mirrors `AsyncClient` method for method: the same public methods with the same
parameters (names, kinds, defaults, types), and returns that correspond (a coroutine of X is X,
an async iterator or generator of X is an iterator or generator of X). Only the plumbing that
must differ is exempt, and it is listed here.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

import pytest

from tether.sdk import AsyncClient, Client

#: Constructor parameters only `AsyncClient` takes: a `grpc.aio` channel belongs to the caller's
#: event loop, while `Client` runs its own loop in a thread and makes its channel there.
ASYNC_ONLY_INIT_PARAMETERS = frozenset({"channel"})


def _public_methods(cls: type) -> set[str]:
    return {name for name, member in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def _blocking_form(method: Callable[..., Any]) -> Any:
    """What the blocking twin of an `AsyncClient` method returns."""
    hint = typing.get_type_hints(method)["return"]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if inspect.isasyncgenfunction(method):
        if origin is collections.abc.AsyncIterator:
            return Iterator[args[0]]
        if origin is collections.abc.AsyncGenerator:
            return Generator[args[0], args[1], None]
        if origin is collections.abc.AsyncIterable:
            return Iterable[args[0]]
        raise AssertionError(f"{method.__qualname__}: an async generator annotated {hint}")
    if inspect.iscoroutinefunction(method):
        return hint
    if origin is collections.abc.Awaitable:
        return args[0]
    if origin is collections.abc.Coroutine:
        return args[2]
    raise AssertionError(f"{method.__qualname__} is neither async nor returns an awaitable: {hint}")


def _parameters(method: Callable[..., Any], skip: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any, Any]]:
    """(name, kind, default, type) of each parameter after `self`."""
    hints = typing.get_type_hints(method)
    params = list(inspect.signature(method).parameters.values())[1:]
    return [(p.name, p.kind, p.default, hints.get(p.name)) for p in params if p.name not in skip]


def test_both_clients_have_the_same_public_methods() -> None:
    assert _public_methods(AsyncClient) == _public_methods(Client)


@pytest.mark.parametrize("name", sorted(_public_methods(AsyncClient)))
def test_each_method_takes_the_same_parameters(name: str) -> None:
    assert _parameters(getattr(Client, name)) == _parameters(getattr(AsyncClient, name))


@pytest.mark.parametrize("name", sorted(_public_methods(AsyncClient)))
def test_each_method_returns_the_blocking_form_of_the_async_result(name: str) -> None:
    async_method, sync_method = getattr(AsyncClient, name), getattr(Client, name)
    assert not inspect.iscoroutinefunction(sync_method) and not inspect.isasyncgenfunction(sync_method)
    assert typing.get_type_hints(sync_method)["return"] == _blocking_form(async_method)


def test_both_constructors_take_the_same_parameters() -> None:
    async_params = _parameters(AsyncClient.__init__, skip=ASYNC_ONLY_INIT_PARAMETERS)
    assert _parameters(Client.__init__) == async_params
    assert {name for name, *_ in _parameters(AsyncClient.__init__)} >= ASYNC_ONLY_INIT_PARAMETERS


def test_both_clients_are_context_managers_with_an_idempotent_close() -> None:
    assert hasattr(AsyncClient, "__aenter__") and hasattr(AsyncClient, "__aexit__")
    assert hasattr(Client, "__enter__") and hasattr(Client, "__exit__")
    with Client("127.0.0.1:1", owner="alice") as client:  # no call is made: nothing connects
        async_twin = client._async
        assert {k: v for k, v in vars(client).items() if not k.startswith("_")} == {
            k: v for k, v in vars(async_twin).items() if not k.startswith("_")
        }
    client.close()
