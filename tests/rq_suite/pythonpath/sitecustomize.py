"""Loaded by every Python process of an rq-suite run (this directory is on PYTHONPATH).

RQ's tests find Redis with `Redis()` (localhost:6379, hard-coded in its tests/__init__.py and a few
tests). The rq-suite command starts its own redis-server on a free port and names it in
RQ_SUITE_REDIS_PORT; this points redis-py's defaults there, in the test process and in every process
it starts (the `rq`/`rqworker` CLI, multiprocessing children), without editing RQ's files.
"""

import os

import rq_cli  # tests/rq_oracle, on PYTHONPATH beside this directory (tests/rq_suite/run.py)

# RQ 2.12 with redis-py >= 8.2: a worker's teardown can wait 60 s for its pub/sub thread (rq_cli.py says why).
rq_cli.bound_pubsub_thread_stop()

_port = os.environ.get("RQ_SUITE_REDIS_PORT")
if _port:
    import inspect

    import redis

    # __init__ is wrapped by redis-py's argument-deprecation decorators: the defaults live on the original.
    _init = inspect.unwrap(redis.Redis.__init__)
    _defaults = list(_init.__defaults__ or ())
    # Redis.__init__(self, host="localhost", port=6379, db=0, ...): host and port are the first two.
    _defaults[0], _defaults[1] = "127.0.0.1", int(_port)
    _init.__defaults__ = tuple(_defaults)
