"""Job functions for the RQ interoperability tests.

Deliberately free of workerd imports: `rq worker` forks a horse per job that imports this module
afresh, and a light module keeps those runs fast. Both workers import it by the same dotted names.
"""

from __future__ import annotations

import os
import signal


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return [list(args), kwargs]


def fail(message="boom"):
    raise ValueError(message)


def return_none():
    return None


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)
