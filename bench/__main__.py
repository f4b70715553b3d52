"""`make bench`: run every benchmark and print one JSON object per figure.

    {"metric": NAME, "value": NUMBER, "unit": UNIT}

Run some with `python -m bench NAME ...`, each NAME a key of BENCHES below (for example
`python -m bench cp_memory idle_workers`).
A benchmark whose main returns False (a must-be-0 figure was not 0) makes the exit status 1;
the others still run.
"""

from __future__ import annotations

import asyncio
import sys

from . import (
    acp,
    bundle,
    chaos,
    claude,
    codex,
    cp_memory,
    deltas,
    dispatch,
    drain,
    events,
    failover,
    fork,
    fuzz,
    http,
    idle_workers,
    metrics,
    peer_celery,
    pg,
    purge,
    rehydrate,
    retention,
    security,
    snapshots,
    turns,
    typescript,
    worker_memory,
    workspace,
)

BENCHES = {
    "dispatch": dispatch.main,
    "events": events.main,
    "turns": turns.main,
    "deltas": deltas.main,
    "peer_celery": peer_celery.main,
    "failover": failover.main,
    "rehydrate": rehydrate.main,
    "snapshots": snapshots.main,
    "fork": fork.main,
    "workspace": workspace.main,
    "bundle": bundle.main,
    "retention": retention.main,
    "purge": purge.main,
    "drain": drain.main,
    "chaos": chaos.main,
    "codex": codex.main,
    "claude": claude.main,
    "acp": acp.main,
    "typescript": typescript.main,
    "fuzz": fuzz.main,
    "security": security.main,
    "pg": pg.main,
    "cp_memory": cp_memory.main,
    "idle_workers": idle_workers.main,
    "worker_memory": worker_memory.main,
    "metrics": metrics.main,
    "http": http.main,
}


def main() -> None:
    names = sys.argv[1:] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    failed = [name for name in names if asyncio.run(BENCHES[name]()) is False]
    if failed:
        print(f"benchmarks with a must-be-0 figure not 0: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


main()
