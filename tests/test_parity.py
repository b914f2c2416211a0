"""RQ 2.x parity beyond plain enqueue, with RQ 2.12 as the oracle, both ways.

Each feature is run in both directions: jobs put on Redis by RQ's client and run by workerd, and jobs
put there by workerd's client and run by `rq worker`. The assertions are the behaviour RQ shows (the
`rq worker` runs are the oracle) and, where it matters, the Redis data each side leaves is compared
field by field. Queues are named per direction (`*_w`: workerd runs them, `*_r`: rq runs them) so
both directions can run at the same time.

Job functions live in tests/jobs_dir/parity_jobs.py; they record what happened in Redis.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import itertools
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import rq
import rq.command
import rq.registry
import rq.suspension
from rq.job import Callback as RQCallback
from rq.job import Dependency as RQDependency
from rq.job import Job as RQJob

import workerd
import workerd.errors
import workerd.schema
import workerd.suspension
from tests.conftest import JOBS_DIR, ROOT, WorkerdProcess, run_workerd, wait_until
from tests.rq_oracle.rq_cli import COMMAND as RQ_CLI  # `rq`, with a fix for redis-py 8.2

if str(JOBS_DIR) not in sys.path:
    sys.path.insert(0, str(JOBS_DIR))
import parity_jobs as pj

UTC = dt.timezone.utc
# Bare functions as on_success/on_failure/on_stopped are deprecated in RQ, and still used: tested too.
pytestmark = pytest.mark.filterwarnings("ignore:Passing a string or function:DeprecationWarning")


# -- running workers ----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{JOBS_DIR}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}


def rq_burst(url: str, *args: str, code: int = 0) -> str:
    res = subprocess.run([*RQ_CLI, "worker", "-u", url, "--burst", *args], capture_output=True, text=True,
                         timeout=60, env=_env(), cwd=JOBS_DIR)  # fmt: skip
    assert res.returncode == code, res.stdout + res.stderr
    return res.stdout + res.stderr


def wd_burst(url: str, *args: str, code: int = 0) -> str:
    res = run_workerd("-u", url, "--burst", *args)
    assert res.returncode == code, res.stdout + res.stderr
    return res.stdout + res.stderr


@pytest.fixture
def wd_worker(workerd: Any) -> Any:
    """conftest's `workerd` fixture (the real binary in the background), under a name that leaves the
    `workerd` module visible."""
    return workerd


@pytest.fixture
def rq_worker(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., WorkerdProcess]]:
    """`rq worker` (non-burst) in the background, like conftest's `workerd` fixture."""
    started: list[WorkerdProcess] = []

    def start(*args: str) -> WorkerdProcess:
        log_path = tmp_path / f"rq-{len(started)}.log"
        proc = WorkerdProcess(["worker", "-u", redis_url, *args], log_path, program=RQ_CLI)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill_all()


# -- reading Redis --------------------------------------------------------------------------------------


def runs(r: redis.Redis, key: str) -> list[tuple[str, float]]:
    """The records parity_jobs wrote to `key`: (token, start time)."""
    out = []
    for raw in r.lrange(key, 0, -1):  # type: ignore[union-attr]
        token, _, when = raw.decode().rpartition(" ")
        out.append((token, float(when)))
    return out


def field(r: redis.Redis, job_id: str, name: str) -> str | None:
    value = r.hget(f"rq:job:{job_id}", name)
    return None if value is None else value.decode()  # type: ignore[union-attr]


def status(r: redis.Redis, job_id: str) -> str | None:
    return field(r, job_id, "status")


def results(r: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The result stream, oldest first, decoded."""
    out = []
    for _, raw in r.xrange(f"rq:results:{job_id}"):  # type: ignore[union-attr]
        entry: dict[str, Any] = {k.decode(): v for k, v in raw.items()}
        entry["type"] = int(entry["type"])
        if "exc_string" in entry:
            entry["exc_string"] = zlib.decompress(base64.b64decode(entry["exc_string"])).decode()
        if "return_value" in entry:
            entry["return_value"] = pickle.loads(base64.b64decode(entry["return_value"]))
        out.append(entry)
    return out


def last_exc_line(r: redis.Redis, job_id: str) -> str:
    """The last line of the latest failure's traceback, without the exception's module path."""
    failures = [e for e in results(r, job_id) if "exc_string" in e]
    assert failures, f"job {job_id} has no failure entry: {results(r, job_id)}"
    last = [line for line in failures[-1]["exc_string"].splitlines() if line.strip()][-1]
    return re.sub(r"^[\w.]+\.(\w+(?:Exception|Error):)", r"\1", last)


def in_zset(r: redis.Redis, key: str, job_id: str) -> bool:
    return r.zscore(key, job_id) is not None


def worker_field(r: redis.Redis, name: str, key: str) -> str | None:
    value = r.hget(f"rq:worker:{name}", key)
    return None if value is None else value.decode()  # type: ignore[union-attr]


def holds_for(check: Callable[[], object], for_s: float, interval_s: float = 0.05) -> None:
    """Run `check` (which asserts) until the clock has moved `for_s` on: something must NOT happen, so
    there is no condition to wait for, only a window to watch."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        check()
        time.sleep(interval_s)


def still_queued(r: redis.Redis, job_id: str, queue: str, for_s: float) -> None:
    """Assert that the job stays queued (status and list) until the clock has moved `for_s` on. A
    suspended workerd worker that was waiting is handed the job by Redis, into its claim list, and
    its fetch puts it back at the front in the same round trip (docs/PROTOCOL.md §5.2, §5.13): it
    must be back, and never in two places."""
    waiting: list[bytes] = r.zrange(workerd.schema.claimers_key(queue), 0, -1)  # type: ignore[assignment]
    claims = [workerd.schema.claim_list_key(queue, name.decode()) for name in waiting]

    def queued() -> None:
        assert status(r, job_id) == "queued", f"job {job_id} left its queue: {status(r, job_id)}"
        with r.pipeline(transaction=True) as pipe:  # one atomic look at the queue and the claim lists
            pipe.lrange(f"rq:queue:{queue}", 0, -1)
            for key in claims:
                pipe.lrange(key, 0, -1)
            held = [[*ids].count(job_id.encode()) for ids in pipe.execute()]
        assert sum(held) == 1, f"job {job_id} in the queue and claim lists {held}"

    holds_for(queued, for_s)
    assert job_id.encode() in r.lrange(f"rq:queue:{queue}", 0, -1)  # type: ignore[operator]


def both_queues(r: redis.Redis, name: str) -> tuple[rq.Queue, workerd.Queue]:
    """RQ's queue `<name>_w` (workerd runs it) and workerd's queue `<name>_r` (rq runs it)."""
    return rq.Queue(f"{name}_w", connection=r), workerd.Queue(f"{name}_r", connection=r)


# -- scheduling -----------------------------------------------------------------------------------------


def _assert_on_time(done: list[tuple[str, float]], due: dict[str, float]) -> None:
    assert sorted(token for token, _ in done) == sorted(due)
    for token, started in done:
        # Scores are whole seconds (floor of the due time), so a job may be promoted up to 1 s early.
        assert int(due[token]) - 0.05 <= started <= due[token] + 2.5, (token, started - due[token])


def test_scheduled_jobs_of_both_clients_run_on_time_on_workerd(r: redis.Redis, redis_url: str, wd_worker: Any) -> None:
    rq_q, wd_q = rq.Queue("sched", connection=r), workerd.Queue("sched", connection=r)
    now = time.time()
    due = {"rq_at": now + 2, "rq_in": now + 3, "wd_at": now + 2, "wd_in": now + 3}
    jobs = {
        "rq_at": rq_q.enqueue_at(dt.datetime.fromtimestamp(due["rq_at"], UTC), pj.record, redis_url, "t:s", "rq_at"),
        "rq_in": rq_q.enqueue_in(dt.timedelta(seconds=3), pj.record, redis_url, "t:s", "rq_in"),
        "wd_at": wd_q.enqueue_at(dt.datetime.fromtimestamp(due["wd_at"], UTC), pj.record, redis_url, "t:s", "wd_at"),
        "wd_in": wd_q.enqueue_in(dt.timedelta(seconds=3), pj.record, redis_url, "t:s", "wd_in"),
    }
    # What each client leaves: the same fields, status scheduled, no enqueued_at, score = run-at (int).
    rq_hash, wd_hash = r.hgetall(f"rq:job:{jobs['rq_at'].id}"), r.hgetall(f"rq:job:{jobs['wd_at'].id}")
    assert sorted(rq_hash) == sorted(wd_hash)
    assert rq_hash[b"status"] == wd_hash[b"status"] == b"scheduled"
    for label, job in jobs.items():
        # enqueue_in reads the clock itself, a moment after `now`: its run-at may be a second later.
        late_s = 1 if label.endswith("_in") else 0
        assert int(due[label]) <= (r.zscore("rq:scheduled:sched", job.id) or 0) <= int(due[label]) + late_s
    assert r.sismember("rq:queues", "rq:queue:sched")
    r.zadd("rq:scheduled:sched", {"ghost-job": now - 5})  # bad input: a scheduled id whose hash is gone

    proc = wd_worker("-u", redis_url, "--with-scheduler", "--max-jobs", "4", "sched")
    wait_until(lambda: len(runs(r, "t:s")) == 4, timeout=12, message="4 scheduled runs")
    _assert_on_time(runs(r, "t:s"), due)
    assert proc.wait(15) == 0
    for job in jobs.values():
        assert status(r, job.id) == "finished"
        assert field(r, job.id, "enqueued_at")
    assert r.zcard("rq:scheduled:sched") == 0  # the ghost id was dropped, as rq drops it
    assert "dropped 1 scheduled ids of sched whose job is gone" in proc.output()
    assert RQJob.fetch(jobs["wd_in"].id, connection=r).return_value() == "wd_in"


def test_workerd_scheduled_jobs_run_on_time_on_rq_scheduler(r: redis.Redis, redis_url: str, rq_worker: Any) -> None:
    wd_q = workerd.Queue("sched_r", connection=r)
    now = time.time()
    due = {"wd_at": now + 3, "wd_in": now + 4, "wd_front": now + 3}
    wd_q.enqueue_at(dt.datetime.fromtimestamp(due["wd_at"], UTC), pj.record, redis_url, "t:s", "wd_at")
    wd_q.enqueue_in(dt.timedelta(seconds=4), pj.record, redis_url, "t:s", "wd_in")
    front = wd_q.enqueue_at(dt.datetime.fromtimestamp(due["wd_front"], UTC), pj.record, redis_url, "t:s",
                            "wd_front", at_front=True)  # fmt: skip
    assert field(r, front.id, "enqueue_at_front") == "1"
    rq_worker("--with-scheduler", "sched_r")
    wait_until(lambda: len(runs(r, "t:s")) == 3, timeout=15, message="3 scheduled runs on rq")
    _assert_on_time(runs(r, "t:s"), due)
    assert r.zcard("rq:scheduled:sched_r") == 0


def test_mixed_fleet_runs_each_scheduled_job_once(r: redis.Redis, redis_url: str, wd_worker: Any,
                                                  rq_worker: Any) -> None:  # fmt: skip
    rq_q, wd_q = rq.Queue("fleet", connection=r), workerd.Queue("fleet", connection=r)
    rq_worker("--with-scheduler", "fleet")
    proc = wd_worker("-u", redis_url, "--with-scheduler", "fleet")
    # Both schedulers are up (each has taken or seen the lock) before the jobs fall due.
    wait_until(lambda: r.exists("rq:scheduler-lock:fleet") and len(r.keys("rq:worker:*")) == 2, timeout=10,
               message="both workers and one scheduler lock")  # fmt: skip
    holder = r.get("rq:scheduler-lock:fleet").decode()  # type: ignore[union-attr]
    # rq's scheduler hash, or workerd's (its worker's name): written just after the lock is taken.
    wait_until(lambda: r.exists(f"rq:scheduler:{holder}"), timeout=10, message="the lock holder's scheduler hash")
    now = time.time()
    tokens = []
    for i in range(20):
        queue: Any = rq_q if i % 2 else wd_q
        token = f"{'rq' if i % 2 else 'wd'}{i}"
        queue.enqueue_at(dt.datetime.fromtimestamp(now + 1 + i / 10, UTC), pj.record, redis_url, "t:fleet", token)
        tokens.append(token)
    wait_until(lambda: len(runs(r, "t:fleet")) >= 20, timeout=15, message="20 runs")

    def ran_once_each() -> None:  # a double promotion would show up as a second run within this window
        assert len(runs(r, "t:fleet")) == 20

    holds_for(ran_once_each, 1.5)
    counts = collections.Counter(token for token, _ in runs(r, "t:fleet"))
    assert counts == dict.fromkeys(tokens, 1)
    assert r.zcard("rq:scheduled:fleet") == 0
    assert proc.process.poll() is None
    # One scheduler held the queue throughout; workerd promoted only if it was the one.
    assert r.get("rq:scheduler-lock:fleet").decode() == holder  # type: ignore[union-attr]
    holder_is_workerd = "workerd" in (worker_field(r, holder, "version") or "")
    assert ("now scheduling queue fleet" in proc.output()) == holder_is_workerd, (holder, proc.output())


def test_pool_has_one_scheduler_and_another_takes_over_after_sigkill(r: redis.Redis, redis_url: str,
                                                                     wd_worker: Any) -> None:  # fmt: skip
    lock = "rq:scheduler-lock:pool"
    proc = wd_worker("-u", redis_url, "--workers", "2", "--with-scheduler", "pool")
    wait_until(lambda: r.scard("rq:workers:pool") == 2 and r.exists(lock), timeout=15, message="2 workers, a lock")
    names = {m.decode().removeprefix("rq:worker:") for m in r.smembers("rq:workers:pool")}  # type: ignore[union-attr]
    holder = r.get(lock).decode()  # type: ignore[union-attr]
    assert holder in names

    def held_by_the_holder() -> None:  # held by that one process, not passed back and forth
        assert r.get(lock).decode() == holder  # type: ignore[union-attr]

    holds_for(held_by_the_holder, 1.5, interval_s=0.1)
    assert proc.output().count("now scheduling queue pool") == 1
    os.kill(int(worker_field(r, holder, "pid") or 0), signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_until(lambda: (v := r.get(lock)) and v.decode() != holder and v.decode(), timeout=15,
                     message="another worker takes the scheduler lock")  # fmt: skip
    assert time.monotonic() - killed_at < 15
    assert worker_field(r, new, "pid") and worker_field(r, new, "death") is None
    # The new holder logs once its tick has returned: the lock can be seen a moment before the line.
    wait_until(lambda: proc.output().count("now scheduling queue pool") == 2, timeout=5, message="the takeover logged")
    job = workerd.Queue("pool", connection=r).enqueue_in(dt.timedelta(seconds=1), pj.record, redis_url, "t:p", "after")
    wait_until(lambda: status(r, job.id) == "finished", timeout=6, message="the new scheduler promotes")
    assert proc.process.poll() is None


# -- retries --------------------------------------------------------------------------------------------


def test_retry_on_exception_with_intervals_both_ways(r: redis.Redis, redis_url: str, wd_worker: Any,
                                                     rq_worker: Any) -> None:  # fmt: skip
    rq_q, wd_q = both_queues(r, "retry")
    jobs = {
        "w": rq_q.enqueue(pj.fail_counted, redis_url, "t:retry:w", retry=rq.Retry(max=3, interval=[1, 2])),
        "r": wd_q.enqueue(pj.fail_counted, redis_url, "t:retry:r", retry=workerd.Retry(max=3, interval=[1, 2])),
    }
    for side in ("retries_left", "retry_intervals"):
        assert field(r, jobs["w"].id, side) == field(r, jobs["r"].id, side)
    assert field(r, jobs["w"].id, "retries_left") == "3" and field(r, jobs["w"].id, "retry_intervals") == "[1, 2]"
    wd_worker("-u", redis_url, "-n", "wd-retry", "--with-scheduler", "retry_w")
    rq_worker("-n", "rq-retry", "--with-scheduler", "retry_r")
    # Sample both jobs until they are done: while retrying there is no failed entry and no result.
    scheduled_with: dict[str, set[str]] = {"w": set(), "r": set()}
    deadline = time.monotonic() + 20
    while any(status(r, j.id) != "failed" for j in jobs.values()):
        assert time.monotonic() < deadline, {k: status(r, j.id) for k, j in jobs.items()}
        for side, job in jobs.items():
            queue = f"retry_{side}"
            with r.pipeline() as pipe:
                pipe.hmget(f"rq:job:{job.id}", "status", "retries_left")
                pipe.zscore(f"rq:scheduled:{queue}", job.id)
                pipe.zscore(f"rq:failed:{queue}", job.id)
                pipe.xlen(f"rq:results:{job.id}")
                (st, left), score, failed, n_results = pipe.execute()
            if st != b"failed":
                assert failed is None and n_results == 0, (side, st, left)
            if st == b"scheduled" and score is not None:
                scheduled_with[side].add(left.decode())
        time.sleep(0.02)
    for side, job in jobs.items():
        # Between runs the job waited in the scheduled registry with 2, 1, then 0 retries left.
        assert {"2", "1", "0"} <= scheduled_with[side], (side, scheduled_with[side])
        times = [t for _, t in runs(r, f"t:retry:{side}")]
        assert len(times) == 4, (side, times)
        for gap, interval in zip([b - a for a, b in itertools.pairwise(times)], [1, 1, 2], strict=True):
            assert interval - 1 <= gap <= interval + 2.5, (side, times)
        assert field(r, job.id, "retries_left") == "0"
        assert in_zset(r, f"rq:failed:retry_{side}", job.id)
        assert [e["type"] for e in results(r, job.id)] == [2]
        assert last_exc_line(r, job.id) == "ValueError: fail_counted always fails"
    wait_until(lambda: worker_field(r, "wd-retry", "failed_job_count") == "4", timeout=5, message="4 failures")
    assert worker_field(r, "rq-retry", "failed_job_count") == "4"


def test_job_returning_retry_and_horse_killed_retry_both_ways(r: redis.Redis, redis_url: str) -> None:
    rq_q, wd_q = both_queues(r, "rret")
    jobs = {
        ("w", "ret"): rq_q.enqueue(pj.return_retry, redis_url, "t:ret:w", 2, 0),
        ("w", "kill"): rq_q.enqueue(pj.kill_self_counted, redis_url, "t:kill:w", retry=rq.Retry(max=1)),
        ("r", "ret"): wd_q.enqueue(pj.return_retry, redis_url, "t:ret:r", 2, 0),
        ("r", "kill"): wd_q.enqueue(pj.kill_self_counted, redis_url, "t:kill:r", retry=workerd.Retry(max=1)),
    }
    wd_burst(redis_url, "rret_w")
    rq_burst(redis_url, "rret_r")
    entries = {}
    for (side, case), job in jobs.items():
        assert status(r, job.id) == "failed", (side, case)
        assert in_zset(r, f"rq:failed:rret_{side}", job.id)
        entries[side, case] = results(r, job.id)
        if case == "ret":
            # Each returned Retry is a RETRIED (4) entry; past max, MAX_RETRIES_EXCEEDED (5).
            assert len(runs(r, f"t:ret:{side}")) == 3
            assert [e["type"] for e in entries[side, case]] == [4, 4, 5]
            assert field(r, job.id, "number_of_retries") == "2"
            retry = entries[side, case][-1]["return_value"]  # rq's Retry, as the job returned it
            assert isinstance(retry, rq.Retry) and retry.max == 2
            assert "exc_string" not in entries[side, case][-1]
        else:
            assert len(runs(r, f"t:kill:{side}")) == 2
            assert field(r, job.id, "retries_left") == "0"
            assert [e["type"] for e in entries[side, case]] == [2]
            assert "waitpid returned 9 (signal 9)" in entries[side, case][0]["exc_string"]
    for case in ("ret", "kill"):  # the entries carry the same fields (return_value: the Retry) both ways
        assert [sorted(e) for e in entries["w", case]] == [sorted(e) for e in entries["r", case]], case


# -- callbacks ------------------------------------------------------------------------------------------

CALLBACK_CASES: dict[str, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = {
    "success_fn": (pj.add, (1, 2), {"on_success": pj.on_success}),
    "success_cb": (pj.add, (2, 2), {"on_success": "Callback:on_success"}),
    "failure_fn": (pj.fail, ("x",), {"on_failure": pj.on_failure}),
    "failure_cb": (pj.fail, ("y",), {"on_failure": "Callback:on_failure"}),
    "success_raises": (pj.add, (1, 1), {"on_success": pj.on_success_raises}),
    "failure_raises": (pj.fail, ("orig",), {"on_failure": pj.on_failure_raises}),
    "missing": (pj.add, (0, 0), {"on_success": "Callback:no_such_callback"}),
    "slow": (pj.add, (0, 1), {"on_success": "Callback:on_success_slow"}),
}


def _callback_option(value: Any, callback_class: type) -> Any:
    if isinstance(value, str) and value.startswith("Callback:"):
        name = value.removeprefix("Callback:")
        timeout = 1 if name == "on_success_slow" else 7
        func = getattr(pj, name, None) or f"parity_jobs.{name}"
        return callback_class(func, timeout=timeout)
    return value


def _callback_summary(r: redis.Redis, job_id: str, queue: str) -> dict[str, Any]:
    st = status(r, job_id)
    return {
        "status": st,
        "failed_entry": in_zset(r, f"rq:failed:{queue}", job_id),
        "finished_entry": in_zset(r, f"rq:finished:{queue}", job_id),
        "notes": [json.loads(n) for n in r.lrange(f"test:cb:{job_id}", 0, -1)],  # type: ignore[union-attr]
        "exc": last_exc_line(r, job_id) if st == "failed" else None,
    }


def test_callbacks_both_ways(r: redis.Redis, redis_url: str) -> None:
    rq_q, wd_q = both_queues(r, "cb")
    ids: dict[tuple[str, str], str] = {}
    for label, (func, args, options) in CALLBACK_CASES.items():
        for side, queue, callback_class in (("w", rq_q, RQCallback), ("r", wd_q, workerd.Callback)):
            opts = {k: _callback_option(v, callback_class) for k, v in options.items()}
            ids[side, label] = queue.enqueue(func, *args, **opts).id
    assert field(r, ids["w", "success_cb"], "success_callback_timeout") == "7"
    assert field(r, ids["r", "success_cb"], "success_callback_timeout") == "7"
    assert field(r, ids["w", "success_fn"], "success_callback_name") == "parity_jobs.on_success"
    assert field(r, ids["r", "success_fn"], "success_callback_name") == "parity_jobs.on_success"
    wd_burst(redis_url, "cb_w")
    rq_burst(redis_url, "cb_r")
    summaries = {key: _callback_summary(r, job_id, f"cb_{key[0]}") for key, job_id in ids.items()}
    for label in CALLBACK_CASES:  # workerd does what rq does
        if label == "missing":  # the same outcome, in workerd's own words (it names the callback and job)
            assert "no_such_callback" in summaries["w", label].pop("exc") and summaries["r", label].pop("exc")
        assert summaries["w", label] == summaries["r", label], label
    got = {label: summaries["w", label] for label in CALLBACK_CASES}
    # (job, connection, result) / (job, connection, type, value, traceback)
    assert got["success_fn"]["notes"] == [["success", "Redis", "3"]] and got["success_fn"]["status"] == "finished"
    assert got["success_cb"]["notes"] == [["success", "Redis", "4"]]
    assert got["failure_fn"]["notes"] == [["failure", "Redis", "ValueError", "x", "traceback"]]
    assert got["failure_cb"]["notes"] == [["failure", "Redis", "ValueError", "y", "traceback"]]
    assert got["failure_fn"]["failed_entry"] and not got["failure_fn"]["finished_entry"]
    # A success callback that raises fails the job; a failure callback's traceback replaces the job's.
    assert got["success_raises"]["status"] == "failed" and got["success_raises"]["failed_entry"]
    assert got["success_raises"]["exc"] == "RuntimeError: success callback exploded"
    assert got["failure_raises"]["exc"] == "RuntimeError: failure callback exploded"
    assert got["missing"]["status"] == "failed"
    assert got["slow"]["status"] == "failed" and got["slow"]["notes"] == []
    assert got["slow"]["exc"] == "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"


# -- commands -------------------------------------------------------------------------------------------


def _run_command_sequence(r: redis.Redis, url: str, queue: Any, worker: str, api: Any, retry_class: type,
                          on_stopped: Any) -> None:  # fmt: skip
    """stop-job, kill-horse (without and with a retry), sent by `api` to the worker named `worker`."""
    q = queue.name
    stop_me = queue.enqueue(pj.sleep_first_run, url, f"t:stop:{q}", 30, on_stopped=on_stopped)
    dependent = queue.enqueue(pj.add, 1, 1, depends_on=stop_me)
    wait_until(lambda: runs(r, f"t:stop:{q}"), timeout=15, message="the job to stop started")
    api.send_stop_job_command(r, stop_me.id)
    wait_until(lambda: status(r, stop_me.id) == "stopped", timeout=10, message="status stopped")
    assert in_zset(r, f"rq:failed:{q}", stop_me.id)
    assert status(r, dependent.id) == "deferred" and in_zset(r, f"rq:deferred:{q}", dependent.id)
    wait_until(lambda: r.llen(f"test:cb:{stop_me.id}"), timeout=5, message="on_stopped")
    assert [json.loads(n) for n in r.lrange(f"test:cb:{stop_me.id}", 0, -1)] == [["stopped", "Redis"]]  # type: ignore[union-attr]
    assert [e["type"] for e in results(r, stop_me.id)] == [2]
    assert "Job stopped by user, work-horse terminated." in results(r, stop_me.id)[0]["exc_string"]

    killed = queue.enqueue(pj.sleep_first_run, url, f"t:kill1:{q}", 30)
    wait_until(lambda: runs(r, f"t:kill1:{q}"), timeout=10, message="the job to kill started")
    api.send_kill_horse_command(r, worker)
    wait_until(lambda: status(r, killed.id) == "failed", timeout=10, message="killed job failed")
    assert "waitpid returned 9 (signal 9)" in results(r, killed.id)[-1]["exc_string"]

    retried = queue.enqueue(pj.sleep_first_run, url, f"t:kill2:{q}", 30, retry=retry_class(max=1))
    wait_until(lambda: runs(r, f"t:kill2:{q}"), timeout=10, message="the job to kill started")
    api.send_kill_horse_command(r, worker)
    wait_until(lambda: status(r, retried.id) == "finished", timeout=10, message="killed job retried")
    assert len(runs(r, f"t:kill2:{q}")) == 2 and field(r, retried.id, "retries_left") == "0"


def test_rq_commands_to_workerd(r: redis.Redis, redis_url: str, wd_worker: Any) -> None:
    queue = rq.Queue("cmd_w", connection=r)
    proc = wd_worker("-u", redis_url, "-n", "wd-cmd", "cmd_w")
    _run_command_sequence(r, redis_url, queue, "wd-cmd", rq.command, rq.Retry, pj.on_stopped)
    # Bad input on the channel: logged, and the worker keeps working.
    r.publish("rq:pubsub:wd-cmd", "{not json")
    r.publish("rq:pubsub:wd-cmd", json.dumps({"command": "dance"}))
    r.publish("rq:pubsub:wd-cmd", json.dumps({"command": "stop-job", "job_id": "not-running"}))
    job = queue.enqueue(pj.add, 2, 3)
    wait_until(lambda: status(r, job.id) == "finished", timeout=10, message="a job after bad commands")
    proc.wait_for_output("unknown command 'dance'")
    proc.wait_for_output("not JSON")
    proc.wait_for_output("Not working on job not-running, command ignored.")
    rq.command.send_shutdown_command(r, "wd-cmd")
    assert proc.wait(15) == 0
    assert worker_field(r, "wd-cmd", "death")


def test_workerd_commands_to_rq_worker(r: redis.Redis, redis_url: str, rq_worker: Any) -> None:
    queue = workerd.Queue("cmd_r", connection=r)
    proc = rq_worker("-n", "rq-cmd", "cmd_r")
    _run_command_sequence(r, redis_url, queue, "rq-cmd", workerd, workerd.Retry, pj.on_stopped)
    workerd.send_shutdown_command(r, "rq-cmd")
    assert proc.process.wait(15) == 0
    with pytest.raises(workerd.errors.InvalidJobOperation):
        workerd.send_stop_job_command(r, queue.enqueue(pj.add, 1, 2).id)  # not started: no worker to ask


# -- suspension -----------------------------------------------------------------------------------------


def test_suspension_of_an_idle_blocked_workerd(r: redis.Redis, redis_url: str, wd_worker: Any) -> None:
    queue = rq.Queue("susp_w", connection=r)
    proc = wd_worker("-u", redis_url, "-n", "wd-susp", "susp_w")
    wait_until(lambda: worker_field(r, "wd-susp", "state") == "idle", timeout=10, message="idle")
    # Blocked waiting for a job (the only client of this test's Redis in a blocking pop).
    wait_until(lambda: r.info("clients")["blocked_clients"] >= 1, timeout=10, message="blocked in a pop")
    for suspend, resume in ((rq.suspension.suspend, rq.suspension.resume),
                            (workerd.suspension.suspend, workerd.suspension.resume)):  # fmt: skip
        suspend(r)
        job = queue.enqueue(pj.add, 1, 1)
        still_queued(r, job.id, "susp_w", 2.5)
        assert worker_field(r, "wd-susp", "state") == "suspended"
        resume(r)
        wait_until(lambda: status(r, job.id) == "finished", timeout=5, message="runs after resume")  # noqa: B023
    assert proc.process.poll() is None
    # A burst worker started while suspended exits 1 at once, as `rq worker --burst` does.
    rq.suspension.suspend(r)
    job = queue.enqueue(pj.add, 1, 1)
    out = wd_burst(redis_url, "susp_w", code=1)
    assert "RQ is currently suspended" in out
    rq_burst(redis_url, "susp_w", code=1)
    assert status(r, job.id) == "queued"


def test_workerd_suspension_of_rq_worker(r: redis.Redis, redis_url: str, rq_worker: Any) -> None:
    queue = workerd.Queue("susp_r", connection=r)
    rq_worker("-n", "rq-susp", "susp_r")
    wait_until(lambda: worker_field(r, "rq-susp", "state") == "idle", timeout=10, message="rq worker idle")
    workerd.suspension.suspend(r)
    # docs/PROTOCOL.md §5.13: an rq worker already blocked takes the next job anyway, then suspends.
    first = queue.enqueue(pj.add, 1, 1)
    wait_until(lambda: status(r, first.id) == "finished", timeout=10, message="rq's blocked pop")
    wait_until(lambda: worker_field(r, "rq-susp", "state") == "suspended", timeout=5, message="rq suspended")
    job = queue.enqueue(pj.add, 2, 2)
    still_queued(r, job.id, "susp_r", 2.0)
    workerd.suspension.resume(r)
    wait_until(lambda: status(r, job.id) == "finished", timeout=5, message="rq runs after resume")
    workerd.suspension.suspend(r, duration_s=30)
    assert 0 < r.ttl("rq:suspended") <= 30 and rq.suspension.is_suspended(r)
    rq_burst(redis_url, "susp_r", code=1)


# -- dequeue strategies ---------------------------------------------------------------------------------

EXPECTED_ORDER = {
    "default": ["a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2", "c3"],
    "round_robin": ["a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c3"],
}


@pytest.mark.parametrize("strategy", ["default", "round_robin", "random"])
def test_dequeue_strategies_both_ways(strategy: str, r: redis.Redis, redis_url: str) -> None:
    orders = {}
    for runner, producer in (("workerd", rq.Queue), ("rq", workerd.Queue)):
        key = f"t:order:{runner}"
        names = [f"dq{runner}_{x}" for x in "abc"]
        for name, letter in zip(names, "abc", strict=True):
            q = producer(name, connection=r)
            for i in (1, 2, 3):
                q.enqueue(pj.record, redis_url, key, f"{letter}{i}")
        run = wd_burst if runner == "workerd" else rq_burst
        run(redis_url, "-ds", strategy, *names)
        orders[runner] = [token for token, _ in runs(r, key)]
    for runner, order in orders.items():
        if strategy in EXPECTED_ORDER:
            assert order == EXPECTED_ORDER[strategy], runner
        else:
            assert sorted(order) == EXPECTED_ORDER["default"], runner
            for letter in "abc":  # each queue is still served in its own order
                assert [t for t in order if t[0] == letter] == [f"{letter}{i}" for i in (1, 2, 3)]


# -- job and registry API -------------------------------------------------------------------------------


def _calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_enqueue_many_is_one_transaction_both_ways(r: redis.Redis, redis_url: str) -> None:
    rq_q, wd_q = both_queues(r, "many")
    for queue, runner in ((rq_q, "workerd"), (wd_q, "rq")):
        before = _calls(r, "exec"), _calls(r, "rpush")
        datas = [type(queue).prepare_data(pj.record, args=(redis_url, f"t:many:{runner}", f"m{i}")) for i in range(5)]
        jobs = queue.enqueue_many(datas)
        assert (_calls(r, "exec") - before[0], _calls(r, "rpush") - before[1]) == (1, 5), runner
        assert [i.decode() for i in r.lrange(f"rq:queue:{queue.name}", 0, -1)] == [j.id for j in jobs]
        assert all(status(r, j.id) == "queued" for j in jobs)
    wd_burst(redis_url, "many_w")
    rq_burst(redis_url, "many_r")
    for runner in ("workerd", "rq"):
        assert [t for t, _ in runs(r, f"t:many:{runner}")] == [f"m{i}" for i in range(5)]


def test_cancel_requeue_delete_and_registries_both_ways(r: redis.Redis, redis_url: str) -> None:
    rq_q, wd_q = both_queues(r, "api")
    # side "w": enqueued with RQ, run by workerd, then handled with RQ's API (and the reverse for "r").
    w = {
        "cancel": rq_q.enqueue(pj.record, redis_url, "t:api:cancel", "w"),
        "f1": rq_q.enqueue(pj.sleep_first_run, redis_url, "t:api:wf1", "not-a-number"),
        "f2": rq_q.enqueue(pj.sleep_first_run, redis_url, "t:api:wf2", "not-a-number"),
        "done": rq_q.enqueue(pj.add, 1, 1),
    }
    rr = {
        "cancel": wd_q.enqueue(pj.record, redis_url, "t:api:cancel", "r"),
        "f1": wd_q.enqueue(pj.sleep_first_run, redis_url, "t:api:rf1", "not-a-number"),
        "f2": wd_q.enqueue(pj.sleep_first_run, redis_url, "t:api:rf2", "not-a-number"),
        "done": wd_q.enqueue(pj.add, 1, 1),
    }
    # Cancel with the other side's API: the status and registry that side reads.
    workerd.Job.fetch(w["cancel"].id, r).cancel()
    RQJob.fetch(rr["cancel"].id, connection=r).cancel()
    assert RQJob.fetch(w["cancel"].id, connection=r).get_status() == "canceled"
    assert workerd.Job.fetch(rr["cancel"].id, r).get_status() == workerd.JobStatus.CANCELED
    assert rq.registry.CanceledJobRegistry("api_w", connection=r).get_job_ids() == [w["cancel"].id]
    assert workerd.CanceledJobRegistry("api_r", connection=r).get_job_ids() == [rr["cancel"].id]
    # Both write the canceled registry's score in whole seconds, as rq scores every registry.
    scores = [
        r.zscore(f"rq:canceled:{queue}", job.id) for queue, job in (("api_w", w["cancel"]), ("api_r", rr["cancel"]))
    ]
    assert all(score is not None and score == int(score) for score in scores), scores

    wd_burst(redis_url, "api_w")
    rq_burst(redis_url, "api_r")
    assert runs(r, "t:api:cancel") == []  # canceled jobs never ran
    for side, queue in (("w", "api_w"), ("r", "api_r")):
        jobs = w if side == "w" else rr
        # Each library's registries read the same from either side's data.
        rq_failed = rq.registry.FailedJobRegistry(queue, connection=r)
        wd_failed = workerd.FailedJobRegistry(queue, connection=r)
        assert sorted(rq_failed.get_job_ids()) == sorted([jobs["f1"].id, jobs["f2"].id])
        assert rq_failed.get_job_ids() == wd_failed.get_job_ids() and rq_failed.count == wd_failed.count == 2
        rq_fin = rq.registry.FinishedJobRegistry(queue, connection=r)
        assert rq_fin.get_job_ids() == workerd.FinishedJobRegistry(queue, connection=r).get_job_ids()
        assert rq_fin.count == 1

    # Requeue (registry and job methods) and delete, each with the other side's API.
    rq.registry.FailedJobRegistry("api_w", connection=r).requeue(w["f1"].id)
    RQJob.fetch(w["f2"].id, connection=r).requeue()
    workerd.FailedJobRegistry("api_r", connection=r).requeue(rr["f1"].id)
    workerd.Job.fetch(rr["f2"].id, r).requeue()
    for jobs, queue in ((w, "api_w"), (rr, "api_r")):
        for name in ("f1", "f2"):
            assert status(r, jobs[name].id) == "queued"
            assert not in_zset(r, f"rq:failed:{queue}", jobs[name].id)
        assert [i.decode() for i in r.lrange(f"rq:queue:{queue}", 0, -1)] == [jobs["f1"].id, jobs["f2"].id]
    RQJob.fetch(w["done"].id, connection=r).delete()
    workerd.Job.fetch(rr["done"].id, r).delete()
    for job in (w["done"], rr["done"]):  # only the results stream is left, by either API (as rq)
        assert [k.decode() for k in r.keys(f"*{job.id}*")] == [f"rq:results:{job.id}"]
    assert r.zcard("rq:finished:api_w") == r.zcard("rq:finished:api_r") == 0

    wd_burst(redis_url, "api_w")  # second runs succeed (the first failed on purpose)
    rq_burst(redis_url, "api_r")
    for job in (w["f1"], w["f2"], rr["f1"], rr["f2"]):
        assert status(r, job.id) == "finished"


def test_ttl_failure_ttl_and_allow_failure_both_ways(r: redis.Redis, redis_url: str) -> None:
    rq_q, wd_q = both_queues(r, "misc")
    jobs: dict[tuple[str, str], Any] = {}
    for side, queue, dependency in (("w", rq_q, RQDependency), ("r", wd_q, workerd.Dependency)):
        jobs[side, "ttl"] = queue.enqueue(pj.record, redis_url, "t:misc:ttl", side, ttl=1)
        jobs[side, "fttl"] = queue.enqueue(pj.fail, "short", failure_ttl=100)
        jobs[side, "fttl0"] = queue.enqueue(pj.fail, "unkept", failure_ttl=0)
        ok = jobs[side, "ok"] = queue.enqueue(pj.add, 1, 1)
        bad = jobs[side, "bad"] = queue.enqueue(pj.fail, "parent")
        jobs[side, "allow"] = queue.enqueue(pj.record, redis_url, f"t:misc:allow:{side}", "allow",
                                            depends_on=dependency(jobs=[ok, bad], allow_failure=True))  # fmt: skip
        jobs[side, "strict"] = queue.enqueue(pj.record, redis_url, f"t:misc:strict:{side}", "strict",
                                             depends_on=dependency(jobs=[bad]))  # fmt: skip
        assert field(r, jobs[side, "allow"].id, "allow_dependency_failures") == "1"
        assert 0 < r.ttl(f"rq:job:{jobs[side, 'ttl'].id}") <= 1
    wait_until(lambda: not any(r.exists(f"rq:job:{jobs[s, 'ttl'].id}") for s in "wr"), timeout=5,
               message="ttl expiry")  # fmt: skip
    before = time.time()  # the failures happen between `before` and `now` (many seconds, under load)
    out = wd_burst(redis_url, "misc_w")
    rq_burst(redis_url, "misc_r")
    assert runs(r, "t:misc:ttl") == []  # expired while queued: skipped
    assert out.count(jobs["w", "ttl"].id) == 1 and "skipped job" in out
    now = time.time()
    for side in "wr":
        queue = f"misc_{side}"
        fttl = jobs[side, "fttl"].id
        assert before + 99 <= (r.zscore(f"rq:failed:{queue}", fttl) or 0) <= now + 101
        assert 90 <= r.ttl(f"rq:job:{fttl}") <= 100 and 90 <= r.ttl(f"rq:results:{fttl}") <= 100
        assert r.ttl(f"rq:results:{jobs[side, 'bad'].id}") == -1  # no failure_ttl: no TTL on the stream (rq)
        unkept = jobs[side, "fttl0"].id  # failure_ttl=0: the job and its results are deleted (rq's Job.cleanup)
        assert not r.exists(f"rq:job:{unkept}", f"rq:results:{unkept}", f"rq:executions:{unkept}"), side
        assert before - 1 <= (r.zscore(f"rq:failed:{queue}", unkept) or 0) <= now + 1, side
        assert [t for t, _ in runs(r, f"t:misc:allow:{side}")] == ["allow"]
        assert status(r, jobs[side, "allow"].id) == "finished"
        assert status(r, jobs[side, "strict"].id) == "deferred" and runs(r, f"t:misc:strict:{side}") == []


def test_bad_retry_intervals() -> None:
    for retry in (rq.Retry, workerd.Retry):
        with pytest.raises(ValueError):
            retry(max=2, interval=[1, -1])
        with pytest.raises(ValueError):
            retry(max=0)


def test_bad_retry_intervals_in_a_job_hash_are_handled_by_workerd(r: redis.Redis, redis_url: str) -> None:
    """RQ's client accepts `Retry(interval=[])` (and its worker then fails on an IndexError); a forged
    negative interval can be in a hash too. workerd retries at once in both cases: no job lost or
    run twice."""
    q = rq.Queue("badretry", connection=r)
    empty = q.enqueue(pj.fail_counted, redis_url, "t:bad:empty", retry=rq.Retry(max=1, interval=[]))
    negative = q.enqueue(pj.fail_counted, redis_url, "t:bad:negative", retry=rq.Retry(max=1, interval=[5]))
    r.hset(f"rq:job:{negative.id}", "retry_intervals", "[-5]")
    wd_burst(redis_url, "badretry")
    for job, key in ((empty, "t:bad:empty"), (negative, "t:bad:negative")):
        assert len(runs(r, key)) == 2, key  # the run and its one retry
        assert status(r, job.id) == "failed" and field(r, job.id, "retries_left") == "0"
        assert [e["type"] for e in results(r, job.id)] == [2]
    assert r.zcard("rq:scheduled:badretry") == 0


# -- maintenance ----------------------------------------------------------------------------------------


def _stuck_in_intermediate(r: redis.Redis, queue: str, job_id: str, seen_s_ago: float) -> None:
    """What an RQ worker that died right after its BLMOVE leaves: the id in the intermediate list."""
    assert r.lmove(f"rq:queue:{queue}", f"rq:queue:{queue}:intermediate", "LEFT", "RIGHT") == job_id.encode()
    r.set(f"rq:queue:{queue}:intermediate:first_seen:{job_id}", time.time() - seen_s_ago, ex=86400)


def _old_registry_entries(r: redis.Redis, queue: str) -> None:
    past = time.time() - 10
    r.zadd(f"rq:finished:{queue}", {"old-finished": past})
    r.zadd(f"rq:failed:{queue}", {"old-failed": past, "kept-forever": -1})


def test_maintenance_of_rq_data_by_workerd(r: redis.Redis, redis_url: str) -> None:
    for queue in ("mnt", "mnt_locked"):
        q = rq.Queue(queue, connection=r)
        stuck = q.enqueue(pj.record, redis_url, f"t:{queue}", "stuck")
        q.enqueue(pj.record, redis_url, f"t:{queue}", "next")
        _stuck_in_intermediate(r, queue, stuck.id, 120)
        _old_registry_entries(r, queue)
    r.set("rq:clean_registries:mnt_locked", 1, ex=60)  # an rq worker is cleaning this queue right now
    out = wd_burst(redis_url, "mnt", "mnt_locked")
    # mnt: the stuck id went back to the front and ran first; expired entries are gone.
    assert [t for t, _ in runs(r, "t:mnt")] == ["stuck", "next"]
    assert r.llen("rq:queue:mnt:intermediate") == 0 and not r.keys("rq:queue:mnt:intermediate:first_seen:*")
    assert "was stuck in mnt's intermediate list; requeued at the front" in out
    assert not in_zset(r, "rq:finished:mnt", "old-finished") and r.zcard("rq:finished:mnt") == 2  # the 2 runs
    assert r.zrange("rq:failed:mnt", 0, -1) == [b"kept-forever"]
    # mnt_locked: left alone while rq holds its maintenance lock.
    assert r.llen("rq:queue:mnt_locked:intermediate") == 1
    assert [t for t, _ in runs(r, "t:mnt_locked")] == ["next"]
    assert in_zset(r, "rq:finished:mnt_locked", "old-finished")
    assert r.zcard("rq:failed:mnt_locked") == 2
    assert r.get("rq:clean_registries:mnt_locked") == b"1"


def test_maintenance_of_workerd_data_by_rq(r: redis.Redis, redis_url: str) -> None:
    q = workerd.Queue("mnt_r", connection=r)
    done = q.enqueue(pj.add, 1, 1, result_ttl=1)
    wd_burst(redis_url, "mnt_r")
    assert in_zset(r, "rq:finished:mnt_r", done.id)
    _old_registry_entries(r, "mnt_r")
    wait_until(lambda: (r.zscore("rq:finished:mnt_r", done.id) or 0) < time.time(), timeout=3, message="expiry")
    stuck = q.enqueue(pj.record, redis_url, "t:mnt_r", "stuck")
    _stuck_in_intermediate(r, "mnt_r", stuck.id, 120)
    rq_burst(redis_url, "mnt_r")
    assert r.zrange("rq:finished:mnt_r", 0, -1) == []
    assert r.zrange("rq:failed:mnt_r", 0, -1) == [b"kept-forever", stuck.id.encode()]
    # Where workerd requeues an id stuck in the intermediate list, rq fails it (a documented difference).
    assert status(r, stuck.id) == "failed" and runs(r, "t:mnt_r") == []
    assert "stuck in intermediate queue" in results(r, stuck.id)[-1]["exc_string"]


# -- RQ's maintenance and workerd's leases on one Redis --------------------------------------------


def _after_rq_cleanup(r: redis.Redis, queue: str, job_id: str) -> str | None:
    """Run what every rq worker runs at start-up and every 600 s on the started registry; the job's status."""
    rq.registry.StartedJobRegistry(queue, connection=r).cleanup()
    return status(r, job_id)


def test_rqs_maintenance_never_fails_a_job_workerd_holds(r: redis.Redis, redis_url: str, wd_worker: Any) -> None:
    job = workerd.Queue("held", connection=r).enqueue(pj.sleep_first_run, redis_url, "t:held", 4)
    wd_worker("-u", redis_url, "--heartbeat-interval", "0.5", "held")
    wait_until(lambda: status(r, job.id) == "started", message="the job to start")
    # Cleaned again and again while it runs (past several lease periods): the lease is always alive.
    wait_until(lambda: _after_rq_cleanup(r, "held", job.id) == "finished", timeout=20, interval=0.2,
               message="the job to finish")  # fmt: skip
    assert len(runs(r, "t:held")) == 1 and not in_zset(r, "rq:failed:held", job.id)
    assert [e["type"] for e in results(r, job.id)] == [1]


def test_a_job_rq_failed_as_abandoned_stays_as_rq_left_it(r: redis.Redis, redis_url: str, wd_worker: Any) -> None:
    q = workerd.Queue("aband", connection=r)
    job = q.enqueue(pj.sleep_first_run, redis_url, "t:aband", 60)
    fast = ("-u", redis_url, "--heartbeat-interval", "0.5", "aband")
    victim = wd_worker(*fast)
    wait_until(lambda: len(runs(r, "t:aband")) == 1, message="the first run")
    os.killpg(victim.pid, signal.SIGKILL)  # the lease (2 s here) runs out; RQ's cleanup gets there first
    wait_until(lambda: _after_rq_cleanup(r, "aband", job.id) == "failed", timeout=10, interval=0.2,
               message="rq's cleanup to fail it")  # fmt: skip
    rescuer_proof = q.enqueue(pj.add, 2, 2)  # runs only after the new worker's start-up recovery
    wd_worker(*fast)
    wait_until(lambda: status(r, rescuer_proof.id) == "finished", message="the new worker to run a job")
    assert status(r, job.id) == "failed" and len(runs(r, "t:aband")) == 1
    assert in_zset(r, "rq:failed:aband", job.id) and r.zcard("rq:wip:aband") == 0
    assert "due to AbandonedJobError" in results(r, job.id)[-1]["exc_string"]
