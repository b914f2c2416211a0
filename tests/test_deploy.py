"""Deploys: a HUP reload imports PRELOAD afresh in a new generation's zygote, under load, losing nothing."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import JOBS_DIR, ROOT, WorkerdProcess, run_workerd, wait_until
from workerd import Job, Queue, schema
from workerd.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

MODULE = "deploymod"
# A job takes 20 ms; one is enqueued every 10 ms: two workers keep up, and are busy when HUP comes.
JOB_S = 0.02
ENQUEUE_EVERY_S = 0.01
MAX_BACKLOG = 20
# The longest two consecutive job starts may be apart. In steady state they are ENQUEUE_EVERY_S
# apart; a restart would leave the queue unserved for the pool's whole start (import workerd,
# fork, register: about 1 s here, more on a loaded machine). A rolling reload keeps two ready
# workers throughout, so what remains is scheduling noise on a busy 2-core machine, well under this.
MAX_GAP_S = 1.0


def _write_module(directory: Path, body: str) -> None:
    (directory / f"{MODULE}.py").write_text(f"import time\n\n{body}\n\ndef version():\n    time.sleep({JOB_S})\n"
                                             "    return VERSION\n")  # fmt: skip


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "deploy"
    directory.mkdir()
    _write_module(directory, "VERSION = 1")
    return directory


def _env(module_dir: Path) -> dict[str, str]:
    # No .pyc: a module rewritten within the same second with the same size would otherwise be read
    # from its stale cache (Python checks the source's mtime, to the second, and size).
    return {"PYTHONPATH": os.pathsep.join(map(str, (module_dir, JOBS_DIR, ROOT))), "PYTHONDONTWRITEBYTECODE": "1"}


def _worker_pids(r: redis.Redis) -> set[int]:
    pids = (r.hget(key, "pid") for key in r.smembers(schema.workers_by_queue_key("default")))
    return {int(pid) for pid in pids if pid}


def _zygotes(master_pid: int, r: redis.Redis) -> list[psutil.Process]:
    # A worker keeps its zygote's title until it first goes idle: a registered worker is no zygote.
    workers = _worker_pids(r)
    return [p for p in psutil.Process(master_pid).children()
            if p.pid not in workers and "zygote" in " ".join(_cmdline(p))]  # fmt: skip


def _cmdline(process: psutil.Process) -> list[str]:
    # A worker killed by the test is reparented to the master (a subreaper) and stays a zombie
    # until the master reaps it; it has no command line then, and it is no zygote.
    try:
        return process.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


def _start_pool(
    workerd, redis_url: str, r: redis.Redis, module_dir: Path, workers: int
) -> tuple[WorkerdProcess, set[int]]:
    """A pool with MODULE preloaded, once its workers are registered; and their pids."""
    master = workerd("-u", redis_url, "--workers", str(workers), "--preload", MODULE, env=_env(module_dir))
    wait_until(lambda: len(_worker_pids(r)) == workers, message=f"{workers} workers registered")
    return master, _worker_pids(r)


def _statuses_not_finished(r: redis.Redis, ids: list[str]) -> dict[str, str]:
    with r.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(schema.job_key(job_id), "status")
        statuses = dict(zip(ids, pipe.execute(), strict=True))
    return {job_id: (status or b"<no hash>").decode() for job_id, status in statuses.items() if status != b"finished"}


class _Enqueuer(threading.Thread):
    """A steady stream of jobs, from its own connection, until stopped; it holds back while
    MAX_BACKLOG jobs wait, so that a slow machine (coverage) keeps the pool busy without a backlog
    that outlasts the test."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.queue = Queue("default", connection=redis.Redis.from_url(url))
        self.ids: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(ENQUEUE_EVERY_S):
            if self.queue.count < MAX_BACKLOG:
                self.ids.append(self.queue.enqueue(f"{MODULE}.version").id)


def test_a_reload_under_load_deploys_the_new_preloaded_code_losing_no_job_and_pausing_no_queue(
    r, redis_url, workerd, module_dir
) -> None:
    master, old_workers = _start_pool(workerd, redis_url, r, module_dir, workers=2)
    assert old_workers <= {p.pid for p in psutil.Process(master.pid).children()}  # adopted by the master
    [old_zygote] = _zygotes(master.pid, r)
    enqueuer = _Enqueuer(redis_url)
    enqueuer.start()
    try:
        wait_until(lambda: len(FinishedJobRegistry("default", connection=r)) >= 20, message="jobs on version 1")
        _write_module(module_dir, "VERSION = 2  # deployed")
        master.signal(signal.SIGHUP)
        wait_until(lambda: not any(psutil.pid_exists(pid) for pid in old_workers), timeout=30,
                   message=f"the old generation's workers to exit:\n{master.output()}")  # fmt: skip
        after_drain = len(enqueuer.ids)
        wait_until(lambda: len(enqueuer.ids) >= after_drain + 20, message="jobs enqueued after the drain")
    finally:
        enqueuer.stopped.set()
        enqueuer.join(timeout=5)
    ids = enqueuer.ids
    finished = FinishedJobRegistry("default", connection=r)
    try:
        wait_until(lambda: len(finished) == len(ids), timeout=30, message="every job enqueued finished")
    except AssertionError as exc:  # say where the jobs not finished are
        raise AssertionError(f"{exc}: not finished {_statuses_not_finished(r, ids)}\n{master.output()}") from None
    assert set(finished.get_job_ids()) == set(ids)
    assert len(FailedJobRegistry("default", connection=r)) == 0
    assert len(StartedJobRegistry("default", connection=r)) == 0
    assert r.llen(schema.queue_key("default")) == 0
    jobs = [Job.fetch(job_id, connection=r) for job_id in ids]
    versions = [job.return_value() for job in jobs]
    assert versions[0] == 1
    assert set(versions[after_drain:]) == {2}, "jobs enqueued once the old generation was gone ran the new code"
    starts = sorted(job.started_at for job in jobs if job.started_at is not None)
    assert len(starts) == len(ids)
    gaps_s = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(starts)]
    assert max(gaps_s) <= MAX_GAP_S, f"processing paused for {max(gaps_s):.2f} s during the reload"
    wait_until(lambda: not psutil.pid_exists(old_zygote.pid) or old_zygote.status() == psutil.STATUS_ZOMBIE,
               message="the old zygote to exit")  # fmt: skip
    new_workers = _worker_pids(r)
    assert len(new_workers) == 2 and not new_workers & old_workers
    assert new_workers <= {p.pid for p in psutil.Process(master.pid).children()}
    assert "zygote" in master.output() and "generation 1 ready" in master.output()


def test_a_reload_whose_preloaded_module_fails_to_import_keeps_the_old_generation(
    r, redis_url, workerd, module_dir
) -> None:
    master, workers = _start_pool(workerd, redis_url, r, module_dir, workers=2)
    _write_module(module_dir, "raise RuntimeError('a broken deploy')\nVERSION = 3")
    master.signal(signal.SIGHUP)
    master.wait_for_output("reload failed, keeping the current settings and workers")
    assert "PRELOAD module 'deploymod' raised on import: RuntimeError: a broken deploy" in master.output()
    job = Queue("default", connection=r).enqueue(f"{MODULE}.version")
    wait_until(lambda: job.get_status() == "finished", message="a job after the failed reload")
    assert job.return_value() == 1
    assert _worker_pids(r) == workers
    assert len(_zygotes(master.pid, r)) == 1


def test_a_zygote_that_dies_is_restarted_and_the_workers_keep_running(r, redis_url, workerd, module_dir) -> None:
    master, [worker] = _start_pool(workerd, redis_url, r, module_dir, workers=1)
    [zygote] = _zygotes(master.pid, r)
    zygote.kill()
    master.wait_for_output("died (killed by signal 9 (SIGKILL))")
    os.kill(worker, signal.SIGKILL)  # its replacement comes from a new zygote
    wait_until(lambda: len(_worker_pids(r) - {worker}) == 1, timeout=15, message=f"a new worker:\n{master.output()}")
    assert [z.pid for z in _zygotes(master.pid, r)] != [zygote.pid]
    job = Queue("default", connection=r).enqueue(f"{MODULE}.version")
    wait_until(lambda: job.get_status() == "finished", message="a job from the new worker")


def test_a_preloaded_module_that_fails_at_start_is_a_config_error_of_the_master(module_dir) -> None:
    _write_module(module_dir, "raise RuntimeError('broken')\nVERSION = 1")
    done = run_workerd("--workers", "2", "--preload", MODULE, "-u", "redis://127.0.0.1:1", env=_env(module_dir))
    assert done.returncode == 78, done.stderr
    assert "workerd: error: PRELOAD module 'deploymod' raised on import: RuntimeError: broken" in done.stderr


def test_every_documented_signal_at_a_zygote_is_ignored(r, redis_url, workerd, module_dir) -> None:
    """`systemctl kill -s SIG` reaches the zygote too: its life is the master's to end (see the signal matrix)."""
    master, [worker] = _start_pool(workerd, redis_url, r, module_dir, workers=1)
    [zygote] = _zygotes(master.pid, r)
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT,
                   signal.SIGQUIT):  # fmt: skip
        zygote.send_signal(signum)
    os.kill(worker, signal.SIGKILL)  # its replacement comes from the same zygote, once it has had the signals
    wait_until(lambda: len(_worker_pids(r) - {worker}) == 1, timeout=15, message=f"a new worker:\n{master.output()}")
    assert [z.pid for z in _zygotes(master.pid, r)] == [zygote.pid]
    assert zygote.status() != psutil.STATUS_STOPPED
    assert f"zygote {zygote.pid} of generation 0 died" not in master.output()


def test_a_stuck_zygote_costs_the_master_a_bounded_wait_and_is_replaced(r, redis_url, workerd, module_dir) -> None:
    master, [worker] = _start_pool(workerd, redis_url, r, module_dir, workers=1)
    [zygote] = _zygotes(master.pid, r)
    zygote.suspend()  # SIGSTOP: it cannot answer the master's next request
    os.kill(worker, signal.SIGKILL)
    master.wait_for_output("did not answer within 5 s", timeout=20)
    wait_until(lambda: len(_worker_pids(r) - {worker}) == 1, timeout=20, message=f"a new worker:\n{master.output()}")
    assert zygote.pid not in {z.pid for z in _zygotes(master.pid, r)}
