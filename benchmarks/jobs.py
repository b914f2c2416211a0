"""Job functions shared by every system the harness runs (referenced as ``benchmarks.jobs.<name>``).

They are deliberately tiny: the benchmark measures what a worker spends *around* a job, so the job
itself must cost next to nothing and must be identical for RQ and workerd.
"""

from __future__ import annotations

import time


def noop() -> None:
    """The empty job: its cost is entirely the worker's."""
    return None


def record_start() -> float:
    """Return the wall-clock time at which the job body began.

    ``time.time()`` is the first thing evaluated, so the value is the job's own start time, independent
    of whatever timestamps the worker writes. The harness subtracts the time it called enqueue; both
    clocks are the same host's, so the difference is the enqueue-to-start latency.
    """
    return time.time()
