"""The one writer of job state.

Every change a worker makes to a job goes through here, and each change is one atomic script call
(one round trip): start (pop + started registry + execution record), lease renewal, success,
failure (with RQ's retry rules), requeue on shutdown, and recovery of jobs whose worker died.
The writes are RQ 2.12's (docs/PROTOCOL.md §5.3 to §5.8), so RQ clients read them unchanged.

Every write after start is guarded by the job's wip entry (`<job>:<execution>` in `rq:wip:<q>`):
it is the worker's lease on the job. A worker that was presumed dead and whose job was recovered
finds its lease gone and writes nothing, so a re-run is never overwritten by a stale outcome.
`job.cancel()` takes the wip entry too, but leaves the execution record that recovery deletes: a
job canceled while it runs is still renewed and committed, as RQ's worker commits it (Lease.CANCELED).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis as redis_module

from workerd import pipelines, schema
from workerd.job import (
    DEFAULT_FAILURE_TTL_S,
    Job,
    JobStatus,
    ResultType,
    encode_exc_string,
    retry_intervals_within_limits,
)
from workerd.outcome import Outcome
from workerd.pipelines import Queued
from workerd.reports import JobOutcome
from workerd.schema import Recovery
from workerd.serializers import Serializer
from workerd.timeutil import utcformat, utcnow
from workerd.utils import as_text, printable_id
from workerd.waiter import NO_WAITS, EndingWaits

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from redis.commands.core import Script

log = logging.getLogger("workerd.worker")

MAX_SKIPS_PER_FETCH = 100
# Result entries that carry the value the job returned: a success, and (as rq) the Retry a job
# returned to ask for another run - also when that run is refused past Retry.max (no exc_string then).
_WITH_RETURN_VALUE = (ResultType.SUCCESSFUL, ResultType.RETRIED, ResultType.MAX_RETRIES_EXCEEDED)
# GUARDED_APPLY's replies other than a count of dependents released.
_LEASE_LOST_REPLY = -1
_CANCELED_REPLY = -2


class Lease(str, enum.Enum):
    """What a guarded write (GUARDED_APPLY) found of the job's lease."""

    HELD = "held"
    LOST = "lost"  # the wip entry is gone (recovered, flushed): nothing was written
    # The job was canceled while it ran (Job.cancel of RQ's client or of workerd's); its outcome was
    # committed as RQ's worker commits it (schema.GUARDED_APPLY says how).
    CANCELED = "canceled"


@dataclass(frozen=True)
class Applied:
    """The reply of a guarded write: the lease as found, and the dependents it released."""

    lease: Lease
    released: int = 0

    @classmethod
    def of(cls, reply: Any) -> Applied:
        code = int(reply)
        if code == _LEASE_LOST_REPLY:
            return cls(Lease.LOST)
        if code == _CANCELED_REPLY:
            return cls(Lease.CANCELED)
        return cls(Lease.HELD, code)


class Verdict(str, enum.Enum):
    """Where a failed job (or one that asked to be retried) went."""

    RETRIED = "retried"  # back on its queue, or scheduled
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Committed:
    """A failure's commit: what the write did, where the job went, and `detail` saying it for the
    log ("retry 2 of 3 in 5s")."""

    applied: Applied
    verdict: Verdict
    detail: str

    @property
    def outcome(self) -> JobOutcome:
        return JobOutcome.RETRIED if self.verdict is Verdict.RETRIED else JobOutcome.FAILED


@dataclass(frozen=True)
class Claim:
    """A job this worker holds: its wip entry in `queue` is the lease."""

    job: Job
    queue: str
    execution_id: str

    @property
    def member(self) -> bytes:
        """The wip entry; empty for a synchronous run, which holds no lease."""
        return schema.wip_member(self.job.id, self.execution_id) if self.execution_id else b""


@dataclass(frozen=True)
class Fetched:
    claim: Claim | None
    skipped: list[str]  # ids popped whose job hash was gone (expired ttl, deleted)
    suspended: bool = False  # rq:suspended is set: nothing was taken


@dataclass(frozen=True)
class _ScriptCall:
    """One script call, ready to run alone (`run`) or after CLIENT UNBLOCKs (Committer._run_ending)."""

    script: Script
    keys: list[Any]
    args: list[Any]
    client: Redis
    execution_id: str = ""  # FETCH_START's: the execution it starts

    def run(self) -> Any:
        return self.script(keys=self.keys, args=self.args, client=self.client)


@dataclass
class _Ops:
    """Redis commands to run inside GUARDED_APPLY, as (argc, command, args...) runs."""

    args: list[Any] = field(default_factory=list)

    def add(self, *command: Any) -> None:
        self.args.append(len(command))
        # A str here may be a job id of any bytes (schema.decode_id): sent as those exact bytes.
        self.args.extend(schema.encode_id(arg) if isinstance(arg, str) else arg for arg in command)

    def hset(self, key: str | bytes, mapping: dict[str, Any]) -> None:
        flat: list[Any] = []
        for name, value in mapping.items():
            flat += [name, value]
        self.add("HSET", key, *flat)

    def xadd(self, key: str | bytes, fields: dict[str, Any]) -> None:
        flat: list[Any] = []
        for name, value in fields.items():
            if value is not None:
                flat += [name, value]
        self.add("XADD", key, "MAXLEN", "~", "10", "*", *flat)


class Committer:
    """Binds the scripts to one connection; one per worker process (created after fork)."""

    def __init__(self, redis: Redis, worker_name: str, serializer: Serializer,
                 record_worker: bool = True) -> None:  # fmt: skip
        self.redis = redis
        self.worker_name = worker_name
        # False for Queue(is_async=False): the job runs in the caller, and there is no worker hash.
        self.record_worker = record_worker
        self.serializer = serializer
        self._fetch_start: Script = redis.register_script(schema.FETCH_START)
        self._apply: Script = redis.register_script(schema.GUARDED_APPLY)
        self._commit_then_fetch: Script = redis.register_script(schema.COMMIT_THEN_FETCH)
        self._recover: Script = redis.register_script(schema.RECOVER_ABANDONED)
        self._from_intermediate: Script = redis.register_script(schema.REQUEUE_FROM_INTERMEDIATE)
        self._recover_claims: Script = redis.register_script(schema.RECOVER_CLAIMS)

    # -- start ---------------------------------------------------------------------------------

    def fetch_and_start(self, queues: Sequence[str], lease_s: float, waits: EndingWaits = NO_WAITS) -> Fetched:
        """Atomically take the first job of the first non-empty queue (its head in our claim list
        first, when `waits` says it may hold one) and mark it started; `waits` still blocked are
        ended in the same round trip, before the script (workerd.waiter)."""
        fetch = self._fetch_call(queues, lease_s, waits)
        return self._fetched(self._run_ending(waits, fetch), queues, fetch.execution_id)

    def _fetch_call(self, queues: Sequence[str], lease_s: float, waits: EndingWaits) -> _ScriptCall:
        now = utcnow()
        deadline = now.timestamp() + lease_s
        execution_ttl_s = int(lease_s) + 60
        keys = [schema.worker_key(self.worker_name)]
        keys += [schema.queue_key(q) for q in queues]
        keys += [schema.started_key(q) for q in queues]
        keys += [schema.claim_list_key(q, self.worker_name) for q in queues]
        execution_id = uuid.uuid4().hex
        args: list[Any] = [
            len(queues), self.worker_name, execution_id, utcformat(now), now.timestamp(), deadline,
            execution_ttl_s, deadline + 60, MAX_SKIPS_PER_FETCH, "1" if waits.claims_may_hold else "",
        ]  # fmt: skip
        return _ScriptCall(self._fetch_start, keys, args, self.redis, execution_id)

    def _fetched(self, reply: Any, queues: Sequence[str], execution_id: str) -> Fetched:
        index, job_id, flat, skipped = reply
        skipped_ids = [schema.decode_id(s) for s in skipped]
        if index <= 0:
            return Fetched(None, skipped_ids, suspended=index < 0)
        mapping = dict(zip(flat[::2], flat[1::2], strict=True))
        # Exact, whatever the bytes: every key and wip entry the commit writes is made from this id.
        text_id = schema.decode_id(job_id)
        try:
            job = Job.from_mapping(text_id, mapping, connection=self.redis, serializer=self.serializer)
        except Exception as exc:  # a forged or corrupted hash: the job is started, so run what can be read
            log.warning("job %s: its hash has malformed fields (%s: %s); using the defaults for them",
                        printable_id(text_id), type(exc).__name__, exc)  # fmt: skip
            job = Job(id=text_id, origin=queues[index - 1], stored_data=mapping.get(b"data", b""),
                      connection=self.redis, serializer=self.serializer)  # fmt: skip
        for problem in job.problems:
            log.warning("job %s: %s", text_id, problem)
        return Fetched(Claim(job=job, queue=queues[index - 1], execution_id=execution_id), skipped_ids)

    def _run_ending(self, waits: EndingWaits, call: _ScriptCall) -> Any:
        """CLIENT UNBLOCK each wait, then the script, in one round trip: once unblocked, no wait can
        move an id into a claim list, so a FETCH_START finds every id handed to us."""
        if not waits.client_ids:
            return call.run()
        with self.redis.pipeline(transaction=False) as pipe:
            for client_id in waits.client_ids:
                pipe.execute_command("CLIENT", "UNBLOCK", client_id)
            # EVALSHA itself: a Script queued on a pipeline costs a SCRIPT EXISTS round trip each time.
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
            *unblocked, reply = pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis_module.ResponseError) for r in unblocked):  # an ACL without CLIENT UNBLOCK
            waits.refused()
        if isinstance(reply, redis_module.exceptions.NoScriptError):  # Redis restarted or flushed its scripts
            return call.run()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def commit_success_then_fetch(
        self, claim: Claim, outcome: Outcome, default_result_ttl_s: int, queues: Sequence[str], lease_s: float,
        waits: EndingWaits,
    ) -> tuple[Applied, Fetched]:  # fmt: skip
        """commit_success, then fetch_and_start of the next job, in one script (COMMIT_THEN_FETCH):
        with a backlog, a job costs one round trip. A commit that errors raises, and fetched nothing."""
        commit = self._success_call(claim, outcome, default_result_ttl_s)
        fetch = self._fetch_call(queues, lease_s, waits)
        args = [len(commit.args), *commit.args, *fetch.args]
        call = _ScriptCall(self._commit_then_fetch, commit.keys + fetch.keys, args, self.redis)
        applied, fetched = self._run_ending(waits, call)
        return Applied.of(applied), self._fetched(fetched, queues, fetch.execution_id)

    # -- lease -----------------------------------------------------------------------------------

    def renew_lease(self, claim: Claim, lease_s: float, working_time_s: float, pipe: Pipeline) -> Queued[bool]:
        """Queue the lease renewal of a running job on `pipe` (executed with the worker heartbeat).
        Its reply: whether the lease still held."""
        now = utcnow()
        deadline = now.timestamp() + lease_s
        ops = _Ops()
        ops.add("ZADD", schema.started_key(claim.queue), "XX", deadline, claim.member)
        execution = schema.execution_key(claim.job.id, claim.execution_id)
        ops.add("HSET", execution, "last_heartbeat", now.timestamp())
        ops.add("EXPIRE", execution, int(lease_s) + 60)
        ops.add("ZADD", schema.executions_key(claim.job.id), "XX", deadline + 60, claim.execution_id)
        # As RQ's heartbeat does: without it the registry expires under a long job, and RQ's
        # get_executions() (used by its cancel) finds nothing (docs/PROTOCOL.md §5.4).
        ops.add("EXPIRE", schema.executions_key(claim.job.id), int(lease_s) + 120)
        ops.add("HSET", schema.job_key(claim.job.id), "last_heartbeat", utcformat(now))
        ops.add("HSET", schema.worker_key(self.worker_name), "current_job_working_time", working_time_s)
        args = [claim.member, "", schema.encode_id(claim.job.id), "", "", "1", *ops.args]
        keys = [schema.started_key(claim.queue)]
        return pipelines.queue(pipe, lambda: self._apply(keys=keys, args=args, client=pipe),
                               lambda replies: Applied.of(replies[0]).lease is not Lease.LOST)  # fmt: skip

    # -- outcomes --------------------------------------------------------------------------------

    def _release_execution(self, ops: _Ops, claim: Claim) -> None:
        ops.add("DEL", schema.execution_key(claim.job.id, claim.execution_id))
        ops.add("ZREM", schema.started_key(claim.queue), claim.member)
        ops.add("ZREM", schema.executions_key(claim.job.id), claim.execution_id)
        if self.record_worker:
            ops.add("HDEL", schema.worker_key(self.worker_name), "current_job")
            ops.add("HSET", schema.worker_key(self.worker_name), "state", "idle")

    def _count(self, ops: _Ops, counter: str, outcome: Outcome | None) -> None:
        if not self.record_worker:
            return
        worker = schema.worker_key(self.worker_name)
        ops.add("HINCRBY", worker, counter, 1)
        ops.add("HINCRBYFLOAT", worker, "total_working_time", outcome.duration_s if outcome else 0.0)

    def _expire_job(self, ops: _Ops, job_id: str, ttl_s: int) -> None:
        """RQ's Job.cleanup: 0 deletes, > 0 expires, negative keeps the job forever."""
        keys = (schema.job_key(job_id), schema.dependents_key(job_id), schema.dependencies_key(job_id))
        if ttl_s == 0:
            ops.add("DEL", *keys, schema.executions_key(job_id))
        elif ttl_s > 0:
            for key in keys:
                ops.add("EXPIRE", key, ttl_s)

    def _result_entry(self, ops: _Ops, claim: Claim, outcome: Outcome, result_type: ResultType,
                      stream_ttl_s: int | None, exc_string: str | None = None) -> None:  # fmt: skip
        key = schema.results_key(claim.job.id)
        if stream_ttl_s == 0:  # rq's Result.save: EXPIRE 0, so the job keeps no results at all
            ops.add("DEL", key)
            return
        # A synchronous run (is_async=False) has no worker and no execution: RQ writes worker_name ''
        # and leaves the execution fields out.
        execution = bool(claim.execution_id)
        ops.xadd(key, {
            "type": int(result_type),
            "worker_name": self.worker_name if self.record_worker else "",
            "return_value": outcome.return_value_b64 if result_type in _WITH_RETURN_VALUE else None,
            "exc_string": encode_exc_string(exc_string) if exc_string is not None else None,
            "execution_id": claim.execution_id if execution else None,
            "execution_started_at": outcome.started_at if execution else None,
            "execution_ended_at": outcome.ended_at if execution else None,
        })  # fmt: skip
        if stream_ttl_s == -1:
            ops.add("PERSIST", key)
        elif stream_ttl_s is not None and stream_ttl_s > 0:
            ops.add("EXPIRE", key, stream_ttl_s)

    def _run(
        self, claim: Claim, ops: _Ops, release: str = "", tolerant: bool = False, canceled_ok: bool = True
    ) -> Applied:
        """Apply `ops` while the lease holds."""
        return Applied.of(self._apply_call(claim, ops, release, tolerant, canceled_ok).run())

    def _apply_call(self, claim: Claim, ops: _Ops, release: str = "", tolerant: bool = False,
                    canceled_ok: bool = True) -> _ScriptCall:  # fmt: skip
        now_stamp = utcformat(utcnow())
        args = [claim.member, release, schema.encode_id(claim.job.id), now_stamp, "1" if tolerant else "",
                "1" if canceled_ok else "", *ops.args]  # fmt: skip
        return _ScriptCall(self._apply, [schema.started_key(claim.queue)], args, self.redis)

    def commit_success(self, claim: Claim, outcome: Outcome, default_result_ttl_s: int) -> Applied:
        """Finished (docs/PROTOCOL.md §5.5), and the next run of a job with repeats left."""
        return Applied.of(self._success_call(claim, outcome, default_result_ttl_s).run())

    def _success_call(self, claim: Claim, outcome: Outcome, default_result_ttl_s: int) -> _ScriptCall:
        job = claim.job
        ttl = job.result_ttl if job.result_ttl is not None else default_result_ttl_s
        ops = _Ops()
        self._count(ops, "successful_job_count", outcome)
        if ttl != 0:
            ops.hset(schema.job_key(job.id), {
                "status": JobStatus.FINISHED.value, "ended_at": _stamp(outcome.ended_at),
                "last_heartbeat": _stamp(outcome.ended_at), "worker_name": self.worker_name,
            })  # fmt: skip
            self._result_entry(ops, claim, outcome, ResultType.SUCCESSFUL, ttl)
            score = "+inf" if ttl < 0 else int(outcome.ended_at) + ttl  # whole seconds, as RQ's scores
            ops.add("ZADD", schema.finished_key(claim.queue), score, job.id)
        if job.repeats_left and claim.execution_id:  # as rq's run_sync, a synchronous run never repeats
            self._repeat_ops(ops, claim)
        else:
            self._expire_job(ops, job.id, ttl)
        self._release_execution(ops, claim)
        return self._apply_call(claim, ops, release=JobStatus.FINISHED.value)

    def _repeat_ops(self, ops: _Ops, claim: Claim) -> None:
        """rq's Repeat.schedule: one repeat fewer, then back on the queue at once, or into the scheduled
        registry after the interval - counted from the end of the list, as rq counts. The job keeps no
        result-ttl expiry (rq's cleanup is skipped), only its own ttl."""
        job = claim.job
        assert job.repeats_left
        left = job.repeats_left - 1
        intervals = job.repeat_intervals or [0]
        delay_s = intervals[min(left, len(intervals) - 1)]
        ops.hset(schema.job_key(job.id), {"repeats_left": left})
        self._requeue_ops(ops, claim, delay_s, at_front=False)
        if job.ttl is not None and job.ttl > 0:
            self._expire_job(ops, job.id, job.ttl)

    def landed(self, claim: Claim) -> bool:
        """Whether the job's latest result is this claim's: a commit Redis applied before the
        connection dropped (its reply lost) finds its own lease gone when the worker tries again."""
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrevrange(  # type: ignore[assignment]
            schema.results_key(claim.job.id), count=1
        )
        return bool(entries) and entries[0][1].get(b"execution_id") == claim.execution_id.encode()

    def commit_retry_requested(self, claim: Claim, outcome: Outcome) -> Committed:
        """The job returned a Retry (rq's handle_job_retry): run it again, or fail it past max."""
        assert outcome.retry is not None
        maximum, returned_intervals = outcome.retry
        job = claim.job
        intervals = retry_intervals_within_limits(returned_intervals, [])  # rq's Retry checks no bound
        count = job.number_of_retries or 0
        ops = _Ops()
        self._count(ops, "failed_job_count", outcome)
        job_key = schema.job_key(job.id)
        if count >= maximum:
            ops.hset(job_key, {"status": JobStatus.FAILED.value, "ended_at": _stamp(outcome.ended_at)})
            self._record_failed(ops, claim, outcome, ResultType.MAX_RETRIES_EXCEEDED, None)
            self._release_execution(ops, claim)
            applied = self._run(claim, ops, release=JobStatus.FAILED.value)
            return Committed(applied, Verdict.FAILED, f"failed: {maximum} retries used")
        self._result_entry(ops, claim, outcome, ResultType.RETRIED, job.failure_ttl)
        ops.add("HSET", job_key, "number_of_retries", count + 1)
        delay_s = intervals[min(len(intervals) - 1, count)] if intervals else 0
        self._requeue_ops(ops, claim, delay_s, at_front=False)
        self._release_execution(ops, claim)
        detail = f"retry {count + 1} of {maximum}" + (f" in {delay_s}s" if delay_s else "")
        return Committed(self._run(claim, ops), Verdict.RETRIED, detail)

    def commit_failure(self, claim: Claim, outcome: Outcome, stopped: bool = False) -> Committed:
        """Failed or stopped, or retried if the job has retries left."""
        job = claim.job
        ops = _Ops()
        self._count(ops, "failed_job_count", outcome)
        job_key = schema.job_key(job.id)
        retry_in_s = None if stopped else _retry_delay_s(job)
        if retry_in_s is not None:
            assert job.retries_left is not None
            # Not HINCRBY: the stored text may be one HINCRBY refuses ('1.0', ' 2'); ours was read and checked.
            ops.hset(job_key, {"retries_left": job.retries_left - 1})
            self._requeue_ops(ops, claim, retry_in_s, at_front=job.enqueue_at_front_on_retry)
            self._release_execution(ops, claim)
            detail = f"retry in {retry_in_s}s" if retry_in_s else "retry now"
            return Committed(self._run(claim, ops), Verdict.RETRIED, detail)
        status = JobStatus.STOPPED if stopped else JobStatus.FAILED
        ops.hset(job_key, {"status": status.value, "ended_at": _stamp(outcome.ended_at),
                           "last_heartbeat": _stamp(outcome.ended_at), "worker_name": self.worker_name})  # fmt: skip
        if outcome.record_failure:
            self._record_failed(ops, claim, outcome, ResultType.FAILED, _with_problems(outcome.exc_string, job))
        self._release_execution(ops, claim)
        release = "" if stopped else JobStatus.FAILED.value
        verdict = Verdict.STOPPED if stopped else Verdict.FAILED
        return Committed(self._run(claim, ops, release=release), verdict, status.value)

    def fail_uncommittable(self, claim: Claim, outcome: Outcome, error: Exception) -> Applied:
        """The last resort after a commit script failed part-way: fail the job with fixed values only
        (the default failure ttl, no retry, no dependents released), every write attempted even if
        one of them fails, so the job ends failed, with the reason, in the failed registry."""
        job = dataclasses.replace(claim.job, failure_ttl=None)  # the default: a value known to be valid
        safe = Claim(job=job, queue=claim.queue, execution_id=claim.execution_id)
        reason = (f"workerd could not commit this job's outcome ({type(error).__name__}: {error}); "
                  f"failed it instead\n{_with_problems(outcome.exc_string, job)}")  # fmt: skip
        ops = _Ops()
        ops.hset(schema.job_key(job.id), {"status": JobStatus.FAILED.value, "ended_at": _stamp(outcome.ended_at),
                                          "worker_name": self.worker_name})  # fmt: skip
        ops.add("ZREM", schema.finished_key(claim.queue), job.id)  # a commit that failed after its ZADD
        self._record_failed(ops, safe, outcome, ResultType.FAILED, reason)
        self._release_execution(ops, safe)
        return self._run(safe, ops, tolerant=True)

    def _record_failed(self, ops: _Ops, claim: Claim, outcome: Outcome, result_type: ResultType,
                       exc_string: str | None) -> None:  # fmt: skip
        """rq's FailedJobRegistry.add plus the result entry: TTLs, registry score, stream."""
        job = claim.job
        ttl = job.failure_ttl if job.failure_ttl is not None else DEFAULT_FAILURE_TTL_S
        self._expire_job(ops, job.id, ttl)
        # RQ stores a negative ttl (keep forever) as the raw score, which its clean-up never reaches.
        score = ttl if ttl < 0 else int(outcome.ended_at) + ttl
        ops.add("ZADD", schema.failed_key(claim.queue), score, job.id)
        self._result_entry(ops, claim, outcome, result_type, job.failure_ttl, exc_string=exc_string)

    def _requeue_ops(self, ops: _Ops, claim: Claim, delay_s: int, at_front: bool) -> None:
        """Back on the queue now, or into the scheduled registry for `delay_s` (rq's Job.retry)."""
        job_key = schema.job_key(claim.job.id)
        now = utcnow()
        queue_key = schema.queue_key(claim.queue)
        ops.add("SADD", schema.QUEUES, queue_key)
        if delay_s > 0:
            ops.hset(job_key, {"status": JobStatus.SCHEDULED.value})
            ops.add("ZADD", schema.scheduled_key(claim.queue), int(now.timestamp()) + delay_s, claim.job.id)
            return
        ops.hset(job_key, {"status": JobStatus.QUEUED.value, "enqueued_at": utcformat(now)})
        ops.add("LPUSH" if at_front else "RPUSH", queue_key, claim.job.id)

    def requeue(self, claim: Claim) -> Applied:
        """Put a job this worker holds back at the front of its queue (cold shutdown, lost horse)."""
        ops = _Ops()
        queue_key = schema.queue_key(claim.queue)
        ops.hset(schema.job_key(claim.job.id),
                 {"status": JobStatus.QUEUED.value, "enqueued_at": utcformat(utcnow())})  # fmt: skip
        ops.add("SADD", schema.QUEUES, queue_key)
        ops.add("LPUSH", queue_key, claim.job.id)
        self._release_execution(ops, claim)
        return self._run(claim, ops, canceled_ok=False)  # a job canceled meanwhile stays canceled

    # -- recovery --------------------------------------------------------------------------------

    def expired_leases(self, queues: Sequence[str], now: float, pipe: Pipeline) -> Queued[dict[str, list[bytes]]]:
        """Queue, on `pipe`, one read per queue of the wip entries whose lease has run out. Its
        reply: those entries (at most 100 a queue), by queue."""
        names = list(queues)

        def add() -> None:
            for queue in names:
                pipe.zrangebyscore(schema.started_key(queue), 0, now, start=0, num=100)

        return pipelines.queue(pipe, add, lambda replies: dict(zip(names, replies, strict=True)))

    def recover(self, queue: str, member: bytes, now: float, max_attempts: int, worker_is_dead: bool = False,
                kill_reason: str | None = None) -> Recovery:  # fmt: skip
        """Recover one wip entry: requeue at the front, or fail it past `max_attempts` or when its
        worker was killed for a reason that would kill it again (`kill_reason`). The lease must have
        expired unless the worker is known to be dead."""
        reason = f"AbandonedJobError: {poison_pill_reason(max_attempts)}"
        job_id = schema.split_wip_member(member)[0]
        keys: list[str | bytes] = [schema.started_key(queue), schema.queue_key(queue), schema.failed_key(queue),
                                   schema.results_key(job_id)]  # fmt: skip
        # The script must not do arithmetic on what a forger may have stored: the fields it uses are
        # read and checked here (only recovery changes them, and never twice for one wip entry).
        names = ("failure_ttl", schema.LOST_COUNT_FIELD)
        try:
            stored: list[Any] = self.redis.hmget(schema.job_key(job_id), names)
        except redis_module.ResponseError:  # WRONGTYPE: not a job; the script finds it stale
            stored = [None, None]
        fields: dict[bytes | str, bytes | str] = {n: v for n, v in zip(names, stored, strict=True) if v}
        job = Job.from_mapping(job_id, fields)
        failure_ttl = job.failure_ttl if job.failure_ttl is not None else DEFAULT_FAILURE_TTL_S
        stream_ttl = job.failure_ttl if job.failure_ttl is not None and job.failure_ttl > 0 else ""
        args: list[Any] = [member, now, utcformat(utcnow()), max_attempts, encode_exc_string(reason),
                           failure_ttl, "1" if worker_is_dead else "0",
                           encode_exc_string(kill_reason) if kill_reason else "", stream_ttl,
                           job.lost_count + 1]  # fmt: skip
        result = self._recover(keys=keys, args=args, client=self.redis)
        return Recovery(result.decode() if isinstance(result, bytes) else str(result))

    def expired_claims(self, queues: Sequence[str], now: float, pipe: Pipeline) -> Queued[dict[str, list[str]]]:
        """Queue, on `pipe`, one read per queue of the workers whose claim lists' lease has run out.
        Its reply: their names (at most 100 a queue), by queue; never this worker."""
        names = list(queues)

        def add() -> None:
            for queue in names:
                pipe.zrangebyscore(schema.claimers_key(queue), 0, now, start=0, num=100)

        def read(replies: list[Any]) -> dict[str, list[str]]:
            found = {queue: [as_text(w) or "" for w in workers] for queue, workers in zip(names, replies, strict=True)}
            return {queue: [w for w in workers if w != self.worker_name] for queue, workers in found.items() if workers}

        return pipelines.queue(pipe, add, read)

    def recover_claims(self, by_queue: Mapping[str, Sequence[str]], worker_is_dead: bool = False,
                       linger_s: float | None = None) -> int:  # fmt: skip
        """Put the ids in the claim lists of the named workers back at the front of each queue, where
        their lease has run out (or at once, for workers known to be dead or stopping). The workers
        leave the claimers zset, or, with `linger_s`, stay that long (a stopping worker: whatever
        Redis hands its closing waits is then recovered by the others). Returns how many."""
        moved = 0
        for queue, names in by_queue.items():
            if not names:
                continue
            keys = [schema.claimers_key(queue), schema.queue_key(queue)]
            keys += [schema.claim_list_key(queue, name) for name in names]
            now = time.time()
            args: list[Any] = [now, "1" if worker_is_dead else "", "" if linger_s is None else now + linger_s, *names]
            count = int(self._recover_claims(keys=keys, args=args, client=self.redis))
            if count:
                log.warning("Worker %s: put back at the front of %s %d job(s) that Redis had handed to the "
                            "idle wait of a worker now gone (of %s)", self.worker_name, queue, count,
                            ", ".join(names))  # fmt: skip
            moved += count
        return moved

    def requeue_from_intermediate(self, queue: str, job_id: str) -> bool:
        """An id stuck in rq's intermediate list (its RQ worker died): back to the front of the queue."""
        keys: list[str | bytes] = [schema.intermediate_key(queue), schema.queue_key(queue), schema.job_key(job_id)]
        args: list[bytes | str] = [schema.encode_id(job_id), utcformat(utcnow())]
        return bool(self._from_intermediate(keys=keys, args=args, client=self.redis))


def poison_pill_reason(max_attempts: int) -> str:
    """Why a job abandoned `max_attempts` times is failed instead of requeued once more."""
    return (
        f"worker lost {max_attempts} times while running this job: possible poison pill (a job that "
        "kills its process); not retried again"
    )


def _stamp(epoch: float) -> str:
    return utcformat(dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc))


def _with_problems(exc_string: str | None, job: Job) -> str:
    """The failure's traceback, and what workerd had to change to read the job's hash."""
    if not job.problems:
        return exc_string or ""
    notes = "".join(f"workerd: {problem}\n" for problem in job.problems)
    return f"{exc_string or ''}\nThis job's hash has fields workerd could not use as stored:\n{notes}"


def _retry_delay_s(job: Job) -> int | None:
    """Seconds until the retry (RQ's get_retry_interval), or None when no retry is left."""
    if not job.retries_left or job.retries_left <= 0:
        return None
    intervals = job.retry_intervals or [0]
    index = max(len(intervals) - job.retries_left, 0)
    return int(intervals[min(index, len(intervals) - 1)])
