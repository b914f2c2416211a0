"""A commit is all-or-nothing (issue 12, defect 3): Redis keeps the writes a script made before an
error, so a value a commit script cannot use (a ttl EXPIRE refuses, a retry count HINCRBY refuses, a
retry interval that is not a number) used to leave a job finished or failed in no registry, and the
worker exited 70. Each hostile value here is written into a job hash before a real worker runs it.
"""

from __future__ import annotations

import math

import pytest
import redis
import rq

from tests.conftest import run_workerd
from workerd import Job, Queue, Retry, schema
from workerd.job import Callback

HUGE = str(10**16)  # beyond what EXPIRE accepts (~9.2e15 s)


def _burst(redis_url: str) -> str:
    """Run a burst worker over the hostile jobs; it must exit 0 (it kept going, no internal error)."""
    result = run_workerd("-u", redis_url, "--burst")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _assert_final(r: redis.Redis, job_id: str, status: str) -> Job:
    """The job ended `status`, in that registry and no other, holding no lease."""
    job = Job.fetch(job_id, connection=r)
    assert job.get_status() == status
    registry = {"finished": schema.finished_key, "failed": schema.failed_key}
    for name, key in registry.items():
        assert (r.zscore(key("default"), job_id) is not None) == (name == status), name
    assert not r.zrange(schema.started_key("default"), 0, -1)
    assert r.llen(schema.queue_key("default")) == 0
    return job


def _then_a_good_job_finishes(r: redis.Redis) -> Job:
    return Queue("default", connection=r).enqueue("testjobs.add", 2, 3)


@pytest.mark.parametrize("field", ["result_ttl", "failure_ttl"])
def test_a_ttl_redis_refuses_is_clamped_and_the_job_finishes(r: redis.Redis, redis_url: str, field: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.add", 20, 22)
    r.hset(schema.job_key(job.id), field, HUGE)
    good = _then_a_good_job_finishes(r)
    output = _burst(redis_url)
    assert _assert_final(r, job.id, "finished").return_value() == 42
    assert f"{field}: '{HUGE}' is outside" in output
    assert _assert_final(r, good.id, "finished").return_value() == 5


def test_a_failure_ttl_redis_refuses_still_fails_the_job_into_the_failed_registry(
    r: redis.Redis, redis_url: str
) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.fail", "the job's own error")
    r.hset(schema.job_key(job.id), "failure_ttl", HUGE)
    good = _then_a_good_job_finishes(r)
    _burst(redis_url)
    exc_info = _assert_final(r, job.id, "failed").exc_info or ""
    assert "the job's own error" in exc_info and f"failure_ttl: '{HUGE}' is outside" in exc_info
    assert 0 < r.ttl(schema.job_key(job.id)) <= 10**12
    assert _assert_final(r, good.id, "finished").return_value() == 5


@pytest.mark.parametrize("retries_left", ["1e300", "1.0", "-3", "many"])
def test_garbage_retries_left_means_no_retry_with_the_reason(r: redis.Redis, redis_url: str,
                                                            retries_left: str) -> None:  # fmt: skip
    job = Queue("default", connection=r).enqueue("testjobs.fail", "no retry for me", retry=Retry(max=2))
    r.hset(schema.job_key(job.id), "retries_left", retries_left)
    good = _then_a_good_job_finishes(r)
    _burst(redis_url)
    if retries_left == "1.0":  # read as 1: one retry, written back as a whole number, then failed
        assert r.hget(schema.job_key(job.id), "retries_left") == b"0"
    exc_info = _assert_final(r, job.id, "failed").exc_info or ""
    assert "no retry for me" in exc_info
    if retries_left != "1.0":
        assert f"retries_left: '{retries_left}' is " in exc_info and "read as no retries" in exc_info
    assert _assert_final(r, good.id, "finished").return_value() == 5


@pytest.mark.parametrize("intervals", ['["x"]', "[null]", "[1e400]", "[1e300]", "[-5]", "[true]", '{"a": 1}'])
def test_retry_intervals_that_are_not_seconds_read_as_zero(r: redis.Redis, redis_url: str, intervals: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.fail", "retried once", retry=Retry(max=1))
    r.hset(schema.job_key(job.id), "retry_intervals", intervals)
    if intervals == "[1e300]":  # clamped, not zeroed: the retry is scheduled (far off), not lost
        _burst(redis_url)
        assert Job.fetch(job.id, connection=r).get_status() == "scheduled"
        assert r.zscore(schema.scheduled_key("default"), job.id) > 10**12
        assert not r.zrange(schema.started_key("default"), 0, -1)
        return
    good = _then_a_good_job_finishes(r)
    _burst(redis_url)  # the retry runs at once, in the same burst, and fails for good
    exc_info = _assert_final(r, job.id, "failed").exc_info or ""
    assert "retried once" in exc_info and "retry_intervals: " in exc_info
    assert _assert_final(r, good.id, "finished").return_value() == 5


@pytest.mark.parametrize("timeout", ["1e300", "-7", "nan", "1e999"])
def test_a_timeout_out_of_range_still_runs_the_job(r: redis.Redis, redis_url: str, timeout: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.add", 1, 1)
    r.hset(schema.job_key(job.id), "timeout", timeout)
    _burst(redis_url)
    assert _assert_final(r, job.id, "finished").return_value() == 2


def test_a_commit_that_still_errors_fails_the_job_through_the_fallback(r: redis.Redis, redis_url: str) -> None:
    # Not a field the checks know: a dependents key of the wrong type makes the commit script error.
    job = Queue("default", connection=r).enqueue("testjobs.add", 1, 1)
    r.set(schema.dependents_key(job.id), "not a set")
    good = _then_a_good_job_finishes(r)
    output = _burst(redis_url)
    exc_info = _assert_final(r, job.id, "failed").exc_info or ""
    assert "workerd could not commit this job's outcome" in exc_info and "WRONGTYPE" in exc_info
    assert f"could not commit the outcome of job {job.id}" in output
    assert _assert_final(r, good.id, "finished").return_value() == 5


# -- the client refuses what a worker could not commit -------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"result_ttl": 10**16},
            "result_ttl: 10000000000000000 is out of range: expected a whole number from 0 "
            "to 1000000000000, or -1 for never expire",
        ),
        ({"result_ttl": -2}, "result_ttl: -2 is out of range"),
        ({"result_ttl": 1.5}, "result_ttl: 1.5 is out of range"),
        ({"failure_ttl": 10**16}, "failure_ttl: 10000000000000000 is out of range"),
        ({"failure_ttl": math.nan}, "failure_ttl: nan is out of range"),
        ({"ttl": 10**16}, "ttl: 10000000000000000 is out of range: expected a whole number from 1 to 1000000000000"),
        (
            {"job_timeout": 10**10},
            "timeout: 10000000000 is out of range: expected a whole number from 1 to 1000000000, or -1 for no limit",
        ),
        ({"job_timeout": "400000d"}, "timeout: 34560000000 is out of range"),
    ],
)
def test_enqueue_refuses_an_out_of_range_value_and_writes_nothing(r: redis.Redis, options: dict,
                                                                  message: str) -> None:  # fmt: skip
    with pytest.raises(ValueError) as raised:
        Queue("default", connection=r).enqueue("testjobs.add", 1, 1, **options)
    assert message in str(raised.value)
    assert r.keys("*") == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Retry(max=10**10), "Retry(max=...): 10000000000 is out of range: expected a whole number from 1"),
        (lambda: Retry(max=2, interval=[1, 10**16]), "Retry(interval=...): 10000000000000000 is out of range"),
        (lambda: Retry(max=2, interval=[math.inf]), "Retry(interval=...): inf is out of range"),
        (lambda: Retry(max=2, interval=-1), "Retry(interval=...): -1 is out of range"),
        (lambda: Callback("testjobs.add", timeout=10**10), "Callback(timeout=...): 10000000000 is out of range"),
    ],
)
def test_retry_and_callback_refuse_out_of_range_values(make, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        make()
    assert message in str(raised.value)


def test_a_queue_default_timeout_and_an_rq_retry_out_of_range_are_refused(r: redis.Redis) -> None:
    with pytest.raises(ValueError, match=r"default_timeout: 10000000000 is out of range"):
        Queue("default", connection=r, default_timeout=10**10)
    with pytest.raises(ValueError, match=r"Retry\(max=...\): 10000000000 is out of range"):
        Queue("default", connection=r).enqueue("testjobs.add", 1, 1, retry=rq.Retry(max=10**10))
    with pytest.raises(ValueError, match=r"Retry\(interval=...\): 10000000000000000 is out of range"):
        Queue("default", connection=r).enqueue("testjobs.add", 1, 1, retry=rq.Retry(max=1, interval=10**16))
    assert r.keys("*") == []


def test_the_rq_conventions_are_accepted(r: redis.Redis) -> None:
    q = Queue("default", connection=r)
    for options in ({"result_ttl": -1}, {"result_ttl": 0}, {"failure_ttl": -1}, {"failure_ttl": 0},
                    {"job_timeout": -1}, {"result_ttl": 10**12}, {"ttl": 1}):  # fmt: skip
        assert q.enqueue("testjobs.add", 1, 1, **options).id


# -- recovery of a job whose worker died ----------------------------------------------------------------


def _abandoned(r: redis.Redis, fields: dict[str, str]) -> Job:
    """A job left `started` by a worker that died: its wip entry's lease ran out long ago."""
    job = Queue("default", connection=r).enqueue("testjobs.add", 3, 4)
    r.lpop(schema.queue_key("default"))
    r.hset(schema.job_key(job.id), mapping={"status": "started", **fields})
    r.zadd(schema.started_key("default"), {schema.wip_member(job.id, "0" * 32): 1})
    return job


@pytest.mark.parametrize("lost_count", ["x", "1e300", "-4"])
def test_a_garbage_lost_count_does_not_stop_recovery(r: redis.Redis, redis_url: str, lost_count: str) -> None:
    job = _abandoned(r, {schema.LOST_COUNT_FIELD: lost_count})
    _burst(redis_url)  # recovers it (requeued: a count it cannot read counts as 0), then runs it
    expected = "failed" if lost_count == "1e300" else "finished"  # 1e300 reads as the maximum: poison pill
    assert _assert_final(r, job.id, expected)


@pytest.mark.parametrize("failure_ttl", [HUGE, "30.5", "inf", "-1"])  # 30.5: fractional, outlives the test
def test_a_job_failed_by_recovery_is_in_the_failed_registry(r: redis.Redis, redis_url: str,
                                                           failure_ttl: str) -> None:  # fmt: skip
    job = _abandoned(r, {"failure_ttl": failure_ttl})
    result = run_workerd("-u", redis_url, "--burst", "--abandoned-max-attempts", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    exc_info = _assert_final(r, job.id, "failed").exc_info or ""
    assert "AbandonedJobError" in exc_info
    if failure_ttl == "-1":  # kept forever, its registry entry too (RQ's raw negative score)
        assert r.ttl(schema.job_key(job.id)) == -1
        assert r.zscore(schema.failed_key("default"), job.id) == -1


# -- keys of another type where a script expects a job -------------------------------------------------


def test_an_id_whose_job_key_is_not_a_hash_is_skipped(r: redis.Redis, redis_url: str) -> None:
    r.set(schema.job_key("a-string"), "not a job")
    r.rpush(schema.queue_key("default"), "a-string")
    job = Queue("default", connection=r).enqueue("testjobs.add", 1, 1)
    r.set(schema.executions_key(job.id), "not a sorted set")  # RQ's bookkeeping key, forged
    good = _then_a_good_job_finishes(r)
    output = _burst(redis_url)
    assert "skipped job a-string" in output
    assert r.get(schema.job_key("a-string")) == b"not a job"  # not written to, not half-started
    assert _assert_final(r, job.id, "finished").return_value() == 2
    assert _assert_final(r, good.id, "finished").return_value() == 5


def test_a_scheduled_id_whose_job_key_is_not_a_hash_is_dropped(r: redis.Redis, redis_url: str) -> None:
    r.set(schema.job_key("a-string"), "not a job")
    r.zadd(schema.scheduled_key("default"), {"a-string": 1})
    due = Queue("default", connection=r).enqueue("testjobs.add", 4, 4)
    r.lpop(schema.queue_key("default"))
    r.hset(schema.job_key(due.id), "status", "scheduled")
    r.zadd(schema.scheduled_key("default"), {due.id: 2})
    result = run_workerd("-u", redis_url, "--burst", "--with-scheduler")
    assert result.returncode == 0, result.stdout + result.stderr
    assert r.zcard(schema.scheduled_key("default")) == 0
    assert _assert_final(r, due.id, "finished").return_value() == 8


def test_a_dependent_whose_keys_are_not_a_job_is_not_released(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    parent = q.enqueue("testjobs.add", 1, 1)
    child = q.enqueue("testjobs.add", 2, 2, depends_on="not-yet-finished")
    r.lrem(schema.queue_key("default"), 0, child.id)
    r.hset(schema.job_key(child.id), "status", "deferred")
    r.set(schema.job_key("a-string"), "not a job")
    r.hset(schema.job_key("wrong-deps"), mapping={"status": "deferred", "origin": "default"})
    r.set(schema.dependencies_key("wrong-deps"), "not a set")
    r.sadd(schema.dependents_key(parent.id), "a-string", "wrong-deps", child.id)
    _burst(redis_url)
    assert _assert_final(r, parent.id, "finished").return_value() == 2
    assert Job.fetch(child.id, connection=r).return_value() == 4  # released and run
    assert r.hget(schema.job_key("wrong-deps"), "status") == b"deferred"


def test_a_lease_on_a_key_that_is_not_a_job_is_dropped_by_recovery(r: redis.Redis, redis_url: str) -> None:
    r.set(schema.job_key("a-string"), "not a job")
    r.zadd(schema.started_key("default"), {schema.wip_member("a-string", "0" * 32): 1})
    good = _then_a_good_job_finishes(r)
    _burst(redis_url)
    assert r.zcard(schema.started_key("default")) == 0
    assert r.get(schema.job_key("a-string")) == b"not a job"
    assert _assert_final(r, good.id, "finished").return_value() == 5


def test_an_intermediate_id_whose_job_key_is_not_a_hash_is_dropped(r: redis.Redis, redis_url: str) -> None:
    # What a dead RQ worker leaves in its intermediate list, seen long enough ago to count as stuck.
    r.set(schema.job_key("a-string"), "not a job")
    r.rpush(schema.intermediate_key("default"), "a-string")
    r.set(schema.intermediate_first_seen_key("default", "a-string"), 1)
    good = _then_a_good_job_finishes(r)
    _burst(redis_url)
    assert r.llen(schema.intermediate_key("default")) == 0
    assert r.get(schema.job_key("a-string")) == b"not a job"
    assert _assert_final(r, good.id, "finished").return_value() == 5


def test_a_job_with_thousands_of_dependents_releases_them_all(r: redis.Redis, redis_url: str) -> None:
    # More than Lua's unpack() takes at once (about 8,000), with one dependent still waiting: the
    # released ones leave the dependents set in slices, instead of the commit erroring after the pushes.
    parent = Queue("default", connection=r).enqueue("testjobs.add", 1, 1)
    ids = [f"dependent-{i}" for i in range(9000)]
    with r.pipeline(transaction=False) as pipe:
        for job_id in [*ids, "waits-for-another"]:
            pipe.hset(schema.job_key(job_id), mapping={"status": "deferred", "origin": "elsewhere"})
        pipe.hset(schema.job_key("another"), "status", "queued")
        pipe.sadd(schema.dependencies_key("waits-for-another"), parent.id, "another")
        pipe.sadd(schema.dependents_key(parent.id), *ids, "waits-for-another")
        pipe.execute()
    _burst(redis_url)
    assert _assert_final(r, parent.id, "finished").return_value() == 2
    assert r.llen(schema.queue_key("elsewhere")) == 9000
    assert r.smembers(schema.dependents_key(parent.id)) == {b"waits-for-another"}
