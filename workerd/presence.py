"""A worker's presence in Redis, exactly as an RQ 2.12 worker keeps it (docs/PROTOCOL.md §6).

Writers (birth, heartbeat, death) are used by the worker process; `WorkerInfo` is the read side used
by `Worker.all()` and `workerd info`, and reads RQ's workers the same way.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workerd import __version__, pipelines, schema
from workerd.pipelines import Queued
from workerd.timeutil import now_stamp, utcparse
from workerd.utils import as_text

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

    from workerd.settings import Settings

DEATH_TTL_S = 60
# A worker is healthy while its hash's last_heartbeat is younger than 3 heartbeats plus this
# (`workerd health` and the master's /health).
HEALTH_GRACE_S = 5.0


class WorkerNameTaken(ValueError):
    pass


def heartbeat_limit_s(settings: Settings) -> float:
    return 3 * settings.effective_heartbeat_s + HEALTH_GRACE_S


def idle_ttl_s(worker_ttl: int) -> int:
    return worker_ttl + 60


def _ip_address(redis: Redis) -> str:
    try:
        info = redis.execute_command("CLIENT", "INFO")
    except Exception:  # CLIENT INFO is 6.2+; the address is only informational
        return "unknown"
    text = as_text(info) or ""
    for part in text.split():
        # `addr` is this client's own ip:port, what RQ reads from CLIENT LIST; `laddr` is the server's.
        if part.startswith("addr="):
            return part[len("addr=") :]
    return "unknown"


def register_birth(redis: Redis, name: str, queues: Sequence[str], worker_ttl: int, check_taken: bool = True) -> None:
    key = schema.worker_key(name)
    if check_taken and redis.exists(key) and not redis.hexists(key, "death"):
        raise WorkerNameTaken(f"There exists an active worker named '{name}' already")
    redis.client_setname(name)
    now = now_stamp()
    with redis.pipeline() as pipe:
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "birth": now,
                "last_heartbeat": now,
                "queues": ",".join(queues),
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "ip_address": _ip_address(redis),
                "version": f"workerd {__version__}",
                "python_version": sys.version,
                "state": "started",
            },
        )
        pipe.sadd(schema.WORKERS, key)
        for queue in queues:
            pipe.sadd(schema.workers_by_queue_key(queue), key)
        pipe.expire(key, idle_ttl_s(worker_ttl))
        pipe.execute()


def register_death(redis: Redis, name: str, queues: Sequence[str]) -> None:
    key = schema.worker_key(name)
    with redis.pipeline() as pipe:
        pipe.srem(schema.WORKERS, key)
        for queue in queues:
            pipe.srem(schema.workers_by_queue_key(queue), key)
        pipe.hset(key, "death", now_stamp())
        pipe.expire(key, DEATH_TTL_S)
        pipe.execute()


def queue_heartbeat(pipe: Pipeline, name: str, ttl_s: int, queues: Sequence[str], lease_s: float) -> Queued[bool]:
    """Queue on `pipe`: EXISTS (to notice an expired key), then refresh last_heartbeat and the TTL,
    and renew the lease on the worker's claim lists (schema.claim_list_key), as a job's: another
    worker recovers their ids once `lease_s` passes without a heartbeat. Its reply: whether the
    worker key still existed."""
    key = schema.worker_key(name)
    deadline = time.time() + lease_s

    def add() -> None:
        pipe.exists(key)
        pipe.hset(key, "last_heartbeat", now_stamp())
        pipe.expire(key, ttl_s)
        for queue in queues:
            pipe.zadd(schema.claimers_key(queue), {name: deadline})

    return pipelines.queue(pipe, add, lambda replies: bool(replies[0]))


def set_state(redis: Redis | Pipeline, name: str, state: str) -> None:
    redis.hset(schema.worker_key(name), "state", state)


@dataclass(eq=False)
class WorkerInfo:
    """A registered worker (workerd's or RQ's), as read from its hash. As rq's Worker objects, one is
    its key: equal to another read of the same worker, or to the Worker object itself, and hashable
    (`set(Worker.all(...))`, `worker in Worker.all(...)`)."""

    name: str
    hostname: str
    pid: int
    ip_address: str
    queue_names: list[str]
    state: str
    current_job_id: str | None
    birth_date: dt.datetime | None
    last_heartbeat: dt.datetime | None
    successful_job_count: int
    failed_job_count: int
    total_working_time: float
    version: str

    @property
    def queues(self) -> list[str]:
        return self.queue_names

    @property
    def current_job(self) -> str | None:
        """The id of the job the worker is running (RQ's `current_job` field), or None."""
        return self.current_job_id

    @property
    def key(self) -> str:
        return schema.worker_key(self.name)

    def __eq__(self, other: object) -> bool:
        return getattr(other, "key", None) == self.key  # worker keys only: rq:worker:<name>

    def __hash__(self) -> int:
        return hash(self.key)

    @classmethod
    def from_hash(cls, name: str, raw: dict[bytes, bytes]) -> WorkerInfo:
        values = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}

        def stamp(field: str) -> dt.datetime | None:
            try:
                return utcparse(values[field]) if values.get(field) else None
            except ValueError:
                return None

        def number(field: str) -> float:
            try:
                return float(values.get(field) or 0)
            except ValueError:
                return 0.0

        return cls(
            name=name,
            hostname=values.get("hostname", ""),
            pid=int(number("pid")),
            ip_address=values.get("ip_address", ""),
            queue_names=[q for q in values.get("queues", "").split(",") if q],
            state=values.get("state", "?"),
            current_job_id=values.get("current_job") or None,
            birth_date=stamp("birth"),
            last_heartbeat=stamp("last_heartbeat"),
            successful_job_count=int(number("successful_job_count")),
            failed_job_count=int(number("failed_job_count")),
            total_working_time=number("total_working_time"),
            version=values.get("version", ""),
        )

    @classmethod
    def find_by_key(cls, key: str, connection: Redis) -> WorkerInfo | None:
        if not (as_text(key) or "").startswith(schema.worker_key("")):  # as rq's: a key, not a name
            raise ValueError(f"not a worker key (rq:worker:<name>): {key!r}")
        raw: Any = connection.hgetall(key)
        return cls.from_hash(schema.worker_name_from_key(key), raw) if raw else None

    @classmethod
    def all(cls, connection: Redis, queue: str | None = None) -> list[WorkerInfo]:
        """Registered, live workers (those whose hash still exists), of one queue or of all."""
        set_key = schema.workers_by_queue_key(queue) if queue else schema.WORKERS
        members: Any = connection.smembers(set_key)
        keys = sorted(as_text(k) or "" for k in members)
        with connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            hashes = pipe.execute()
        pairs = zip(keys, hashes, strict=True)
        return [cls.from_hash(schema.worker_name_from_key(key), raw) for key, raw in pairs if raw]

    @classmethod
    def count(cls, connection: Redis, queue: str | None = None) -> int:
        return len(cls.all(connection, queue))
