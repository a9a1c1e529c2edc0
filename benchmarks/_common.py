"""Timing helpers shared by the benchmark processes (numpy-free, framework-free).

The project machine is shared: :func:`timed` also reports how many CPU cores
other processes used while a call ran, so a disturbed measurement can be told
from a slow one.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Tuple

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_seconds() -> float:
    """CPU seconds spent by everything on the machine so far (Linux ``/proc/stat``), or NaN elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [float(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux ``/proc``), or NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (float(fields[11]) + float(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)


def timed(fn: Callable[[], Any]) -> Tuple[float, float, Any]:
    """``(seconds, other processes' load in cores, result)`` of one call of ``fn``."""
    busy, own, start = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    others = (busy_cpu_seconds() - busy) - (time.process_time() - own)
    return elapsed, max(others, 0.0) / elapsed, result


def wait_for_quiet(limit: float, timeout: float, window: float = 5.0) -> float:
    """Wait (at most ``timeout`` s) until other processes use under ``limit`` cores for ``window`` s; the last load."""
    deadline = time.perf_counter() + timeout
    while True:
        busy = busy_cpu_seconds()
        time.sleep(window)
        load = max(busy_cpu_seconds() - busy, 0.0) / window
        if load < limit or time.perf_counter() >= deadline or load != load:
            return load
        print(f"  waiting for a quiet machine (other processes use {load:.2f} cores)", file=sys.stderr, flush=True)
