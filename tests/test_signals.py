"""The signal matrix (README "Signals"): every documented signal, sent to every kind of workerd process.

`systemctl kill -s SIG unit` and `kill -- -PGID` reach the master, its workers and their horses at
once, so a signal meant for the master must leave every other process running. The master's own
reactions (reload, resize, reopen) are tested in test_supervisor.py; here each master signal goes
to a worker and to its horse, mid-job, and then to the whole process group.
"""

from __future__ import annotations

import os
import signal
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import redis
import rq
from rq.webhook import Webhook as RQWebhook

from tests.conftest import wait_until, wait_until_blocked
from tests.redis_server import free_port
from workerd import Queue, schema
from workerd.process import STOP_SIGNALS

MASTER_SIGNALS = [signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1]


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if value else None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED)
    except psutil.NoSuchProcess:
        return False


def _job_in_a_horse(r: redis.Redis, redis_url: str, seconds: float) -> tuple[str, int]:
    """Enqueue a job that records its horse's pid and sleeps; wait until it runs."""
    job = Queue("default", connection=r).enqueue("testjobs.mark_then_sleep", redis_url, "horses", seconds)
    wait_until(lambda: r.llen("horses") >= 1, message="the job running in a horse")
    return job.id, int(r.lpop("horses"))


def _send_each(pids: list[int]) -> None:
    for signum in MASTER_SIGNALS:
        for pid in pids:
            os.kill(pid, signum)


@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_a_pools_worker_and_horse_survive_every_master_signal(r, redis_url, workerd, tmp_path: Path,
                                                              execution: str) -> None:  # fmt: skip
    log_file = tmp_path / "workerd.log"
    master = workerd("-u", redis_url, "--workers", "1", "--execution", execution, "--log-file", str(log_file))
    wait_until(lambda: log_file.exists() and "workers ready" in log_file.read_text(), message="the pool ready")
    [worker] = psutil.Process(master.pid).children()
    job_id, horse_pid = _job_in_a_horse(r, redis_url, 3)
    targets = [worker.pid] if execution == "inprocess" else [worker.pid, horse_pid]
    _send_each(targets)
    assert all(_alive(pid) for pid in targets), master.output()
    wait_until(lambda: _status(r, job_id) == "finished", timeout=20, message="the job finished")

    # Now the whole process group, as `systemctl kill -s USR1` does; the master reopens its log.
    job_id, horse_pid = _job_in_a_horse(r, redis_url, 2)
    log_file.rename(tmp_path / "workerd.log.1")
    os.killpg(master.pid, signal.SIGUSR1)
    wait_until(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), message="the reopen")
    wait_until(lambda: _status(r, job_id) == "finished", timeout=20, message="the job finished")
    assert _alive(master.pid) and _alive(worker.pid)
    assert psutil.Process(master.pid).children() == [worker]  # no worker replaced: none died
    assert "killed by signal" not in master.output() + log_file.read_text()


@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_a_single_worker_and_its_horse_survive_every_master_signal(r, redis_url, workerd, execution: str) -> None:
    single = workerd("-u", redis_url, "--execution", execution)
    wait_until_blocked(r)
    job_id, horse_pid = _job_in_a_horse(r, redis_url, 3)
    targets = [single.pid] if execution == "inprocess" else [single.pid, horse_pid]
    _send_each(targets)
    assert all(_alive(pid) for pid in targets), single.output()
    wait_until(lambda: _status(r, job_id) == "finished", timeout=20, message="the job finished")
    os.killpg(single.pid, signal.SIGUSR1)
    job = Queue("default", connection=r).enqueue("testjobs.add", 1, 2)
    wait_until(lambda: _status(r, job.id) == "finished", message="the worker still working")
    assert single.process.poll() is None


def _child_titled(parent_pid: int, title: str) -> psutil.Process | None:
    return next((c for c in psutil.Process(parent_pid).children() if title in " ".join(c.cmdline())), None)


class _Hooks(BaseHTTPRequestHandler):
    """A webhook endpoint: records each request path on the server."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_single_workers_metrics_and_webhook_processes_survive_every_signal(r, redis_url, workerd) -> None:
    """The helper processes of a single worker (its metrics server, its webhook sender) are in the
    unit's cgroup too: every documented signal leaves them serving, and they leave with the worker."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{server.server_address[1]}"
    port = free_port()
    single = workerd("-u", redis_url, "--metrics-port", str(port), "-n", "helpers")
    queue = rq.Queue(connection=r)
    try:
        queue.enqueue("webhook_jobs.add", 1, 2, webhooks=[RQWebhook(f"{hook_url}/first", "finished", method="POST")])
        wait_until(lambda: "/first" in server.paths, message="the first webhook")  # type: ignore[attr-defined]
        titles = ("metrics of worker helpers", "webhook sender of worker helpers")
        helpers = [wait_until(lambda t=title: _child_titled(single.pid, t), message=title) for title in titles]
        for signum in [*STOP_SIGNALS, *MASTER_SIGNALS]:
            for helper in helpers:
                os.kill(helper.pid, signum)
        assert all(_alive(helper.pid) for helper in helpers), single.output()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
        queue.enqueue("webhook_jobs.add", 3, 4, webhooks=[RQWebhook(f"{hook_url}/second", "finished", method="POST")])
        wait_until(lambda: "/second" in server.paths, message="a webhook after the signals")  # type: ignore[attr-defined]
        assert [helper.pid for helper in helpers] == [
            _child_titled(single.pid, title).pid  # type: ignore[union-attr]
            for title in titles
        ]  # the same processes, not replacements
        single.signal(signal.SIGTERM)
        assert single.wait() == 0
        wait_until(lambda: not any(_alive(helper.pid) for helper in helpers), message="the helpers gone with it")
    finally:
        server.shutdown()
        server.server_close()
