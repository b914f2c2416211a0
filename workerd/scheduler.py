"""Promotion of scheduled jobs (`enqueue_at`, `enqueue_in`, retries with an interval).

A worker started with `--with-scheduler` calls `Scheduler.tick()` about once a second. Which
process promotes a queue's jobs is decided by RQ's own lock, `rq:scheduler-lock:<queue>`, so a
mixed fleet of RQ and workerd workers never double-promotes. workerd holds its locks for
LOCK_TTL_S and refreshes them every tick: when the holder dies, another scheduler takes over
within that time (RQ's own schedulers use 61 s).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workerd import schema
from workerd.timeutil import now_stamp

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("workerd.scheduler")

TICK_S = 1.0
LOCK_TTL_S = 10


class Scheduler:
    def __init__(self, redis: Redis, name: str, queues: Sequence[str]) -> None:
        self.redis = redis
        self.name = name
        self.queues = list(queues)
        self.held: set[str] = set()
        self._tick = redis.register_script(schema.SCHEDULER_TICK)
        self._release = redis.register_script(schema.SCHEDULER_RELEASE)
        self._next_tick = 0.0

    @property
    def next_tick_at(self) -> float:
        """When the next tick is due (monotonic)."""
        return self._next_tick

    def tick_if_due(self, now: float) -> bool:
        """Tick if it is time (`now` is monotonic); True if it did."""
        if now < self._next_tick:
            return False
        self._next_tick = now + TICK_S
        self.tick()
        return True

    def tick(self) -> int:
        """Take or refresh the locks, promote due jobs of the queues held. Returns jobs promoted."""
        keys = [schema.scheduler_key(self.name)]
        for queue in self.queues:
            keys += [schema.scheduler_lock_key(queue), schema.scheduled_key(queue), schema.queue_key(queue)]
        args: list[Any] = [len(self.queues), self.name, LOCK_TTL_S, time.time(), now_stamp(), socket.gethostname(),
                os.getpid(), ",".join(self.queues)]  # fmt: skip
        report = self._tick(keys=keys, args=args, client=self.redis)
        promoted_total = 0
        for queue, (held, promoted, dropped) in zip(self.queues, report, strict=True):
            if held and queue not in self.held:
                log.info("Scheduler %s: now scheduling queue %s", self.name, queue)
            self.held.discard(queue) if not held else self.held.add(queue)
            if dropped:
                log.warning("Scheduler %s: dropped %d scheduled ids of %s whose job is gone", self.name, dropped, queue)
            promoted_total += promoted
        return promoted_total

    def release(self) -> None:
        self.release_for(self.name)
        self.held.clear()

    def release_for(self, name: str) -> None:
        """Release the locks `name` holds on our queues: ours at exit, or a dead predecessor's, so
        that a scheduler takes over at once instead of after LOCK_TTL_S."""
        keys = [schema.scheduler_key(name), *(schema.scheduler_lock_key(q) for q in self.queues)]
        self._release(keys=keys, args=[name], client=self.redis)
