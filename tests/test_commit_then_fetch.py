"""With a backlog, a job's commit and the next job's fetch are one script call (COMMIT_THEN_FETCH):
one Redis round trip a job (issue 15, target 3). It must write exactly what the two scripts it
combines write when run one after the other, and a worker that dies right after it must lose nothing.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.conftest import JOBS_DIR, run_workerd, wait_until
from workerd import Queue, schema
from workerd.commit import Committer, Fetched
from workerd.outcome import Outcome
from workerd.serializers import resolve_serializer
from workerd.waiter import NO_WAITS
from workerd.worker import Worker

WORKER = "ctf-worker"
_EPOCH = re.compile(rb"^1[0-9]{9}(\.[0-9]+)?$")  # a float or whole epoch (scores, execution fields)
_STAMP = re.compile(rb"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z?$")  # rq's timestamps


def _masked(value: Any, executions: dict[bytes, bytes]) -> Any:
    """A value with what differs from run to run (times, execution ids) replaced by placeholders."""
    if isinstance(value, (int, float)):
        value = repr(value).encode()
    if isinstance(value, str):
        value = value.encode()
    for execution_id, name in executions.items():
        value = value.replace(execution_id, name)
    if _EPOCH.match(value):
        return b"<time>"
    return b"<stamp>" if _STAMP.match(value) else value


def _dump(r: redis.Redis, executions: dict[bytes, bytes]) -> dict[bytes, Any]:
    """Every key and its content, masked: what a reader of the data model sees."""
    state: dict[bytes, Any] = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        name = _masked(key, executions)
        if kind == b"hash":
            state[name] = {field: _masked(v, executions) for field, v in r.hgetall(key).items()}
        elif kind == b"zset":
            state[name] = [
                (_masked(m, executions), _masked(s, executions)) for m, s in r.zrange(key, 0, -1, withscores=True)
            ]
        elif kind == b"list":
            state[name] = r.lrange(key, 0, -1)
        elif kind == b"stream":
            state[name] = [{f: _masked(v, executions) for f, v in fields.items()} for _, fields in r.xrange(key)]
        else:
            state[name] = kind
        state[name] = (state[name], r.ttl(key) > 0)
    return state


def _two_jobs_first_one_run(r: redis.Redis) -> tuple[Committer, Fetched]:
    r.flushdb()
    queue = Queue("q", connection=r)
    queue.enqueue("testjobs.add", 1, 2, job_id="job-a")
    queue.enqueue("testjobs.add", 3, 4, job_id="job-b")
    r.hset(schema.worker_key(WORKER), mapping={"name": WORKER, "state": "idle"})
    committer = Committer(r, WORKER, resolve_serializer(None))
    first = committer.fetch_and_start(["q"], lease_s=30.0, waits=NO_WAITS)
    assert first.claim is not None and first.claim.job.id == "job-a"
    return committer, first


def _success() -> Outcome:
    now = time.time()
    return Outcome(succeeded=True, started_at=now, ended_at=now, return_value_b64=None)


def test_commit_then_fetch_writes_what_commit_and_fetch_write_one_after_the_other(r: redis.Redis) -> None:
    committer, first = _two_jobs_first_one_run(r)
    assert first.claim is not None
    committer.commit_success(first.claim, _success(), 500)
    second = committer.fetch_and_start(["q"], lease_s=30.0, waits=NO_WAITS)
    assert second.claim is not None
    separate = _dump(
        r, {first.claim.execution_id.encode(): b"<exec-a>", second.claim.execution_id.encode(): b"<exec-b>"}
    )

    committer, first = _two_jobs_first_one_run(r)
    assert first.claim is not None
    applied, combined = committer.commit_success_then_fetch(first.claim, _success(), 500, ["q"], 30.0, NO_WAITS)
    assert combined.claim is not None and combined.claim.job.id == "job-b"
    together = _dump(
        r, {first.claim.execution_id.encode(): b"<exec-a>", combined.claim.execution_id.encode(): b"<exec-b>"}
    )

    assert together == separate
    assert together[b"rq:job:job-a"][0][b"status"] == b"finished"
    assert together[b"rq:job:job-b"][0][b"status"] == b"started"
    assert together[f"rq:worker:{WORKER}".encode()][0][b"current_job"] == b"job-b"
    assert combined.claim.job.args == (3, 4)
    assert applied.released == 0


def test_an_empty_queue_after_the_commit_fetches_nothing_and_leaves_the_worker_idle(r: redis.Redis) -> None:
    r.flushdb()
    Queue("q", connection=r).enqueue("testjobs.add", 1, 2, job_id="only")
    committer = Committer(r, WORKER, resolve_serializer(None))
    first = committer.fetch_and_start(["q"], lease_s=30.0, waits=NO_WAITS)
    assert first.claim is not None
    _, fetched = committer.commit_success_then_fetch(first.claim, _success(), 500, ["q"], 30.0, NO_WAITS)
    assert fetched.claim is None and not fetched.suspended
    assert r.hget(schema.worker_key(WORKER), "state") == b"idle"
    assert r.hget(schema.job_key("only"), "status") == b"finished"
    assert r.zcard(schema.started_key("q")) == 0


def _reads(r: redis.Redis) -> int:
    return int(r.info("stats")["total_reads_processed"])


@pytest.mark.parametrize("execution", ["inprocess", "fork"])
def test_a_backlog_costs_one_round_trip_a_job(r: redis.Redis, redis_url: str, execution: str) -> None:
    """Counted by Redis (requests it read): a burst over 60 jobs less one over 10, per extra job."""
    reads = []
    for jobs in (10, 60):
        r.flushdb()
        queue = Queue("q", connection=r)
        ids = [queue.enqueue("testjobs.add", i, 1).id for i in range(jobs)]
        before = _reads(r)
        result = run_workerd("-u", redis_url, "--burst", "--execution", execution, "q")
        reads.append(_reads(r) - before)
        assert result.returncode == 0, result.stdout + result.stderr
        assert all(r.hget(schema.job_key(i), "status") == b"finished" for i in ids)
    per_job = (reads[1] - reads[0]) / 50
    assert per_job <= 1.1, f"{per_job:.2f} round trips a job ({reads})"


def test_a_worker_killed_right_after_the_combined_call_loses_nothing(
    r: redis.Redis, redis_url: str, forked: Callable[[Callable[[], int]], int]
) -> None:
    """SIGKILL the moment COMMIT_THEN_FETCH has returned: the first job is committed, the second is
    started in Redis under the dead worker's lease; a worker after the lease runs it, once."""
    queue = Queue("default", connection=r)
    first, second = (queue.enqueue("testjobs.mark", redis_url, "runs", tag) for tag in ("first", "second"))

    def worker_killed_after_the_combined_call() -> int:
        sys.path.insert(0, str(JOBS_DIR))  # the jobs run in this process (in-process execution)
        combined = Committer.commit_success_then_fetch

        def then_die(self: Committer, *args: Any, **kwargs: Any) -> Any:
            combined(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        Committer.commit_success_then_fetch = then_die  # type: ignore[method-assign]
        Worker(["default"], connection=redis.Redis.from_url(redis_url), execution="inprocess",
               heartbeat_interval=0.2).work()  # fmt: skip
        return 0

    assert forked(worker_killed_after_the_combined_call) == -signal.SIGKILL
    assert r.hget(schema.job_key(first.id), "status") == b"finished"
    assert r.hget(schema.job_key(second.id), "status") == b"started"
    [(member, lease_deadline)] = r.zrange(schema.started_key("default"), 0, -1, withscores=True)
    assert schema.split_wip_member(member)[0] == second.id
    assert r.lrange("runs", 0, -1) == [b"first"]

    wait_until(lambda: time.time() > lease_deadline, timeout=10, message="the dead worker's lease to run out")
    result = run_workerd("-u", redis_url, "--burst", "--heartbeat-interval", "0.2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert r.hget(schema.job_key(second.id), "status") == b"finished"
    assert r.lrange("runs", 0, -1) == [b"first", b"second"]
    assert r.zcard(schema.started_key("default")) == 0
