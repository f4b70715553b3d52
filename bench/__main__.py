"""`make bench`: run every benchmark and print one JSON object per figure.

    {"metric": NAME, "value": NUMBER, "unit": UNIT}

Run one with `python -m bench dispatch|events|turns`.
"""

from __future__ import annotations

import asyncio
import sys

from . import dispatch, events, turns

BENCHES = {"dispatch": dispatch.main, "events": events.main, "turns": turns.main}


def main() -> None:
    names = sys.argv[1:] or list(BENCHES)
    for name in names:
        asyncio.run(BENCHES[name]())


main()
