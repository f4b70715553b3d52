"""Jittered exponential backoff for the SDK's reconnecting streams."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `initial_s` up to `max_s`, each drawn uniformly from the upper
    half of the current step: clients that lost the same control plane do not come back in
    lockstep, and no delay collapses to zero (which would spin)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = max(initial_s, 0.001)
        self.max_s = max(max_s, self.initial_s)
        self._attempt = 0

    def next_delay(self) -> float:
        step = min(self.max_s, self.initial_s * (2**self._attempt))
        if step < self.max_s:
            self._attempt += 1
        return random.uniform(step / 2, step)

    def reset(self) -> None:
        self._attempt = 0
