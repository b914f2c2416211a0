"""No-op tasks for the huey and dramatiq peers in benchmarks/peers.py (benchmark-only dependencies)."""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from huey import RedisHuey

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

huey = RedisHuey("bench", url=URL)
dramatiq.set_broker(RedisBroker(url=URL))


@huey.task()
def huey_noop() -> int:
    # A non-None result is stored, which is how the harness sees completion without extra Redis work.
    return 1


@dramatiq.actor
def dramatiq_noop() -> None:
    pass
