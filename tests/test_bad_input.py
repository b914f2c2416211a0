"""Bad input never crashes a worker (issue 5): each kind of bad job fails with a clear reason, or is
skipped with one log line; the worker goes on to the next job, and no other job is affected.

Already covered in tests/test_worker.py (not repeated here): a job hash without `data`, `data` that is
zlib but not a pickle, an id in a queue whose hash never existed, a function missing from a module
that imports, an unserialisable result, an exception whose `__str__` raises.
"""

from __future__ import annotations

import os
import signal
import zlib
from pathlib import Path

import pytest
import redis

from tests.conftest import run_workerd, wait_until
from workerd import Job, Queue, schema


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if value else None


def _exc(r: redis.Redis, job_id: str, serializer: str = "pickle") -> str:
    return Job.fetch(job_id, connection=r, serializer=serializer).exc_info or ""


def _burst(redis_url: str, *args: str, timeout: float = 60.0) -> str:
    """Run a burst worker; it must exit 0 (it kept going). Returns its output."""
    result = run_workerd("-u", redis_url, "--burst", *args, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "internal error" not in output and "crashed" not in output, output
    return output


def _followed_by_good_job(r: redis.Redis, serializer: str = "pickle") -> Job:
    return Queue("default", connection=r, serializer=serializer).enqueue("reliability_jobs.add", 2, 3)


def _assert_good_job_ran(r: redis.Redis, job: Job, serializer: str = "pickle") -> None:
    assert _status(r, job.id) == "finished"
    assert Job.fetch(job.id, connection=r, serializer=serializer).return_value() == 5


# -- data that cannot be decoded -----------------------------------------------------------------


def test_data_that_is_not_zlib_nor_a_pickle_fails_with_a_reason(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r).enqueue("reliability_jobs.add", 1, 1)
    r.hset(schema.job_key(job.id), "data", b"\x00\xffnot zlib, not a pickle")
    good = _followed_by_good_job(r)
    output = _burst(redis_url)
    assert _status(r, job.id) == "failed"
    assert "could not be decoded with the pickle serializer" in _exc(r, job.id)
    assert "could not be decoded" in output
    _assert_good_job_ran(r, good)


def test_data_that_is_not_valid_json_fails_with_a_reason(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r, serializer="json")
    broken = q.enqueue("reliability_jobs.add", 1, 1)
    r.hset(schema.job_key(broken.id), "data", zlib.compress(b"{not json"))
    wrong_shape = q.enqueue("reliability_jobs.add", 1, 1)
    r.hset(schema.job_key(wrong_shape.id), "data", zlib.compress(b'{"func": "os.system"}'))
    pickled = q.enqueue("reliability_jobs.add", 1, 1)
    r.hset(schema.job_key(pickled.id), "data", zlib.compress(b"\x80\x05\x95\x00"))
    good = _followed_by_good_job(r, "json")
    _burst(redis_url, "--serializer", "json")
    for job in (broken, wrong_shape, pickled):
        assert _status(r, job.id) == "failed", job
    assert "could not be decoded with the json serializer" in _exc(r, broken.id, "json")
    assert "must hold (func_name, instance, args, kwargs)" in _exc(r, wrong_shape.id, "json")
    assert "could not be decoded with the json serializer" in _exc(r, pickled.id, "json")
    _assert_good_job_ran(r, good, "json")


# -- functions that cannot be run ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "reason"),
    [
        ("no_such_module_anywhere.run", "cannot import 'no_such_module_anywhere.run': no module found"),
        ("raises_on_import.run", "RuntimeError: this module refuses to be imported"),
        ("reliability_jobs.NOT_CALLABLE", "reliability_jobs.NOT_CALLABLE is not callable"),
        ("nodots", "is not a dotted path"),
        ("", "ImportError"),
    ],
)
def test_a_function_that_cannot_be_imported_or_called_fails_with_a_reason(
    r: redis.Redis, redis_url: str, func: str, reason: str
) -> None:
    job = Queue("default", connection=r).enqueue("reliability_jobs.add", 1, 1)
    data = zlib.compress(__import__("pickle").dumps((func, None, (), {})))
    r.hset(schema.job_key(job.id), "data", data)
    good = _followed_by_good_job(r)
    _burst(redis_url)
    assert _status(r, job.id) == "failed"
    assert reason in _exc(r, job.id)
    _assert_good_job_ran(r, good)


# -- ids without a job --------------------------------------------------------------------------


def test_an_id_whose_hash_expired_is_skipped_with_one_line(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    expired = q.enqueue("reliability_jobs.add", 1, 1)
    r.pexpire(schema.job_key(expired.id), 1)
    wait_until(lambda: not r.exists(schema.job_key(expired.id)), message="the job hash to expire")
    good = _followed_by_good_job(r)
    output = _burst(redis_url)
    assert output.count(f"skipped job {expired.id}") == 1
    _assert_good_job_ran(r, good)
    assert not r.exists(schema.job_key(expired.id))  # nothing re-created a half job
    assert r.llen(schema.queue_key("default")) == 0


def test_many_ids_without_a_hash_do_not_stall_the_worker(r: redis.Redis, redis_url: str) -> None:
    # More than one fetch skips at once (MAX_SKIPS_PER_FETCH): the worker must keep fetching.
    r.rpush(schema.queue_key("default"), *[f"ghost-{i}" for i in range(250)], b"\xff\xfe-not-utf8")
    good = _followed_by_good_job(r)
    output = _burst(redis_url)
    assert output.count("skipped job ghost-") == 250
    assert output.count(r"skipped job \xff\xfe-not-utf8") == 1  # escaped, not replaced: the id is exact
    _assert_good_job_ran(r, good)


# -- fields of the wrong type --------------------------------------------------------------------


def test_fields_of_the_wrong_type_read_as_unset(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    job = q.enqueue("reliability_jobs.add", 20, 22)
    r.hset(schema.job_key(job.id), mapping={
        "timeout": "abc", "result_ttl": "x", "failure_ttl": "[]", "status": "bogus", "created_at": "garbage",
        "enqueued_at": "2024-13-45", "retries_left": "many", "retry_intervals": "{", "meta": b"\x80not meta",
        "dependency_ids": "not json", "ttl": "-", "number_of_retries": "1.5.3",
    })  # fmt: skip
    failing = q.enqueue("testjobs.fail", "with bad fields")
    r.hset(schema.job_key(failing.id), mapping={"failure_ttl": "never", "retries_left": "x", "timeout": "1e999"})
    good = _followed_by_good_job(r)
    _burst(redis_url)
    assert _status(r, job.id) == "finished"
    assert Job.fetch(job.id, connection=r).return_value() == 42
    assert r.ttl(schema.job_key(job.id)) > 0  # the default result_ttl applied
    assert _status(r, failing.id) == "failed"
    assert "with bad fields" in _exc(r, failing.id)
    _assert_good_job_ran(r, good)


# -- results ------------------------------------------------------------------------------------


def test_a_100_mb_result_is_stored_and_the_worker_goes_on(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    big = q.enqueue("reliability_jobs.big_result", 100, result_ttl=60)
    good = _followed_by_good_job(r)
    _burst(redis_url, timeout=120)
    assert _status(r, big.id) == "finished"
    value = Job.fetch(big.id, connection=r).return_value()
    assert isinstance(value, bytes) and len(value) == 100 * 1024 * 1024
    _assert_good_job_ran(r, good)


def test_a_result_json_cannot_encode_gets_the_placeholder(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r, serializer="json").enqueue("reliability_jobs.big_result", 0)
    good = _followed_by_good_job(r, "json")
    _burst(redis_url, "--serializer", "json")
    assert _status(r, job.id) == "finished"
    assert Job.fetch(job.id, connection=r, serializer="json").return_value() == "Unserializable return value"
    _assert_good_job_ran(r, good, "json")


# -- jobs that damage their process ----------------------------------------------------------------


@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_a_job_that_closes_stdout_and_stderr(r: redis.Redis, redis_url: str, execution: str) -> None:
    q = Queue("default", connection=r)
    closer = q.enqueue("reliability_jobs.close_stdio")
    good = _followed_by_good_job(r)
    failing = q.enqueue("testjobs.fail", "after closed stdio")
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Job.fetch(closer.id, connection=r).return_value() == "closed"
    # In-process, the worker restored its stdout/stderr: what it logged after the job is there.
    assert f"Job OK ({good.id})" in result.stdout
    _assert_good_job_ran(r, good)
    assert _status(r, failing.id) == "failed"


@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_a_job_that_changes_cwd_and_signal_handlers(r: redis.Redis, redis_url: str, workerd, tmp_path: Path,
                                                    execution: str) -> None:  # fmt: skip
    q = Queue("default", connection=r)
    changer = q.enqueue("reliability_jobs.chdir_and_trap_signals", str(tmp_path))
    after = q.enqueue("reliability_jobs.getcwd")
    proc = workerd("-u", redis_url, "--execution", execution)
    wait_until(lambda: _status(r, after.id) == "finished", message="the job after the changer")
    assert Job.fetch(changer.id, connection=r).return_value() == str(tmp_path)
    assert Job.fetch(after.id, connection=r).return_value() != str(tmp_path)
    # The worker still obeys SIGTERM: the job's SIG_IGN did not stick.
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


# -- names and bytes ------------------------------------------------------------------------------


def test_a_10000_character_queue_name_is_refused_with_exit_78(redis_url: str) -> None:
    result = run_workerd("-u", redis_url, "--burst", "q" * 10_000)
    assert result.returncode == 78
    assert "queue name is 10000 characters long; the limit is 256" in result.stderr
    assert len(result.stderr) < 2_000  # the message does not echo the name back


def test_a_job_in_a_queue_with_a_10000_character_name_stays_in_it(r: redis.Redis, redis_url: str) -> None:
    # RQ lets a producer use any name; workerd cannot listen there, and must not touch other queues.
    long_name = "q" * 10_000
    r.rpush(schema.queue_key(long_name), "some-job")
    r.sadd(schema.QUEUES, schema.queue_key(long_name))
    good = _followed_by_good_job(r)
    _burst(redis_url)
    _assert_good_job_ran(r, good)
    assert r.lrange(schema.queue_key(long_name), 0, -1) == [b"some-job"]


def test_non_utf8_bytes_in_fields(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    job = q.enqueue("reliability_jobs.add", 1, 2)
    r.hset(schema.job_key(job.id), mapping={
        "description": b"caf\xe9 \xff\xfe", "origin": b"def\xffault", "worker_name": b"\xc3\x28",
        "group_id": b"\x80", "status": b"\xff", "enqueued_at": b"\xff\xff",
    })  # fmt: skip
    bad_callback = q.enqueue("reliability_jobs.add", 1, 2)
    r.hset(schema.job_key(bad_callback.id), "success_callback_name", b"\xfe\xff")
    failing = q.enqueue("testjobs.fail", "bytes")
    r.hset(schema.job_key(failing.id), "description", b"\xff\xfe\xfd")
    good = _followed_by_good_job(r)
    output = _burst(redis_url)
    assert _status(r, job.id) == "finished"
    assert Job.fetch(job.id, connection=r).return_value() == 3
    assert _status(r, failing.id) == "failed"
    assert _status(r, bad_callback.id) == "failed"
    assert "success callback '\ufffd\ufffd'" in _exc(r, bad_callback.id)
    assert "\ufffd" in output  # logged with replacement characters, not a crash
    _assert_good_job_ran(r, good)
    # The job committed into the queue it was fetched from, whatever its origin field says.
    assert r.zscore(schema.finished_key("default"), job.id) is not None


def test_non_utf8_function_name_fails_with_a_reason(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r, serializer="json").enqueue("reliability_jobs.add", 1, 1)
    r.hset(schema.job_key(job.id), "data", zlib.compress(b'["reliability_jobs.\xff", null, [], {}]'))
    good = _followed_by_good_job(r, "json")
    _burst(redis_url, "--serializer", "json")
    assert _status(r, job.id) == "failed"
    assert "could not be decoded with the json serializer" in _exc(r, job.id, "json")
    _assert_good_job_ran(r, good, "json")


def test_bad_jobs_do_not_affect_a_concurrent_pool(r: redis.Redis, redis_url: str, workerd) -> None:
    """A mix of every bad kind, run by a pool: the pool's processes stay up and every good job runs."""
    q = Queue("default", connection=r)
    bad = []
    for data in (b"\x00garbage", zlib.compress(b"garbage"), b""):
        job = q.enqueue("reliability_jobs.add", 0, 0)
        r.hset(schema.job_key(job.id), "data", data)
        bad.append(job)
    r.rpush(schema.queue_key("default"), "ghost")
    goods = [q.enqueue("reliability_jobs.add", i, i) for i in range(20)]
    proc = workerd("-u", redis_url, "--workers", "2")
    wait_until(lambda: all(_status(r, g.id) == "finished" for g in goods), timeout=30, message="the good jobs")
    assert all(_status(r, b.id) == "failed" for b in bad)
    assert "died" not in proc.output() and "crashed" not in proc.output()
    assert os.getpgid(proc.pid) == proc.pid  # the master is still there
