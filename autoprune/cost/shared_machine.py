"""Measuring on a shared machine: wait for quiet, repeat runs other jobs disturbed, priority."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from autoprune.cost.timing import OtherJobs

T = TypeVar("T")


@dataclass(frozen=True)
class Quiet:
    """When a measurement counts: other jobs leave this benchmark's cores alone.

    Limits are in cores beyond `spare`, the cores the benchmark's threads do not use (timing with
    one thread on two cores, other jobs may keep the second one busy without disturbing it).
    """

    max_busy: float = 0.3  # cores other jobs may use (over 5 s) for a measurement to start
    max_busy_during: float = 0.5  # and while it runs; else it is repeated
    spare: float = 0.0
    max_wait_s: float = 900.0  # then start anyway; the conditions are recorded either way
    attempts: int = 3  # the quietest attempt is kept


def _wait(quiet: Quiet) -> tuple[float | None, float]:
    start = time.monotonic()
    while True:
        with OtherJobs() as idle:
            time.sleep(5.0)
        waited = time.monotonic() - start
        if (idle.cores or 0.0) <= quiet.spare + quiet.max_busy or waited > quiet.max_wait_s:
            return idle.cores, waited


def quietly(fn: Callable[[], T], quiet: Quiet) -> tuple[T, dict[str, Any]]:
    """fn() on a quiet machine, repeated while other jobs were busy during it; the quietest run."""
    best: tuple[T, dict[str, Any]] | None = None
    for attempt in range(1, quiet.attempts + 1):
        before, waited = _wait(quiet)
        load = os.getloadavg()[0]
        with OtherJobs() as during:
            result = fn()
        conditions = {"attempt": attempt, "waited_s": round(waited), "others_cores_before": before,
                      "others_cores_during": during.cores, "loadavg_before": load,
                      "loadavg_after": os.getloadavg()[0]}  # fmt: skip
        busy = during.cores or 0.0
        if best is None or busy < (best[1]["others_cores_during"] or 0.0):
            best = (result, conditions)
        if busy <= quiet.spare + quiet.max_busy_during:
            break
    assert best is not None
    return best


def raise_priority(nice: int) -> str:
    """Give this process more of the CPU than other jobs (Linux; a negative value needs root).

    With scheduler autogroups (one per session) a process's own nice value only ranks it within
    its session, so the autogroup's nice is set where the kernel has one.
    """
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        autogroup.write_text(str(nice))
        return autogroup.read_text().strip()
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"
