"""The `worker` command group: without a subcommand it builds `WorkerSettings` from flags and
`TETHER_*` environment variables and runs a `Worker` until it drains; `worker pair --code CODE`
exchanges a one-time pairing code for the worker's token.

The operator subcommands of `tether worker` (`list`, `drain WORKER_ID`, `tokens`, `revoke
TOKEN_ID`) ask the control plane about workers through the SDK; the umbrella `tether` command
(`tether.cli`) adds them to this group, so the worker never loads the SDK's CLI.

Signals: the first SIGTERM or SIGINT drains (exit 0 once drained); a second one stops at once
(running commands are killed) with exit status 128 + signal number.

This module owns the command surface (the options and turning them into settings); the
parameter types are in `_cli_params`, credentials and `worker pair` in `_pair_cli`, and the
process's run (the runtimes offered, signals, exit status) in `_process`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import click

from tether import logs
from tether.execution_worker import _process
from tether.execution_worker._acp_settings import AcpSettings, parse_env
from tether.execution_worker._claude_settings import PERMISSION_MODES, ClaudeSettings
from tether.execution_worker._cli_params import (
    KeyedLine,
    Line,
    check_runtimes,
    drop_blank,
    parse_labels,
    tls_options,
)
from tether.execution_worker._codex_settings import APPROVAL_POLICIES, SANDBOX_MODES, CodexSettings
from tether.execution_worker._credentials import default_token_file
from tether.execution_worker._pair_cli import TlsFiles, credentials_for, pair_worker
from tether.execution_worker._settings import DEFAULT_CONTROL_PLANE, WorkerSettings
from tether.execution_worker._workspace import DEFAULT_IGNORES
from tether.logs import tracing


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
    callback=check_runtimes,
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
    callback=parse_labels,
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
    "--snapshot-log-turns",
    envvar="TETHER_SNAPSHOT_LOG_TURNS",
    show_envvar=True,
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="A session whose runtime rebuilds from the log (portability history) and whose files did not change "
    "skips its after-turn snapshot until this many turns have passed since its last one (a restore replays "
    "them from the log); 1: a snapshot after every turn.",
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
    type=KeyedLine("KEY=TOML"),
    callback=drop_blank,
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
    type=Line(),
    callback=drop_blank,
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
    type=Line(),
    callback=drop_blank,
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
    type=KeyedLine("KEY=VALUE"),
    callback=drop_blank,
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
@tls_options
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
    snapshot_log_turns: int,
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
    tls = TlsFiles(tls_ca_file=tls_ca, tls_cert_file=tls_cert, tls_key_file=tls_key)
    token_file = token_file or default_token_file(workdir)
    credentials = credentials_for(token_file, pairing_code, control_plane, name, tls)
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
            snapshot_log_turns=snapshot_log_turns,
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
    sys.exit(_process.run(_process.serve(settings, claude, acp)))


worker.add_command(pair_worker)

__all__ = ["worker"]


def _ignores(given: tuple[str, ...]) -> tuple[str, ...]:
    """--workspace-ignore: the defaults when not given, none for '-'."""
    if not given:
        return DEFAULT_IGNORES
    return tuple(p for p in given if p != "-")
