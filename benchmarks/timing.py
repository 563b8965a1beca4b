"""Timing helpers every benchmark shares: one warm-up call, then the per-call seconds of
repeated calls, summarised by their median (a busy moment on a shared machine moves a mean,
not a median)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def call_seconds(function: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones (allocations,
    first-call dispatch)."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return statistics.median(call_seconds(function, repeats, warmup))


def interleaved_medians(
    functions: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds (one call of each
    per round) so that a slow spell of the machine falls on all of them alike."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}
