"""The numba engine's thread count, chosen per training pass from how long earlier passes took.

A parallel kernel (Numba's or BLAS's) splits its work evenly and waits for its slowest thread, so when another
process holds a core, every kernel waits for the thread that shares it. Measured on this project's 2-core VM with
other work running, a ViT-B/16 LBP step took 12-31 s with 2 threads and 3.2 s with 1. No thread count is right
for every moment, so the engine measures: by default it tries each candidate count on the first passes of a
batch size, then uses the fastest (median of its last passes) and keeps trying the others now and then, so a
core that gets busy or free later is noticed. The kernels give the same numbers at any thread count (their
reductions do not depend on it), so the choice changes the time of a step, not its result.
"""
from collections import deque
from statistics import median
from typing import Dict, Optional, Tuple

import numba

from edge_lbp.core.config import set_threads

RECENT = 3  # passes per (batch, threads) whose median is compared
REPROBE = 8  # every REPROBE-th pass tries a count other than the fastest


class ThreadTuner:
    """Picks a thread count from ``limit``, ``limit - 1`` and ``limit // 2`` (all cores, one left to a busy
    neighbour, half) per batch size. ``choose`` before a pass, ``record`` its duration after it."""

    def __init__(self, limit: int):
        self.candidates = tuple(sorted({limit, max(1, limit - 1), max(1, limit // 2)}, reverse=True))
        self._times: Dict[Tuple[int, int], deque] = {}
        self._passes: Dict[int, int] = {}

    def _recent(self, batch: int, threads: int) -> deque:
        return self._times.setdefault((batch, threads), deque(maxlen=RECENT))

    def best(self, batch: int) -> Optional[int]:
        """The fastest count for ``batch`` so far (None until each candidate has run twice)."""
        if any(len(self._recent(batch, c)) < 2 for c in self.candidates):
            return None
        return min(self.candidates, key=lambda c: median(self._recent(batch, c)))

    def choose(self, batch: int) -> int:
        untried = [c for c in self.candidates if len(self._recent(batch, c)) < 2]
        if untried:
            return untried[0]
        count = self._passes[batch] = self._passes.get(batch, 0) + 1
        best = self.best(batch)
        others = [c for c in self.candidates if c != best]
        if count % REPROBE == 0 and others:
            return others[(count // REPROBE) % len(others)]
        return best

    def record(self, batch: int, threads: int, seconds: float) -> None:
        self._recent(batch, threads).append(seconds)


class Threads:
    """The count the engine runs with: fixed when the caller gave one, else tuned by a :class:`ThreadTuner`."""

    def __init__(self, threads: Optional[int] = None):
        self.current = set_threads(threads)
        self.tuner = ThreadTuner(self.current) if threads is None and self.current > 1 else None
        self._warm = set()  # batch sizes past their first pass (which pays one-time costs, not counted)
        if self.tuner is not None:
            from threadpoolctl import ThreadpoolController

            # Found once: looking the BLAS libraries up again on every switch costs about a millisecond.
            self._blas = ThreadpoolController().select(user_api="blas")

    def before(self, batch: int) -> int:
        if self.tuner is not None:
            wanted = self.tuner.choose(batch) if batch in self._warm else self.current
            if wanted != self.current:
                numba.set_num_threads(wanted)
                self._blas.limit(limits=wanted)
                self.current = wanted
        return self.current

    def after(self, batch: int, threads: int, seconds: float) -> None:
        if self.tuner is None:
            return
        if batch in self._warm:
            self.tuner.record(batch, threads, seconds)
        self._warm.add(batch)
