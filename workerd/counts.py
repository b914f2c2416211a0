"""How many jobs each queue and registry holds, read in one round trip (for `workerd info` and /metrics)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from workerd import pipelines, schema
from workerd.pipelines import Queued

if TYPE_CHECKING:
    from redis.client import Pipeline

REGISTRIES = ("started", "finished", "failed", "deferred", "scheduled", "canceled")


@dataclass
class QueueCounts:
    name: str
    queued: int
    started: int
    finished: int
    failed: int
    deferred: int
    scheduled: int
    canceled: int

    def registry(self, name: str) -> int:
        return int(getattr(self, name))


def queue_counts(client: redis.Redis, queues: Sequence[str], now: float | None = None) -> list[QueueCounts]:
    """Depth and registry sizes of `queues` in one round trip (8 O(1)/O(log n) commands a queue).

    finished/failed entries whose score (their expiry) has passed are not counted: RQ's clean-up
    would remove them. Failed entries kept forever have a negative score and always count.
    """
    moment = time.time() if now is None else now
    with client.pipeline(transaction=False) as pipe:
        queued = [_queue_counts(pipe, queue, moment) for queue in queues]
        replies = pipe.execute()
    return [one.read(replies) for one in queued]


def _queue_counts(pipe: Pipeline, queue: str, moment: float) -> Queued[QueueCounts]:
    def add() -> None:
        pipe.llen(schema.queue_key(queue))
        pipe.zcard(schema.started_key(queue))
        pipe.zcard(schema.finished_key(queue))
        pipe.zcount(schema.finished_key(queue), 0, moment)
        pipe.zcard(schema.failed_key(queue))
        pipe.zcount(schema.failed_key(queue), 0, moment)
        pipe.zcard(schema.deferred_key(queue))
        pipe.zcard(schema.scheduled_key(queue))
        pipe.zcard(schema.canceled_key(queue))

    def read(replies: list[Any]) -> QueueCounts:
        q, wip, fin, fin_old, fail, fail_old, deferred, scheduled, canceled = (int(v) for v in replies)
        return QueueCounts(queue, q, wip, fin - fin_old, fail - fail_old, deferred, scheduled, canceled)

    return pipelines.queue(pipe, add, read)
