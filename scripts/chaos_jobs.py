"""Job functions for the chaos harness (``scripts/chaos.py``).

Every execution of a job is recorded, so the harness can count executions per job and tell a
re-run from a first run:

* ``RPUSH chaos:start:<job_id> "<epoch> <pid> <ppid>"`` when the function begins,
* ``RPUSH chaos:end:<job_id> "<epoch> <pid>"`` when it returns normally.

The records go through a Redis connection of their own (URL from ``CHAOS_REDIS_URL``), opened in
the process that runs the job, never the worker's. While Redis is down (the restart and outage
scenarios) a record is retried until Redis is back or a deadline passes; past the deadline it is
appended to a spool file in ``CHAOS_SPOOL_DIR`` (one line, ``O_APPEND``) that the harness merges,
so an outage never turns into a missing record or a job failure caused by the harness itself.

Jobs are deterministic per job: the harness passes everything (duration, allocation, sleep) as
arguments. The module is imported by workers as ``chaos_jobs`` (the harness puts ``scripts/`` on
``PYTHONPATH``).
"""

from __future__ import annotations

import os
import time

import redis

# How long one record may be retried while Redis is unreachable before it goes to the spool file.
# Larger than the default 30 s outage, smaller than the 60 s job timeout the harness uses.
RECORD_DEADLINE_S = 45.0
RETRY_SLEEP_S = 0.2


def _spool(kind: str, job_id: str, line: str) -> None:
    spool_dir = os.environ.get("CHAOS_SPOOL_DIR")
    if not spool_dir:
        return
    path = os.path.join(spool_dir, f"spool-{os.getpid()}.txt")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kind} {job_id} {line}\n".encode())
    finally:
        os.close(fd)


def _record(kind: str, job_id: str) -> None:
    """Append ``"<epoch> <pid> <ppid>"`` to ``chaos:<kind>:<job_id>``, retrying across Redis outages.

    The parent pid (the worker of a horse) lets the harness attribute a re-run to the kill of the
    worker, e.g. a horse that finished just before its worker was killed, so the outcome was never
    committed, or a horse taken down with its worker by PR_SET_PDEATHSIG."""
    line = f"{time.time():.6f} {os.getpid()} {os.getppid()}"
    url = os.environ["CHAOS_REDIS_URL"]
    deadline = time.monotonic() + RECORD_DEADLINE_S
    while True:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)
        try:
            client.rpush(f"chaos:{kind}:{job_id}", line)
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            if time.monotonic() >= deadline:
                _spool(kind, job_id, line)
                return
            time.sleep(RETRY_SLEEP_S)
        finally:
            client.close()


def work(job_id: str, duration_ms: float, alloc_mb: int = 0, sleep_s: float = 0.0) -> str:
    """One chaos job: record the start, work for ``duration_ms``, optionally hold ``alloc_mb`` of
    touched memory or sleep ``sleep_s`` (past its timeout), record the end.

    The memory is a ``bytearray`` with one byte written per 4 KiB page, so it is resident (a
    zero-filled allocation alone is only mapped, and a memory limit would never see it).
    """
    _record("start", job_id)
    hog = None
    if alloc_mb:
        size = alloc_mb * 1024 * 1024
        hog = bytearray(size)
        hog[::4096] = b"\x01" * len(range(0, size, 4096))
    if sleep_s:
        time.sleep(sleep_s)
    end = time.monotonic() + duration_ms / 1000.0
    # Short jobs spin a little (CPU work), longer ones mostly sleep, like real I/O-bound jobs.
    while time.monotonic() < end:
        if end - time.monotonic() > 0.005:
            time.sleep(0.005)
    del hog
    _record("end", job_id)
    return f"ok {job_id}"
