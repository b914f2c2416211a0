"""Exception handlers for tests/test_cli.py: each records its call in the Redis named by HANDLER_REDIS_URL."""

from __future__ import annotations

import os

import redis

HANDLER_LOG = "test:handlers"


def _record(name, job):
    redis.Redis.from_url(os.environ["HANDLER_REDIS_URL"]).rpush(HANDLER_LOG, f"{name}:{job.id}")


def record_first(job, exc_type, exc_value, tb):
    _record(f"first:{exc_type.__name__}", job)
    return True  # go on with the next handler


def stop_chain(job, exc_type, exc_value, tb):
    _record("stop", job)
    return False  # a falsy value other than None stops the chain


def never_reached(job, exc_type, exc_value, tb):
    _record("never", job)
