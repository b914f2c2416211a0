"""A job module that takes ~200 ms of CPU to import (case 4).

The import cost stands in for a real application's import graph (Django, pandas, a model client...).
It is burnt as CPU time, not slept, because real imports compete for the CPU with everything else on
the box. ``BENCH_HEAVY_IMPORT_S`` overrides the duration.

A fork-per-job worker that does not preload this module pays the cost in every job's child process; a
worker that imports it once before forking pays it once.
"""

from __future__ import annotations

import os
import time

IMPORT_CPU_S = float(os.environ.get("BENCH_HEAVY_IMPORT_S", "0.2"))


def _burn_cpu(seconds: float) -> int:
    # process_time counts this process's CPU only, so the cost stays the same whether or not other
    # processes are competing for the cores; a wall-clock spin would shrink under contention.
    deadline = time.process_time() + seconds
    spins = 0
    while time.process_time() < deadline:
        spins += 1
    return spins


IMPORT_SPINS = _burn_cpu(IMPORT_CPU_S)


def noop() -> None:
    """The job itself is empty; only the import is heavy."""
    return None
