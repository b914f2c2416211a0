"""The master, run as the real `workerd` binary with real forks and signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import run_workerd, wait_until
from workerd import Job, Queue, schema


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if value else None


def _workers(master_pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(master_pid).children() if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def _registered(r: redis.Redis, queue: str = "default") -> set[bytes]:
    return set(r.smembers(schema.workers_by_queue_key(queue)))


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return str(path)


def test_pool_runs_jobs_and_replaces_a_killed_worker_recovering_its_job(r, redis_url, workerd) -> None:
    q = Queue("default", connection=r)
    long_job = q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 1)
    master = workerd("-u", redis_url, "--workers", "2")
    wait_until(lambda: len(_registered(r)) == 2, message="two workers registered")
    wait_until(lambda: r.llen("runs") == 1, message="the job to start")
    owner = r.hget(schema.job_key(long_job.id), "worker_name").decode()
    owner_pid = int(r.hget(schema.worker_key(owner), "pid"))
    os.kill(owner_pid, signal.SIGKILL)  # its horse dies with it (PR_SET_PDEATHSIG)
    wait_until(lambda: _status(r, long_job.id) == "finished", timeout=15, message="the job re-run elsewhere")
    assert r.llen("runs") == 2
    wait_until(lambda: len(_workers(master.pid)) == 2, message="the pool back at two workers")
    assert "died (killed by signal 9 (SIGKILL))" in master.output()
    jobs = [q.enqueue("testjobs.add", i, i) for i in range(10)]
    wait_until(lambda: all(_status(r, j.id) == "finished" for j in jobs), message="ten more jobs")
    # The master refreshes its title every 2 s.
    wait_until(lambda: "master: default 2/2" in " ".join(psutil.Process(master.pid).cmdline()), message="title")


def test_kill_9_of_the_master_leaves_no_worker_and_no_horse(r, redis_url, workerd) -> None:
    Queue("default", connection=r).enqueue("testjobs.mark_then_sleep", redis_url, "runs", 60)
    master = workerd("-u", redis_url, "--workers", "2")
    wait_until(lambda: r.llen("runs") == 1, message="a horse running")
    horse_pid = int(r.lindex("runs", 0))
    worker_pids = [p.pid for p in _workers(master.pid)]
    assert len(worker_pids) == 2
    os.kill(master.pid, signal.SIGKILL)
    for pid in [*worker_pids, horse_pid]:
        wait_until(lambda pid=pid: not _alive(pid), timeout=10, message=f"process {pid} to die")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_no_zombies_after_workers_die(r, redis_url, workerd) -> None:
    master = workerd("-u", redis_url, "--workers", "2")
    wait_until(lambda: len(_workers(master.pid)) == 2, message="two workers")
    for child in _workers(master.pid):
        child.kill()
    wait_until(lambda: len(_workers(master.pid)) == 2 and len(_registered(r)) >= 2, message="replacements")
    zombies = [p for p in psutil.Process(master.pid).children() if p.status() == psutil.STATUS_ZOMBIE]
    wait_until(lambda: not [p for p in psutil.Process(master.pid).children()
                            if p.status() == psutil.STATUS_ZOMBIE], message="no zombies")  # fmt: skip
    del zombies


def test_a_worker_that_cannot_boot_stops_the_master_with_exit_3(redis_url) -> None:
    result = run_workerd("-u", redis_url, "--workers", "2", "-w", "testjobs.BrokenWorker",
                         env={"WORKERD_BOOT_FAILURE_LIMIT": "3"}, timeout=60)  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "failed to start 3 times in a row" in output
    assert "this worker cannot start" in output


def test_workers_that_die_right_after_ready_are_restarted_with_backoff(r, redis_url, workerd) -> None:
    # Each job kills the worker that runs it (in-process, SIGKILL): the workers die just after they
    # were ready, again and again. Without a backoff the master restarted them as fast as they died
    # (hundreds of restarts in the same time); with it, the pauses double: 0.5, 1, 2, 4, 8 s (the
    # sequence itself, and giving up, are tests/test_master_loop.py's: here, that a real crash loop
    # is paced).
    q = Queue("default", connection=r)
    for _ in range(100):
        q.enqueue("testjobs.kill_self")
    begun = time.monotonic()
    master = workerd("-u", redis_url, "--workers", "2", "--execution", "inprocess")
    master.wait_for_output("in 2.0 s (it died", timeout=40)  # the 3rd death in a row
    elapsed_s = time.monotonic() - begun
    restarts = master.output().count("master: started worker") - 2
    assert restarts <= 3, master.output()
    assert elapsed_s >= 0.5 + 1, master.output()  # the 0.5 s and 1 s pauses were sat out, at least
    assert master.process.poll() is None  # a crash loop is backed off, never given up on
    assert "failed to start" not in master.output()


def test_warm_stop_lets_jobs_finish_and_cold_stop_requeues(r, redis_url, workerd, tmp_path) -> None:
    q = Queue("default", connection=r)
    short = q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 1.0)
    long_job = q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 60)
    config = _toml(tmp_path, "graceful_timeout = 2.5\n")
    master = workerd("-u", redis_url, "--workers", "2", "-c", config)
    wait_until(lambda: r.llen("runs") == 2, message="both jobs running")
    master.signal(signal.SIGTERM)
    assert master.wait(timeout=30) == 0
    assert _status(r, short.id) == "finished"
    assert _status(r, long_job.id) == "queued" and q.job_ids[0] == long_job.id
    assert "graceful timeout of 2.5 s reached" in master.output()
    assert not _registered(r)


def test_second_term_is_a_cold_stop(r, redis_url, workerd) -> None:
    q = Queue("default", connection=r)
    job = q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 60)
    master = workerd("-u", redis_url, "--workers", "1")
    wait_until(lambda: r.llen("runs") == 1, message="the job running")
    master.signal(signal.SIGTERM)
    master.wait_for_output("warm stop")
    master.signal(signal.SIGTERM)
    assert master.wait(timeout=20) == 0
    assert _status(r, job.id) == "queued"


def test_ttin_ttou_and_hup_rolling_reload(r, redis_url, workerd, tmp_path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('queues = ["default"]\nworkers = 2\n')
    master = workerd("-u", redis_url, "-c", str(config))
    wait_until(lambda: len(_registered(r)) == 2, message="two workers")
    master.signal(signal.SIGTTIN)
    wait_until(lambda: len(_registered(r)) == 3, message="three workers after TTIN")
    master.signal(signal.SIGTTOU)
    wait_until(lambda: len(_registered(r)) == 2, message="two workers after TTOU")
    config.write_text('queues = ["other"]\nworkers = 2\n')
    master.signal(signal.SIGHUP)
    seen_empty = False
    deadline = time.monotonic() + 30
    while len(_registered(r, "other")) < 2 or _registered(r, "default"):
        seen_empty = seen_empty or not (_registered(r, "other") | _registered(r, "default"))
        assert time.monotonic() < deadline, master.output()
        time.sleep(0.02)
    assert not seen_empty, "the pool went empty during the rolling reload"
    config.write_text("queues = [\n")  # broken: the old settings stay
    master.signal(signal.SIGHUP)
    master.wait_for_output("reload failed, keeping the current settings")
    assert len(_registered(r, "other")) == 2


def test_max_jobs_and_max_age_recycle_workers(r, redis_url, workerd, tmp_path) -> None:
    q = Queue("default", connection=r)
    jobs = [q.enqueue("testjobs.add", i, 1) for i in range(6)]
    master = workerd("-u", redis_url, "--workers", "1", "--max-jobs", "2")
    wait_until(lambda: all(_status(r, j.id) == "finished" for j in jobs), message="all jobs")
    names = {r.hget(schema.job_key(j.id), "worker_name") for j in jobs}
    assert len(names) == 3, names
    master.signal(signal.SIGTERM)
    master.wait()
    aged = workerd("-u", redis_url, "--workers", "1", "--max-age", "1")
    aged.wait_for_output("max age of 1 s reached", timeout=15)
    wait_until(lambda: aged.output().count("started worker") >= 2, message="a replacement")


def test_hard_and_soft_memory_limits_on_horses(r, redis_url, workerd) -> None:
    q = Queue("default", connection=r)
    hog = q.enqueue("testjobs.allocate_mib", 300, 5)
    master = workerd("-u", redis_url, "--workers", "1", "--hard-memory-limit", "150")
    wait_until(lambda: _status(r, hog.id) == "failed", timeout=20, message="the hog killed")
    reason = Job.fetch(hog.id, connection=r).exc_info
    assert "hard memory limit of 150 MiB" in reason and "SIGKILL" in reason
    master.wait_for_output("replaced after its horse hit the hard memory limit")
    master.signal(signal.SIGTERM)
    master.wait()
    soft_hog = q.enqueue("testjobs.allocate_mib", 300, 5)
    soft = workerd("-u", redis_url, "--workers", "1", "--soft-memory-limit", "150")
    wait_until(lambda: _status(r, soft_hog.id) == "failed", timeout=20, message="the soft hog stopped")
    assert "soft memory limit of 150 MiB" in Job.fetch(soft_hog.id, connection=r).exc_info
    soft.signal(signal.SIGTERM)


def test_inprocess_mode_runs_jobs_in_the_worker_and_still_enforces_limits(r, redis_url, workerd) -> None:
    q = Queue("default", connection=r)
    first = q.enqueue("testjobs.mark", redis_url, "pids", "x")
    pid_jobs = [q.enqueue("testjobs.getpid") for _ in range(3)]
    stubborn = q.enqueue("testjobs.ignore_sigterm_and_sleep", 60, job_timeout=1)
    hog = q.enqueue("testjobs.allocate_mib", 300, 5)
    after = q.enqueue("testjobs.add", 1, 1)
    master = workerd("-u", redis_url, "--workers", "1", "--execution", "inprocess", "--hard-memory-limit", "200")
    wait_until(lambda: _status(r, after.id) == "finished", timeout=60, message="all jobs through")
    assert _status(r, first.id) == "finished"
    assert len({Job.fetch(j.id, connection=r).return_value() for j in pid_jobs}) == 1  # one process
    assert "ran past its timeout" in Job.fetch(stubborn.id, connection=r).exc_info
    assert "hard memory limit of 200 MiB" in Job.fetch(hog.id, connection=r).exc_info
    assert master.process.poll() is None


def test_worker_groups_and_daemons(r, redis_url, workerd, tmp_path) -> None:
    config = _toml(
        tmp_path,
        f"""
redis_url = "{redis_url}"
[[groups]]
name = "fast"
workers = 2
queues = ["high"]

[[groups]]
name = "slow"
workers = 1
queues = ["low"]
max_jobs = 5

[[groups]]
name = "scanner"
workers = 1
daemon = "testjobs.Scanner"
""",
    )
    master = workerd("-c", config, env={"SCANNER_URL": redis_url})
    wait_until(lambda: len(_registered(r, "high")) == 2 and len(_registered(r, "low")) == 1, message="groups up")
    wait_until(lambda: r.llen("scanned") >= 3, message="the daemon doing units of work")
    assert len(_workers(master.pid)) == 4
    bad = _toml(tmp_path, "[[groups]]\nname = 'x'\nquues = ['a']\n")
    result = run_workerd("-c", bad, "--check")
    assert result.returncode == 78 and "did you mean 'queues'" in result.stderr


def test_systemd_notify_protocol(r, redis_url, workerd, tmp_path) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    received: list[str] = []

    def got(text: str) -> bool:
        with contextlib.suppress(TimeoutError):
            received.append(sock.recv(4096).decode())
        return any(text in message for message in received)

    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    master = workerd("-u", redis_url, "--workers", "2", "-c", _toml(tmp_path, "workers = 2\n"), env=env)
    wait_until(lambda: got("READY=1"), timeout=15, message="READY=1")
    assert len(_registered(r)) == 2  # ready only once the workers are registered
    wait_until(lambda: got("WATCHDOG=1"), message="WATCHDOG=1")
    wait_until(lambda: got("STATUS=2 workers"), message="STATUS")
    master.signal(signal.SIGHUP)
    wait_until(lambda: got("RELOADING=1"), message="RELOADING=1")
    master.signal(signal.SIGTERM)
    wait_until(lambda: got("STOPPING=1"), message="STOPPING=1")
    assert master.wait() == 0
    sock.close()


@pytest.fixture(autouse=True)
def _fast_heartbeats(monkeypatch) -> None:
    # Short heartbeats keep recovery in these tests to a second or two.
    monkeypatch.setenv("WORKERD_HEARTBEAT_INTERVAL", "0.5")


def test_a_worker_over_the_soft_limit_finishes_its_job_then_is_replaced(r, redis_url, workerd) -> None:
    q = Queue("default", connection=r)
    hog = q.enqueue("testjobs.allocate_mib", 250, 1.5)  # in-process: the worker itself grows
    master = workerd("-u", redis_url, "--workers", "1", "--execution", "inprocess", "--soft-memory-limit", "150")
    wait_until(lambda: _status(r, hog.id) == "finished", timeout=30, message="the job allowed to finish")
    master.wait_for_output("soft memory limit", timeout=15)
    wait_until(lambda: master.output().count("started worker") >= 2, message="a replacement worker")
    after = q.enqueue("testjobs.add", 2, 2)
    wait_until(lambda: _status(r, after.id) == "finished", message="the replacement working")


def test_usr1_reopens_the_log_file_after_rotation(r, redis_url, workerd, tmp_path) -> None:
    log_file = tmp_path / "workerd.log"
    master = workerd("-u", redis_url, "--workers", "1", "--log-file", str(log_file))
    wait_until(lambda: log_file.exists() and "workers ready" in log_file.read_text(), message="logging to the file")
    log_file.rename(tmp_path / "workerd.log.1")  # what logrotate does
    master.signal(signal.SIGUSR1)
    wait_until(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), message="a new log file")
    job = Queue("default", connection=r).enqueue("testjobs.add", 1, 2)
    wait_until(lambda: job.id in log_file.read_text(), message="worker lines in the new file")


def test_a_worker_that_exits_0_with_a_job_in_hand_died(r, redis_url, workerd) -> None:
    # An in-process job that calls posix._exit(0) (os._exit is guarded, see the single-worker test)
    # ends its worker with exit code 0. The master must not take that for a clean stop (a burst pool
    # would finish with the job started and the queue full).
    q = Queue("default", connection=r)
    vanishing = q.enqueue("posix._exit", 0)
    ok = q.enqueue("testjobs.add", 1, 2)
    master = workerd("-u", redis_url, "--workers", "1", "--execution", "inprocess", "--burst")
    assert master.wait(timeout=60) == 0
    output = master.output()
    assert "died (exit code 0)" in output and f"it was running job {vanishing.id}" in output
    assert _status(r, vanishing.id) == "failed"
    assert "possible poison pill" in Job.fetch(vanishing.id, connection=r).exc_info
    assert Job.fetch(ok.id, connection=r).return_value() == 3
