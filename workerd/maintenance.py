"""Registry clean-up, under RQ's maintenance lock so RQ workers and workerd never clean at once.

Per queue, every MAINTENANCE_INTERVAL (docs/PROTOCOL.md §5.11): expired entries of the finished
and failed registries go; worker keys whose hash is gone leave the worker sets; ids that an RQ
worker moved to the queue's intermediate list and never started (it died in between) go back to
the front of the queue once they have been seen there for a minute - where RQ would fail them.
Abandoned started jobs are not handled here: workerd recovers them on every heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from workerd import schema
from workerd.commit import Committer
from workerd.utils import as_text, printable_id

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("workerd.maintenance")

LOCK_TTL_S = 899  # rq's value
STUCK_AFTER_S = 60  # rq's: an intermediate id seen this long ago without a started entry is stuck
FIRST_SEEN_TTL_S = 86400


def clean_registries(redis: Redis, committer: Committer, queues: Sequence[str]) -> None:
    for queue in queues:
        lock = schema.maintenance_lock_key(queue)
        if not redis.set(lock, 1, nx=True, ex=LOCK_TTL_S):
            continue  # someone (rq or workerd) is cleaning this queue right now
        try:
            _clean_queue(redis, committer, queue)
        finally:
            redis.delete(lock)


def _clean_queue(redis: Redis, committer: Committer, queue: str) -> None:
    now = time.time()
    with redis.pipeline(transaction=False) as pipe:
        # From 0: negative scores mean "kept forever" (failure_ttl=-1), as in rq's clean-up.
        pipe.zremrangebyscore(schema.finished_key(queue), 0, now)
        pipe.zremrangebyscore(schema.failed_key(queue), 0, now)
        pipe.smembers(schema.workers_by_queue_key(queue))
        pipe.lrange(schema.intermediate_key(queue), 0, -1)
        pipe.zrange(schema.started_key(queue), 0, -1)
        _, _, worker_keys, intermediate, started = pipe.execute()
    _forget_dead_workers(redis, queue, [as_text(k) or "" for k in worker_keys])
    running = {schema.split_wip_member(m)[0] for m in started}
    for raw in intermediate:
        job_id = schema.decode_id(raw)
        if job_id in running:
            continue
        first_seen_key = schema.intermediate_first_seen_key(queue, job_id)
        if redis.set(first_seen_key, now, nx=True, ex=FIRST_SEEN_TTL_S):
            continue
        first_seen = float(as_text(redis.get(first_seen_key)) or now)
        if now - first_seen >= STUCK_AFTER_S and committer.requeue_from_intermediate(queue, job_id):
            redis.delete(first_seen_key)
            log.warning(
                "maintenance: job %s was stuck in %s's intermediate list; requeued at the front",
                printable_id(job_id),
                queue,
            )


def _forget_dead_workers(redis: Redis, queue: str, worker_keys: list[str]) -> None:
    if not worker_keys:
        return
    with redis.pipeline(transaction=False) as pipe:
        for key in worker_keys:
            pipe.exists(key)
        alive = pipe.execute()
    dead = [key for key, exists in zip(worker_keys, alive, strict=True) if not exists]
    if dead:
        with redis.pipeline(transaction=False) as pipe:
            pipe.srem(schema.workers_by_queue_key(queue), *dead)
            pipe.srem(schema.WORKERS, *dead)
            pipe.execute()
