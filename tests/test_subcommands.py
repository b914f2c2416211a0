"""`workerd suspend` / `workerd resume`: RQ's suspension key, read by RQ and by running workers."""

from __future__ import annotations

import rq.suspension

from tests.conftest import run_workerd, wait_until
from workerd import Queue, schema


def test_suspend_and_resume_reach_rq_and_running_workers(r, redis_url, workerd) -> None:
    workerd("-u", redis_url, "-n", "sus")
    wait_until(lambda: r.exists(schema.worker_key("sus")), message="the worker registered")
    result = run_workerd("suspend", "-u", redis_url, "--duration", "300")
    assert result.returncode == 0 and "Suspending workers for 300 seconds" in result.stdout
    assert rq.suspension.is_suspended(r) and 0 < r.ttl(schema.SUSPENDED) <= 300
    job = Queue("default", connection=r).enqueue("testjobs.add", 1, 1)
    wait_until(lambda: r.hget(schema.worker_key("sus"), "state") == b"suspended", message="state suspended")
    assert job.get_status().value == "queued"
    assert run_workerd("resume", "-u", redis_url).returncode == 0
    assert not rq.suspension.is_suspended(r)
    wait_until(lambda: job.get_status().value == "finished", message="the job to run after resume")


def test_suspend_rejects_a_zero_duration(redis_url) -> None:
    result = run_workerd("suspend", "-u", redis_url, "--duration", "0")
    assert result.returncode == 2 and "at least 1 second" in result.stderr


def test_rq_stock_worker_classes_are_understood(r, redis_url) -> None:
    q = Queue("default", connection=r)
    jobs = [q.enqueue("testjobs.getpid") for _ in range(3)]
    result = run_workerd("-u", redis_url, "--burst", "-w", "rq.worker.SimpleWorker")
    assert result.returncode == 0, result.stderr
    pids = {job.return_value() for job in jobs}
    assert len(pids) == 1  # in-process: every job ran in the worker itself
    other = run_workerd("-u", redis_url, "--burst", "-w", "testjobs.Counter")
    assert other.returncode == 78 and "not a subclass of workerd.Worker" in other.stderr
