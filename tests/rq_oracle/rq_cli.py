"""RQ 2.12's `rq` command as the tests and scripts run it (the oracle), with one fix for the newer
redis-py it meets here: `python tests/rq_oracle/rq_cli.py worker ...` is `rq worker ...`.

redis-py 8.2 made `PubSubWorkerThread.stop()` wait for its thread with no bound. RQ 2.12's worker runs
that thread with `sleep_time=60` and, on teardown, unsubscribes before calling `stop()`. When the
thread has already read the unsubscribe reply, it sleeps out the 60 s waiting to be subscribed again,
so under load `rq worker --burst` takes a minute to exit after its last job (seen in test_parity).
RQ bounds its own join of that thread to 1 s (`BaseWorker.unsubscribe`); this gives `stop()` the same
bound. Nothing of workerd uses the thread. tests/rq_suite's sitecustomize applies it to RQ's suite.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from redis.client import PubSubWorkerThread

COMMAND = (sys.executable, str(Path(__file__).resolve()))  # `rq` is [*COMMAND, "worker", ...]
RQ_JOIN_BOUND_S = 1.0  # rq/worker/base.py, BaseWorker.unsubscribe: pubsub_thread.join(timeout=1)


def bound_pubsub_thread_stop() -> None:
    """Give `PubSubWorkerThread.stop(timeout=None)` RQ's 1 s default where redis-py has the parameter."""
    if "timeout" in inspect.signature(PubSubWorkerThread.stop).parameters:
        PubSubWorkerThread.stop.__defaults__ = (RQ_JOIN_BOUND_S,)


if __name__ == "__main__":
    bound_pubsub_thread_stop()
    from rq.cli import main

    main()
