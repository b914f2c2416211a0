"""Job ids are bytes (issue 12, defects 2 and 4): anything in a queue or a started registry - bytes
that are not UTF-8, colons, nothing at all, 10,000 characters - is run and committed exactly as an
ASCII id is, against the real binary, and never crashes a worker.

The hostile ids are planted as bytes, as any producer can write them (docs/PROTOCOL.md §1.2).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from tests.conftest import WorkerdProcess, run_workerd, wait_until
from workerd import Job, Queue, schema

HEARTBEAT_S = 0.5
LEASE_S = 2 * HEARTBEAT_S + 1  # Settings.lease_s


def _job_key(raw_id: bytes) -> bytes:
    return b"rq:job:" + raw_id


def _plant(r: redis.Redis, raw_id: bytes, func: str, *args: object) -> None:
    """Queue a job under `raw_id`: a hash as Queue.enqueue writes it, and the id in the queue."""
    staged = Queue("staging", connection=r).enqueue(func, *args)
    mapping = r.hgetall(schema.job_key(staged.id))
    mapping[b"origin"] = b"default"
    r.delete(schema.job_key(staged.id), schema.queue_key("staging"))
    r.hset(_job_key(raw_id), mapping=mapping)
    r.rpush(schema.queue_key("default"), raw_id)


def _status(r: redis.Redis, raw_id: bytes) -> str | None:
    value = r.hget(_job_key(raw_id), "status")
    return value.decode() if value else None


def _assert_finished(r: redis.Redis, raw_id: bytes, value: object) -> None:
    assert _status(r, raw_id) == "finished"
    assert r.zscore(schema.finished_key("default"), raw_id) is not None
    assert Job.fetch(raw_id.decode("utf-8", "surrogateescape"), connection=r).return_value() == value
    assert r.zcard(schema.started_key("default")) == 0
    assert r.hget(schema.worker_key("ids-worker"), "current_job") is None


def _worker(workerd, redis_url: str, *args: str) -> WorkerdProcess:
    proc: WorkerdProcess = workerd("-u", redis_url, "--name", "ids-worker", "--heartbeat-interval", str(HEARTBEAT_S),
                                   *args)  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: client.exists(schema.worker_key("ids-worker")), message="the worker registered")
    return proc


def _outlives_a_lease(proc: WorkerdProcess) -> None:
    """The worker still runs after a lease period and more (where a stuck job's lease expires)."""
    start = time.monotonic()
    wait_until(lambda: proc.process.poll() is not None or time.monotonic() - start > 2 * LEASE_S + HEARTBEAT_S,
               timeout=15, message="a lease period to pass")  # fmt: skip
    assert proc.process.poll() is None, proc.output()


def _good_job_finishes(r: redis.Redis, proc: WorkerdProcess) -> None:
    good = Queue("default", connection=r).enqueue("reliability_jobs.add", 20, 22)
    wait_until(lambda: good.get_status(refresh=True) == "finished", message=f"a good job:\n{proc.output()}")


def _clean_output(proc: WorkerdProcess) -> str:
    output = proc.output()
    for trouble in ("lost the lease", "crashed", "Traceback", "Logging error", "UnicodeDecodeError"):
        assert trouble not in output, output
    return output


def test_a_non_utf8_id_with_a_hash_finishes_and_the_worker_outlives_its_lease(r, redis_url, workerd) -> None:
    raw_id = b"\xff\xfeabc"
    _plant(r, raw_id, "reliability_jobs.add", 2, 3)
    proc = _worker(workerd, redis_url)
    wait_until(lambda: _status(r, raw_id) == "finished", message=f"the job to finish:\n{proc.output()}")
    _assert_finished(r, raw_id, 5)
    _outlives_a_lease(proc)
    _good_job_finishes(r, proc)
    output = _clean_output(proc)
    assert r"Job OK (\xff\xfeabc)" in output  # logged escaped: exact, printable


def test_a_non_utf8_id_without_a_hash_is_skipped_and_its_stale_lease_cleared(r, redis_url, workerd) -> None:
    # In a queue: skipped with one line. In the started registry (its worker died, then the hash
    # expired): the recovery that every heartbeat runs drops the entry.
    raw_id = b"\xfe\xffghost"
    r.rpush(schema.queue_key("default"), raw_id)
    r.zadd(schema.started_key("default"), {raw_id + b":" + b"0" * 32: 1})
    proc = _worker(workerd, redis_url)
    wait_until(lambda: r.zcard(schema.started_key("default")) == 0, message=f"the lease cleared:\n{proc.output()}")
    _outlives_a_lease(proc)
    _good_job_finishes(r, proc)
    output = _clean_output(proc)
    assert output.count(r"skipped job \xfe\xffghost: its hash is gone") == 1, output


@pytest.mark.parametrize("raw_id", [b"a:b:c", b"\xff:\xfe"])
@pytest.mark.parametrize("recovered_by", ["its replacement", "lease expiry"])
def test_an_id_with_colons_whose_worker_is_killed_mid_job_comes_back(r, redis_url, workerd, recovered_by: str,
                                                                    raw_id: bytes) -> None:  # fmt: skip
    _plant(r, raw_id, "testjobs.mark_then_sleep", redis_url, "runs", 1)
    pool = recovered_by == "its replacement"
    args = ["-u", redis_url, "--heartbeat-interval", str(HEARTBEAT_S), *(["--workers", "1"] if pool else [])]
    first = workerd(*args)
    wait_until(lambda: r.llen("runs") == 1, message=f"the job to start:\n{first.output()}")
    owner = r.hget(_job_key(raw_id), "worker_name").decode()
    os.kill(int(r.hget(schema.worker_key(owner), "pid")), signal.SIGKILL)  # its horse dies with it
    if not pool:  # another worker finds the lease expired
        wait_until(lambda: first.process.poll() is not None, message="the single worker to die")
        workerd(*args)
    wait_until(lambda: _status(r, raw_id) == "finished", timeout=20, message=f"the job re-run:\n{first.output()}")
    assert r.llen("runs") == 2
    assert r.zscore(schema.finished_key("default"), raw_id) is not None
    assert r.zcard(schema.started_key("default")) == 0
    assert r.hget(_job_key(raw_id), schema.LOST_COUNT_FIELD) == b"1"
    assert not r.exists(_job_key(raw_id.split(b":")[0]))  # nothing written under the id's first part


@pytest.mark.parametrize(("raw", "shown"), [(b"", "''"), (b"x" * 10_000, "x" * 200 + "... (10000 bytes)")])
def test_an_empty_and_a_10000_character_id_finish(r, redis_url, raw: bytes, shown: str) -> None:
    _plant(r, raw, "reliability_jobs.add", 1, 2)
    good = Queue("default", connection=r).enqueue("reliability_jobs.add", 20, 22)
    result = run_workerd("-u", redis_url, "--burst", "--name", "ids-worker")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    _assert_finished(r, raw, 3)
    assert good.get_status(refresh=True) == "finished"
    assert f"Job OK ({shown})" in output, output  # a log line stays readable: the id is cut
    assert max(len(line) for line in output.splitlines()) < 1000


@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_a_non_utf8_id_that_raises_is_failed_with_its_reason(r, redis_url, execution: str) -> None:
    raw_id = b"\xff\xfe\nboom"
    _plant(r, raw_id, "testjobs.fail", "no luck")
    result = run_workerd("-u", redis_url, "--burst", "--name", "ids-worker", "--execution", execution)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert _status(r, raw_id) == "failed"
    assert r.zscore(schema.failed_key("default"), raw_id) is not None
    assert "no luck" in (Job.fetch(raw_id.decode("utf-8", "surrogateescape"), connection=r).exc_info or "")
    assert r"job \xff\xfe\nboom: exception raised while executing" in output, output  # one line, escaped
    assert "Logging error" not in output and r.zcard(schema.started_key("default")) == 0


def test_info_shows_the_id_of_a_running_hostile_job_on_one_line(r, redis_url, workerd) -> None:
    raw_id = b"evil\nforged line " + b"x" * 1000
    _plant(r, raw_id, "testjobs.mark_then_sleep", redis_url, "runs", 30)
    proc = _worker(workerd, redis_url)
    wait_until(lambda: r.llen("runs") == 1, message=f"the job to start:\n{proc.output()}")
    info = run_workerd("info", "-u", redis_url)
    assert info.returncode == 0, info.stdout + info.stderr
    busy = [line for line in info.stdout.splitlines() if line.startswith("ids-worker ")]
    assert len(busy) == 1 and r"job evil\nforged line xxx" in busy[0], info.stdout
    assert "forged line" not in info.stdout.replace(r"evil\nforged line", ""), info.stdout
    assert len(busy[0]) < 600, info.stdout  # the id cut at 200 characters


def test_a_non_utf8_id_stuck_in_rqs_intermediate_list_is_requeued_and_finishes(r, redis_url) -> None:
    # An RQ worker died between its BLMOVE to the intermediate list and its start: maintenance puts
    # the id back once it has been seen there for a minute (seen two minutes ago here).
    raw_id = b"\xff\xfeinter"
    _plant(r, raw_id, "reliability_jobs.add", 4, 5)
    r.lrem(schema.queue_key("default"), 0, raw_id)
    r.rpush(schema.intermediate_key("default"), raw_id)
    r.set(schema.intermediate_key("default").encode() + b":first_seen:" + raw_id, time.time() - 120)
    result = run_workerd("-u", redis_url, "--burst", "--name", "ids-worker")
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_finished(r, raw_id, 9)
    assert r.llen(schema.intermediate_key("default")) == 0
    assert r"job \xff\xfeinter was stuck in default's intermediate list" in result.stdout + result.stderr
