"""The `tether worker` command's parameter types and callbacks: labels, runtimes, codex
config overrides, one-per-line values and the --tls-* options, each checked as click parses it."""

from __future__ import annotations

import click

from tether.execution_worker._discovery import discover_runtimes


def parse_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        # TETHER_LABELS may carry several labels separated by spaces or commas.
        for item in value.replace(",", " ").split():
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{item!r} is not of the form key=value", ctx=ctx, param=param)
            labels[key] = val
    return labels


def check_runtimes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    available = discover_runtimes()
    names: list[str] = []
    for value in values:
        names.extend(n for n in value.replace(",", " ").split() if n)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise click.BadParameter(
            f"unknown runtime {', '.join(map(repr, unknown))}; available: {', '.join(sorted(available))}",
            ctx=ctx,
            param=param,
        )
    return tuple(dict.fromkeys(names)) or ("shell",)


class Line(click.ParamType):
    """A value that may hold spaces (a Claude tool rule such as `Bash(git *)`, an argument): its
    environment variable holds one per line."""

    name = "TEXT"
    envvar_list_splitter = "\n"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return value.strip()


class KeyedLine(Line):
    """A `KEY=...` line: a codex `-c KEY=TOML` override (TETHER_CODEX_CONFIG), or a `KEY=VALUE`
    of the acp agent's environment (TETHER_ACP_ENV); one per line in the variable, since values
    may contain spaces. `name` says the form, as help and errors show it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        value = super().convert(value, param, ctx)
        if value:
            key, sep, _ = value.partition("=")
            if not sep or not key.strip():
                self.fail(f"{value!r} is not of the form {self.name}", param, ctx)
        return value


def drop_blank(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v for v in values if v)


def tls_options(f):
    f = click.option(
        "--tls-key",
        envvar="TETHER_TLS_CLIENT_KEY",
        show_envvar=True,
        default=None,
        type=click.Path(exists=True, dir_okay=False),
        help="The client certificate's key (mutual TLS).",
    )(f)
    f = click.option(
        "--tls-cert",
        envvar="TETHER_TLS_CLIENT_CERT",
        show_envvar=True,
        default=None,
        type=click.Path(exists=True, dir_okay=False),
        help="Client certificate for mutual TLS (PEM).",
    )(f)
    return click.option(
        "--tls-ca",
        envvar="TETHER_TLS_CA",
        show_envvar=True,
        default=None,
        type=click.Path(exists=True, dir_okay=False),
        help="Dial with TLS, verifying the control plane against this CA (PEM).",
    )(f)
