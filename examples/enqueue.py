"""Enqueue the example jobs (`enqueue`), or show what became of them (`show`). Used by scripts/demo.sh."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).parent))

from settings import jobs

from workerd import Job, Queue

IDS_KEY = "workerd-demo:ids"


def enqueue(connection: redis.Redis) -> None:
    high, default, low = (Queue(name, connection=connection) for name in ("high", "default", "low"))
    queued = [
        default.enqueue(jobs.add, 2, 3),
        high.enqueue(jobs.word_count, "the quick brown fox jumps over the lazy dog"),
        low.enqueue(jobs.slow_square, 12),
        default.enqueue(jobs.fail, "this job fails on purpose"),
    ]
    parent = default.enqueue(jobs.add, 40, 2)
    queued += [parent, low.enqueue(jobs.slow_square, 7, depends_on=parent)]
    connection.delete(IDS_KEY)
    connection.rpush(IDS_KEY, *[job.id for job in queued])
    print(f"enqueued {len(queued)} jobs on high, default and low")


def show(connection: redis.Redis) -> None:
    print(f"{'job':40} {'status':9} result")
    for raw in connection.lrange(IDS_KEY, 0, -1):
        job = Job.fetch(raw.decode(), connection=connection)
        status = job.get_status().value
        if status == "finished":
            outcome = repr(job.return_value())
        else:
            outcome = (job.exc_info or "").strip().splitlines()[-1:] or [""]
            outcome = outcome[0]
        print(f"{job.description:40.40} {status:9} {outcome}")


if __name__ == "__main__":
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    {"enqueue": enqueue, "show": show}[sys.argv[1]](client)
