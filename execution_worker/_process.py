"""A worker process's run: the runtimes it offers (each checked at start, and left out with
one line naming the fix when it cannot work here), the event loop it runs on, its signals (the
first SIGTERM or SIGINT drains, a second stops at once) and its exit status."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from tether import logs
from tether.execution_worker._acp_check import AcpRuntimeFactory
from tether.execution_worker._acp_settings import AcpSettings
from tether.execution_worker._claude_check import claude_problem
from tether.execution_worker._claude_settings import ClaudeSettings
from tether.execution_worker._codex_check import CodexUnavailable
from tether.execution_worker._credentials import CredentialsRejected
from tether.execution_worker._discovery import acp_runtime, claude_runtime, select_runtimes
from tether.execution_worker._settings import WorkerSettings
from tether.execution_worker._worker import Worker
from tether.execution_worker.runtime import RuntimeFactory

_T = TypeVar("_T")


async def offered_runtimes(
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


async def serve(settings: WorkerSettings, claude: ClaudeSettings | None = None, acp: AcpSettings | None = None) -> int:
    loop = asyncio.get_running_loop()
    exit_code = 0
    runtimes = await offered_runtimes(settings, claude or ClaudeSettings(), acp)
    if not runtimes:
        return 2  # nothing left to offer; the line above says why
    async with Worker(settings, runtimes=runtimes) as w:
        logs.bind(worker_id=w.worker_id)  # every task of the worker's run names it
        # As the control plane does: what startup built stays out of full collections' way.
        gc.collect()
        gc.freeze()
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


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop where it is installed; it has no build for Windows, where the stock loop runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
