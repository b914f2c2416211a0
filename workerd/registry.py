"""Job registries (sorted sets per queue), read and managed as RQ's registries are.

Unlike rq, reading a registry here has no side effects: rq runs clean-up (and even failure
callbacks) whenever `count` or `get_job_ids` is called; workerd's workers do that work themselves.
Expired entries of the finished and failed registries are not counted; a negative score (RQ's
"keep forever", e.g. failure_ttl=-1) never expires.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workerd import schema
from workerd.errors import InvalidJobOperation
from workerd.job import Job
from workerd.serializers import Serializer, resolve_serializer

if TYPE_CHECKING:
    from redis import Redis


class BaseRegistry:
    key_for: Callable[[str], str] = staticmethod(schema.finished_key)
    # Whether a score in the past means the entry expired (finished, failed) rather than being a
    # plain timestamp (deferred, scheduled, canceled) or a lease (started).
    scores_are_expiry = False

    def __init__(
        self,
        name: str = "default",
        connection: Redis | None = None,
        queue: object = None,
        serializer: Serializer | str | None = None,
    ) -> None:
        if connection is None:  # rq's Registry(queue=queue) takes the queue's connection and serializer
            connection = getattr(queue, "connection", None)
        if connection is None:
            raise TypeError("a registry needs connection=redis.Redis(...) or queue=Queue(...)")
        self.name = getattr(queue, "name", None) or name
        self.connection = connection
        self.serializer = resolve_serializer(serializer or getattr(queue, "serializer", None))

    def __eq__(self, other: object) -> bool:  # as rq's: the same registry of the same Redis
        return (
            isinstance(other, BaseRegistry)
            and type(other) is type(self)
            and other.name == self.name
            and other.connection.connection_pool.connection_kwargs == self.connection.connection_pool.connection_kwargs
        )

    __hash__ = None  # type: ignore[assignment]  # mutable name and connection, as rq's

    @property
    def key(self) -> str:
        return type(self).key_for(self.name)

    def _min_score(self) -> float | str:
        return time.time() if self.scores_are_expiry else "-inf"

    @property
    def count(self) -> int:
        live = int(self.connection.zcount(self.key, self._min_score(), "+inf"))
        if self.scores_are_expiry:  # a negative score is RQ's "keep forever" (failure_ttl=-1)
            live += int(self.connection.zcount(self.key, "-inf", "(0"))
        return live

    def __len__(self) -> int:
        return self.count

    def __contains__(self, item: str | Job) -> bool:
        job_id = item.id if isinstance(item, Job) else item
        return job_id in self.get_job_ids()

    def get_job_ids(self, start: int = 0, end: int = -1, desc: bool = False, cleanup: bool = True) -> list[str]:
        """rq's: with `cleanup`, expired entries are left out (rq deletes them first; reading here has
        no side effects, the worker's maintenance deletes them); without, every entry."""
        if not cleanup:
            members: list[Any] = list(self.connection.zrange(self.key, 0, -1))
        else:
            members = list(self.connection.zrangebyscore(self.key, self._min_score(), "+inf"))
            if self.scores_are_expiry:  # negative scores (kept forever) sort first, as in RQ's ZRANGE
                members = list(self.connection.zrangebyscore(self.key, "-inf", "(0")) + members
        ids = [schema.decode_id(m) for m in members]
        if desc:
            ids.reverse()
        return ids[start:] if end == -1 else ids[start : end + 1]

    def get_expiration_time(self, job: Job | str) -> dt.datetime | None:
        """The entry's score as an aware UTC datetime, as rq's (None if the job is not in the registry)."""
        score = self.connection.zscore(self.key, job.id if isinstance(job, Job) else job)
        if score is None:
            return None
        if float(score) == float("inf"):  # a started job without a timeout: rq's +inf, no datetime holds it
            return dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        return dt.datetime.fromtimestamp(float(score), dt.timezone.utc)

    def remove(self, job: Job | str, delete_job: bool = False) -> None:
        job_id = job.id if isinstance(job, Job) else job
        self.connection.zrem(self.key, job_id)
        if delete_job:
            Job.fetch(job_id, self.connection, self.serializer).delete(remove_from_queue=False)


class StartedJobRegistry(BaseRegistry):
    key_for = staticmethod(schema.started_key)

    def get_job_and_execution_ids(self) -> list[tuple[str, str]]:
        members: list[Any] = list(self.connection.zrange(self.key, 0, -1))
        return [schema.split_wip_member(m) for m in members]

    def get_job_ids(self, start: int = 0, end: int = -1, desc: bool = False, cleanup: bool = True) -> list[str]:
        # Every entry either way: a lease past its score is recovered by a worker, never hidden here.
        ids = [job_id for job_id, _ in self.get_job_and_execution_ids()]
        if desc:
            ids.reverse()
        return ids[start:] if end == -1 else ids[start : end + 1]


class FinishedJobRegistry(BaseRegistry):
    key_for = staticmethod(schema.finished_key)
    scores_are_expiry = True


class FailedJobRegistry(BaseRegistry):
    key_for = staticmethod(schema.failed_key)
    scores_are_expiry = True

    def requeue(self, job_or_id: Job | str, at_front: bool = False) -> Job:
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        job = Job.fetch(job_id, self.connection, self.serializer)
        if job.origin != self.name:
            raise InvalidJobOperation(f"job {job_id} belongs to queue {job.origin}, not {self.name}")
        return job.requeue(at_front=at_front)


class DeferredJobRegistry(BaseRegistry):
    key_for = staticmethod(schema.deferred_key)


class ScheduledJobRegistry(BaseRegistry):
    key_for = staticmethod(schema.scheduled_key)


class CanceledJobRegistry(BaseRegistry):
    key_for = staticmethod(schema.canceled_key)
