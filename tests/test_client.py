"""The client API (issue 2, section 4) against a real Redis, with real `workerd --burst` runs where a
job must execute. RQ 2.12 is the reference for what lands in Redis."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import pickle
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis
import rq

import workerd
from tests.conftest import JOBS_DIR, run_workerd, wait_until
from workerd import Job, JobStatus, Queue, Worker, get_current_job, job
from workerd.errors import InvalidJobOperation, NoSuchJobError
from workerd.job import JOB_OPTIONS, ResultType
from workerd.queue import ENQUEUE_KEYWORDS

if str(JOBS_DIR) not in sys.path:
    sys.path.insert(0, str(JOBS_DIR))
import testjobs

YEAR_S = 31536000


def burst(url: str, *queues: str, extra: tuple[str, ...] = ()) -> str:
    result = run_workerd("-u", url, "--burst", *extra, *(queues or ("default",)))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def near(value: float, expected: float, tolerance: float = 15.0) -> bool:
    return abs(value - expected) <= tolerance


def decoded_data(r: redis.Redis, job_id: str) -> Any:
    return pickle.loads(zlib.decompress(r.hget(f"rq:job:{job_id}", "data")))


# -- Queue -----------------------------------------------------------------------------------------


def test_queue_constructor(r: redis.Redis) -> None:
    with pytest.raises(TypeError, match="connection"):
        Queue("default")
    q = Queue(connection=r)
    assert (q.name, q.key, q.is_async, q.default_timeout) == ("default", "rq:queue:default", True, 180)
    assert Queue("low", connection=r, default_timeout="2m").default_timeout == 120
    assert Queue("low", connection=r, default_timeout=-1).default_timeout == -1
    with pytest.raises(ValueError, match="forbidden characters"):
        Queue("bad name", connection=r)

    jq = Queue("json", connection=r, serializer="json")
    queued = jq.enqueue("testjobs.add", 2, 3, meta={"k": [1]})
    raw = r.hgetall(f"rq:job:{queued.id}")
    assert json.loads(zlib.decompress(raw[b"data"])) == ["testjobs.add", None, [2, 3], {}]
    assert json.loads(raw[b"meta"]) == {"k": [1]}
    fetched = Job.fetch(queued.id, connection=r, serializer="json")
    assert (fetched.func_name, fetched.args, fetched.meta) == ("testjobs.add", (2, 3), {"k": [1]})
    assert {q.name for q in Queue.all(connection=r)} == {"json"}


def test_enqueue_forms_match_rq_and_run(r: redis.Redis, redis_url: str) -> None:
    """Function, bound method, callable instance and dotted path: same data bytes and description as
    RQ writes, and each runs on workerd."""
    forms: list[tuple[Any, tuple[Any, ...], Any]] = [
        (testjobs.add, (2, 3), 5),
        (testjobs.Counter(10).plus, (2,), 12),
        (testjobs.Counter(3), (4,), 12),
        ("testjobs.echo", (1,), [[1], {}]),
    ]
    ours, theirs = Queue(connection=r), rq.Queue("reference", connection=r)
    jobs = []
    for func, args, expected in forms:
        mine = ours.enqueue(func, *args)
        reference = theirs.enqueue(func, *args)
        for field in (b"data", b"description", b"timeout", b"status", b"origin"):
            value = r.hget(f"rq:job:{mine.id}", field)
            expected_value = r.hget(f"rq:job:{reference.id}", field)
            if field == b"origin":
                assert (value, expected_value) == (b"default", b"reference")
            else:
                assert value == expected_value, (func, field)
        jobs.append((mine, expected))
    assert decoded_data(r, jobs[1][0].id)[:2][0] == "plus"
    assert decoded_data(r, jobs[2][0].id)[0] == "__call__"
    burst(redis_url)
    for queued, expected in jobs:
        assert Job.fetch(queued.id, connection=r).return_value() == expected


def test_enqueue_call_with_every_option(r: redis.Redis) -> None:
    q = Queue(connection=r)
    first = q.enqueue(testjobs.add, 0, 0)
    parent = q.enqueue(testjobs.add, 1, 1)
    queued = q.enqueue_call(
        testjobs.echo,
        args=(1, 2),
        kwargs={"x": 3},
        timeout=45,
        result_ttl=60,
        ttl=300,
        failure_ttl=90,
        depends_on=None,
        job_id="every-option",
        at_front=True,
        meta={"m": 1},
        description="custom description",
    )
    raw = {k.decode(): v for k, v in r.hgetall("rq:job:every-option").items()}
    assert pickle.loads(zlib.decompress(raw["data"])) == ("testjobs.echo", None, (1, 2), {"x": 3})
    assert raw["timeout"] == b"45" and raw["result_ttl"] == b"60" and raw["failure_ttl"] == b"90"
    assert raw["ttl"] == b"300" and raw["description"] == b"custom description"
    assert pickle.loads(raw["meta"]) == {"m": 1}
    assert raw["status"] == b"queued" and raw["origin"] == b"default"
    assert near(r.ttl("rq:job:every-option"), 300, 5)  # ttl: how long it may wait in the queue
    assert q.job_ids == ["every-option", first.id, parent.id]  # at_front
    assert queued.id == "every-option"

    # job_timeout is the enqueue_call alias; in enqueue(), `timeout` goes to the function (as in RQ).
    aliased = q.enqueue_call(testjobs.add, args=(1, 2), job_timeout="1m")
    assert r.hget(f"rq:job:{aliased.id}", "timeout") == b"60"
    passed = q.enqueue(testjobs.echo, timeout=5)
    assert decoded_data(r, passed.id)[3] == {"timeout": 5}
    assert r.hget(f"rq:job:{passed.id}", "timeout") == b"180"

    child = q.enqueue_call(testjobs.add, args=(2, 2), depends_on=parent)
    assert r.hget(f"rq:job:{child.id}", "status") == b"deferred"
    with pytest.raises(ValueError, match="invalid"):
        q.enqueue_call(testjobs.add, args=(1, 1), job_id="has:colon")
    with pytest.raises(ValueError):
        q.enqueue_call(testjobs.add, args=(1, 1), timeout=0)


def test_queue_inspection_and_maintenance(r: redis.Redis) -> None:
    q, other = Queue(connection=r), Queue("other", connection=r)
    a, b = q.enqueue(testjobs.add, 1, 2), q.enqueue(testjobs.add, 3, 4)
    elsewhere = other.enqueue(testjobs.add, 5, 6)
    assert len(q) == q.count == 2
    assert q.job_ids == [a.id, b.id]
    assert [j.id for j in q.jobs] == [a.id, b.id]
    assert q.fetch_job(a.id).args == (1, 2)
    assert q.fetch_job(elsewhere.id) is None  # another queue's job
    assert q.fetch_job("missing") is None
    assert not q.is_empty()

    r.delete(f"rq:job:{b.id}")
    assert [j.id for j in q.jobs] == [a.id]  # missing hashes are dropped

    assert q.empty() == 2
    assert len(q) == 0 and not r.exists(f"rq:job:{a.id}")
    assert r.sismember("rq:queues", "rq:queue:default")  # empty() keeps the queue, as RQ's
    other.delete()
    assert not r.exists("rq:queue:other", f"rq:job:{elsewhere.id}")
    assert not r.sismember("rq:queues", "rq:queue:other")


# -- Job ---------------------------------------------------------------------------------------------


def test_job_api_after_a_real_run(r: redis.Redis, redis_url: str) -> None:
    q = Queue(connection=r)
    ok = q.enqueue(testjobs.add, 2, 3, meta={"owner": "me"})
    explicit = q.enqueue(testjobs.echo, args=(1, 2), kwargs={"args": 3}, description="explicit args")
    bad = q.enqueue(testjobs.fail, "broken")
    meta_job = q.enqueue(testjobs.write_meta, "progress", 100)
    who = q.enqueue(testjobs.current_job_id)
    assert ok.get_status() == JobStatus.QUEUED and ok.is_queued
    assert ok.origin == "default" and ok.description == "testjobs.add(2, 3)"
    assert ok.result is None and ok.latest_result() is None
    assert ok.id in repr(ok) and "queued" in repr(ok)

    ok.meta["extra"] = 1
    ok.save_meta()
    assert Job.fetch(ok.id, connection=r).get_meta() == {"owner": "me", "extra": 1}

    burst(redis_url)

    done = Job.fetch(ok.id, connection=r)
    assert done.get_status() == JobStatus.FINISHED and done.is_finished
    assert done.result == done.return_value() == 5
    result = done.latest_result()
    assert result is not None and result.type == ResultType.SUCCESSFUL and result.return_value == 5
    assert done.meta == {"owner": "me", "extra": 1}  # the worker keeps meta
    for stamp in (done.created_at, done.enqueued_at, done.started_at, done.ended_at):
        assert stamp is not None and stamp.tzinfo is not None
        assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 60
    assert done.created_at <= done.enqueued_at <= done.started_at <= done.ended_at  # type: ignore[operator]
    assert done.worker_name and "finished" in repr(done)

    failed = Job.fetch(bad.id, connection=r)
    assert failed.get_status() == JobStatus.FAILED and failed.is_failed
    assert failed.return_value() is None
    failure = failed.latest_result()
    assert failure is not None and failure.type == ResultType.FAILED
    assert failure.exc_string is not None
    assert "Traceback (most recent call last)" in failure.exc_string
    assert "testjobs.py" in failure.exc_string and failure.exc_string.rstrip().endswith("ValueError: broken")
    assert failed.exc_info == failure.exc_string

    assert Job.fetch(explicit.id, connection=r).return_value() == [[1, 2], {"args": 3}]
    assert Job.fetch(explicit.id, connection=r).description == "explicit args"
    # get_current_job() inside the job, and meta it saved.
    assert Job.fetch(who.id, connection=r).return_value() == who.id
    assert Job.fetch(meta_job.id, connection=r).get_meta() == {"progress": 100}
    assert get_current_job() is None  # outside a job

    with pytest.raises(NoSuchJobError):
        Job.fetch("no-such-job", connection=r)
    r.delete(f"rq:job:{ok.id}")
    with pytest.raises(InvalidJobOperation):
        done.get_status()


def test_job_decorator(r: redis.Redis, redis_url: str) -> None:
    decorated = job("low", connection=r, timeout=5)(testjobs.echo)
    try:
        queued = decorated.delay(1, key="v")
        also = decorated.enqueue(2, job_id="decorated-id", at_front=True)
    finally:
        del testjobs.echo.delay, testjobs.echo.enqueue  # type: ignore[attr-defined]
    raw = r.hgetall(f"rq:job:{queued.id}")
    assert raw[b"origin"] == b"low" and raw[b"timeout"] == b"5"
    assert raw[b"result_ttl"] == b"500"  # RQ's decorator writes its default explicitly
    assert r.lrange("rq:queue:low", 0, -1) == [b"decorated-id", queued.id.encode()]
    assert testjobs.echo(3) == [[3], {}]  # still a plain function
    burst(redis_url, "low")
    assert Job.fetch(queued.id, connection=r).return_value() == [[1], {"key": "v"}]
    assert Job.fetch(also.id, connection=r).return_value() == [[2], {}]


def test_function_from_main_is_refused(r: redis.Redis) -> None:
    def local(x: int) -> int:
        return x

    local.__module__ = "__main__"
    with pytest.raises(ValueError) as info:
        Queue(connection=r).enqueue(local, 1)
    message = str(info.value)
    assert "__main__" in message and "import" in message and "move it" in message
    assert len(Queue(connection=r)) == 0 and not r.keys("rq:job:*")

    class Task:
        def run(self) -> None: ...

        def __call__(self) -> None: ...

    Task.__module__, Task.__qualname__ = "__main__", "Task"
    for refused in (Task().run, Task()):
        with pytest.raises(ValueError, match="__main__"):
            Queue(connection=r).enqueue(refused)
    with pytest.raises(ValueError, match="lambda or is defined inside a function"):
        Queue(connection=r).enqueue(lambda: None)
    nested = local
    nested.__module__ = "testjobs"
    with pytest.raises(ValueError, match="top level of a module"):
        Queue(connection=r).enqueue(nested, 1)
    assert not r.keys("rq:job:*")


def test_is_async_false_runs_at_once_with_the_same_result_semantics(r: redis.Redis) -> None:
    q = Queue("sync", connection=r, is_async=False)
    ok = q.enqueue(testjobs.add, 2, 3)
    assert ok.get_status() == JobStatus.FINISHED
    assert ok.return_value() == 5 and Job.fetch(ok.id, connection=r).return_value() == 5
    assert ok.id in q.finished_job_registry.get_job_ids()
    assert near(r.ttl(f"rq:job:{ok.id}"), 500, 5) and near(r.ttl(f"rq:results:{ok.id}"), 500, 5)
    assert r.hget(f"rq:job:{ok.id}", "worker_name") == b"sync"  # as RQ's run_sync
    assert len(q) == 0

    bad = q.enqueue(testjobs.fail, "sync failure")
    assert bad.get_status() == JobStatus.FAILED
    assert bad.latest_result().exc_string.rstrip().endswith("ValueError: sync failure")
    assert bad.id in q.failed_job_registry.get_job_ids()
    assert near(r.ttl(f"rq:job:{bad.id}"), YEAR_S, 5)

    gone = q.enqueue(testjobs.add, 1, 1, result_ttl=0)
    assert not r.exists(f"rq:job:{gone.id}", f"rq:results:{gone.id}")
    forever = q.enqueue(testjobs.add, 1, 1, result_ttl=-1)
    assert r.ttl(f"rq:job:{forever.id}") == -1 and r.ttl(f"rq:results:{forever.id}") == -1

    who = q.enqueue(testjobs.current_job_id)
    assert who.return_value() == who.id

    # As in RQ, a dependency that has not finished defers the job even when not async.
    parent = Queue("sync", connection=r).enqueue(testjobs.add, 0, 0)
    waiting = q.enqueue(testjobs.add, 1, 1, depends_on=parent)
    assert waiting.get_status() == JobStatus.DEFERRED and not r.exists(f"rq:results:{waiting.id}")
    assert q.enqueue(testjobs.add, 2, 2, depends_on=ok).return_value() == 4  # a finished one is met
    assert get_current_job() is None
    assert not r.keys("rq:worker:*")  # no worker is registered for a synchronous run


# -- dependencies ------------------------------------------------------------------------------------


def test_depends_on_job_id_and_list(r: redis.Redis, redis_url: str) -> None:
    q = Queue(connection=r)
    parent = q.enqueue(testjobs.add, 1, 1)
    other = q.enqueue(testjobs.add, 2, 2)
    on_job = q.enqueue(testjobs.add, 3, 3, depends_on=parent)
    on_id = q.enqueue(testjobs.add, 4, 4, depends_on=parent.id)
    on_list = q.enqueue(testjobs.add, 5, 5, depends_on=[parent, other.id])
    chained = q.enqueue(testjobs.add, 6, 6, depends_on=on_list)
    waiting = [on_job, on_id, on_list, chained]
    for dependent in waiting:
        assert dependent.get_status() == JobStatus.DEFERRED
    assert set(q.deferred_job_registry.get_job_ids()) == {j.id for j in waiting}
    assert q.job_ids == [parent.id, other.id]
    assert r.smembers(f"rq:job:{parent.id}:dependents") == {on_job.id.encode(), on_id.id.encode(), on_list.id.encode()}
    assert r.smembers(f"rq:job::{on_list.id}:dependencies") == {parent.id.encode(), other.id.encode()}
    assert json.loads(r.hget(f"rq:job:{on_list.id}", "dependency_ids")) == [parent.id, other.id]

    # A failing dependency: its dependents never run, not even when the other one finishes.
    bad = q.enqueue(testjobs.fail, "dependency")
    never = q.enqueue(testjobs.add, 7, 7, depends_on=[other, bad])
    # Dependencies that already finished, or no longer exist, are met.
    burst(redis_url)
    for dependent, value in zip(waiting, (6, 8, 10, 12), strict=True):
        finished = Job.fetch(dependent.id, connection=r)
        assert finished.get_status() == JobStatus.FINISHED and finished.return_value() == value
    assert Job.fetch(chained.id, connection=r).started_at > Job.fetch(on_list.id, connection=r).ended_at
    assert Job.fetch(never.id, connection=r).get_status() == JobStatus.DEFERRED
    assert Job.fetch(never.id, connection=r).started_at is None and not r.exists(f"rq:results:{never.id}")
    assert q.deferred_job_registry.get_job_ids() == [never.id]

    after_finished = q.enqueue(testjobs.add, 8, 8, depends_on=parent)
    on_missing = q.enqueue(testjobs.add, 9, 9, depends_on="no-such-job")
    after_failed = q.enqueue(testjobs.add, 0, 0, depends_on=bad)
    assert after_finished.get_status() == JobStatus.QUEUED and on_missing.get_status() == JobStatus.QUEUED
    assert after_failed.get_status() == JobStatus.DEFERRED  # as RQ: waits forever
    assert q.job_ids == [after_finished.id, on_missing.id]


# -- defaults, checked in Redis ----------------------------------------------------------------------


def test_timeout_defaults(r: redis.Redis) -> None:
    default = Queue(connection=r)
    slow = Queue("slow", connection=r, default_timeout=600)
    cases = {
        "rq default": (default.enqueue(testjobs.add, 1, 1), b"180"),
        "queue default": (slow.enqueue(testjobs.add, 1, 1), b"600"),
        "per job": (slow.enqueue(testjobs.add, 1, 1, job_timeout=10), b"10"),
        "string": (default.enqueue(testjobs.add, 1, 1, job_timeout="1h"), b"3600"),
        "no limit": (default.enqueue(testjobs.add, 1, 1, job_timeout=-1), b"-1"),
    }
    for name, (queued, expected) in cases.items():
        assert r.hget(f"rq:job:{queued.id}", "timeout") == expected, name
        assert Job.fetch(queued.id, connection=r).timeout == int(expected)
    reference = rq.Queue("ref", connection=r, default_timeout=600).enqueue(testjobs.add, 1, 1)
    assert r.hget(f"rq:job:{reference.id}", "timeout") == b"600"


def test_ttl_defaults_after_a_run(r: redis.Redis, redis_url: str) -> None:
    q = Queue(connection=r)
    default = q.enqueue(testjobs.add, 1, 1)
    discard = q.enqueue(testjobs.add, 1, 2, result_ttl=0)
    forever = q.enqueue(testjobs.add, 1, 3, result_ttl=-1)
    short = q.enqueue(testjobs.add, 1, 4, result_ttl=30)
    failed = q.enqueue(testjobs.fail)
    failed_short = q.enqueue(testjobs.fail, failure_ttl=60)
    burst(redis_url)
    now = time.time()

    def score(registry: str, job_id: str) -> float:
        value = r.zscore(f"rq:{registry}:default", job_id)
        assert value is not None, (registry, job_id)
        return float(value)

    assert near(r.ttl(f"rq:job:{default.id}"), 500, 5) and near(r.ttl(f"rq:results:{default.id}"), 500, 5)
    assert near(score("finished", default.id), now + 500)
    assert not r.exists(f"rq:job:{discard.id}", f"rq:results:{discard.id}")
    assert r.zscore("rq:finished:default", discard.id) is None
    assert r.ttl(f"rq:job:{forever.id}") == -1 and r.ttl(f"rq:results:{forever.id}") == -1
    assert score("finished", forever.id) == float("inf")
    assert near(r.ttl(f"rq:job:{short.id}"), 30, 5) and near(score("finished", short.id), now + 30)

    assert near(r.ttl(f"rq:job:{failed.id}"), YEAR_S, 10) and near(score("failed", failed.id), now + YEAR_S)
    assert r.ttl(f"rq:results:{failed.id}") == -1  # RQ: no failure_ttl on the job, no TTL on its result
    assert near(r.ttl(f"rq:job:{failed_short.id}"), 60, 5)
    assert near(r.ttl(f"rq:results:{failed_short.id}"), 60, 5)
    assert near(score("failed", failed_short.id), now + 60)

    assert set(q.finished_job_registry.get_job_ids()) == {default.id, forever.id, short.id}
    assert set(q.failed_job_registry.get_job_ids()) == {failed.id, failed_short.id}
    assert q.failed_job_registry.count == 2 and len(q.finished_job_registry) == 3


# -- workers -----------------------------------------------------------------------------------------


Runner = Callable[[Callable[[], int]], int]


def test_custom_worker_script_in_a_forked_child(r: redis.Redis, redis_server: Any, forked: Runner) -> None:
    q = Queue("high", connection=r)
    ok = q.enqueue(testjobs.add, 20, 22)
    bad = q.enqueue(testjobs.fail, "in the script")
    low = Queue("low", connection=r).enqueue(testjobs.current_job_id)

    def script() -> int:
        import testjobs  # noqa: F401  - "preload libraries, then Worker(qs).work()"

        connection = redis.Redis.from_url(redis_server.url)
        queues = [Queue("high", connection=connection), "low"]
        ran = Worker(queues, connection=connection, name="scripted").work(burst=True)
        return 0 if ran else 3

    assert forked(script) == 0
    assert Job.fetch(ok.id, connection=r).return_value() == 42
    assert Job.fetch(ok.id, connection=r).worker_name == "scripted"
    assert Job.fetch(bad.id, connection=r).get_status() == JobStatus.FAILED
    assert Job.fetch(low.id, connection=r).return_value() == low.id
    assert Job.fetch(ok.id, connection=r).started_at < Job.fetch(low.id, connection=r).started_at  # priority
    info = Worker.find_by_key("rq:worker:scripted", connection=r)
    assert info is not None and r.hexists("rq:worker:scripted", "death")
    assert (info.successful_job_count, info.failed_job_count) == (2, 1)
    assert info.queues == ["high", "low"]
    assert Worker.all(connection=r) == []  # it registered its death


def test_worker_all_count_find_by_key(r: redis.Redis, redis_url: str, workerd: Callable[..., Any]) -> None:
    theirs = rq.Worker(["low"], connection=r, name="an-rq-worker")
    theirs.register_birth()
    proc = workerd("-u", redis_url, "-n", "listed", "high", "low")
    wait_until(lambda: r.hget("rq:worker:listed", "state") == b"idle", 15, message="the worker to be idle")

    workers = {w.name: w for w in Worker.all(connection=r)}
    assert set(workers) == {"listed", "an-rq-worker"}
    assert Worker.count(connection=r) == 2
    assert Worker.count(connection=r, queue="high") == 1
    assert [w.name for w in Worker.all(connection=r, queue=Queue("high", connection=r))] == ["listed"]
    ours = workers["listed"]
    assert (ours.pid, ours.queues, ours.state, ours.current_job) == (proc.pid, ["high", "low"], "idle", None)
    assert ours.hostname and ours.birth_date and ours.last_heartbeat
    assert (ours.successful_job_count, ours.failed_job_count, ours.total_working_time) == (0, 0, 0.0)
    rq_info = workers["an-rq-worker"]
    assert (rq_info.pid, rq_info.queues, rq_info.version) == (os.getpid(), ["low"], rq.__version__)

    running = Queue("high", connection=r).enqueue(testjobs.sleep_for, 1.5)
    wait_until(lambda: r.hget("rq:worker:listed", "state") == b"busy", 10, message="the worker to be busy")
    busy = Worker.find_by_key("rq:worker:listed", connection=r)
    assert busy is not None and busy.state == "busy" and busy.current_job == running.id
    result = running.latest_result(timeout=8)  # blocks until the worker writes it
    assert result is not None and result.return_value == 1.5
    assert running.get_status() == JobStatus.FINISHED

    def counted() -> Any:
        found = Worker.find_by_key("rq:worker:listed", connection=r)
        return found if found and found.successful_job_count == 1 and found.state == "idle" else None

    done = wait_until(counted, 10, message="the worker to count its job")
    assert done.total_working_time >= 1.5 and done.current_job is None
    assert Worker.find_by_key("rq:worker:nobody", connection=r) is None
    theirs.register_death()


def test_public_names() -> None:
    for name in ("Queue", "Job", "job", "get_current_job", "Worker"):
        assert hasattr(workerd, name), name


def test_is_async_false_leaves_the_same_data_as_rq(r: redis.Redis) -> None:
    from tests.test_interop import assert_same_data, snapshot

    def scenario(queue_class: Any) -> dict[str, Any]:
        r.flushall()
        q = queue_class("sync", connection=r, is_async=False)
        ids = {
            "ok": q.enqueue(testjobs.add, 2, 3).id,
            "meta": q.enqueue(testjobs.add, 1, 1, meta={"a": 1}).id,
            "fail": q.enqueue(testjobs.fail, "sync").id,
            "discard": q.enqueue(testjobs.add, 1, 2, result_ttl=0).id,
            "forever": q.enqueue(testjobs.add, 1, 3, result_ttl=-1).id,
        }
        data = snapshot(r, ids, "sync")
        # RQ's synchronous failure path never sets ended_at (it stays ''); workerd records it.
        data["rq:job:<fail>"][2].pop("ended_at")
        return data

    assert_same_data(scenario(rq.Queue), scenario(Queue), "is_async=False")


@pytest.mark.parametrize("overrides", [{"max_jobs": "abc"}, {"heartbeat_interval": -1}, {"no_such_setting": 1}])
def test_worker_keyword_settings_are_validated(r: redis.Redis, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        Worker("default", connection=r, **overrides)


def test_work_keywords_are_validated(r: redis.Redis) -> None:
    with pytest.raises(ValueError, match="max_idle_time"):
        Worker("default", connection=r).work(burst=True, max_idle_time=-5)


def test_rq_client_api_found_by_rqs_own_suite(r: redis.Redis) -> None:
    """Small pieces of rq's client API that RQ 2.12's test_queue/test_job showed missing (issue 13)."""
    queue = Queue("small", connection=r)
    first = queue.enqueue("testjobs.add", 1, 2, job_id="only-once", unique=True)
    with pytest.raises(workerd.errors.DuplicateJobError):
        queue.enqueue("testjobs.add", 1, 2, job_id="only-once", unique=True)
    assert first.kwargs == {} and r.llen(queue.key) == 1  # unique configures, is not passed to the function
    with pytest.raises(ValueError):
        queue.enqueue("testjobs.add", 1, 2, unique=True)  # needs an explicit id
    second = queue.enqueue("testjobs.add", 3, 4)
    assert (queue.get_job_position(second), queue.get_job_position("nope")) == (1, None)
    assert queue.get_jobs(1) == [second] and queue.jobs == [first, second]
    assert queue.remove(first) == 1 and queue.job_ids == [second.id] and r.exists(first.key)
    created = Job.create("testjobs.add", (1, 2), connection=r)
    assert queue.enqueue_job(created).timeout == Queue.DEFAULT_TIMEOUT  # the queue's default, as rq
    for bad in ({"args": "12"}, {"kwargs": [("a", 1)]}):
        with pytest.raises(TypeError):
            Job.create("testjobs.add", connection=r, **bad)  # type: ignore[arg-type]
    job = Job.create("testjobs.add", (1,), {"b": "x" * 100}, connection=r, ttl=60)
    assert (job.get_ttl(5), job.get_result_ttl(7), Job.create("testjobs.add").get_ttl(5)) == (60, 7, 5)
    assert job.get_call_string() == rq.utils.get_call_string("testjobs.add", (1,), {"b": "x" * 100}, max_length=75)
    when = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    scheduled = queue.enqueue_at(when, "testjobs.add", 1, 2)
    assert workerd.ScheduledJobRegistry(queue=queue).get_expiration_time(scheduled) == when


def test_registry_get_job_ids_without_cleanup_and_an_empty_job_is_not_saved(r: redis.Redis) -> None:
    finished = workerd.FinishedJobRegistry("small", connection=r)
    r.zadd(finished.key, {"expired": 1, "live": time.time() + 100})
    assert finished.get_job_ids() == ["live"] and finished.get_job_ids(cleanup=False) == ["expired", "live"]
    assert r.zcard(finished.key) == 2  # reading never deletes
    with pytest.raises(ValueError):
        Job(id="empty", connection=r).save()
    assert not r.exists("rq:job:empty")


def test_enqueue_into_the_callers_pipeline_waits_for_its_execute(r: redis.Redis) -> None:
    """As rq: with pipeline=, nothing is written before the caller executes it, even a deferral, and a
    pipeline the caller WATCHes still runs the enqueue inside its transaction."""
    queue = Queue("piped", connection=r)
    parent = queue.enqueue("testjobs.add", 1, 2)
    with r.pipeline() as pipe:
        child = queue.enqueue_call("testjobs.add", (3, 4), depends_on=parent, pipeline=pipe)
        assert child.status == JobStatus.DEFERRED and len(queue.deferred_job_registry) == 0
        pipe.execute()
    assert queue.deferred_job_registry.get_job_ids() == [child.id]
    with r.pipeline() as pipe:
        pipe.watch("some-key")
        queued = queue.enqueue_call("testjobs.add", (5, 6), pipeline=pipe)
        assert queue.job_ids == [parent.id]
        pipe.set("some-key", "x")
        pipe.execute()
    assert queue.job_ids == [parent.id, queued.id]


def test_client_errors_are_rqs_too_where_the_application_uses_rq(r: redis.Redis) -> None:
    """`except rq.exceptions.X` around workerd's client catches workerd's X (and workerd's own class
    still catches it), without workerd importing rq: rq's suite found these five."""
    import pickle

    import rq.exceptions

    with pytest.raises(rq.exceptions.NoSuchJobError) as missing:
        Job.fetch("no-such-job", connection=r)
    assert isinstance(missing.value, NoSuchJobError)
    queue = Queue("errors", connection=r)
    queue.enqueue("testjobs.add", 1, 2, job_id="once", unique=True)
    with pytest.raises(rq.exceptions.DuplicateJobError):
        queue.enqueue("testjobs.add", 1, 2, job_id="once", unique=True)
    with pytest.raises(rq.exceptions.InvalidJobOperation):  # a job that exists, not in the registry
        workerd.FailedJobRegistry("errors", connection=r).requeue("once")
    again = pickle.loads(pickle.dumps(missing.value))  # e.g. out of a horse
    assert isinstance(again, NoSuchJobError) and isinstance(again, rq.exceptions.NoSuchJobError)
    assert again.args == missing.value.args


def test_compact_takes_out_ids_whose_job_is_gone_and_keeps_the_order(r: redis.Redis) -> None:
    queue = Queue("compact", connection=r)
    first = queue.enqueue("testjobs.add", 1, 2)
    r.rpush(queue.key, "gone-1", b"\xff\xfe")
    second = queue.enqueue("testjobs.add", 3, 4)
    r.lpush(queue.key, "gone-2")
    assert queue.compact() == 3
    assert queue.get_job_ids() == [first.id, second.id]
    assert rq.Queue("compact", connection=r).get_job_ids() == [first.id, second.id]


# -- the job options: declared once (workerd.job.JobOptions), accepted alike at every layer -----------

# rq 2.12 parameters workerd does not take: group_id= at job creation.
RQ_ONLY_OPTIONS = {"group_id"}
NOT_OPTIONS = {"self", "cls", "func", "args", "kwargs"}


def accepted_options(function: Callable[..., Any]) -> dict[str, Any]:
    """The option keywords `function` takes, with their defaults: its named parameters and, from its
    `**options: Unpack[JobOptions]`, the job options (each missing one means None)."""
    options: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            assert parameter.annotation == "Unpack[JobOptions]", function
            options.update(dict.fromkeys(JOB_OPTIONS))
        elif parameter.name not in NOT_OPTIONS:
            options[parameter.name] = parameter.default
    return options


def test_every_layer_takes_the_same_job_options() -> None:
    enqueue_call = set(accepted_options(Queue.enqueue_call))
    create_job = set(accepted_options(Queue.create_job))
    # enqueue() keeps for the job what enqueue_call takes, but `timeout` goes to the function.
    assert set(ENQUEUE_KEYWORDS) == enqueue_call - {"timeout"}
    # create_job takes those less how to enqueue, plus the status to create with.
    assert create_job == enqueue_call - {"at_front", "pipeline", "unique", "job_timeout"} | {"status"}
    # Job.create takes those less what needs a queue, plus what the queue supplies.
    queue_supplies = {"id", "connection", "serializer", "origin"}
    assert set(accepted_options(Job.create)) == create_job - {"job_id"} | queue_supplies


@pytest.mark.parametrize("method", ["enqueue_call", "create_job", "create"])
def test_the_job_options_have_rqs_names_and_defaults(method: str) -> None:
    ours, theirs = (Job, rq.job.Job) if method == "create" else (Queue, rq.Queue)
    rq_options = {
        name: parameter.default
        for name, parameter in inspect.signature(getattr(theirs, method)).parameters.items()
        if name not in NOT_OPTIONS | RQ_ONLY_OPTIONS
    }
    options = accepted_options(getattr(ours, method))
    options.pop("job_timeout", None)  # workerd's enqueue_call also takes enqueue()'s spelling
    if method == "create":
        # rq's Job.create takes no repeat (rq's create_job sets it afterwards), and leaves the status
        # None where workerd's says CREATED.
        assert options.pop("repeat") is None and "repeat" not in rq_options
        assert (rq_options.pop("status"), options.pop("status")) == (None, JobStatus.CREATED)
    assert options == rq_options


def test_enqueue_passes_none_of_its_keywords_to_the_function(r: redis.Redis) -> None:
    queue = Queue("options", connection=r)
    enqueued = queue.enqueue(testjobs.add, 1, 2, **dict.fromkeys(ENQUEUE_KEYWORDS))
    assert Job.fetch(enqueued.id, connection=queue.connection).kwargs == {}
    assert queue.enqueue(testjobs.add, 1, 2, timeout=5).kwargs == {"timeout": 5}  # rq's job_timeout is not it


def test_job_data_is_rqs_uncompressed_payload_and_the_call_is_settable(r: redis.Redis) -> None:
    """issue 13: `job.data` is the serialized call, uncompressed (the hash holds it zlib-compressed),
    encoded lazily; func_name/instance/args/kwargs can be set, and rq's client reads what was saved."""
    job = Job.create("testjobs.add", (1, 2), connection=r)
    assert pickle.loads(job.data) == ("testjobs.add", None, (1, 2), {})
    job.args, job.kwargs = (5,), {"b": 6}
    job.func_name = "testjobs.echo"
    job.save()
    assert r.hget(job.key, "data") == zlib.compress(job.data)
    seen = rq.job.Job.fetch(job.id, connection=r)
    assert (seen.func_name, seen.args, seen.kwargs) == ("testjobs.echo", (5,), {"b": 6})
    # rq writes `data` uncompressed-or-not and workerd reads it back the same; a saved fetched job
    # keeps the stored bytes as they were.
    r.hset(job.key, "data", job.data)
    again = Job.fetch(job.id, r)
    assert again.data == job.data and again.args == (5,)
    again.meta["x"] = 1
    again.save()
    assert r.hget(job.key, "data") == job.data
    fresh = Job(id="fresh", connection=r)
    fresh.func_name = "testjobs.add"
    assert pickle.loads(fresh.data) == ("testjobs.add", None, (), {})
    fresh.data = pickle.dumps(("testjobs.echo", None, (3,), {}))
    assert (fresh.func_name, fresh.args) == ("testjobs.echo", (3,))


def test_job_create_encodes_nothing_until_saved(r: redis.Redis) -> None:
    """issue 13: as rq, a job whose instance the serializer cannot encode is usable until saved."""
    counter = testjobs.Counter(2)
    job = Job.create(counter.plus, (4,), serializer="json", connection=r)
    assert job.instance is counter and job.func == counter.plus and job.func(*job.args) == 6
    with pytest.raises(TypeError):
        job.save()
    assert not r.exists(job.key)


def test_unimportable_function_raises_value_error_on_access_not_fetch(r: redis.Redis) -> None:
    """issue 13: as rq, a function the worker cannot import fails when `job.func` is asked for."""
    rq_job = rq.Queue("old", connection=r).enqueue("testjobs.no_such_function")
    job = Job.fetch(rq_job.id, r)
    assert job.func_name == "testjobs.no_such_function"
    with pytest.raises(ValueError, match=r"testjobs\.no_such_function"):
        _ = job.func


def test_callbacks_resolve_and_their_timeouts_report_rqs_default(r: redis.Redis) -> None:
    """issue 13: success/failure/stopped_callback resolve the stored name; a timeout not given reads
    as rq's CALLBACK_TIMEOUT (60) and is not written, as rq."""
    job = Job.create("testjobs.add", (1, 2), on_success=workerd.Callback(testjobs.echo, timeout=10),
                     on_failure=testjobs.fail, connection=r)  # fmt: skip
    job.save()
    stored = Job.fetch(job.id, r)
    assert stored.success_callback is testjobs.echo and stored.success_callback_timeout == 10
    assert stored.failure_callback is testjobs.fail and stored.failure_callback_timeout == 60
    assert stored.stopped_callback is None and stored.stopped_callback_timeout == 60
    assert r.hget(job.key, "failure_callback_timeout") == b"60"  # given as a bare callable: rq stores 60
    assert not r.hexists(job.key, "stopped_callback_timeout")
    seen = rq.job.Job.fetch(job.id, connection=r)
    assert (seen.success_callback, seen.stopped_callback_timeout) == (testjobs.echo, 60)


def test_job_create_depends_on(r: redis.Redis) -> None:
    """issue 13: Job.create(depends_on=...) as rq's: a job or an id; anything else is a ValueError."""
    parent = Job.create("testjobs.add", (1, 2), connection=r)
    parent.save()
    for depends_on in (parent, parent.id, [parent.id]):
        job = Job.create("testjobs.add", (1, 2), depends_on=depends_on, connection=r)
        job.save()
        stored = Job.fetch(job.id, r)
        assert stored.dependency_ids == [parent.id] and stored.dependency == parent
        assert rq.job.Job.fetch(job.id, connection=r).dependency.id == parent.id  # read from the hash
    for bad in ([{"id": "not-a-job"}, parent.id], [parent, 12345]):
        with pytest.raises(ValueError):
            Job.create("testjobs.add", depends_on=bad, connection=r)


def test_enqueue_takes_webhooks_as_rq_does_and_stores_them_alike(r: redis.Redis) -> None:
    from rq.webhook import Webhook as RQWebhook

    hooks = [
        RQWebhook("https://example.com/done", "finished", method="POST", headers={"X-A": "1"}, timeout=5),
        workerd.webhooks.Webhook(url="http://example.com/failed", job_status="failed"),
        {"url": "https://example.com/d", "job_status": "finished"},
    ]
    ours = Queue("hooks", connection=r).enqueue("testjobs.add", 1, 2, webhooks=hooks)
    rq_hooks = [RQWebhook("https://example.com/done", "finished", method="POST", headers={"X-A": "1"}, timeout=5),
                RQWebhook("http://example.com/failed", "failed")]  # fmt: skip
    theirs = rq.Queue("hooks", connection=r).enqueue("testjobs.add", 1, 2, webhooks=rq_hooks)
    # Taken for the job, not passed to the function; the field written as rq writes it.
    assert ours.kwargs == {}
    stored = json.loads(r.hget(ours.key, "webhooks") or b"[]")
    assert stored[:2] == json.loads(r.hget(theirs.key, "webhooks") or b"[]")
    assert [hook.url for hook in rq.job.Job.fetch(ours.id, connection=r).webhooks] == [
        "https://example.com/done", "http://example.com/failed", "https://example.com/d"]  # fmt: skip
    with pytest.raises(ValueError, match="job_status"):
        Queue("hooks", connection=r).enqueue("testjobs.add", webhooks=[{"url": "https://e.com", "job_status": "x"}])
