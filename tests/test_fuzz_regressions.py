"""The failures tests/test_fuzz.py found, each shrunk to one plain example (issue 12).

Each test puts its example in front of a real `workerd` (the fuzzer's own loop: tests/test_fuzz.py
run_example) and asserts the fuzzer's invariants, and, where the example says more than they do,
the outcome it should have. Named after the class of input.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import fuzz_inputs
from tests.fuzz_inputs import FAILING_DATA, GOOD_DATA, QUEUE, Entry, Example
from tests.redis_server import RedisServer
from tests.test_fuzz import FuzzedWorker, run_example


@pytest.fixture(params=["fork", "inprocess"])
def worker(request: pytest.FixtureRequest, r: redis.Redis, redis_server: RedisServer,
           tmp_path: Path) -> Iterator[FuzzedWorker]:  # fmt: skip
    fuzzed = FuzzedWorker(redis_server.url, request.param, tmp_path)
    yield fuzzed
    fuzzed.stop()


def _job(job_id: bytes, data: bytes = GOOD_DATA, **fields: bytes) -> Entry:
    return Entry(job_id, {b"data": data, b"origin": QUEUE.encode(), **{k.encode(): v for k, v in fields.items()}})


def _assert_invariants(worker: FuzzedWorker, r: redis.Redis, example: Example) -> None:
    problems = run_example(worker, r, example)
    assert not problems, "\n".join(problems)
    assert worker.starts == 1  # the same worker process throughout


def _status(r: redis.Redis, job_id: bytes) -> bytes | None:
    return r.hget(b"rq:job:" + job_id, "status")  # type: ignore[return-value]


# -- found by the fuzzer, NEW (fixed on this branch) ----------------------------------------------


@pytest.mark.parametrize("job_id", [b"a:b", b"\xff\xfe", b" ", b"id.with.dots", b"caf\xc3\xa9"])
def test_id_outside_rqs_pattern_runs(worker: FuzzedWorker, r: redis.Redis, job_id: bytes) -> None:
    # With rq installed, every job whose id is not [A-Za-z0-9_-]+ failed before it ran, with rq's
    # "ValueError: Job ID must only contain letters, numbers, underscores and dashes" (the view of
    # the job built for rq.get_current_job() validated the id).
    _assert_invariants(worker, r, Example([_job(job_id)]))
    assert _status(r, job_id) == b"finished"


# -- found by the fuzzer, known defects of issue 12 (fixed on other branches) ------------------------


@pytest.mark.parametrize("retries_left", [b"1.5", b"1e300", b" 5", b"99999999999999999999999"])
def test_retries_left_not_an_integer_to_redis(worker: FuzzedWorker, r: redis.Redis, retries_left: bytes) -> None:
    # Issue 12 defect 3: the failure commit's HINCRBY retries_left -1 errors after the script's
    # first writes; the worker exits 70 and the job stays started in rq:wip.
    _assert_invariants(worker, r, Example([_job(b"fz-retries", FAILING_DATA, retries_left=retries_left)]))


@pytest.mark.parametrize("intervals", [b'["x"]', b"[null]", b"[1e400]"])
def test_retry_intervals_not_integers(worker: FuzzedWorker, r: redis.Redis, intervals: bytes) -> None:
    # Issue 12 defect 3: a retry interval that is not an integer.
    example = Example([_job(b"fz-intervals", FAILING_DATA, retries_left=b"1", retry_intervals=intervals)])
    _assert_invariants(worker, r, example)


@pytest.mark.parametrize("ttl", [b"10000000000000000", b"99999999999999999999999"])
@pytest.mark.parametrize("field", ["result_ttl", "failure_ttl"])
def test_ttl_past_redis_expire_range(worker: FuzzedWorker, r: redis.Redis, field: str, ttl: bytes) -> None:
    # Issue 12 defect 3: EXPIRE errors inside the commit script ("invalid expire time" for 10**16,
    # "value is not an integer or out of range" past 2**63).
    data = GOOD_DATA if field == "result_ttl" else FAILING_DATA
    _assert_invariants(worker, r, Example([_job(b"fz-ttl", data, **{field: ttl})]))


def test_missing_class_pickle_fails_with_a_reason(worker: FuzzedWorker, r: redis.Redis) -> None:
    # Holds on main; kept as the fuzzer's example of the class.
    example = Example([_job(b"fz-class", zlib.compress(fuzz_inputs.MISSING_CLASS_PICKLE))])
    _assert_invariants(worker, r, example)
    assert _status(r, b"fz-class") == b"failed"
