"""What the SDK's commands share: a `TetherError` reported as ``error: <message> (<reason>)``
on stderr (exit status 2 for bad input, 1 otherwise) instead of a traceback, the client built
with the environment's credentials, `--json` output, and ``K=V`` options.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from datetime import datetime
from typing import Any, NoReturn, TypedDict

import click

from ._errors import InvalidArgumentError, OutOfRangeError, TetherError
from ._sync_client import Client

__all__ = [
    "EXIT_INTERRUPTED",
    "ConnectingGroup",
    "Credentials",
    "LazyClient",
    "ReportingCommand",
    "ReportingGroup",
    "echo_fields",
    "echo_json",
    "env_credentials",
    "json_option",
    "make_client",
    "parse_pairs",
    "pass_lazy",
    "plain",
    "report",
]

_BAD_INPUT_ERRORS = (InvalidArgumentError, OutOfRangeError)
#: The exit status of a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130


def report(ctx: click.Context, exc: TetherError) -> NoReturn:
    label = exc.reason or exc.code.name
    click.echo(f"error: {exc.message or exc.code.name} ({label})", err=True)
    for field, description in exc.field_violations:
        click.echo(f"  {field}: {description}", err=True)
    ctx.exit(2 if isinstance(exc, _BAD_INPUT_ERRORS) else 1)


class ReportingGroup(click.Group):
    """Reports SDK errors as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TetherError as exc:
            report(ctx, exc)


def _override_target(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_object(LazyClient).target = value  # type: ignore[union-attr]


def _override_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
    if value is not None:
        ctx.find_object(LazyClient).timeout_s = value  # type: ignore[union-attr]


class ConnectingGroup(ReportingGroup):
    """A group whose connection options (--control-plane, --timeout-s, read into a
    `LazyClient`) are accepted after the subcommand as well as before it: each subcommand gets
    its own copies, which win over the group's. They read no environment variable: the
    group's do, and the environment must not override a flag given before the subcommand."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(
            [
                click.Option(
                    ["--control-plane"],
                    default=None,
                    expose_value=False,
                    callback=_override_target,
                    help="Address of the control plane  [default: the one given before the subcommand, "
                    "else TETHER_CONTROL_PLANE, else the default there]",
                ),
                click.Option(
                    ["--timeout-s"],
                    type=float,
                    default=None,
                    expose_value=False,
                    callback=_override_timeout,
                    help="Deadline of each call, in seconds  [default: the one given before the subcommand]",
                ),
            ]
        )
        super().add_command(cmd, name)


class ReportingCommand(click.Command):
    """A stand-alone command that reports SDK errors like the session group does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TetherError as exc:
            report(ctx, exc)


class Credentials(TypedDict):
    """The client's credential arguments (`AsyncClient`), as `env_credentials` reads them."""

    api_key: str | None
    owner: str | None
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None


def env_credentials() -> Credentials:
    """Client credentials from the environment, never from flags (argv is visible to every
    user of the machine): TETHER_API_KEY, TETHER_OWNER (for a backend or admin key),
    TETHER_TLS_CA, and TETHER_TLS_CLIENT_CERT with TETHER_TLS_CLIENT_KEY for mutual TLS."""
    env = os.environ.get
    return {
        "api_key": env("TETHER_API_KEY") or None,
        "owner": env("TETHER_OWNER") or None,
        "tls_ca_file": env("TETHER_TLS_CA") or None,
        "tls_cert_file": env("TETHER_TLS_CLIENT_CERT") or None,
        "tls_key_file": env("TETHER_TLS_CLIENT_KEY") or None,
    }


def make_client(target: str, timeout_s: float) -> Client:
    try:
        return Client(target, timeout_s=timeout_s, **env_credentials())
    except ValueError as exc:  # an unreadable TLS file
        raise click.UsageError(str(exc)) from None


class LazyClient:
    """Creates the client on first use so `--help` never opens a channel. Until then the
    target and deadline may still change: a subcommand's own --control-plane or --timeout-s
    overrides the group's."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(self.target, self.timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_lazy = click.make_pass_decorator(LazyClient)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "raw"}
    if isinstance(value, enum.Enum):
        return value.name if isinstance(value, enum.IntEnum) else value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(plain(value), indent=2, sort_keys=False))


def echo_fields(obj: Any) -> None:
    for key, value in plain(obj).items():
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        click.echo(f"{key}: {value}")


def parse_pairs(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected k=v, got {pair!r}", param_hint=option)
        result[key] = value
    return result
