"""Host latency, the MLPerf Tiny way: one thread, batch 1, only the inference call timed; warm up, then
one window per input (five inputs), each at least `min_seconds` long and `min_runs` calls; the figure
is the median over the windows of each window's median call (robust to a noisy shared host), with the
90th percentile of all calls beside it.

These are host figures (this machine's CPU): they rank runtimes and artefacts, they are not MCU times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Latency:
    median_ms: float
    p90_ms: float
    window_ms: list[float]  # each window's median call
    runs: int


def measure(
    invoke: Callable[[object], object],
    inputs: Sequence[object],
    *,
    warmup_runs: int = 10,
    min_seconds: float = 1.0,
    min_runs: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> Latency:
    for prepared in inputs:  # touch every input once, then warm up caches and lazy allocations
        invoke(prepared)
    for _ in range(warmup_runs):
        invoke(inputs[0])
    window_medians, all_calls = [], []
    for prepared in inputs:
        calls: list[float] = []
        window_start = clock()
        while len(calls) < min_runs or clock() - window_start < min_seconds:
            started = clock()
            invoke(prepared)
            calls.append(clock() - started)
        window_medians.append(statistics.median(calls))
        all_calls += calls
    return Latency(
        median_ms=statistics.median(window_medians) * 1e3,
        p90_ms=float(np.percentile(all_calls, 90)) * 1e3,
        window_ms=[m * 1e3 for m in window_medians],
        runs=len(all_calls),
    )
