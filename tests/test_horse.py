"""The horse's lifecycle seen from the worker: forked, discarded, reaped, never waited on forever."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import redis

from workerd import horse as horse_module
from workerd.job import Job
from workerd.outcome import Outcome

DISCARD_BOUND_S = 5.0


def _never_run(job: Job) -> Outcome:
    raise AssertionError("a discarded horse must not run a job")


def _discard_within_bound(horse: horse_module.Horse) -> bool:
    """discard() in a thread, so that a hang is a failed assertion and not a stuck suite."""
    done = threading.Thread(target=horse.discard, daemon=True)
    done.start()
    done.join(DISCARD_BOUND_S)
    if done.is_alive():  # unblock the waitpid() so the thread and the horse end with the test
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse.pid, signal.SIGKILL)
        done.join(DISCARD_BOUND_S)
        return False
    return True


def test_a_preforked_horse_discarded_at_once_is_reaped(r: redis.Redis) -> None:
    # The window: between fork() returning in the worker and the horse's own setpgrp(). A discard in
    # it used to find no process group, and then waited for a horse that waited for its job.
    hung = 0
    for _ in range(200):
        horse = horse_module.prefork(_never_run, r, "test-worker")
        if not _discard_within_bound(horse):
            hung += 1
            break
    assert hung == 0, "discard() of a freshly pre-forked horse did not return"
    with contextlib.suppress(ChildProcessError):
        assert os.waitpid(-1, os.WNOHANG) == (0, 0), "a horse was left unreaped"
