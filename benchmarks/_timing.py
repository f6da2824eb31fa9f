"""Side-by-side timing helpers: interleaved repeats, medians, ratios (docs/design.md section 6)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
):
    """Median seconds per call of each function, timed in alternation so that machine noise
    hits all of them alike. ``clock=time.process_time`` counts this process's CPU seconds
    instead of wall seconds: for single-threaded work on a loaded machine it leaves out the
    time spent waiting for a core."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}
