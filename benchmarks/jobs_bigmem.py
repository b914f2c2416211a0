"""A job module holding ~200 MB of small Python objects, built at import (case 7).

The objects are instances of a ``__slots__`` class, so the cyclic garbage collector tracks every one
of them (tuples and dicts of atoms get untracked by CPython, which would hide the copy-on-write cost
that a collection pass causes in a forked child). ``BENCH_BIGMEM_MB`` sets the target size; the module
keeps building until its resident set has grown by that much, so the size holds on any allocator.

``hold(marker_dir)`` is the job: it touches the data, drops a marker file named after its pid so the
harness knows it is running with the module loaded, and waits for ``<marker_dir>/release`` (bounded),
so that the harness can measure memory while every worker is inside a job.
"""

from __future__ import annotations

import os
import time

TARGET_MB = float(os.environ.get("BENCH_BIGMEM_MB", "200"))
_CHUNK = 100_000
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Item:
    __slots__ = ("id", "name")

    def __init__(self, id: int, name: str) -> None:
        self.id = id
        self.name = name


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _build(target_mb: float) -> list[Item]:
    data: list[Item] = []
    start = _rss_bytes()
    target = target_mb * 1024 * 1024
    while _rss_bytes() - start < target:
        base = len(data)
        data.extend(Item(i, f"item-{i}") for i in range(base, base + _CHUNK))
    return data


DATA = _build(TARGET_MB)


def hold(marker_dir: str, max_hold_s: float = 120.0) -> int:
    """Touch the data, announce ourselves, and wait for the harness to release us."""
    n = len(DATA)
    probe = DATA[n // 2].name + DATA[-1].name  # read a couple of objects, as a real job would
    with open(os.path.join(marker_dir, str(os.getpid())), "w") as f:
        f.write(probe)
    release = os.path.join(marker_dir, "release")
    deadline = time.monotonic() + max_hold_s
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def touch() -> int:
    """A job that only needs the module loaded."""
    return len(DATA)
