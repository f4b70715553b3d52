"""`tether doctor`: check a setup, one PASS, FAIL or SKIP line per check, the fix under each
FAIL; exit status 1 when any check failed. `--json` prints the same as one JSON document.

The control plane's checks (`_doctor_checks.py`) always run; the worker's
(`tether.execution_worker.doctor`) run when a worker setup is named: --workdir, --runtime or
--token-file, on the command line or in their TETHER_* variables, as `tether worker` reads
them. A check that cannot be asked because an earlier one failed (nothing answers at the
address, say) is skipped and says which.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import click

from tether.cli import _doctor_checks as cp
from tether.execution_worker import CodexSettings
from tether.execution_worker import doctor as worker
from tether.execution_worker.doctor import Check, WorkerSetup
from tether.sdk import DEFAULT_TARGET
from tether.sdk._cli_common import env_credentials, json_option

#: The worker options that name a worker setup (any of them given: the worker's checks run).
_WORKER_SETUP = ("workdir", "runtimes", "token_file")


def _runtime_names(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    # As `tether worker --runtime` reads them: repeatable, and TETHER_RUNTIME may list several.
    names = [n for value in values for n in value.replace(",", " ").split() if n]
    return tuple(dict.fromkeys(names)) or ("shell",)


class _CodexConfig(click.ParamType):
    """As `tether worker --codex-config`: TETHER_CODEX_CONFIG holds one override per line,
    since TOML values may contain spaces."""

    name = "KEY=TOML"
    envvar_list_splitter = "\n"


def _drop_blank(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for v in values if v.strip())


@click.command("doctor")
@click.option(
    "--control-plane",
    envvar="TETHER_CONTROL_PLANE",
    show_envvar=True,
    default=DEFAULT_TARGET,
    show_default=True,
    help="HOST:PORT of the control plane to check.",
)
@click.option(
    "--tls-ca",
    envvar="TETHER_TLS_CA",
    show_envvar=True,
    default=None,
    help="Dial with TLS, verifying the control plane against this CA (PEM).",
)
@click.option(
    "--tls-cert",
    envvar="TETHER_TLS_CLIENT_CERT",
    show_envvar=True,
    default=None,
    help="Client certificate (mutual TLS).",
)
@click.option(
    "--tls-key", envvar="TETHER_TLS_CLIENT_KEY", show_envvar=True, default=None, help="The client certificate's key."
)
@click.option(
    "--db",
    envvar="TETHER_DB",
    show_envvar=True,
    default=None,
    help="Also check that this database (the control plane's SQLite file or URL) is at this release's revision.",
)
@click.option(
    "--max-clock-skew-s",
    type=click.FloatRange(0, min_open=True),
    default=cp.MAX_CLOCK_SKEW_S,
    show_default=True,
    help="The largest difference between the control plane's clock and this host's that passes.",
)
@click.option(
    "--workdir",
    envvar="TETHER_WORKDIR",
    show_envvar=True,
    default="./tether-worker",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The worker's directory (as `tether worker --workdir`); naming it runs the worker's checks.",
)
@click.option(
    "--runtime",
    "runtimes",
    envvar="TETHER_RUNTIME",
    show_envvar=True,
    multiple=True,
    default=("shell",),
    show_default=True,
    callback=_runtime_names,
    help="A runtime the worker offers; repeat for several.",
)
@click.option(
    "--token-file",
    envvar="TETHER_WORKER_TOKEN_FILE",
    show_envvar=True,
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    show_default="WORKDIR/.tether/token.json",
    help="The worker token from pairing.",
)
@click.option(
    "--codex-bin",
    envvar="TETHER_CODEX_BIN",
    show_envvar=True,
    default="codex",
    show_default=True,
    help="The codex executable (with --runtime codex).",
)
@click.option(
    "--codex-model", envvar="TETHER_CODEX_MODEL", show_envvar=True, default=None, help="Model of codex sessions."
)
@click.option(
    "--codex-config",
    envvar="TETHER_CODEX_CONFIG",
    show_envvar=True,
    multiple=True,
    type=_CodexConfig(),
    callback=_drop_blank,
    help="Codex config override passed as `-c KEY=TOML`; repeatable.",
)
@click.option(
    "--codex-home-from",
    envvar="TETHER_CODEX_HOME_FROM",
    show_envvar=True,
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    show_default="$CODEX_HOME or ~/.codex",
    help="Where codex's auth.json and config.toml are read from.",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Deadline of each call and connection, in seconds.",
)
@json_option
@click.pass_context
def doctor(
    ctx: click.Context,
    control_plane: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    db: str | None,
    max_clock_skew_s: float,
    workdir: Path,
    runtimes: tuple[str, ...],
    token_file: Path | None,
    codex_bin: str,
    codex_model: str | None,
    codex_config: tuple[str, ...],
    codex_home_from: Path | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Check the control plane (and, given a worker's --workdir, --runtime or --token-file, that
    worker's setup); name the fix for each problem. Exit status 1 when a check failed.

    API keys and owners come from TETHER_API_KEY and TETHER_OWNER, as for `tether session`."""
    credentials = env_credentials()
    dial = cp.Dial(
        control_plane,
        tls_ca_file=tls_ca or None,
        tls_cert_file=tls_cert or None,
        tls_key_file=tls_key or None,
        api_key=credentials["api_key"],
        owner=credentials["owner"],
        timeout_s=timeout_s,
    )
    setup = None
    if any(ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT for name in _WORKER_SETUP):
        try:
            codex = CodexSettings(
                bin=codex_bin, model=codex_model or None, config=codex_config, home_from=codex_home_from
            )
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        setup = WorkerSetup(
            workdir=workdir,
            runtimes=runtimes,
            token_file=token_file,
            control_plane=control_plane,
            codex=codex,
            tls_ca_file=dial.tls_ca_file,
            tls_cert_file=dial.tls_cert_file,
            tls_key_file=dial.tls_key_file,
            timeout_s=timeout_s,
        )
    checks = asyncio.run(run_checks(dial, db=db, setup=setup, max_clock_skew_s=max_clock_skew_s))
    failed = any(c.status == "FAIL" for c in checks)
    if as_json:
        document = {
            "ok": not failed,
            "tether_version": cp.tether_version(),
            "control_plane": control_plane,
            "checks": [{**asdict(c), "fix": c.fix or None} for c in checks],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _echo_report(checks)
    ctx.exit(1 if failed else 0)


async def run_checks(
    dial: cp.Dial,
    *,
    db: str | None = None,
    setup: WorkerSetup | None = None,
    max_clock_skew_s: float = cp.MAX_CLOCK_SKEW_S,
) -> list[Check]:
    """Every check, in the order they are shown."""
    checks = [await cp.reachable_check(dial)]
    blocked = "" if checks[0].status != "FAIL" else "not tried: the `reachable` check failed"
    for name, check in (("tls", cp.tls_check), ("health", cp.health_check)):
        if blocked:
            checks.append(Check.skipped(name, blocked))
            continue
        checks.append(await check(dial))
        if checks[-1].status == "FAIL":
            blocked = f"not tried: the `{name}` check failed"
    if blocked:
        checks += [Check.skipped("version", blocked), Check.skipped("clock_skew", blocked)]
    else:
        checks.append(await cp.version_check(dial))
        checks.append(await cp.clock_check(dial, max_skew_s=max_clock_skew_s))
    checks.append(await cp.database_check(db))
    if setup is not None:
        checks.append(worker.workdir_check(setup))
        checks.append(Check.skipped("worker_token", blocked) if blocked else await worker.token_check(setup))
        checks += await worker.runtime_checks(setup)
    return checks


def _echo_report(checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        click.echo(f"{c.status}  {c.name:<{width}}  {c.detail}")
        if c.status == "FAIL":
            click.echo(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    counts = {status: sum(c.status == status for c in checks) for status in ("FAIL", "PASS", "SKIP")}
    click.echo(f"{counts['FAIL']} failed, {counts['PASS']} passed, {counts['SKIP']} skipped")
