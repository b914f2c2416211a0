"""The worker process, run as the real `workerd` binary: fetch, fork, execute, commit, signals."""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import run_workerd, wait_until, wait_until_blocked
from workerd import Callback, Job, JobStatus, Queue, schema


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if value else None


def _exc(r: redis.Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=r).exc_info or ""


def test_burst_runs_queues_in_priority_order(r: redis.Redis, redis_url: str) -> None:
    low, high = Queue("low", connection=r), Queue("high", connection=r)
    low.enqueue("testjobs.mark", redis_url, "order", "low")
    high.enqueue("testjobs.mark", redis_url, "order", "high-1")
    high.enqueue("testjobs.mark", redis_url, "order", "high-2")
    result = run_workerd("-u", redis_url, "--burst", "high", "low")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [v.decode() for v in r.lrange("order", 0, -1)] == ["high-1", "high-2", "low"]
    assert "No more work, burst finished." in result.stdout


def test_failures_of_every_kind_are_recorded_and_the_worker_goes_on(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    raised = q.enqueue("testjobs.fail", "bad input")
    exited = q.enqueue("testjobs.exit_hard", 3)
    killed = q.enqueue("testjobs.kill_self", signal.SIGKILL)
    segv = q.enqueue("testjobs.segfault")
    bad_str = q.enqueue("testjobs.raise_bad_str")
    missing = q.enqueue("testjobs.no_such_function")
    ok = q.enqueue("testjobs.add", 1, 2)
    result = run_workerd("-u", redis_url, "--burst")
    assert result.returncode == 0
    for job in (raised, exited, killed, segv, bad_str, missing):
        assert _status(r, job.id) == "failed", job
    assert "ValueError: bad input" in _exc(r, raised.id)
    assert "exit code 3" in _exc(r, exited.id)
    assert "signal 9 (SIGKILL)" in _exc(r, killed.id)
    assert "SIGSEGV" in _exc(r, segv.id)
    assert "BadStr" in _exc(r, bad_str.id)
    assert "no_such_function" in _exc(r, missing.id)
    assert Job.fetch(ok.id, connection=r).return_value() == 3
    assert r.zcard(schema.failed_key("default")) == 6


def test_timeout_is_enforced_even_when_the_job_ignores_signals(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    polite = q.enqueue("testjobs.sleep_for", 30, job_timeout=1)
    stubborn = q.enqueue("testjobs.ignore_sigterm_and_sleep", 30, job_timeout=1)
    result = run_workerd("-u", redis_url, "--burst", timeout=30)
    assert result.returncode == 0
    assert "Task exceeded maximum timeout value (1 seconds)" in _exc(r, polite.id)
    stubborn_exc = _exc(r, stubborn.id)
    assert "timeout value (1 seconds)" in stubborn_exc and "killed" in stubborn_exc


def test_undecodable_and_missing_jobs_do_not_stop_the_worker(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    garbage = q.enqueue("testjobs.add", 1, 1)
    r.hset(schema.job_key(garbage.id), "data", zlib.compress(b"not a pickle"))
    no_data = q.enqueue("testjobs.add", 1, 1)
    r.hdel(schema.job_key(no_data.id), "data")
    r.rpush(schema.queue_key("default"), "ghost-job")
    ok = q.enqueue("testjobs.add", 2, 2)
    result = run_workerd("-u", redis_url, "--burst")
    assert result.returncode == 0
    assert _status(r, garbage.id) == "failed" and "could not be decoded" in _exc(r, garbage.id)
    assert _status(r, no_data.id) == "failed" and "no 'data'" in _exc(r, no_data.id)
    assert "skipped job ghost-job" in result.stdout
    assert Job.fetch(ok.id, connection=r).return_value() == 4


def test_unserializable_result_finishes_with_rqs_placeholder(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.return_unpicklable")
    assert run_workerd("-u", redis_url, "--burst").returncode == 0
    assert Job.fetch(job.id, connection=r).return_value() == "Unserializable return value"


def test_grandchildren_die_with_their_horse(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    Queue("default", connection=r).enqueue("testjobs.spawn_grandchild_and_sleep", str(pidfile), 0.1)
    assert run_workerd("-u", redis_url, "--burst").returncode == 0
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie",
               message="the grandchild to be killed")  # fmt: skip


def test_a_grandchild_that_calls_setsid_outlives_its_horse(r: redis.Redis, redis_url: str, tmp_path: Path,
                                                           workerd) -> None:  # fmt: skip
    # The documented limit (README, docs/RELIABILITY.md): only the unit's cgroup contains it. The
    # worker's output goes to a file: the escaped process holds the worker's stdout and stderr open.
    pidfile = tmp_path / "session-leader.pid"
    Queue("default", connection=r).enqueue("testjobs.spawn_session_leader", str(pidfile))
    assert workerd("-u", redis_url, "--burst").wait() == 0
    escaped = int(pidfile.read_text())
    try:
        assert psutil.Process(escaped).status() != psutil.STATUS_ZOMBIE
    finally:
        os.kill(escaped, signal.SIGKILL)


def test_max_jobs_stops_after_n(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    jobs = [q.enqueue("testjobs.add", i, i) for i in range(5)]
    result = run_workerd("-u", redis_url, "--max-jobs", "2")
    assert result.returncode == 0
    assert [_status(r, j.id) for j in jobs].count("finished") == 2
    assert len(q) == 3


def test_idle_worker_wakes_for_any_queue_and_registers_like_rq(r: redis.Redis, redis_url: str, workerd) -> None:
    proc = workerd("-u", redis_url, "-n", "idle-worker", "high", "low")
    proc.wait_for_output("*** Listening on high, low...")
    worker = schema.worker_key("idle-worker")
    wait_until(lambda: r.hget(worker, "state") == b"idle", message="state idle")
    assert r.sismember(schema.WORKERS, worker) and r.sismember(schema.workers_by_queue_key("low"), worker)
    assert r.hget(worker, "queues") == b"high,low"
    job = Queue("low", connection=r).enqueue("testjobs.add", 20, 22)
    wait_until(lambda: _status(r, job.id) == "finished", timeout=5, message="the job on the second queue to run")
    assert int(r.hget(worker, "successful_job_count") or 0) == 1
    # The title says idle again just after the commit.
    wait_until(lambda: "high,low" in " ".join(psutil.Process(proc.pid).cmdline()), message="the idle title")
    assert "worker idle-worker" in " ".join(psutil.Process(proc.pid).cmdline())
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert not r.sismember(schema.WORKERS, worker) and r.hexists(worker, "death")


def test_the_next_horse_forks_during_a_job_only_when_more_work_waits(r: redis.Redis, redis_url: str,
                                                                      workerd) -> None:  # fmt: skip
    """With a backlog, the next job's horse forks while a job runs (throughput). A job that wakes an
    idle worker runs with no fork beside it (latency); the next horse forks once that job is done."""
    q = Queue("default", connection=r)
    backlog = [q.enqueue("testjobs.sibling_horses", 5.0) for _ in range(2)]
    proc = workerd("-u", redis_url, "-n", "prefork-worker")
    wait_until(lambda: all(_status(r, job.id) == "finished" for job in backlog), message="the backlog to finish")
    assert [Job.fetch(job.id, connection=r).return_value() for job in backlog] == [1, 1]
    wait_until(lambda: r.hget(schema.worker_key("prefork-worker"), "state") == b"idle", message="state idle")
    wait_until_blocked(r)
    woken = q.enqueue("testjobs.sibling_horses", 1.0)
    wait_until(lambda: _status(r, woken.id) == "finished", message="the wake-up job to finish")
    assert Job.fetch(woken.id, connection=r).return_value() == 0
    waiting = "waiting for a job"
    wait_until(lambda: any(waiting in " ".join(child.cmdline()) for child in psutil.Process(proc.pid).children()),
               message="a horse forked for the next job after the wake-up job")  # fmt: skip


def test_warm_shutdown_finishes_the_running_job(r: redis.Redis, redis_url: str, workerd) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.mark_then_sleep", redis_url, "started", 1.5)
    proc = workerd("-u", redis_url)
    wait_until(lambda: r.llen("started"), message="the job to start")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert _status(r, job.id) == "finished"
    assert "warm shut down requested" in proc.output()


def test_cold_shutdown_puts_the_job_back_at_the_front(r: redis.Redis, redis_url: str, workerd) -> None:
    q = Queue("default", connection=r)
    job = q.enqueue("testjobs.mark_then_sleep", redis_url, "started", 60)
    waiting = q.enqueue("testjobs.add", 1, 1)
    proc = workerd("-u", redis_url)
    wait_until(lambda: r.llen("started"), message="the job to start")
    horse_pid = int(r.lindex("started", 0))
    proc.signal(signal.SIGTERM)
    proc.wait_for_output("warm shut down requested")
    # A second signal within 1 s counts as a duplicate (rq's guard); the condition here is time.
    warm_at = time.monotonic()
    wait_until(lambda: time.monotonic() - warm_at > 1.2, message="the duplicate-signal window to pass")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert _status(r, job.id) == "queued"
    assert q.job_ids == [job.id, waiting.id]
    assert r.zcard(schema.started_key("default")) == 0
    assert not psutil.pid_exists(horse_pid) or psutil.Process(horse_pid).status() == "zombie"


@pytest.mark.parametrize("attempts", [3])
def test_jobs_of_a_killed_worker_are_recovered_within_seconds(r: redis.Redis, redis_url: str, workerd,
                                                              attempts: int) -> None:  # fmt: skip
    q = Queue("default", connection=r)
    job = q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 0.5)
    fast = ("--heartbeat-interval", "0.5", "--abandoned-max-attempts", str(attempts))
    victim = workerd("-u", redis_url, *fast)
    wait_until(lambda: r.llen("runs") == 1, message="first run")
    os.killpg(victim.pid, signal.SIGKILL)  # worker and horse: nothing gets to write anything
    assert _status(r, job.id) == "started"
    rescuer = workerd("-u", redis_url, *fast)
    wait_until(lambda: _status(r, job.id) == "finished", timeout=10, message="recovery and re-run")
    assert r.llen("runs") == 2
    assert r.hget(schema.job_key(job.id), schema.LOST_COUNT_FIELD) == b"1"
    assert "requeued at the front" in rescuer.output()


def test_a_job_that_keeps_killing_its_worker_is_failed_as_a_poison_pill(r: redis.Redis, redis_url: str,
                                                                        workerd) -> None:  # fmt: skip
    q = Queue("default", connection=r)
    job = q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 60, on_failure=Callback("parity_jobs.on_failure"))
    fast = ("--heartbeat-interval", "0.3", "--abandoned-max-attempts", "2")
    for attempt in (1, 2):
        proc = workerd("-u", redis_url, *fast)
        wait_until(lambda attempt=attempt: r.llen("runs") == attempt, timeout=15, message=f"run {attempt}")
        os.killpg(proc.pid, signal.SIGKILL)
    workerd("-u", redis_url, *fast)  # recovers it a second time: the budget of 2 is used up
    wait_until(lambda: _status(r, job.id) == "failed", timeout=10, message="poison pill failure")
    assert "worker lost 2 times" in _exc(r, job.id)
    assert r.zscore(schema.failed_key("default"), job.id) is not None
    assert Job.fetch(job.id, connection=r).get_status() == JobStatus.FAILED
    # As RQ's cleanup: the failure callback runs once, in the worker that failed it, with AbandonedJobError.
    wait_until(lambda: r.llen(f"test:cb:{job.id}") == 1, message="the failure callback")
    kind, _, exc_type, message, tb_type = json.loads(r.lindex(f"test:cb:{job.id}", 0))
    assert (kind, exc_type, tb_type) == ("failure", "AbandonedJobError", "StackSummary")
    assert "worker lost 2 times" in message


def test_a_custom_death_penalty_class_stops_jobs_past_their_timeout(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.sleep_for", 30, job_timeout=1)
    result = run_workerd("-u", redis_url, "--burst", "--death-penalty-class", "testjobs.PoliteDeathPenalty")
    assert result.returncode == 0, result.stderr
    assert "stopped by PoliteDeathPenalty after 1 s" in _exc(r, job.id)


def test_a_single_worker_goes_on_after_horses_over_the_hard_memory_limit(r: redis.Redis, redis_url: str) -> None:
    # No master to replace it: the worker fails each hog with the memory reason and drains the queue.
    q = Queue("default", connection=r)
    hogs = [q.enqueue("testjobs.allocate_mib", 300, 5) for _ in range(2)]
    ok = q.enqueue("testjobs.add", 1, 2)
    result = run_workerd("-u", redis_url, "--burst", "--hard-memory-limit", "150", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for hog in hogs:
        assert _status(r, hog.id) == "failed"
        assert "hard memory limit of 150 MiB" in _exc(r, hog.id)
    assert Job.fetch(ok.id, connection=r).return_value() == 3
    assert "No more work, burst finished." in result.stdout


def test_an_inprocess_job_that_exits_or_is_interrupted_fails(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    exits = [
        q.enqueue("sys.exit", 0),
        q.enqueue("sys.exit"),
        q.enqueue("testjobs.raise_base_exception", "SystemExit", 3),
    ]
    interrupted = q.enqueue("testjobs.raise_base_exception", "KeyboardInterrupt")
    ok = q.enqueue("testjobs.add", 1, 2)
    result = run_workerd("-u", redis_url, "--burst", "--execution", "inprocess", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for job in exits:
        assert _status(r, job.id) == "failed"
        assert "SystemExit" in _exc(r, job.id)
    assert "KeyboardInterrupt" in _exc(r, interrupted.id)
    assert Job.fetch(ok.id, connection=r).return_value() == 3
    assert "No more work, burst finished." in result.stdout


def test_an_inprocess_job_that_calls_os_exit_fails_and_the_worker_exits_non_zero(r: redis.Redis,
                                                                                 redis_url: str) -> None:  # fmt: skip
    # os._exit ends the process whatever we do; it must not end it with 0 (Restart=on-failure would
    # leave the worker down) nor leave its job started.
    q = Queue("default", connection=r)
    vanishing = q.enqueue("testjobs.exit_hard", 0)
    later = q.enqueue("testjobs.add", 1, 2)
    result = run_workerd("-u", redis_url, "--burst", "--execution", "inprocess", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"job {vanishing.id} called os._exit(0)" in result.stdout + result.stderr
    assert _status(r, vanishing.id) == "failed"
    assert "the job called os._exit(0) in the worker process" in _exc(r, vanishing.id)
    assert _status(r, later.id) == "queued"  # the next start runs it


def test_the_lease_renewal_keeps_the_executions_registry_alive(r: redis.Redis, redis_url: str, workerd) -> None:
    """RQ's cancel finds a running job's executions through rq:executions:<id>; a job that runs longer
    than the ttl the fetch gave that key must still have it (the renewal renews its ttl, as RQ's does)."""
    job = Queue("default", connection=r).enqueue("testjobs.mark_then_sleep", redis_url, "started", 30)
    workerd("-u", redis_url, "--heartbeat-interval", "0.5")
    wait_until(lambda: r.llen("started"), message="the job to start")
    executions = schema.executions_key(job.id)
    r.expire(executions, 2)  # as if the job had run for the fetch's whole ttl
    wait_until(lambda: r.ttl(executions) > 2, message="a renewal to extend the executions registry's ttl")
    assert r.zcard(executions) == 1
