"""Webhooks (RQ 2.12): an HTTP request sent when a job ends `finished` or `failed`.

RQ's semantics (rq 2.12.0: rq/webhook.py, rq/job.py send_webhooks, rq/worker/base.py), kept here:

* A job hash's `webhooks` field holds a JSON list of `Webhook.to_dict()`: url, job_status
  (`finished` or `failed`), method (`GET` or `POST`), headers (a dict or null), timeout (whole
  seconds > 0, default 10). A field that does not parse, or any entry that fails RQ's checks,
  reads as no webhooks (RQ logs it and goes on; here it is one of the job's `problems`).
* They fire once the terminal state is committed: `finished` after a success; `failed` after a
  failure that is not retried (retries exhausted, or none), and after a returned `Retry` past its
  `max` (with an empty exc_info). A retried attempt fires nothing, a stopped job (stop-job) fires
  nothing, a job recovered from a dead worker fires nothing (RQ's registry clean-up does not
  either). Only the webhooks whose job_status is the final status are sent, in their order.
* GET: no body, the webhook's headers. POST: a JSON body {job_id, func_name, status, enqueued_at,
  ended_at} (ISO 8601, UTC offset) plus exc_info for `failed`, `Content-Type: application/json`
  unless the headers override it. urllib's urlopen with the webhook's timeout; no retry; a failure
  (unreachable, timeout, HTTP status >= 400) is logged as a warning and never fails the job.

How, in workerd: the worker never waits for an endpoint. After the commit it hands the request to
its sender process (`Sender.send`: one datagram on a socket pair, non-blocking; when the sender is
behind and the socket is full, the webhook is dropped and logged, never waited for), which
performs the requests one after another (`run_sender`). Not a thread in the worker: a worker forks
horses, and a fork while another thread holds a lock can deadlock the child. The sender is spawned
(fork + exec of a fresh interpreter, which is safe whatever threads the worker runs, and inherits
none of its state) on the first webhook, so a worker whose jobs have none runs no sender; it costs
about 0.2 s of CPU and 30 MiB (USS) per worker that does; the first send, spawn included, takes
the worker ~5 ms. It dies with its worker (PR_SET_PDEATHSIG), and at a warm stop the worker gives
it DRAIN_S to send what it holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from workerd.utils import printable_id

if TYPE_CHECKING:
    from workerd.job import Job
    from workerd.settings import Settings

log = logging.getLogger("workerd.webhooks")

STATUSES = ("finished", "failed")
METHODS = ("GET", "POST")
DEFAULT_TIMEOUT_S = 10
# At a warm stop, how long the worker waits for its sender to deliver what it holds: RQ's default
# webhook timeout, i.e. what RQ's worker would have waited for one slow webhook before exiting.
DRAIN_S = 10.0
# A message (a job's webhooks and payload) larger than this is dropped and logged. Linux refuses a
# datagram larger than the socket's send buffer (~208 KiB by default) anyway; this is what the sender reads.
MAX_MESSAGE_BYTES = 1 << 20


@dataclasses.dataclass
class Webhook:
    """One entry of a job's `webhooks` field, checked as RQ's Webhook.__init__ checks it."""

    url: str
    job_status: str
    method: str = "GET"
    headers: dict[str, str] | None = None
    timeout: int = DEFAULT_TIMEOUT_S

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Webhook:
        """RQ's Webhook.from_dict: ValueError/TypeError/KeyError for what RQ refuses."""
        url, status = data["url"], data["job_status"]
        method, headers = data.get("method", "GET"), data.get("headers")
        timeout = data.get("timeout", DEFAULT_TIMEOUT_S)
        parsed = urlparse(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        if status not in STATUSES:
            raise ValueError(f"job_status must be 'finished' or 'failed', got {status!r}")
        if method not in METHODS:
            raise ValueError(f"method must be 'GET' or 'POST', got {method!r}")
        if headers and not isinstance(headers, dict):
            raise TypeError(f"headers must be a dict or None, got {type(headers).__name__}")
        # bool is an int to isinstance, and RQ accepts it: so do we (True is a 1 s timeout).
        if not isinstance(timeout, int) or timeout <= 0:
            raise ValueError(f"timeout must be a positive integer, got {timeout!r}")
        return cls(url=url, job_status=status, method=method, headers=headers, timeout=timeout)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_webhook(hook: Any) -> Webhook:
    """A webhook given to enqueue(webhooks=...): workerd's Webhook, rq's (anything with RQ's
    to_dict()), or its dict - each checked as RQ checks it."""
    if isinstance(hook, Webhook):
        return hook
    data = hook.to_dict() if callable(getattr(hook, "to_dict", None)) else hook
    if not isinstance(data, Mapping):
        raise TypeError(f"a webhook is a Webhook or its dict, not {type(hook).__name__}")
    return Webhook.from_dict(data)


def parse_field(raw: bytes | None, problems: list[str]) -> list[Webhook]:
    """A job hash's `webhooks` field; what does not parse reads as none, noted in `problems`."""
    if not raw:
        return []
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list):
            raise TypeError(f"a JSON list is expected, not {type(entries).__name__}")
        return [Webhook.from_dict(entry) for entry in entries]
    except Exception as exc:  # as RQ: whatever goes wrong reads as no webhooks (a deep nesting: RecursionError)
        problems.append(f"webhooks: not RQ's list of webhooks ({type(exc).__name__}: {exc}); read as none")
        return []


def encode_field(webhooks: Sequence[Webhook]) -> str | None:
    """The `webhooks` field as RQ writes it (absent when there are none)."""
    return json.dumps([webhook.to_dict() for webhook in webhooks]) if webhooks else None


def payload(job: Job, status: str, ended_at: float, exc_string: str | None) -> dict[str, Any]:
    """The JSON body of a POST webhook, as RQ's Webhook.get_payload builds it."""
    try:
        func_name: str | None = job.func_name
    except Exception:  # undecodable data: the job failed before anything ran
        func_name = None
    body: dict[str, Any] = {
        "job_id": job.id,
        "func_name": func_name,
        "status": status,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "ended_at": dt.datetime.fromtimestamp(ended_at, dt.timezone.utc).isoformat(),
    }
    if status == "failed":
        body["exc_info"] = exc_string
    return body


class Sender:
    """The worker's end: spawns the sender process on first use, hands it messages, never blocks."""

    def __init__(self, settings: Settings, worker_name: str) -> None:
        self.settings = settings
        self.worker_name = worker_name
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None

    def send(self, job: Job, status: str, ended_at: float, exc_string: str | None = None) -> None:
        """Hand the job's webhooks for `status` to the sender. Call only once the commit has landed."""
        matching = [webhook.to_dict() for webhook in job.webhooks if webhook.job_status == status]
        if not matching:
            return
        shown = printable_id(job.id)
        if self.settings.allowed_functions:
            # Untrusted-Redis mode: a forged hash must not make workers send requests where it likes (SSRF).
            log.warning("Job %s: %s webhook(s) not sent: webhooks are off in untrusted-Redis mode "
                        "(ALLOWED_FUNCTIONS is set; docs/SECURITY.md)", shown, status)  # fmt: skip
            return
        message = pickle.dumps((shown, matching, payload(job, status, ended_at, exc_string)))
        log.debug("Job %s: sending %d %s webhook(s)", shown, len(matching), status)
        why = "the webhook sender died at once, twice"
        for _attempt in range(2):  # a sender found dead is replaced once
            try:
                if len(message) > MAX_MESSAGE_BYTES:
                    raise OSError(f"the message is {len(message)} bytes, over {MAX_MESSAGE_BYTES}")
                self._connected().send(message)
                return
            except BlockingIOError:
                why = "the webhook sender is behind (its socket is full)"
            except (BrokenPipeError, ConnectionError):
                self._reap("had died")
                continue
            except Exception as exc:  # EMSGSIZE (over the socket's buffer), or no sender could be spawned
                why = f"{type(exc).__name__}: {exc}"
            break
        log.warning("Job %s: %s webhook(s) to %s dropped: %s", shown, status,
                    ", ".join(hook["url"] for hook in matching), why)  # fmt: skip

    def close(self, wait_s: float = DRAIN_S) -> None:
        """Let the sender deliver what it holds (up to `wait_s`), then end it."""
        if self._process is None:
            return
        assert self._socket is not None
        self._socket.close()  # the sender reads what is queued, then end-of-file, and exits
        self._socket = None
        try:
            self._process.wait(wait_s)
        except subprocess.TimeoutExpired:
            log.warning("Worker %s: the webhook sender did not finish within %g s; killed, with the webhooks it "
                        "still held", self.worker_name, wait_s)  # fmt: skip
            self._process.kill()
            self._process.wait()
        self._process = None

    def _connected(self) -> socket.socket:
        if self._socket is None:
            self._spawn()
        assert self._socket is not None
        return self._socket

    def _spawn(self) -> None:
        # SOCK_SEQPACKET rather than a pipe: a non-blocking write to a pipe of more than PIPE_BUF (4 KiB)
        # bytes can be partial, which would cut a message; a datagram is sent whole or not at all.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                setup = pickle.dumps((self.settings, self.worker_name))
            except Exception:  # a DICT_CONFIG holding objects pickle refuses: the sender logs as by default
                setup = pickle.dumps((None, self.worker_name))
            ours.send(setup)  # the first message: how to log; it waits in the socket for the sender
            ours.setblocking(False)
            package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ)  # the worker may run workerd from a checkout on sys.path, not installed
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
            # -c, not -m: workerd.webhooks is imported by the package itself (-m would run a second copy).
            command = [sys.executable, "-c", "import sys; from workerd.webhooks import main; main(sys.argv)",
                       str(os.getpid())]  # fmt: skip
            self._process = subprocess.Popen(command, stdin=theirs.fileno(), env=env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket = ours
        log.info("Worker %s: started its webhook sender, PID %d", self.worker_name, self._process.pid)

    def _reap(self, why: str) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None:
            code = self._process.poll()
            if code is None:
                self._process.kill()
                code = self._process.wait()
            log.warning("Worker %s: its webhook sender (PID %d) %s (exit status %s); starting another",
                        self.worker_name, self._process.pid, why, code)  # fmt: skip
            self._process = None


def deliver(webhook: Mapping[str, Any], body: Mapping[str, Any], shown_id: str) -> None:
    """One request, as RQ's Webhook.send makes it. Errors are logged, never raised."""
    from urllib.request import Request, urlopen

    url, headers = webhook["url"], webhook["headers"] or {}
    started = time.monotonic()
    try:
        if webhook["method"] == "GET":
            request = Request(url, headers=headers, method="GET")
        else:
            data = json.dumps(body).encode("utf-8")
            request = Request(url, data=data, headers={"Content-Type": "application/json", **headers}, method="POST")
        with urlopen(request, timeout=webhook["timeout"]) as response:
            log.debug("Job %s: webhook %s %s: HTTP %s", shown_id, webhook["method"], url, response.status)
    except Exception as exc:
        log.warning("Failed to send webhook to %s for job %s (after %.1f s): %s: %s", url, shown_id,
                    time.monotonic() - started, type(exc).__name__, exc)  # fmt: skip


def run_sender(channel: socket.socket) -> None:
    """The sender process's loop: one message, its requests in order; until the worker closes its end."""
    while True:
        message = channel.recv(MAX_MESSAGE_BYTES)
        if not message:
            return
        shown_id, webhooks, body = pickle.loads(message)
        for webhook in webhooks:
            deliver(webhook, body, shown_id)


def main(argv: Sequence[str]) -> None:
    """The sender process (argv: -c WORKER_PID), spawned by Sender with its socket as stdin."""
    from workerd.logs import set_worker_name, setup_logging
    from workerd.process import STOP_SIGNALS, die_with_parent, ignore_master_signals, set_title

    die_with_parent(int(argv[1]))  # a worker killed with -9 takes its sender along
    # A stop signal reaches every process of the pool (systemctl stop signals the cgroup): the sender
    # outlives it, so that the worker's last webhooks go out; it ends when the worker closes its end.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    ignore_master_signals()
    # Messages come from our own worker over a private socket pair: pickle is safe here.
    channel = socket.socket(fileno=0)
    first = channel.recv(MAX_MESSAGE_BYTES)
    if not first:
        return
    settings, worker_name = pickle.loads(first)
    if settings is None:
        from workerd.settings import Settings

        settings = Settings()
    setup_logging(settings)
    set_worker_name(worker_name)
    set_title(f"webhook sender of worker {worker_name}")
    run_sender(channel)
