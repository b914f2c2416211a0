"""Job functions and callbacks for tests/test_parity.py, run by both `rq worker` and workerd.

Free of workerd imports (RQ's horses import this module afresh). Each function that the tests
observe writes what happened to Redis, reaching it through the URL passed as its first argument.
"""

from __future__ import annotations

import json
import os
import signal
import time

import redis
from rq import Retry as RQRetry


def _r(url):
    return redis.Redis.from_url(url)


def record(url, key, token):
    """RPUSH '<token> <start time>' to `key`."""
    _r(url).rpush(key, f"{token} {time.time():.3f}")
    return token


def fail_counted(url, key):
    _r(url).rpush(key, f"run {time.time():.3f}")
    raise ValueError("fail_counted always fails")


def return_retry(url, key, maximum, interval):
    """Ask to be run again by returning RQ's Retry (rq's handle_job_retry)."""
    _r(url).rpush(key, f"run {time.time():.3f}")
    return RQRetry(max=maximum, interval=interval)


def kill_self_counted(url, key):
    _r(url).rpush(key, f"run {time.time():.3f}")
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_first_run(url, key, seconds):
    """Records its start; sleeps `seconds` on its first run only (so a retried run finishes)."""
    runs = _r(url).rpush(key, f"run {time.time():.3f}")
    if runs == 1:
        time.sleep(seconds)
    return runs


def add(a, b):
    return a + b


def fail(message="boom"):
    raise ValueError(message)


# -- callbacks: each writes the arguments it got (kind, count, types) to rq:test:cb:<job id> --------


def _note(job, connection, kind, *details):
    connection.rpush(f"test:cb:{job.id}", json.dumps([kind, type(connection).__name__, *details]))


def on_success(job, connection, result):
    _note(job, connection, "success", repr(result))


def on_failure(job, connection, exc_type, exc_value, tb):
    _note(job, connection, "failure", exc_type.__name__, str(exc_value), type(tb).__name__)


def on_stopped(job, connection):
    _note(job, connection, "stopped")


def on_success_raises(job, connection, result):
    raise RuntimeError("success callback exploded")


def on_failure_raises(job, connection, exc_type, exc_value, tb):
    raise RuntimeError("failure callback exploded")


def on_success_slow(job, connection, result):
    time.sleep(5)
    _note(job, connection, "slow success")
