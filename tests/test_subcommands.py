"""`workerd suspend` / `workerd resume`: RQ's suspension key, read by RQ and by running workers."""

from __future__ import annotations

import rq.suspension

from tests.conftest import run_workerd, wait_until
from workerd import Queue, schema


def test_suspend_and_resume_reach_rq_and_running_workers(r, redis_url, workerd) -> None:
    proc = workerd("-u", redis_url, "-n", "sus")
    proc.wait_for_output("*** Listening on default...")
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
