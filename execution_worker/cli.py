"""The `worker` command group: without a subcommand it builds `WorkerSettings` from flags and
`TETHER_*` environment variables and runs a `Worker` until it drains; `worker pair --code CODE`
exchanges a one-time pairing code for the worker's token.

The operator subcommands of `tether worker` (`list`, `drain WORKER_ID`, `tokens`, `revoke
TOKEN_ID`) ask the control plane about workers through the SDK; the umbrella `tether` command
(`tether.cli`) adds them to this group, so the worker never loads the SDK's CLI.

Signals: the first SIGTERM or SIGINT drains (exit 0 once drained); a second one stops at once
(running commands are killed) with exit status 128 + signal number.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import click
import grpc

from tether import logs
from tether.execution_worker._acp_check import AcpRuntimeFactory
from tether.execution_worker._acp_settings import AcpSettings, parse_env
from tether.execution_worker._claude_check import claude_problem
from tether.execution_worker._claude_settings import PERMISSION_MODES, ClaudeSettings
from tether.execution_worker._codex_check import CodexUnavailable
from tether.execution_worker._codex_settings import APPROVAL_POLICIES, SANDBOX_MODES, CodexSettings
from tether.execution_worker._credentials import (
    CredentialsRejected,
    WorkerCredentials,
    default_token_file,
    load_credentials,
    pair,
    save_credentials,
)
from tether.execution_worker._discovery import acp_runtime, claude_runtime, discover_runtimes, select_runtimes
from tether.execution_worker._errors import describe
from tether.execution_worker._settings import DEFAULT_CONTROL_PLANE, WorkerSettings
from tether.execution_worker._worker import Worker
from tether.execution_worker._workspace import DEFAULT_IGNORES
from tether.execution_worker.runtime import RuntimeFactory
from tether.logs import tracing

_T = TypeVar("_T")


class _TlsFiles(TypedDict):
    """The TLS files of the --tls-* flags, as `WorkerSettings` and `pair()` name them."""

    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None


def _parse_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        # TETHER_LABELS may carry several labels separated by spaces or commas.
        for item in value.replace(",", " ").split():
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{item!r} is not of the form key=value", ctx=ctx, param=param)
            labels[key] = val
    return labels


def _check_runtimes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
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


class _CodexConfigOverride(click.ParamType):
    """One `-c KEY=TOML` override for codex. TETHER_CODEX_CONFIG holds one per line, since TOML
    values (inline tables, strings) may contain spaces."""

    name = "KEY=TOML"
    envvar_list_splitter = "\n"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        value = value.strip()
        if value:
            key, sep, _ = value.partition("=")
            if not sep or not key.strip():
                self.fail(f"{value!r} is not of the form KEY=TOML", param, ctx)
        return value


class _Line(click.ParamType):
    """A value that may hold spaces (a Claude tool rule such as `Bash(git *)`, an argument): its
    environment variable holds one per line."""

    name = "TEXT"
    envvar_list_splitter = "\n"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return value.strip()


class _AcpEnvEntry(click.ParamType):
    """One `KEY=VALUE` for the acp agent's environment. TETHER_ACP_ENV holds one per line, since
    values may contain spaces."""

    name = "KEY=VALUE"
    envvar_list_splitter = "\n"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        value = value.strip()
        if value:
            key, sep, _ = value.partition("=")
            if not sep or not key.strip():
                self.fail(f"{value!r} is not of the form KEY=VALUE", param, ctx)
        return value


def _drop_blank(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v for v in values if v)


def _tls_options(f):
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


@click.group("worker", invoke_without_command=True, subcommand_metavar="[COMMAND [ARGS]...]")
@click.option(
    "--control-plane",
    envvar="TETHER_CONTROL_PLANE",
    show_envvar=True,
    default=DEFAULT_CONTROL_PLANE,
    show_default=True,
    help="HOST:PORT of the control plane to dial.",
)
@click.option(
    "--runtime",
    "runtimes",
    envvar="TETHER_RUNTIME",
    show_envvar=True,
    multiple=True,
    default=("shell",),
    show_default=True,
    callback=_check_runtimes,
    help="Runtime to offer; repeat for several.",
)
@click.option(
    "--workdir",
    envvar="TETHER_WORKDIR",
    show_envvar=True,
    default="./tether-worker",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the worker id and session workspaces.",
)
@click.option(
    "--slots",
    envvar="TETHER_SLOTS",
    show_envvar=True,
    type=click.IntRange(1, 1024),
    default=4,
    show_default=True,
    help="Turns run at once.",
)
@click.option(
    "--label",
    "labels",
    envvar="TETHER_LABELS",
    show_envvar=True,
    multiple=True,
    callback=_parse_labels,
    metavar="KEY=VALUE",
    help="Label sessions can select this worker by; repeatable.",
)
@click.option(
    "--worker-id",
    envvar="TETHER_WORKER_ID",
    show_envvar=True,
    default=None,
    help="Stable worker id [default: kept in WORKDIR/.tether/worker_id].",
)
@click.option(
    "--name",
    envvar="TETHER_WORKER_NAME",
    show_envvar=True,
    default=socket.gethostname,
    show_default="host name",
    help="Human-readable worker name.",
)
@click.option(
    "--drain-grace-s",
    envvar="TETHER_DRAIN_GRACE_S",
    show_envvar=True,
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds running turns get to finish when draining.",
)
@click.option(
    "--workspace-ignore",
    "workspace_ignores",
    envvar="TETHER_WORKSPACE_IGNORE",
    show_envvar=True,
    multiple=True,
    metavar="PATTERN",
    help="A gitignore pattern left out of every session's workspace checkpoints (repeatable; replaces "
    f"the defaults {' '.join(DEFAULT_IGNORES)}; '-' alone: none). Each workspace adds its own .tetherignore.",
)
@click.option(
    "--snapshot-every-turns",
    envvar="TETHER_SNAPSHOT_EVERY_TURNS",
    show_envvar=True,
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Upload a session snapshot after every N finished turns; 0 only on request, restore and drain.",
)
@click.option(
    "--warm-sessions",
    envvar="TETHER_WARM_SESSIONS",
    show_envvar=True,
    type=click.IntRange(0),
    default=32,
    show_default=True,
    help="Quiet sessions whose runtime stays warm; the least recently used beyond that get a final "
    "snapshot and their lease is released (their next turn rehydrates on any worker).",
)
@click.option(
    "--turn-timeout-s",
    envvar="TETHER_TURN_TIMEOUT_S",
    show_envvar=True,
    type=click.FloatRange(0),
    default=1800.0,
    show_default=True,
    help="Interrupt a turn still running after this many seconds; 0 for no limit.",
)
@click.option(
    "--codex-bin",
    envvar="TETHER_CODEX_BIN",
    show_envvar=True,
    default="codex",
    show_default=True,
    help="The codex executable the codex runtime runs (a path or a name on PATH).",
)
@click.option(
    "--codex-model",
    envvar="TETHER_CODEX_MODEL",
    show_envvar=True,
    default=None,
    show_default="Codex's own default",
    help="Model of codex sessions.",
)
@click.option(
    "--codex-sandbox",
    envvar="TETHER_CODEX_SANDBOX",
    show_envvar=True,
    type=click.Choice(SANDBOX_MODES),
    default="workspace-write",
    show_default=True,
    help="Sandbox of the commands codex runs.",
)
@click.option(
    "--codex-approval-policy",
    envvar="TETHER_CODEX_APPROVAL_POLICY",
    show_envvar=True,
    type=click.Choice(APPROVAL_POLICIES),
    default="on-request",
    show_default=True,
    help="When codex asks before running a command.",
)
@click.option(
    "--codex-config",
    envvar="TETHER_CODEX_CONFIG",
    show_envvar=True,
    multiple=True,
    type=_CodexConfigOverride(),
    callback=_drop_blank,
    help="Codex config override passed as `-c KEY=TOML`; repeatable (one per line in the environment variable).",
)
@click.option(
    "--codex-home-from",
    envvar="TETHER_CODEX_HOME_FROM",
    show_envvar=True,
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    show_default="$CODEX_HOME or ~/.codex",
    help="Where auth.json and config.toml of a logged-in user are copied from into each "
    "codex session's own CODEX_HOME.",
)
@click.option(
    "--claude-bin",
    envvar="TETHER_CLAUDE_BIN",
    show_envvar=True,
    default="claude",
    show_default=True,
    help="The claude executable the claude runtime runs (a path or a name on PATH).",
)
@click.option(
    "--claude-model",
    envvar="TETHER_CLAUDE_MODEL",
    show_envvar=True,
    default=None,
    show_default="Claude Code's own default",
    help="Model of claude sessions (an alias such as sonnet, or a full name).",
)
@click.option(
    "--claude-permission-mode",
    envvar="TETHER_CLAUDE_PERMISSION_MODE",
    show_envvar=True,
    type=click.Choice(PERMISSION_MODES),
    default=None,
    show_default="Claude Code's own: ask before acting",
    help="Permission mode of claude sessions; what it does not allow becomes an approval request.",
)
@click.option(
    "--claude-allowed-tools",
    envvar="TETHER_CLAUDE_ALLOWED_TOOLS",
    show_envvar=True,
    multiple=True,
    type=_Line(),
    callback=_drop_blank,
    metavar="RULE",
    help="A tool rule claude sessions may use without asking, e.g. 'Bash(git *)' or Edit; repeatable "
    "(one per line in the environment variable).",
)
@click.option(
    "--claude-arg",
    "claude_args",
    envvar="TETHER_CLAUDE_ARGS",
    show_envvar=True,
    multiple=True,
    type=_Line(),
    callback=_drop_blank,
    metavar="ARG",
    help="An extra argument for claude, after the runtime's own; repeatable (one per line in the environment variable).",
)
@click.option(
    "--claude-config-from",
    envvar="TETHER_CLAUDE_CONFIG_FROM",
    show_envvar=True,
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    show_default="$CLAUDE_CONFIG_DIR or ~/.claude",
    help="Where .credentials.json and settings.json of a logged-in user are copied from into each "
    "claude session's own CLAUDE_CONFIG_DIR.",
)
@click.option(
    "--claude-max-retries",
    envvar="TETHER_CLAUDE_MAX_RETRIES",
    show_envvar=True,
    type=click.IntRange(0),
    default=None,
    show_default="Claude Code's own",
    help="Retries of a failed model request before a claude turn fails.",
)
@click.option(
    "--acp-command",
    envvar="TETHER_ACP_COMMAND",
    show_envvar=True,
    default=None,
    help="The command line of the ACP agent the acp runtime runs (shell-quoted), e.g. 'codex-acp'.",
)
@click.option(
    "--acp-env",
    envvar="TETHER_ACP_ENV",
    show_envvar=True,
    multiple=True,
    type=_AcpEnvEntry(),
    callback=_drop_blank,
    help="KEY=VALUE set in the ACP agent's environment; repeatable (one per line in the environment variable).",
)
@click.option(
    "--acp-state-dir-env",
    envvar="TETHER_ACP_STATE_DIR_ENV",
    show_envvar=True,
    default=None,
    metavar="NAME",
    help="The variable through which the agent takes its state directory (e.g. CODEX_HOME): each session "
    "gets its own, carried in snapshots, so an agent with session/load moves between workers.",
)
@click.option(
    "--acp-state-seed",
    envvar="TETHER_ACP_STATE_SEED",
    show_envvar=True,
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory whose files (a config, a login) are copied into each new session's state directory.",
)
@click.option(
    "--acp-state-exclude",
    envvar="TETHER_ACP_STATE_EXCLUDE",
    show_envvar=True,
    multiple=True,
    metavar="GLOB",
    help="A state file pattern (relative path) not carried in snapshots, e.g. 'log/*'; repeatable.",
)
@click.option(
    "--acp-state-max-mib",
    envvar="TETHER_ACP_STATE_MAX_MIB",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=8.0,
    show_default=True,
    help="The most agent state a snapshot carries; a session whose state is bigger cannot move.",
)
@click.option(
    "--token-file",
    envvar="TETHER_WORKER_TOKEN_FILE",
    show_envvar=True,
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    show_default="WORKDIR/.tether/token.json",
    help="The worker token from pairing; without one the worker calls anonymously (a --dev control plane).",
)
@click.option(
    "--pairing-code",
    envvar="TETHER_PAIRING_CODE",
    show_envvar=True,
    default=None,
    help="On first start, pair with this one-time code and keep the token in --token-file.",
)
@_tls_options
@click.option(
    "--log-level",
    envvar="TETHER_LOG_LEVEL",
    show_envvar=True,
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="TETHER_LOG_FORMAT",
    show_envvar=True,
    default="text",
    show_default=True,
    type=click.Choice(logs.FORMATS),
    help="json: one JSON object per line on stderr, with the session, turn, worker and owner ids it concerns.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    control_plane: str,
    runtimes: tuple[str, ...],
    workdir: Path,
    slots: int,
    labels: dict[str, str],
    worker_id: str | None,
    name: str,
    drain_grace_s: float,
    snapshot_every_turns: int,
    workspace_ignores: tuple[str, ...],
    warm_sessions: int,
    turn_timeout_s: float,
    codex_bin: str,
    codex_model: str | None,
    codex_sandbox: str,
    codex_approval_policy: str,
    codex_config: tuple[str, ...],
    codex_home_from: Path | None,
    claude_bin: str,
    claude_model: str | None,
    claude_permission_mode: str | None,
    claude_allowed_tools: tuple[str, ...],
    claude_args: tuple[str, ...],
    claude_config_from: Path | None,
    claude_max_retries: int | None,
    acp_command: str | None,
    acp_env: tuple[str, ...],
    acp_state_dir_env: str | None,
    acp_state_seed: Path | None,
    acp_state_exclude: tuple[str, ...],
    acp_state_max_mib: float,
    token_file: Path | None,
    pairing_code: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run an execution worker that dials the control plane and runs sessions' turns.

    With a COMMAND, ask the control plane about workers instead (`list`, `drain`); the worker
    options are then ignored, except --control-plane.
    """
    if ctx.invoked_subcommand is not None:
        return
    logs.configure(log_level, log_format)
    try:
        tracing.configure("tether-worker")
    except tracing.TracingUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    tls = _TlsFiles(tls_ca_file=tls_ca, tls_cert_file=tls_cert, tls_key_file=tls_key)
    token_file = token_file or default_token_file(workdir)
    credentials = _credentials(token_file, pairing_code, control_plane, name, tls)
    if credentials is not None:
        if worker_id and worker_id != credentials.worker_id:
            raise click.UsageError(
                f"the worker token in {token_file} is bound to worker id {credentials.worker_id!r}; "
                "drop --worker-id or pair again"
            )
        worker_id = credentials.worker_id
        logs.bind(owner=credentials.owner)
        logging.getLogger("tether.execution_worker").info(
            "using the worker token %s of owner %r (%s)", credentials.token_id, credentials.owner, token_file
        )
    try:
        codex = CodexSettings(
            bin=codex_bin,
            model=codex_model or None,
            sandbox=codex_sandbox,
            approval_policy=codex_approval_policy,
            config=codex_config,
            home_from=codex_home_from,
        )
        claude = ClaudeSettings(
            bin=claude_bin,
            model=claude_model or None,
            permission_mode=claude_permission_mode,
            allowed_tools=claude_allowed_tools,
            args=claude_args,
            config_from=claude_config_from,
            max_retries=claude_max_retries,
        )
        acp = AcpSettings.from_command_line(
            acp_command or "",
            env=parse_env(acp_env),
            state_dir_env=acp_state_dir_env or None,
            state_seed=acp_state_seed,
            state_exclude=acp_state_exclude,
            max_state_bytes=int(acp_state_max_mib * 1024 * 1024),
        )
        settings = WorkerSettings(
            workdir=workdir,
            control_plane=control_plane,
            runtimes=runtimes,
            slots=slots,
            labels=labels,
            worker_id=worker_id,
            name=name,
            drain_grace_s=drain_grace_s,
            snapshot_every_turns=snapshot_every_turns,
            workspace_ignores=_ignores(workspace_ignores),
            warm_sessions=warm_sessions,
            offer_trace=Path(trace) if (trace := os.environ.get("TETHER_OFFER_TRACE")) else None,
            turn_timeout_s=turn_timeout_s,
            codex=codex,
            token=credentials.token if credentials else "",
            **tls,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    sys.exit(_run(_serve(settings, claude, acp)))


def _credentials(
    token_file: Path, pairing_code: str | None, control_plane: str, name: str, tls: _TlsFiles
) -> WorkerCredentials | None:
    try:
        stored = load_credentials(token_file)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if stored is not None:
        if pairing_code:
            logging.getLogger("tether.execution_worker").info(
                "already paired (%s); ignoring the pairing code", token_file
            )
        return stored
    if not pairing_code:
        return None
    return _pair_and_save(control_plane, pairing_code, name, token_file, tls)


def _pair_and_save(control_plane: str, code: str, name: str, token_file: Path, tls: _TlsFiles) -> WorkerCredentials:
    try:
        credentials = asyncio.run(pair(control_plane, code, name, **tls))
    except ValueError as error:  # an unreadable TLS file
        raise click.UsageError(str(error)) from None
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"pairing with {control_plane} failed: {describe(error)}") from None
    save_credentials(token_file, credentials)
    return credentials


@click.command("pair")
@click.option(
    "--code",
    envvar="TETHER_PAIRING_CODE",
    show_envvar=True,
    required=True,
    help="The one-time pairing code (tether pair).",
)
@click.option("--control-plane", default=None, help="HOST:PORT of the control plane [default: the group's].")
@click.option(
    "--token-file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    show_default="the group's --token-file, else WORKDIR/.tether/token.json",
    help="Where to keep the token (readable by this user only).",
)
@click.option("--name", default=None, help="Name for the token [default: the group's --name].")
@click.pass_context
def pair_worker(
    ctx: click.Context, code: str, control_plane: str | None, token_file: Path | None, name: str | None
) -> None:
    """Exchange a one-time pairing code for this worker's token and keep it."""
    group = ctx.parent.params if ctx.parent is not None else {}
    target = control_plane or group.get("control_plane") or DEFAULT_CONTROL_PLANE
    path = token_file or group.get("token_file") or default_token_file(group.get("workdir") or Path("./tether-worker"))
    tls = _TlsFiles(
        tls_ca_file=group.get("tls_ca"), tls_cert_file=group.get("tls_cert"), tls_key_file=group.get("tls_key")
    )
    credentials = _pair_and_save(target, code, name or group.get("name") or socket.gethostname(), path, tls)
    click.echo(f"paired: worker {credentials.worker_id} of owner {credentials.owner!r}; token kept in {path}")


async def _offered_runtimes(
    settings: WorkerSettings, claude: ClaudeSettings, acp: AcpSettings | None = None
) -> dict[str, RuntimeFactory]:
    """`--runtime`'s factories, the claude runtime given its settings, or left out (with one
    line naming the fix) when it cannot work here; the worker checks codex itself. The acp
    runtime's agent is probed: left out the same way, else offered with the portability found."""
    runtimes = select_runtimes(settings.runtimes)
    if runtimes.get("acp") is acp_runtime:
        factory = AcpRuntimeFactory(acp or AcpSettings())
        problem = await factory.probe(settings.workdir / ".tether" / "acp-check")
        if problem is None:
            runtimes["acp"] = factory
            logging.getLogger("tether.execution_worker").info(
                "offering the acp runtime (%s): portability %s: %s",
                factory.settings.shown(),
                factory.portability.value,
                factory.portability_reason,
            )
        else:
            del runtimes["acp"]
            what = "not offering the acp runtime" if runtimes else "the acp runtime cannot run here"
            logging.getLogger("tether.execution_worker").error("%s: %s", what, problem)
    if runtimes.get("claude") is claude_runtime:
        problem = await claude_problem(claude, settings.workdir / ".tether" / "claude-check")
        if problem is None:
            runtimes["claude"] = functools.partial(claude_runtime, claude)
        else:
            del runtimes["claude"]
            what = "not offering the claude runtime" if runtimes else "the claude runtime cannot run here"
            logging.getLogger("tether.execution_worker").error("%s: %s", what, problem)
    return runtimes


async def _serve(settings: WorkerSettings, claude: ClaudeSettings | None = None, acp: AcpSettings | None = None) -> int:
    loop = asyncio.get_running_loop()
    exit_code = 0
    runtimes = await _offered_runtimes(settings, claude or ClaudeSettings(), acp)
    if not runtimes:
        return 2  # nothing left to offer; the line above says why
    async with Worker(settings, runtimes=runtimes) as w:
        logs.bind(worker_id=w.worker_id)  # every task of the worker's run names it
        run = asyncio.create_task(w.run(), name="worker")

        def on_signal(signum: int) -> None:
            nonlocal exit_code
            if not w.draining:
                logging.getLogger("tether.execution_worker").info(
                    "%s received; draining (send it again to stop at once)", signal.Signals(signum).name
                )
                w.request_drain()
            else:
                logging.getLogger("tether.execution_worker").warning(
                    "%s received again; stopping now", signal.Signals(signum).name
                )
                exit_code = 128 + signum
                run.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await run
        except asyncio.CancelledError:
            if exit_code == 0:
                raise
        except CodexUnavailable as error:
            logging.getLogger("tether.execution_worker").error("%s", error)
            exit_code = 2
        except CredentialsRejected as error:
            logging.getLogger("tether.execution_worker").error(
                "the control plane refused this worker's credentials: %s. Pair it again "
                "(tether worker pair --code CODE) or fix --token-file.",
                error,
            )
            exit_code = 3
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    return exit_code


worker.add_command(pair_worker)

__all__ = ["worker"]


def _run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop where it is installed; it has no build for Windows, where the stock loop runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _ignores(given: tuple[str, ...]) -> tuple[str, ...]:
    """--workspace-ignore: the defaults when not given, none for '-'."""
    if not given:
        return DEFAULT_IGNORES
    return tuple(p for p in given if p != "-")
