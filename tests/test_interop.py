"""Interoperability with RQ 2.12, both ways, judged by the Redis data each side leaves.

RQ is the oracle. The same scenario (tests/jobs_dir/interop_jobs.py functions, enqueued without job
ids) is run four ways - RQ client + `rq worker --burst`, workerd client + `workerd --burst`, and the
two crossings - and each run's Redis is reduced to a normalized snapshot: every key (ids replaced by
the case's label), its type, its TTL, and its content with volatile values (timestamps, ids, worker
names, pids) replaced by their shape. The snapshots must be equal, except for the differences listed
in `LEGITIMATE_DIFFERENCES`, each with its reason. The crossings are also read through the other
side's client API (RQ's `Job.fetch` on workerd's results, workerd's on RQ's).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import rq
import rq.registry
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus

import workerd
from tests.conftest import JOBS_DIR, ROOT, run_workerd, wait_until
from tests.redis_server import RedisServer
from tests.rq_oracle.rq_cli import COMMAND as RQ_CLI  # `rq`, with a fix for redis-py 8.2
from workerd.job import ResultType

if str(JOBS_DIR) not in sys.path:
    sys.path.insert(0, str(JOBS_DIR))
import interop_jobs

TOLERANCE_S = 30.0  # RQ's runs are slow (a fresh import per horse); relative times are compared loosely
TS_FORMATS = ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ")
HEX32 = re.compile(r"[0-9a-f]{32}")
KILLED = re.compile(r"^Work-horse terminated unexpectedly; waitpid returned \d+(?: \(signal \d+\))?; ")


# -- the scenario ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    label: str
    func: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    depends_on: str | None = None  # label of the parent


CASES = [
    Case("add", interop_jobs.add, (2, 3)),
    Case("kwargs", interop_jobs.echo, (1, "x"), {"key": "v"}),
    Case("meta", interop_jobs.add, (1, 1), options={"meta": {"owner": "me", "n": 1}}),
    Case("custom_id", interop_jobs.add, (7, 8), options={"job_id": "interop-custom-id"}),
    Case("fail", interop_jobs.fail, ("bad",)),
    Case("fail_ttl", interop_jobs.fail, ("short",), options={"failure_ttl": 100}),
    Case("fail_forever", interop_jobs.fail, ("kept",), options={"failure_ttl": -1}),
    Case("ttl0", interop_jobs.add, (3, 4), options={"result_ttl": 0}),
    Case("ttl_forever", interop_jobs.add, (5, 6), options={"result_ttl": -1}),
    Case("ttl100", interop_jobs.add, (0, 0), options={"result_ttl": 100}),
    Case("timeout", interop_jobs.add, (1, 2), options={"job_timeout": 30}),
    Case("none", interop_jobs.return_none),
    Case("kill", interop_jobs.kill_self),
    Case("parent", interop_jobs.add, (10, 10)),
    Case("child", interop_jobs.add, (1, 0), depends_on="parent"),
    Case("grandchild", interop_jobs.add, (2, 0), depends_on="child"),
    Case("bad_parent", interop_jobs.fail, ("parent",)),
    Case("orphan", interop_jobs.add, (0, 1), depends_on="bad_parent"),
    Case("front", interop_jobs.add, (9, 9), options={"at_front": True}),
]
SUCCEEDED = {"add", "kwargs", "meta", "custom_id", "ttl0", "ttl_forever", "ttl100", "timeout", "none",
             "parent", "child", "grandchild", "front"}  # fmt: skip
FAILED = {"fail", "fail_ttl", "fail_forever", "kill", "bad_parent"}

# Fields that legitimately differ between RQ's and workerd's data, as (key pattern, field): both
# snapshots drop them before comparing.
LEGITIMATE_DIFFERENCES = {
    # RQ's abnormal-exit path saves the main process's stale copy of the job, blanking worker_name
    # and last_heartbeat (docs/PROTOCOL.md §5.8); workerd keeps who ran it and when.
    ("rq:job:<kill>", "worker_name"),
    ("rq:job:<kill>", "last_heartbeat"),
    # The worker hash's `version` is the software's own: "2.12.0" vs "workerd 0.1.0".
    ("rq:worker:<worker>", "version"),
}


def enqueue_scenario(q: Any) -> dict[str, str]:
    """Enqueue CASES on `q` (an rq.Queue or a workerd.Queue); returns label -> job id."""
    ids: dict[str, str] = {}
    jobs: dict[str, Any] = {}
    for case in CASES:
        options = dict(case.options or {})
        if case.depends_on:
            options["depends_on"] = jobs[case.depends_on]
        job = q.enqueue(case.func, *case.args, **(case.kwargs or {}), **options)
        jobs[case.label], ids[case.label] = job, job.id
    return ids


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{JOBS_DIR}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}


def run_rq_worker(url: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*RQ_CLI, "worker", "-u", url, "--burst", *args], capture_output=True, text=True,
                            timeout=timeout, env=_env(), cwd=JOBS_DIR)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_workerd_burst(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_workerd("-u", url, "--burst", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_scenario(r: redis.Redis, url: str, producer: str, runner: str, worker_name: str) -> dict[str, Any]:
    """Flush, enqueue with `producer`, snapshot, run with `runner`, snapshot again."""
    r.flushall()
    queue = rq.Queue("default", connection=r) if producer == "rq" else workerd.Queue("default", connection=r)
    ids = enqueue_scenario(queue)
    enqueued = snapshot(r, ids, worker_name)
    started = time.time()
    if runner == "rq":
        run_rq_worker(url, "-n", worker_name)
    else:
        run_workerd_burst(url, "-n", worker_name)
    return {"ids": ids, "enqueued": enqueued, "done": snapshot(r, ids, worker_name),
            "run_s": time.time() - started}  # fmt: skip


# -- normalization ------------------------------------------------------------------------------------


class Near:
    """A relative time or TTL in seconds, equal to another within TOLERANCE_S (inf equals inf only)."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, value: float) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Near):
            return NotImplemented
        if self.value == other.value:
            return True
        return abs(self.value - other.value) <= TOLERANCE_S

    def __repr__(self) -> str:
        return f"~{self.value:.0f}"


def _is_stamp(text: str) -> bool:
    for fmt in TS_FORMATS:
        try:
            dt.datetime.strptime(text, fmt)
            return True
        except ValueError:
            pass
    return False


def _stamp_shape(raw: bytes) -> str:
    text = raw.decode()
    if not text:
        return ""
    return "<ts>" if _is_stamp(text) else f"<bad timestamp {text!r}>"


def _float_shape(raw: bytes) -> str:
    try:
        float(raw)
    except ValueError:
        return f"<not a number {raw!r}>"
    return "<float>"


class Normalizer:
    def __init__(self, ids: dict[str, str], worker_name: str) -> None:
        self.labels = {job_id: f"<{label}>" for label, job_id in ids.items()}
        self.worker_name = worker_name

    def text(self, value: str | bytes) -> str:
        """Replace job ids, the worker name and execution ids by placeholders."""
        text = value.decode() if isinstance(value, bytes) else value
        for job_id, label in self.labels.items():
            text = text.replace(job_id, label)
        text = text.replace(self.worker_name, "<worker>")
        return HEX32.sub("<exec>", text)

    def job_hash(self, raw: dict[bytes, bytes]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name_b, value in raw.items():
            name = name_b.decode()
            if name in ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat"):
                out[name] = _stamp_shape(value)
            elif name == "data":
                out[name] = value  # the same call must give the same bytes
            elif name == "meta":
                out[name] = pickle.loads(value)
            else:
                out[name] = self.text(value)
        return out

    def worker_hash(self, raw: dict[bytes, bytes]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name_b, value in raw.items():
            name = name_b.decode()
            if name in ("birth", "last_heartbeat", "death", "shutdown_requested_date"):
                out[name] = _stamp_shape(value)
            elif name in ("total_working_time", "current_job_working_time"):
                out[name] = _float_shape(value)
            elif name == "pid":
                out[name] = "<pid>" if value.isdigit() else value
            elif name == "ip_address":
                out[name] = "<ip:port>" if re.fullmatch(rb"[0-9a-fA-F.:\[\]]+:\d+", value) else value
            else:
                out[name] = self.text(value)
        return out

    def result_entry(self, entry_id: bytes, raw: dict[bytes, bytes]) -> dict[str, Any]:
        out: dict[str, Any] = {"stream_id": "<ms>-<n>" if re.fullmatch(rb"\d+-\d+", entry_id) else entry_id}
        for name_b, value in raw.items():
            name = name_b.decode()
            if name in ("execution_started_at", "execution_ended_at"):
                out[name] = _float_shape(value)
            elif name == "return_value":
                out[name] = pickle.loads(base64.b64decode(value))
            elif name == "exc_string":
                text = zlib.decompress(base64.b64decode(value)).decode()
                last = [line for line in text.splitlines() if line.strip()][-1]
                killed = KILLED.match(last)
                # workerd appends a plain-words cause ("the horse was killed by signal 9 (SIGKILL)")
                # after RQ's exact prefix; the prefix is what tools and users match on.
                out[name] = killed.group(0) if killed else last
            else:
                out[name] = self.text(value)
        return out


def snapshot(r: redis.Redis, ids: dict[str, str], worker_name: str) -> dict[str, Any]:
    """Every key of the Redis, normalized: {key: (type, ttl, content)}."""
    norm = Normalizer(ids, worker_name)
    now = time.time()
    out: dict[str, Any] = {}
    for key_b in r.keys("*"):
        key = norm.text(key_b)
        kind = r.type(key_b).decode()
        ttl = r.ttl(key_b)
        content: Any
        if kind == "hash":
            raw = r.hgetall(key_b)
            if key.startswith("rq:job:"):
                content = norm.job_hash(raw)
            elif key.startswith("rq:worker:"):
                content = norm.worker_hash(raw)
            else:
                content = sorted(k.decode() for k in raw)
        elif kind == "zset":
            content = {}
            for member, score in r.zrange(key_b, 0, -1, withscores=True):
                if score in (float("inf"), float("-inf")):
                    content[norm.text(member)] = score
                else:  # RQ's scores are whole seconds (current_timestamp() + ttl)
                    shape = "whole" if score.is_integer() else "fraction"
                    content[norm.text(member)] = (Near(score - now), shape)
        elif kind == "set":
            content = sorted(norm.text(m) for m in r.smembers(key_b))
        elif kind == "list":
            content = [norm.text(m) for m in r.lrange(key_b, 0, -1)]
        elif kind == "stream":
            content = [norm.result_entry(entry_id, fields) for entry_id, fields in r.xrange(key_b)]
        else:
            content = r.get(key_b)
        for pattern, field in LEGITIMATE_DIFFERENCES:
            if pattern == key and isinstance(content, dict):
                content.pop(field, None)
        out[key] = (kind, ttl if ttl < 0 else Near(ttl), content)
    return out


def assert_same_data(expected: dict[str, Any], actual: dict[str, Any], what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: different key sets"
    for key in sorted(expected):
        assert actual[key] == expected[key], f"{what}: {key} differs"


# -- the RQ reference, computed once ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def rq_reference(redis_server: RedisServer) -> Iterator[dict[str, Any]]:
    client = redis_server.client()
    yield run_scenario(client, redis_server.url, "rq", "rq", "rq-reference-worker")


# -- tests -------------------------------------------------------------------------------------------------


def test_enqueue_writes_the_same_data_as_rq(rq_reference: dict[str, Any], r: redis.Redis) -> None:
    """workerd's Queue.enqueue leaves the same keys, fields, bytes and TTLs as RQ's."""
    ids = enqueue_scenario(workerd.Queue("default", connection=r))
    assert_same_data(rq_reference["enqueued"], snapshot(r, ids, "unused-name"), "after enqueue")
    # The same call pickles to the same bytes on both sides.
    reference_data = rq_reference["enqueued"]["rq:job:<add>"][2]["data"]
    assert r.hget(f"rq:job:{ids['add']}", "data") == reference_data
    assert r.lrange("rq:queue:default", 0, 0) == [ids["front"].encode()]  # at_front


def test_workerd_end_to_end_leaves_the_same_data_as_rq(rq_reference: dict[str, Any], r: redis.Redis,
                                                        redis_url: str) -> None:  # fmt: skip
    ours = run_scenario(r, redis_url, "workerd", "workerd", "workerd-e2e-worker")
    assert_same_data(rq_reference["done"], ours["done"], "workerd client + workerd worker")


def test_rq_client_on_workerd(rq_reference: dict[str, Any], r: redis.Redis, redis_url: str) -> None:
    run = run_scenario(r, redis_url, "rq", "workerd", "workerd-for-rq")
    assert_same_data(rq_reference["done"], run["done"], "rq client + workerd worker")
    ids = run["ids"]

    def fetch(label: str) -> RQJob:
        return RQJob.fetch(ids[label], connection=r)

    assert fetch("add").get_status() == RQJobStatus.FINISHED
    assert fetch("add").return_value() == 5
    assert fetch("kwargs").return_value() == [[1, "x"], {"key": "v"}]
    assert fetch("meta").get_meta() == {"owner": "me", "n": 1}
    assert fetch("custom_id").id == "interop-custom-id"
    assert fetch("custom_id").return_value() == 15
    assert fetch("none").return_value() is None
    assert fetch("none").latest_result().type == rq.results.Result.Type.SUCCESSFUL
    assert fetch("ttl_forever").return_value() == 11
    assert r.ttl(f"rq:job:{ids['ttl_forever']}") == -1
    assert not RQJob.exists(ids["ttl0"], connection=r)
    assert fetch("timeout").timeout == 30

    failed = fetch("fail")
    assert failed.get_status() == RQJobStatus.FAILED
    result = failed.latest_result()
    assert result.type == rq.results.Result.Type.FAILED
    assert "Traceback (most recent call last)" in result.exc_string
    assert "raise ValueError(message)" in result.exc_string
    assert result.exc_string.rstrip().endswith("ValueError: bad")
    assert failed.return_value() is None

    killed = fetch("kill")
    assert killed.get_status() == RQJobStatus.FAILED
    assert "Work-horse terminated unexpectedly" in killed.latest_result().exc_string
    assert "signal 9" in killed.latest_result().exc_string

    # Dependencies: the chain ran in order; the dependent of a failed job never ran.
    assert fetch("grandchild").return_value() == 2
    assert fetch("child").started_at > fetch("parent").ended_at
    assert fetch("grandchild").started_at > fetch("child").ended_at
    assert fetch("orphan").get_status() == RQJobStatus.DEFERRED
    assert fetch("orphan").started_at is None
    # at_front ran first.
    assert fetch("front").started_at < fetch("add").started_at

    finished = rq.registry.FinishedJobRegistry("default", connection=r)
    failed_registry = rq.registry.FailedJobRegistry("default", connection=r)
    deferred = rq.registry.DeferredJobRegistry("default", connection=r)
    assert set(finished.get_job_ids()) == {ids[label] for label in SUCCEEDED - {"ttl0"}}
    assert set(failed_registry.get_job_ids()) == {ids[label] for label in FAILED}
    assert deferred.get_job_ids() == [ids["orphan"]]
    assert rq.registry.StartedJobRegistry("default", connection=r).get_job_ids() == []
    now = time.time()
    assert abs(finished.get_expiration_time(fetch("add")).timestamp() - (now + 500)) < TOLERANCE_S
    assert abs(failed_registry.get_expiration_time(fetch("fail_ttl")).timestamp() - (now + 100)) < TOLERANCE_S

    worker = rq.Worker.find_by_key("rq:worker:workerd-for-rq", connection=r)
    assert worker is not None
    assert (worker.successful_job_count, worker.failed_job_count) == (len(SUCCEEDED), len(FAILED))
    assert worker.total_working_time > 0


def test_workerd_client_on_rq_worker(rq_reference: dict[str, Any], r: redis.Redis, redis_url: str) -> None:
    run = run_scenario(r, redis_url, "workerd", "rq", "rq-for-workerd")
    assert_same_data(rq_reference["done"], run["done"], "workerd client + rq worker")
    ids = run["ids"]

    def fetch(label: str) -> workerd.Job:
        return workerd.Job.fetch(ids[label], connection=r)

    assert fetch("add").get_status() == workerd.JobStatus.FINISHED
    assert fetch("add").return_value() == 5
    assert fetch("add").result == 5
    assert fetch("add").worker_name == "rq-for-workerd"
    assert fetch("kwargs").return_value() == [[1, "x"], {"key": "v"}]
    assert fetch("meta").get_meta() == {"owner": "me", "n": 1}
    assert fetch("custom_id").return_value() == 15
    assert fetch("none").return_value() is None
    assert fetch("none").latest_result().type == ResultType.SUCCESSFUL
    assert not workerd.Job.exists(ids["ttl0"], connection=r)
    for label in SUCCEEDED - {"ttl0"}:
        job = fetch(label)
        assert job.started_at is not None and job.ended_at is not None and job.enqueued_at is not None
        assert job.created_at <= job.enqueued_at <= job.started_at <= job.ended_at

    failed = fetch("fail")
    assert failed.get_status() == workerd.JobStatus.FAILED
    result = failed.latest_result()
    assert result is not None and result.type == ResultType.FAILED
    assert result.exc_string is not None and "Traceback (most recent call last)" in result.exc_string
    assert result.exc_string.rstrip().endswith("ValueError: bad")
    assert failed.exc_info == result.exc_string
    assert failed.return_value() is None
    killed = fetch("kill").latest_result()
    assert killed is not None and killed.exc_string is not None
    assert killed.exc_string.startswith("Work-horse terminated unexpectedly; waitpid returned 9 (signal 9)")

    assert fetch("grandchild").return_value() == 2
    assert fetch("orphan").get_status() == workerd.JobStatus.DEFERRED

    queue = workerd.Queue("default", connection=r)
    assert set(queue.finished_job_registry.get_job_ids()) == {ids[label] for label in SUCCEEDED - {"ttl0"}}
    assert set(queue.failed_job_registry.get_job_ids()) == {ids[label] for label in FAILED}
    assert queue.deferred_job_registry.get_job_ids() == [ids["orphan"]]
    assert queue.started_job_registry.get_job_ids() == []
    assert len(queue) == 0

    info = workerd.WorkerInfo.find_by_key("rq:worker:rq-for-workerd", connection=r)
    assert info is not None
    assert (info.successful_job_count, info.failed_job_count) == (len(SUCCEEDED), len(FAILED))
    assert info.queue_names == ["default"]
    assert info.version == rq.__version__


def test_rq_info_and_worker_all_show_a_running_workerd(r: redis.Redis, redis_url: str,
                                                        workerd: Callable[..., Any]) -> None:  # fmt: skip
    proc = workerd("-u", redis_url, "-n", "info-worker", "high", "default")
    wait_until(lambda: r.hget("rq:worker:info-worker", "state") == b"idle", 15,
               message="the workerd worker to be idle")  # fmt: skip

    info = subprocess.run([*RQ_CLI, "info", "-u", redis_url], capture_output=True, text=True, timeout=30,
                          env=_env())  # fmt: skip
    assert info.returncode == 0, info.stderr
    line = next((ln for ln in info.stdout.splitlines() if ln.startswith("info-worker ")), None)
    assert line is not None, info.stdout
    assert re.fullmatch(rf"info-worker \(\S+ \S+:\d+ {proc.pid}\): idle high, default\. "
                        r"jobs: 0 finished, 0 failed", line.strip()), line  # fmt: skip

    workers = {w.name: w for w in rq.Worker.all(connection=r)}
    assert "info-worker" in workers
    worker = workers["info-worker"]
    assert worker.queue_names() == ["high", "default"]
    assert worker.get_state() == "idle"
    assert worker.pid == proc.pid
    # ip_address is this worker's own client address, as RQ reads it from CLIENT LIST (not the server's).
    own = [c["addr"] for c in r.client_list() if c.get("name") == "info-worker"]
    assert own and worker.ip_address in own, (worker.ip_address, own)
    assert [w.name for w in rq.Worker.all(queue=rq.Queue("high", connection=r))] == ["info-worker"]

    queue = rq.Queue("high", connection=r)
    ok = queue.enqueue(interop_jobs.add, 20, 22)
    bad = queue.enqueue(interop_jobs.fail, "counted")
    wait_until(lambda: RQJob.fetch(bad.id, connection=r).get_status() == "failed", 15,
               message="both jobs to run")  # fmt: skip
    assert RQJob.fetch(ok.id, connection=r).return_value() == 42

    def counters() -> tuple[int, int] | None:
        w = rq.Worker.find_by_key("rq:worker:info-worker", connection=r)
        return (w.successful_job_count, w.failed_job_count) if w else None

    wait_until(lambda: counters() == (1, 1), 10, message="the worker counters to be 1 finished, 1 failed")
    info = subprocess.run([*RQ_CLI, "info", "-u", redis_url, "high"], capture_output=True, text=True,
                          timeout=30, env=_env())  # fmt: skip
    assert "jobs: 1 finished, 1 failed" in info.stdout, info.stdout
    assert re.search(r"^high +\|\S* 0, 0 executing, 1 finished, 1 failed$", info.stdout, re.M), info.stdout

    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "info-worker" not in {w.name for w in rq.Worker.all(connection=r)}
