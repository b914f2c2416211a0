"""The producer side: Queue.enqueue and friends, writing what RQ 2.12's Queue writes (docs/PROTOCOL.md §4)."""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import redis as redis_module

from workerd import schema
from workerd.errors import DuplicateJobError, NoSuchJobError
from workerd.job import (
    DEFAULT_TIMEOUT_S,
    JOB_OPTIONS,
    MAX_TIMEOUT_S,
    Job,
    JobOptions,
    JobStatus,
    Retry,
    check_whole_number,
)
from workerd.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from workerd.serializers import Serializer, resolve_serializer
from workerd.timeutil import epoch_int, parse_duration_s, utcnow
from workerd.utils import as_text, validate_queue_name

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from typing_extensions import Unpack

R = TypeVar("R", bound=BaseRegistry)


def _timeout_s(value: int | str | None, option: str) -> int | None:
    if value is None:
        return None
    seconds = parse_duration_s(value)
    check_whole_number(option, seconds, 1, MAX_TIMEOUT_S, never=-1)
    return seconds


def _registry_property(registry_class: type[R]) -> property:
    """`queue.failed_job_registry` and its siblings: the registry of this queue's name."""

    def get(queue: Queue) -> R:
        return registry_class(queue.name, queue.connection, serializer=queue.serializer)

    return property(get, doc=f"This queue's {registry_class.__name__}.")


class Queue:
    DEFAULT_TIMEOUT = DEFAULT_TIMEOUT_S

    def __init__(
        self,
        name: str = "default",
        connection: Redis | None = None,
        is_async: bool = True,
        default_timeout: int | str | None = None,
        serializer: Serializer | str | None = None,
        job_class: type[Job] | None = None,
        **kwargs: Any,
    ) -> None:
        if connection is None:
            raise TypeError("Queue() needs connection=redis.Redis(...)")
        self.name = validate_queue_name(name)
        self.connection = connection
        self.is_async = is_async
        self.default_timeout = _timeout_s(default_timeout, "default_timeout") or DEFAULT_TIMEOUT_S
        self.serializer = resolve_serializer(serializer)
        self.job_class = job_class or Job

    @property
    def key(self) -> str:
        return schema.queue_key(self.name)

    @classmethod
    def all(
        cls, connection: Redis, serializer: Serializer | str | None = None, job_class: type[Job] | None = None
    ) -> list[Queue]:
        names = sorted(schema.queue_name_from_key(k) for k in connection.smembers(schema.QUEUES))
        return [cls(name, connection=connection, serializer=serializer, job_class=job_class) for name in names]

    # As rq's: a queue is its name; comparing one with anything else is a mistake worth an error.
    def __eq__(self, other: object) -> bool:
        return self._name_of(other) == self.name

    def __lt__(self, other: object) -> bool:
        return self.name < self._name_of(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __str__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @staticmethod
    def _name_of(other: object) -> str:
        if not isinstance(other, Queue):
            raise TypeError("Cannot compare queues to other objects")
        return other.name

    # -- inspection ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.count

    @property
    def count(self) -> int:
        return int(self.connection.llen(self.key))

    def is_empty(self) -> bool:
        return self.count == 0

    def get_job_ids(self, offset: int = 0, length: int = -1) -> list[str]:
        end = -1 if length < 0 else offset + length - 1
        ids: list[Any] = list(self.connection.lrange(self.key, offset, end))
        return [schema.decode_id(i) for i in ids]

    @property
    def job_ids(self) -> list[str]:
        return self.get_job_ids()

    @property
    def jobs(self) -> list[Job]:
        return self.get_jobs()

    def get_jobs(self, offset: int = 0, length: int = -1) -> list[Job]:
        """The jobs of a slice of the queue (rq's), those whose hash is gone left out."""
        found = self.job_class.fetch_many(self.get_job_ids(offset, length), self.connection, self.serializer)
        return [job for job in found if job is not None]

    def remove(self, job_or_id: Job | str, pipeline: Pipeline | None = None) -> Any:
        """Take a job id out of the queue (its hash stays), as rq's: how many entries went, or the
        pipeline the LREM was queued on."""
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        target = pipeline if pipeline is not None else self.connection
        return target.lrem(self.key, 1, job_id)

    def compact(self) -> int:
        """Take out the ids whose job is gone (rq's compact, in one atomic script); how many went."""
        return int(self.connection.register_script(schema.COMPACT_QUEUE)(keys=[self.key]))

    def fetch_job(self, job_id: str) -> Job | None:
        try:
            job = self.job_class.fetch(job_id, self.connection, self.serializer)
        except NoSuchJobError:
            self.connection.lrem(self.key, 0, job_id)
            return None
        return job if job.origin == self.name else None

    def empty(self) -> int:
        """Remove every job of the queue (ids and hashes); returns how many."""
        removed = 0
        while True:
            ids: Any = self.connection.lpop(self.key, 1000)
            if not ids:
                return removed
            with self.connection.pipeline() as pipe:
                for job_id in ids:
                    text = schema.decode_id(job_id)
                    pipe.delete(schema.job_key(text), schema.dependents_key(text))
                pipe.execute()
            removed += len(ids)

    def delete(self, delete_jobs: bool = True) -> None:
        if delete_jobs:
            self.empty()
        with self.connection.pipeline() as pipe:
            pipe.srem(schema.QUEUES, self.key)
            pipe.delete(self.key)
            pipe.execute()

    # -- registries (rq's attribute names) ----------------------------------------------------------

    started_job_registry = _registry_property(StartedJobRegistry)
    finished_job_registry = _registry_property(FinishedJobRegistry)
    failed_job_registry = _registry_property(FailedJobRegistry)
    deferred_job_registry = _registry_property(DeferredJobRegistry)
    scheduled_job_registry = _registry_property(ScheduledJobRegistry)
    canceled_job_registry = _registry_property(CanceledJobRegistry)

    # -- enqueueing ------------------------------------------------------------------------------

    def enqueue(self, f: Any, *args: Any, **kwargs: Any) -> Job:
        """Enqueue f(*args, **kwargs). The keywords in `ENQUEUE_KEYWORDS` (and args=/kwargs=) configure
        the job; every other keyword, `timeout` too (rq spells it job_timeout here), goes to f."""
        options = {name: kwargs.pop(name) for name in ENQUEUE_KEYWORDS if name in kwargs}
        if "args" in kwargs or "kwargs" in kwargs:
            if args:
                raise TypeError("give the job's arguments either positionally or as args=, not both")
            args = tuple(kwargs.pop("args", ()) or ())
            kwargs = dict(kwargs.pop("kwargs", {}) or {})
        return self.enqueue_call(f, args=args, kwargs=kwargs, **options)

    def enqueue_call(
        self,
        func: Any,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        timeout: int | str | None = None,
        *,
        depends_on: Any = None,
        job_id: str | None = None,
        at_front: bool = False,
        pipeline: Pipeline | None = None,
        unique: bool = False,
        job_timeout: int | str | None = None,
        **options: Unpack[JobOptions],
    ) -> Job:
        """Create and enqueue a job. The keywords after `timeout` are enqueue()'s too (ENQUEUE_KEYWORDS)."""
        if unique and job_id is None:
            raise ValueError("unique=True requires an explicit job_id")
        job = self.create_job(
            func,
            args,
            kwargs,
            timeout if timeout is not None else job_timeout,
            depends_on=depends_on,
            job_id=job_id,
            **options,
        )
        return self.enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)

    def create_job(
        self,
        func: Any,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        timeout: int | str | None = None,
        *,
        depends_on: Any = None,
        job_id: str | None = None,
        status: JobStatus = JobStatus.QUEUED,
        **options: Unpack[JobOptions],
    ) -> Job:
        job = self.job_class.create(
            func,
            args,
            kwargs,
            connection=self.connection,
            serializer=self.serializer,
            id=job_id,
            origin=self.name,
            timeout=_timeout_s(timeout, "job_timeout") or self.default_timeout,
            status=status,
            depends_on=depends_on,
            **options,
        )
        return job

    # -- scheduling ------------------------------------------------------------------------------

    def enqueue_at(self, when: dt.datetime, f: Any, *args: Any, **kwargs: Any) -> Job:
        """Run f(*args, **kwargs) at `when` (a naive datetime is local time, as in rq). Needs a
        worker started with --with-scheduler (workerd's or rq's)."""
        options = {name: kwargs.pop(name) for name in ENQUEUE_KEYWORDS if name in kwargs}
        at_front = bool(options.pop("at_front", False))
        options.pop("pipeline", None)
        if options.pop("unique", False):
            raise ValueError("unique=True is not supported by workerd's enqueue_at/enqueue_in")
        timeout = options.pop("job_timeout", None)
        job = self.create_job(f, args, kwargs, timeout, status=JobStatus.SCHEDULED, **options)
        job.enqueue_at_front = job.enqueue_at_front or at_front
        return self.schedule_job(job, when)

    def enqueue_in(self, delay: dt.timedelta, f: Any, *args: Any, **kwargs: Any) -> Job:
        return self.enqueue_at(utcnow() + delay, f, *args, **kwargs)

    def schedule_job(self, job: Job, when: dt.datetime) -> Job:
        job.origin = self.name
        job.status = JobStatus.SCHEDULED
        with self.connection.pipeline() as pipe:
            pipe.sadd(schema.QUEUES, self.key)
            pipe.hset(job.key, mapping=job.to_mapping())  # type: ignore[arg-type]
            pipe.zadd(schema.scheduled_key(self.name), {job.id: int(when.timestamp())})
            if job.ttl:
                pipe.expire(job.key, job.ttl)
            pipe.execute()
        return job

    # -- many at once ----------------------------------------------------------------------------

    @staticmethod
    def prepare_data(
        func: Any, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        """One entry for enqueue_many: the enqueue_call arguments of a job."""
        return {"func": func, "args": args, "kwargs": kwargs, **options}

    def enqueue_many(self, job_datas: Iterable[dict[str, Any]], pipeline: Pipeline | None = None) -> list[Job]:
        """Enqueue many jobs; those without dependencies in one transaction (one round trip)."""
        jobs = []
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        for data in job_datas:
            options = dict(data)
            at_front = bool(options.pop("at_front", False))
            job = self.create_job(options.pop("func"), **options)
            if job.dependency_ids:
                self.enqueue_job(job, at_front=at_front)
            else:
                job.enqueued_at = utcnow()
                self._push(pipe, job, at_front)
            jobs.append(job)
        if pipeline is None:
            pipe.execute()
        return jobs

    def enqueue_job(
        self, job: Job, pipeline: Pipeline | None = None, at_front: bool = False, unique: bool = False
    ) -> Job:
        """Enqueue a created job. `unique`: raise DuplicateJobError if a job of that id exists (rq's
        unique jobs; not with dependencies, nor inside a caller's pipeline, whose reads come too late)."""
        if unique and (job.dependency_ids or pipeline is not None):
            raise ValueError("unique=True is not supported with job dependencies or a caller's pipeline")
        if job.timeout is None:  # a Job.create()d job takes the queue's default, as in rq
            job.timeout = self.default_timeout
        if job.dependency_ids and self._defer_if_waiting(job, pipeline):
            return job  # as RQ, even with is_async=False: a job waits for its dependencies
        if not self.is_async:
            return self.run_sync(job)
        job.origin = self.name
        job.status = JobStatus.QUEUED
        job.enqueued_at = utcnow()
        if unique:
            self._push_unique(job, at_front)
            return job
        if pipeline is not None and not pipeline.explicit_transaction:
            pipeline.multi()  # as rq: a pipeline the caller WATCHes would run our writes at once, unguarded
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        self._push(pipe, job, at_front)
        if pipeline is None:
            pipe.execute()
        return job

    def _push_unique(self, job: Job, at_front: bool) -> None:
        """Push unless the job's hash exists, atomically: a concurrent enqueue of the same id loses."""
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(job.key)
                    if pipe.exists(job.key):
                        raise DuplicateJobError(f"a job with id {job.id} exists already (unique=True)")
                    pipe.multi()
                    self._push(pipe, job, at_front)
                    pipe.execute()
                    return
                except redis_module.WatchError:
                    continue

    def get_job_position(self, job_or_id: Job | str) -> int | None:
        """The 0-based position of a job in this queue, or None (rq's; one LPOS)."""
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        position: int | None = self.connection.lpos(self.key, job_id)  # type: ignore[assignment]
        return position

    def _push(self, pipe: Pipeline, job: Job, at_front: bool) -> None:
        pipe.sadd(schema.QUEUES, self.key)
        pipe.hset(job.key, mapping=job.to_mapping())  # type: ignore[arg-type]
        if job.ttl:
            for key in (job.key, schema.dependents_key(job.id), schema.dependencies_key(job.id)):
                pipe.expire(key, job.ttl)
        if at_front:
            pipe.lpush(self.key, job.id)
        else:
            pipe.rpush(self.key, job.id)

    def _defer_if_waiting(self, job: Job, pipeline: Pipeline | None = None) -> bool:
        """rq's setup_dependencies: defer the job while any existing dependency is not finished.

        With the caller's `pipeline` (as rq): the statuses are read now under WATCH and the writes join
        the caller's transaction, so a dependency that changes before the caller executes it makes the
        caller's execute() raise WatchError instead of deferring on stale news."""
        own = pipeline is None
        with self.connection.pipeline() if pipeline is None else contextlib.nullcontext(pipeline) as pipe:
            while True:
                try:
                    dependency_keys = [schema.job_key(i) for i in job.dependency_ids]
                    pipe.watch(schema.dependencies_key(job.id), *dependency_keys)
                    statuses = [pipe.hget(key, "status") for key in dependency_keys]
                    finished = JobStatus.FINISHED.value
                    waiting = [s for s in statuses if s is not None and as_text(s) != finished]
                    if not waiting:
                        if own:
                            pipe.unwatch()
                        else:
                            pipe.multi()  # the caller's WATCHes now guard the enqueue that follows
                        return False
                    pipe.multi()
                    job.status = JobStatus.DEFERRED
                    job.origin = self.name
                    pipe.sadd(schema.QUEUES, self.key)
                    pipe.hset(job.key, mapping=job.to_mapping())  # type: ignore[arg-type]
                    pipe.zadd(schema.deferred_key(self.name), {job.id: epoch_int()})
                    for dependency_id in job.dependency_ids:
                        pipe.sadd(schema.dependents_key(dependency_id), job.id)
                        pipe.sadd(schema.dependencies_key(job.id), dependency_id)
                    if job.ttl:
                        pipe.expire(job.key, job.ttl)
                    if own:
                        pipe.execute()
                    return True
                except redis_module.WatchError:
                    if not own:
                        raise
                    continue

    def run_sync(self, job: Job) -> Job:
        """is_async=False: run the job now, in this process, and record it as a worker would."""
        from workerd.commit import Claim, Committer
        from workerd.execution import perform

        job.origin = self.name
        job.status = JobStatus.STARTED
        job.enqueued_at = job.started_at = utcnow()
        job.worker_name = "sync"
        with self.connection.pipeline() as pipe:  # RQ records the queue and the job before running it
            pipe.sadd(schema.QUEUES, self.key)
            pipe.hset(job.key, mapping=job.to_mapping())  # type: ignore[arg-type]
            pipe.execute()
        committer = Committer(self.connection, "sync", self.serializer, record_worker=False)
        claim = Claim(job=job, queue=self.name, execution_id="")
        outcome = perform(job)
        if outcome.succeeded:
            committer.commit_success(claim, outcome, default_result_ttl_s=job.result_ttl or 500)
        else:
            committer.commit_failure(claim, outcome)
        if Job.exists(job.id, self.connection):
            job.refresh()
        return job


# The keywords enqueue() keeps for the job instead of passing them to the function: enqueue_call's
# keyword-only parameters and the job options (RQ 2.12's parse_args list, which also has webhooks).
ENQUEUE_KEYWORDS: tuple[str, ...] = (
    *(p.name for p in inspect.signature(Queue.enqueue_call).parameters.values() if p.kind is p.KEYWORD_ONLY),
    *JOB_OPTIONS,
)


def job(
    queue: str | Queue,
    connection: Redis | None = None,
    timeout: int | str | None = None,
    result_ttl: int = 500,
    ttl: int | None = None,
    depends_on: Any = None,
    at_front: bool = False,
    meta: dict[str, Any] | None = None,
    description: str | None = None,
    failure_ttl: int | None = None,
    retry: Retry | None = None,
    queue_class: type[Queue] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@job("low", connection=r)` adds `f.delay(...)` / `f.enqueue(...)`, as rq's decorator."""
    options: JobOptions = {
        "result_ttl": result_ttl,
        "ttl": ttl,
        "failure_ttl": failure_ttl,
        "description": description,
        "meta": meta,
        "retry": retry,
    }

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        def delay(*args: Any, **kwargs: Any) -> Job:
            queue_type = queue_class or Queue
            target = queue if isinstance(queue, Queue) else queue_type(queue, connection=connection)
            call_depends_on = kwargs.pop("depends_on", depends_on)
            call_job_id = kwargs.pop("job_id", None)
            call_at_front = kwargs.pop("at_front", at_front)
            return target.enqueue_call(
                f,
                args=args,
                kwargs=kwargs,
                timeout=timeout,
                depends_on=call_depends_on,
                job_id=call_job_id,
                at_front=call_at_front,
                **options,
            )

        f.delay = delay  # type: ignore[attr-defined]
        f.enqueue = delay  # type: ignore[attr-defined]
        return f

    return decorate
