"""The Celery side of the peer benchmark (bench/peer_celery.py): the app and its two tasks.

The benchmark imports `make_app` to submit; each Celery worker process it starts loads `app`
here (`celery -A bench._celery_app worker`), configured from the environment the benchmark
sets: TETHER_BENCH_CELERY_URL (the Redis database, broker and result store both),
TETHER_BENCH_CELERY_PREFIX (this run's key prefix, so runs sharing the database never see each
other's tasks) and TETHER_BENCH_CELERY_READY (a directory where each worker says it is ready).

A worker whose benchmark process went away stops by itself within a second or two.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import threading
import time

from celery import Celery, signals

SHELL_TASK = "tether_bench.shell"
STAMP_TASK = "tether_bench.stamped_shell"

# Task id -> CLOCK_MONOTONIC ns at which the worker's consumer received the message.
_received: dict[str, int] = {}


def make_app(url: str, prefix: str) -> Celery:
    app = Celery("tether_bench", broker=url, backend=url)
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        broker_connection_retry_on_startup=True,
        # A worker holds at most as many tasks as it has slots, as a Tether worker does.
        worker_prefetch_multiplier=1,
        result_expires=600,
        worker_hijack_root_logger=False,
    )
    return app


def _sh_true() -> str:
    return subprocess.run(["/bin/sh", "-c", "true"], capture_output=True, text=True, check=True).stdout


app = make_app(
    os.environ.get("TETHER_BENCH_CELERY_URL", "redis://127.0.0.1:6379/13"),
    os.environ.get("TETHER_BENCH_CELERY_PREFIX", "tether-bench:"),
)


@app.task(name=SHELL_TASK)
def shell() -> str:
    """`/bin/sh -c true` in a subprocess; its output."""
    return _sh_true()


@app.task(name=STAMP_TASK, bind=True)
def stamped_shell(self) -> tuple[int, int | None, str]:
    """The same, with the CLOCK_MONOTONIC ns at which the task started (taken first) and at
    which its message reached the worker's consumer (None where that is another process, as in
    the prefork pool)."""
    started = time.monotonic_ns()
    return started, _received.pop(self.request.id, None), _sh_true()


@signals.task_received.connect
def _note_received(request, **_: object) -> None:
    if request.name == STAMP_TASK:
        _received[request.id] = time.monotonic_ns()


@signals.worker_ready.connect
def _say_ready(sender, **_: object) -> None:
    ready = os.environ.get("TETHER_BENCH_CELERY_READY")
    if ready:
        (pathlib.Path(ready) / f"{os.getpid()}.ready").touch()


@signals.worker_init.connect
def _stop_with_the_benchmark(**_: object) -> None:
    """SIGTERM (a warm shutdown) to this worker once its parent, the benchmark, is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-benchmark", daemon=True).start()
