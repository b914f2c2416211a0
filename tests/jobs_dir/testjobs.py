"""Job functions used by the tests; importable by workerd subprocesses (tests/jobs_dir is on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import redis

from workerd import get_current_job


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return [list(args), kwargs]


def fail(message="boom"):
    raise ValueError(message)


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def exit_hard(code=3):
    os._exit(code)


def raise_base_exception(name="SystemExit", *args):
    raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[name](*args)


def kill_self(signum=signal.SIGKILL):
    os.kill(os.getpid(), signum)


def segfault():
    import ctypes

    ctypes.string_at(0)


def return_none():
    return None


def return_unpicklable():
    return lambda: None


def write_meta(key, value):
    job = get_current_job()
    job.meta[key] = value
    job.save_meta()
    return job.id


def current_job_id():
    return get_current_job().id


def mark(url, key, value="1"):
    """Record that this job ran, in the test's Redis (workerd and rq alike)."""
    client = redis.Redis.from_url(url)
    client.rpush(key, value)
    return value


def mark_then_sleep(url, key, seconds):
    mark(url, key, str(os.getpid()))
    time.sleep(seconds)
    return seconds


def record_ancestor_threads(url, key):
    """Push how many threads (kernel tasks) this horse's worker and the worker's parent have right now:
    a horse runs while its worker waits in the loop that forked it."""
    worker = os.getppid()
    parent = psutil.Process(worker).ppid()
    counts = {"worker": len(os.listdir(f"/proc/{worker}/task")), "parent": len(os.listdir(f"/proc/{parent}/task"))}
    mark(url, key, json.dumps(counts))
    return counts


def ignore_sigterm_and_sleep(seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(seconds)
    return seconds


def spawn_grandchild_and_sleep(pidfile, seconds):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    with open(pidfile, "w") as handle:
        handle.write(str(pid))
    time.sleep(seconds)
    return pid


def spawn_session_leader(pidfile):
    """Fork a child that leaves the horse's process group (as a daemonising library would); return
    once it has left, so the horse's end cannot kill it before its setsid()."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        with open(pidfile + ".tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(600)
        os._exit(0)
    deadline = time.monotonic() + 10
    while not os.path.exists(pidfile) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def allocate_mib(mib, hold_s=0.0):
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold_s)
    return len(block)


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")


def raise_bad_str():
    raise BadStr()


class Counter:
    def __init__(self, start):
        self.start = start

    def plus(self, n):
        return self.start + n

    def __call__(self, n):
        return self.start * n


def getpid():
    return os.getpid()


def sibling_horses(wait_s):
    """How many other children the worker has while this horse runs: polls for up to wait_s and
    returns as soon as it sees one (a pre-forked horse for the next job)."""
    me, worker = os.getpid(), psutil.Process(os.getppid())
    deadline = time.monotonic() + wait_s
    while True:
        siblings = [child for child in worker.children() if child.pid != me]
        if siblings or time.monotonic() >= deadline:
            return len(siblings)
        time.sleep(0.01)


try:  # workerd subprocesses import this module; the Worker subclass below needs workerd itself
    from workerd.worker import Worker as _Worker

    class BrokenWorker(_Worker):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("this worker cannot start")
except ImportError:  # pragma: no cover
    pass


class Scanner:
    """A custom daemon (a `daemon = ...` group): each unit of work records itself in Redis."""

    def init(self):
        self.client = redis.Redis.from_url(os.environ["SCANNER_URL"])

    def run(self):
        self.client.rpush("scanned", os.getpid())
        time.sleep(0.05)
        return True

    def after_run(self):
        pass


from workerd.execution import UnixSignalDeathPenalty  # noqa: E402


class PoliteDeathPenalty(UnixSignalDeathPenalty):
    """A custom death penalty (DEATH_PENALTY_CLASS): says in its own words why the job stopped."""

    def _raise(self, signum, frame):
        raise self.exception(f"stopped by PoliteDeathPenalty after {self.timeout_s:g} s")


def log_warning(message):
    """Log a WARNING line from the process running the job (a horse, or an in-process worker)."""
    import logging

    logging.getLogger("workerd.testjobs").warning(message)
    return os.getpid()


def delete_key_and_wait(url, key):
    """Delete `key` in the test's Redis, then wait (at most 20 s) until someone sets it again."""
    client = redis.Redis.from_url(url)
    client.delete(key)
    deadline = time.monotonic() + 20
    while not client.exists(key):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nobody set {key} again")
        time.sleep(0.01)
    return True


def wait_for_go(url, key, fail=False):
    """Block until the test pushes to `key` in its Redis (at most 20 s), then return or raise."""
    if redis.Redis.from_url(url).blpop([key], timeout=20) is None:
        raise TimeoutError(f"nobody pushed to {key}")
    if fail:
        raise ValueError("failed after go")
    return "went"
