"""The worker's side of `tether doctor`: whether a worker set up like this would work, each
answer a `Check` that names the fix when it fails.

- `workdir_check`: the work directory can be written (or, before the first start, created).
- `token_check`: the worker token is there, readable, and the control plane takes it. It asks
  with a read-only worker call that authenticates first and changes nothing: FindMissingBlobs
  naming no session, which a control plane that accepted the credentials refuses as
  INVALID_ARGUMENT (`session_id`), and one that did not as UNAUTHENTICATED or
  PERMISSION_DENIED. Registering would replace the registration of a worker already running.
- `runtime_checks`: per runtime offered, its binary (and version), its credentials and a dry
  start in a scratch directory: for `shell`, /bin/sh runs a turn; for `codex`, the binary's
  version, the model provider's credentials and `codex app-server` answering `initialize`; for
  `claude`, the binary's version, Claude Code's credentials and `claude -p` answering the
  stream-json `initialize`.

Nothing here reaches the control plane's state or a model provider.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc

from tether.execution_worker._claude_settings import ClaudeSettings
from tether.execution_worker._codex_settings import CodexSettings
from tether.execution_worker._credentials import REJECTED_CODES, default_token_file, load_credentials
from tether.execution_worker._errors import describe, error_reason
from tether.execution_worker.runtime import Runtime, RuntimeFactory, TurnCompleted, TurnFailed, TurnInterrupted
from tether.sdk.channel import credential_metadata, make_channel
from tether.v1 import worker_service_pb2, worker_service_pb2_grpc

Status = Literal["PASS", "FAIL", "SKIP"]

#: The shell the shell runtime runs each turn's input with.
SHELL = "/bin/sh"
#: How long a dry start (start a session, run a one-line turn, close) may take.
DRY_START_TIMEOUT_S = 30.0
_PAIR_FIX = (
    "pair the worker: `tether pair` (with the owner's API key) prints a code, then "
    "`tether worker pair --code CODE --token-file {path}`"
)


@dataclass(frozen=True)
class Check:
    """One check's outcome. `name` is stable (`workdir`, `runtime.codex.binary`, ...); `fix`
    is one line, given when `status` is FAIL."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @classmethod
    def passed(cls, name: str, detail: str) -> Check:
        return cls(name, "PASS", detail)

    @classmethod
    def failed(cls, name: str, detail: str, fix: str) -> Check:
        return cls(name, "FAIL", detail, fix)

    @classmethod
    def skipped(cls, name: str, detail: str) -> Check:
        return cls(name, "SKIP", detail)


@dataclass(frozen=True)
class WorkerSetup:
    """What `tether worker` would be started with, as far as the checks need it."""

    workdir: Path
    runtimes: tuple[str, ...] = ("shell",)
    token_file: Path | None = None  # None: WORKDIR/.tether/token.json, as the worker reads it
    control_plane: str = "127.0.0.1:7670"
    codex: CodexSettings = field(default_factory=CodexSettings)
    claude: ClaudeSettings = field(default_factory=ClaudeSettings)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    timeout_s: float = 5.0

    @property
    def resolved_token_file(self) -> Path:
        return self.token_file or default_token_file(self.workdir)


# -- the work directory ------------------------------------------------------------------------


def workdir_check(setup: WorkerSetup) -> Check:
    """Write and remove a file in the workdir; before the worker's first start, in the nearest
    directory above it that exists (the worker creates the rest), so nothing is left behind."""
    name = "workdir"
    workdir = setup.workdir
    fix = (
        f"give the worker's user a directory it can write: `mkdir -p {workdir}` and chown it, or pass another --workdir"
    )
    probe_in = workdir
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        why = "" if probe_in == workdir else f", so {workdir} cannot be made"
        return Check.failed(name, f"{probe_in} is not a directory{why}", fix)
    try:
        fd, probe = tempfile.mkstemp(prefix=".tether-doctor-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return Check.failed(name, f"cannot write in {probe_in}: {error.strerror or error}", fix)
    if probe_in == workdir:
        return Check.passed(name, f"{workdir.absolute()} is writable")
    return Check.passed(
        name, f"{workdir.absolute()} does not exist yet; the worker will create it in {probe_in.absolute()} (writable)"
    )


# -- the worker token --------------------------------------------------------------------------


async def token_check(setup: WorkerSetup) -> Check:
    """Whether the control plane takes this worker's credentials (see the module docstring)."""
    name = "worker_token"
    path = setup.resolved_token_file
    fix = _PAIR_FIX.format(path=path)
    try:
        credentials = load_credentials(path)
    except ValueError as error:
        return Check.failed(name, str(error), fix)
    request = worker_service_pb2.FindMissingBlobsRequest(worker_id=credentials.worker_id if credentials else "")
    try:
        channel = make_channel(
            setup.control_plane,
            tls_ca_file=setup.tls_ca_file,
            tls_cert_file=setup.tls_cert_file,
            tls_key_file=setup.tls_key_file,
        )
    except ValueError as error:  # an unreadable TLS file
        return Check.failed(name, str(error), "fix --tls-ca, --tls-cert and --tls-key")
    async with channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        metadata = credential_metadata(credentials.token if credentials else None)
        try:
            await stub.FindMissingBlobs(request, timeout=setup.timeout_s, metadata=metadata)
            refused: grpc.aio.AioRpcError | None = None
        except grpc.aio.AioRpcError as error:
            refused = error
    if refused is not None and refused.code() in REJECTED_CODES:
        said = f"{refused.details()} [{error_reason(refused) or refused.code().name}]"
        if credentials is None:
            return Check.failed(name, f"no worker token at {path}, and the control plane requires one: {said}", fix)
        where = (
            f" (it was issued by {credentials.control_plane})"
            if credentials.control_plane and credentials.control_plane != setup.control_plane
            else ""
        )
        return Check.failed(name, f"the control plane refused worker token {credentials.token_id}{where}: {said}", fix)
    if refused is not None and refused.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return Check.failed(
            name,
            f"could not ask the control plane about the worker's credentials: {describe(refused)}",
            "make the control plane reachable first (see the checks above), then run tether doctor again",
        )
    if credentials is None:
        return Check.passed(
            name, f"no worker token at {path}; the control plane takes workers without one (it runs with --dev)"
        )
    return Check.passed(
        name,
        f"worker token {credentials.token_id} (worker {credentials.worker_id}, owner {credentials.owner!r}) "
        "is valid and not revoked",
    )


# -- runtimes ----------------------------------------------------------------------------------


async def runtime_checks(setup: WorkerSetup) -> list[Check]:
    """The checks of every runtime offered, in order; dry starts run in a scratch directory
    that is removed afterwards."""
    from tether.execution_worker._discovery import discover_runtimes

    available = discover_runtimes()
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="tether-doctor-") as scratch:
        for runtime in setup.runtimes:
            factory = available.get(runtime)
            where = Path(scratch) / runtime
            if factory is None:
                checks.append(
                    Check.failed(
                        f"runtime.{runtime}",
                        f"this installation has no runtime {runtime!r} (it has {', '.join(sorted(available))})",
                        "install the package that provides it, or drop it from --runtime",
                    )
                )
            elif runtime == "codex":
                checks.extend(await _codex_checks(setup.codex, where))
            elif runtime == "claude":
                checks.extend(await _claude_checks(setup.claude, where))
            elif runtime == "shell":
                checks.append(await _shell_check(factory, where))
            elif runtime == "script":
                checks.append(await _dry_start("runtime.script", factory, where, turn_input="say ok"))
            else:
                checks.append(await _dry_start(f"runtime.{runtime}", factory, where, turn_input=None))
    return checks


async def _shell_check(factory: RuntimeFactory, scratch: Path) -> Check:
    if not os.access(SHELL, os.X_OK):
        return Check.failed(
            "runtime.shell", f"{SHELL} is missing or not executable", f"install a POSIX shell as {SHELL}"
        )
    return await _dry_start("runtime.shell", factory, scratch, turn_input="exit 0")


async def _dry_start(name: str, factory: RuntimeFactory, scratch: Path, *, turn_input: str | None) -> Check:
    """Start a session of the runtime in `scratch`, run `turn_input` as one turn (when given)
    and close it."""
    fix = f"run `tether worker --runtime {name.removeprefix('runtime.')}` with --log-level DEBUG to see why"
    runtime: Runtime | None = None
    try:
        async with asyncio.timeout(DRY_START_TIMEOUT_S):
            runtime = factory()
            await runtime.start("doctor", scratch, [])
            if turn_input is None:
                return Check.passed(name, "a session started and closed in a scratch directory")
            end = await _run_turn(runtime, turn_input)
    except TimeoutError:
        return Check.failed(name, f"a dry start took more than {DRY_START_TIMEOUT_S:g}s", fix)
    except Exception as error:
        return Check.failed(name, f"a dry start failed: {type(error).__name__}: {error}", fix)
    finally:
        if runtime is not None:
            await runtime.close()
    if isinstance(end, TurnCompleted) and end.exit_code == 0:
        return Check.passed(name, f"a session started in a scratch directory and ran the turn {turn_input!r}")
    return Check.failed(name, f"the dry-start turn {turn_input!r} ended with {end!r}", fix)


async def _run_turn(runtime: Runtime, turn_input: str) -> object:
    async for event in runtime.run_turn("turn-doctor", turn_input):
        if isinstance(event, TurnCompleted | TurnFailed | TurnInterrupted):
            return event
    return "no terminal event"


async def _codex_checks(settings: CodexSettings, scratch: Path) -> list[Check]:
    from tether.execution_worker._codex_check import (
        codex_binary_problem,
        codex_credentials_problem,
        codex_dry_start_problem,
    )

    binary = _from_problem(
        "runtime.codex.binary",
        await codex_binary_problem(settings, scratch),
        f"{settings.bin} runs and its version is supported",
    )
    credentials = _from_problem(
        "runtime.codex.credentials",
        codex_credentials_problem(settings),
        f"the model provider's credentials are present (in {settings.resolved_home_from()} or the environment)",
    )
    if binary.status == "FAIL":
        return [binary, credentials, Check.skipped("runtime.codex.dry_start", "not tried: no usable codex binary")]
    dry_start = _from_problem(
        "runtime.codex.dry_start",
        await codex_dry_start_problem(settings, scratch),
        "`codex app-server` started and answered initialize",
    )
    return [binary, credentials, dry_start]


async def _claude_checks(settings: ClaudeSettings, scratch: Path) -> list[Check]:
    from tether.execution_worker._claude_check import (
        claude_binary_problem,
        claude_credentials_problem,
        claude_dry_start_problem,
    )

    binary = _from_problem(
        "runtime.claude.binary",
        await claude_binary_problem(settings, scratch),
        f"{settings.bin} runs and its version is supported",
    )
    credentials = _from_problem(
        "runtime.claude.credentials",
        claude_credentials_problem(settings),
        f"Claude Code's credentials are present (in {settings.resolved_config_from()} or the environment)",
    )
    if binary.status == "FAIL":
        return [binary, credentials, Check.skipped("runtime.claude.dry_start", "not tried: no usable claude binary")]
    dry_start = _from_problem(
        "runtime.claude.dry_start",
        await claude_dry_start_problem(settings, scratch),
        "`claude -p` started and answered initialize",
    )
    return [binary, credentials, dry_start]


def _from_problem(name: str, problem: str | None, passed: str) -> Check:
    """A problem line of `_codex_check` ("what: fix") as a check."""
    if problem is None:
        return Check.passed(name, passed)
    detail, _, fix = problem.rpartition(": ")
    return Check.failed(name, detail or problem, fix if detail else "see the detail")


__all__ = ["Check", "Status", "WorkerSetup", "runtime_checks", "token_check", "workdir_check"]
