"""RQ 2.12's webhooks, sent by workerd: RQ's client enqueues with `webhooks=`, the real `workerd` binary
runs the jobs, and a local HTTP server (a thread of this test process) records what arrives.

RQ is the oracle for the payload: the body of a POST must equal `rq.webhook.Webhook.get_payload` of
the job as RQ fetches it from Redis afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import pytest
import redis
import rq
from rq.job import Job as RQJob
from rq.webhook import Webhook as RQWebhook

from tests.conftest import JOBS_DIR, run_workerd, wait_until
from workerd import webhooks
from workerd.job import Job
from workerd.settings import Settings

if str(JOBS_DIR) not in sys.path:
    sys.path.insert(0, str(JOBS_DIR))
import webhook_jobs


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Endpoint:
    """An HTTP server on a free port: `/ok...` answers 200, `/error` 500, `/slow` holds the request
    until `release()` (bounded), then answers 200. Every request is recorded."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.released = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                endpoint.received.append(Received(self.command, self.path, dict(self.headers), body))
                if self.path.startswith("/slow"):
                    endpoint.released.wait(30)
                self.send_response(500 if self.path.startswith("/error") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        return [request for request in self.received if request.path == path]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _burst(redis_url: str, *extra: str) -> None:
    result = run_workerd("--burst", "-u", redis_url, *extra)
    assert result.returncode == 0, result.stdout + result.stderr


def _rq_payload(r: redis.Redis, job_id: str, status: str, exc_string: str | None = None) -> dict[str, Any]:
    return RQWebhook("http://x", status).get_payload(RQJob.fetch(job_id, connection=r), exc_string=exc_string)


@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_finished_and_failed_send_only_the_matching_webhooks(r: redis.Redis, redis_url: str,
                                                             endpoint: Endpoint, execution: str) -> None:  # fmt: skip
    queue = rq.Queue(connection=r)
    hooks = [
        RQWebhook(endpoint.url("/ok/done"), "finished", method="POST", headers={"X-Token": "secret"}, timeout=5),
        RQWebhook(endpoint.url("/ok/done-get"), "finished", headers={"X-Token": "secret"}),
        RQWebhook(endpoint.url("/ok/fail"), "failed", method="POST"),
    ]
    done = queue.enqueue(webhook_jobs.add, 1, 2, webhooks=hooks)
    failed = queue.enqueue(webhook_jobs.fail, "kaboom", webhooks=hooks)
    plain = queue.enqueue(webhook_jobs.add, 3, 4)
    _burst(redis_url, "--execution", execution)  # a burst worker sends its last webhooks before it exits

    assert done.get_status(refresh=True) == "finished" and failed.get_status(refresh=True) == "failed"
    assert plain.get_status(refresh=True) == "finished"
    [post] = endpoint.at("/ok/done")
    assert post.method == "POST"
    assert post.headers["Content-Type"] == "application/json" and post.headers["X-Token"] == "secret"
    assert post.json() == _rq_payload(r, done.id, "finished")
    [get] = endpoint.at("/ok/done-get")
    assert get.method == "GET" and get.body == b"" and get.headers["X-Token"] == "secret"
    [failure] = endpoint.at("/ok/fail")
    body = failure.json()
    exc_info = RQJob.fetch(failed.id, connection=r).latest_result().exc_string
    assert "ValueError: kaboom" in body["exc_info"] and body["exc_info"] in exc_info
    assert body == _rq_payload(r, failed.id, "failed", exc_string=body["exc_info"])
    assert len(endpoint.received) == 3  # nothing for the wrong status, nothing for the job without webhooks


def test_failed_fires_once_after_the_retries_only(r: redis.Redis, redis_url: str, endpoint: Endpoint) -> None:
    queue = rq.Queue(connection=r)
    hooks = [RQWebhook(endpoint.url("/ok/done"), "finished", method="POST"),
             RQWebhook(endpoint.url("/ok/fail"), "failed", method="POST")]  # fmt: skip
    exhausted = queue.enqueue(webhook_jobs.fail, retry=rq.Retry(max=1), webhooks=hooks)
    _burst(redis_url, "--max-jobs", "1")
    assert exhausted.get_status(refresh=True) == "queued"  # the first attempt failed and was retried
    assert endpoint.received == []
    _burst(redis_url)
    assert exhausted.get_status(refresh=True) == "failed"
    [failure] = endpoint.received
    assert failure.path == "/ok/fail" and failure.json()["job_id"] == exhausted.id


def test_retried_then_successful_job_sends_finished_only(r: redis.Redis, redis_url: str, endpoint: Endpoint) -> None:
    hooks = [RQWebhook(endpoint.url("/ok/done"), "finished", method="POST"),
             RQWebhook(endpoint.url("/ok/fail"), "failed", method="POST")]  # fmt: skip
    job = rq.Queue(connection=r).enqueue(webhook_jobs.fail_on_first_attempt, retry=rq.Retry(max=1), webhooks=hooks)
    _burst(redis_url)
    assert job.get_status(refresh=True) == "finished"
    assert [request.path for request in endpoint.received] == ["/ok/done"]


def test_returned_retry_past_its_max_sends_failed(r: redis.Redis, redis_url: str, endpoint: Endpoint) -> None:
    hooks = [RQWebhook(endpoint.url("/ok/done"), "finished", method="POST"),
             RQWebhook(endpoint.url("/ok/fail"), "failed", method="POST")]  # fmt: skip
    job = rq.Queue(connection=r).enqueue(webhook_jobs.return_retry, webhooks=hooks)
    _burst(redis_url)
    assert job.get_status(refresh=True) == "failed"
    [failure] = endpoint.received
    assert failure.path == "/ok/fail"
    assert failure.json() == _rq_payload(r, job.id, "failed", exc_string="")  # RQ sends an empty exc_info here


def test_a_dead_or_slow_endpoint_does_not_delay_the_next_job(r: redis.Redis, redis_url: str, endpoint: Endpoint,
                                                            workerd: Any) -> None:  # fmt: skip
    queue = rq.Queue(connection=r)
    dead = RQWebhook(f"http://127.0.0.1:{_free_port()}/nobody", "finished", method="POST")
    slow = RQWebhook(endpoint.url("/slow"), "finished", method="POST", timeout=30)
    error = RQWebhook(endpoint.url("/error"), "finished")
    first = queue.enqueue(webhook_jobs.add, 1, 1, webhooks=[dead, error, slow])
    worker = workerd("-u", redis_url)
    wait_until(lambda: endpoint.at("/slow"), 30, message="the slow webhook's request")
    # The sender now holds the slow request (for up to 30 s); the worker must not wait for it.
    sent_at = time.monotonic()
    second = queue.enqueue(webhook_jobs.add, 2, 2, webhooks=[slow])
    wait_until(lambda: second.get_status(refresh=True) == "finished", 10, message="the second job")
    assert time.monotonic() - sent_at < 5.0
    assert first.get_status(refresh=True) == "finished"
    assert len(endpoint.at("/error")) == 1 and len(endpoint.at("/slow")) == 1  # no retry of the failed one
    endpoint.released.set()
    wait_until(lambda: len(endpoint.at("/slow")) == 2, 10, message="the second job's webhook, once released")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    output = worker.output()
    assert "Failed to send webhook to http://127.0.0.1" in output and "/nobody for job" in output
    assert "/error for job" in output and "HTTP Error 500" in output


def test_the_sender_dies_with_its_worker(r: redis.Redis, redis_url: str, endpoint: Endpoint, workerd: Any) -> None:
    job = rq.Queue(connection=r).enqueue(webhook_jobs.add, 1, 1,
                                         webhooks=[RQWebhook(endpoint.url("/ok"), "finished")])  # fmt: skip
    worker = workerd("-u", redis_url)
    wait_until(lambda: endpoint.at("/ok"), 30, message="the webhook")
    assert job.get_status(refresh=True) == "finished"
    [sender] = [child for child in psutil.Process(worker.pid).children()
                if "webhook sender" in " ".join(child.cmdline())]  # fmt: skip
    os.kill(worker.pid, signal.SIGKILL)
    wait_until(lambda: not _alive(sender), 10, message="the sender to die with its worker")


def test_a_warm_stop_of_the_whole_group_lets_the_sender_finish(r: redis.Redis, redis_url: str, endpoint: Endpoint,
                                                               workerd: Any) -> None:  # fmt: skip
    """`systemctl stop` signals every process: the sender outlives SIGTERM, and the worker waits for it
    (up to webhooks.DRAIN_S) before it exits, so the webhooks it held still go out."""
    hooks = [RQWebhook(endpoint.url("/slow"), "finished", timeout=30), RQWebhook(endpoint.url("/ok/after"), "finished")]
    rq.Queue(connection=r).enqueue(webhook_jobs.add, 1, 1, webhooks=hooks)
    worker = workerd("-u", redis_url)
    wait_until(lambda: endpoint.at("/slow"), 30, message="the slow webhook's request")
    os.killpg(worker.pid, signal.SIGTERM)
    wait_until(lambda: "stopping: warm shut down" in worker.output(), 10, message="the warm stop")
    assert worker.process.poll() is None and endpoint.at("/ok/after") == []  # waiting for its sender
    endpoint.released.set()
    assert worker.wait(webhooks.DRAIN_S + 5) == 0
    assert len(endpoint.at("/ok/after")) == 1


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_send_never_blocks_when_the_sender_is_behind(r: redis.Redis, endpoint: Endpoint,
                                                     caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A sender stuck on a slow endpoint: the worker's socket fills, and what does not fit is dropped."""
    sender = webhooks.Sender(Settings(), "test-worker")
    job = Job(id="stuck", webhooks=[webhooks.Webhook(endpoint.url("/slow"), "failed", method="POST", timeout=30)])
    traceback_text = "Traceback (most recent call last):\n" + "x" * 20_000
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="workerd.webhooks"):
            for _ in range(200):  # 200 x 20 kB: far more than a socket buffer holds
                sender.send(job, "failed", time.time(), traceback_text)
        assert time.monotonic() - started < 5.0
        assert any("dropped: the webhook sender is behind" in line for line in caplog.messages)
        wait_until(lambda: endpoint.at("/slow"), 30, message="the first request")
    finally:
        endpoint.released.set()
        sender.close(wait_s=0.0)


def test_webhooks_field_round_trip_and_bad_values() -> None:
    hooks = [RQWebhook("http://example.com/a", "finished", method="POST", headers={"X-A": "b"}, timeout=3),
             RQWebhook("https://example.com/b", "failed")]  # fmt: skip
    field = json.dumps([hook.to_dict() for hook in hooks])
    job = Job.from_mapping("j", {b"webhooks": field.encode()})
    assert job.problems == [] and [w.to_dict() for w in job.webhooks] == [h.to_dict() for h in hooks]
    assert json.loads(job.to_mapping()["webhooks"]) == json.loads(field)  # as RQ writes it
    bad_entries = [{"url": "ftp://x", "job_status": "finished"}, {"url": "http://x", "job_status": "stopped"},
                   {"url": "http://x", "job_status": "failed", "method": "PUT"},
                   {"url": "http://x", "job_status": "failed", "timeout": 1.5},
                   {"url": "http://x", "job_status": "failed", "headers": [["a", "b"]]},
                   {"url": "http://x"}]  # fmt: skip
    for raw in [b"not-json", b"{}", *(json.dumps([entry]).encode() for entry in bad_entries)]:
        job = Job.from_mapping("j", {b"webhooks": raw})
        assert job.webhooks == [] and len(job.problems) == 1, raw  # RQ reads these as no webhooks too
        assert "webhooks" not in job.to_mapping()


def test_no_sender_without_webhooks(r: redis.Redis, redis_url: str) -> None:
    rq.Queue(connection=r).enqueue(webhook_jobs.add, 1, 1)
    result = run_workerd("--burst", "-u", redis_url, "-v")
    assert result.returncode == 0
    assert "webhook sender" not in result.stdout + result.stderr


def test_untrusted_mode_sends_no_webhooks(r: redis.Redis, redis_url: str, endpoint: Endpoint) -> None:
    """With ALLOWED_FUNCTIONS, a hash's URLs and headers are not trusted with a request (SSRF)."""
    from rq.serializers import JSONSerializer

    queue = rq.Queue(connection=r, serializer=JSONSerializer)
    job = queue.enqueue(webhook_jobs.add, 1, 2, webhooks=[RQWebhook(endpoint.url("/ok"), "finished")])
    _burst(redis_url, "--serializer", "json", "--allowed-function", "webhook_jobs.*")
    assert job.get_status(refresh=True) == "finished"
    assert endpoint.received == []


def test_a_sender_that_died_is_replaced(endpoint: Endpoint) -> None:
    sender = webhooks.Sender(Settings(), "test-worker")
    job = Job(id="j", webhooks=[webhooks.Webhook(endpoint.url("/ok"), "finished")])
    try:
        sender.send(job, "finished", time.time())
        wait_until(lambda: len(endpoint.at("/ok")) == 1, 30, message="the first webhook")
        first = sender._process
        assert first is not None
        first.kill()
        first.wait(10)
        sender.send(job, "finished", time.time())
        wait_until(lambda: len(endpoint.at("/ok")) == 2, 30, message="the webhook sent by a new sender")
        assert sender._process is not None and sender._process.pid != first.pid
    finally:
        sender.close()
