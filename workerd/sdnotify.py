"""systemd's notify protocol (sd_notify(3)): one datagram per state change to $NOTIFY_SOCKET.

A no-op without NOTIFY_SOCKET. Abstract-namespace sockets are written '@name' in the variable.

What the messages mean, for the master and for a single worker alike:
    READY=1     the process is up and supervising: its workers registered in Redis, or alive and
                waiting for Redis (STATUS= then says so). A start during an outage is a start.
    WATCHDOG=1  its loops turn. Never withheld because Redis is down.
    STATUS=     workers, busy, jobs since start; "waiting for Redis at ..." during an outage.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from workerd.reports import Report


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def watchdog_interval_s(self) -> float | None:
        """Half of WATCHDOG_USEC (when it is meant for us), as systemd recommends; None when off."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1_000_000 / 2

    def send(self, **fields: object) -> None:
        """notify(READY=1, STATUS='...'): keys are sent as given (READY, STATUS, WATCHDOG, ...)."""
        if self._socket is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        # systemd gone or busy: notification is best-effort by design.
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            self._socket.sendto(message, self._address)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class SingleWorkerNotifier:
    """A single worker (no master) speaks to systemd itself, from the reports a master would read.

    Installed as the worker's `report`: every loop of a worker reports at least once per heartbeat
    interval, Redis up or down (an outage is a report too), so WATCHDOG=1 follows them. READY=1
    comes with the first state report (registered, listening) or, Redis down at start, with the
    first outage report, as for a pool."""

    def __init__(self, where: str, forward: Callable[[Report], None]) -> None:
        self.notifier = Notifier()
        self.where = where  # the Redis the worker uses, password masked
        self.forward = forward
        self.interval_s = self.notifier.watchdog_interval_s()
        self.ready = False
        self.state = "starting"
        self.jobs_done = 0
        self.jobs_failed = 0
        self.waiting_since: float | None = None
        self.next_watchdog = 0.0

    def __call__(self, report: Report) -> None:
        self.forward(report)
        now = time.monotonic()
        if report.state is not None or report.heartbeat:  # it reached Redis
            self.waiting_since = None
        if report.outage and self.waiting_since is None:
            self.waiting_since = now
        if report.state is not None:
            self.state = report.state.value
        if report.jobs is not None:
            self.jobs_done = report.jobs
            self.jobs_failed = self.jobs_failed if report.failed is None else report.failed
        if report.stopping is not None:
            self.notifier.send(STOPPING=1, STATUS=f"stopping: {report.stopping}")
        elif not self.ready and (report.state is not None or self.waiting_since is not None):
            self.ready = True
            self.notifier.send(READY=1, STATUS=self.status_line(now))
        elif self.ready:
            self.notifier.send(STATUS=self.status_line(now))
        if self.interval_s is not None and now >= self.next_watchdog:
            # Half the master's pace: the pings ride on reports, which may come a heartbeat apart
            # (or, Redis dropping packets, one Redis call's timeouts apart: 35 s).
            self.next_watchdog = now + self.interval_s / 2
            self.notifier.send(WATCHDOG=1)

    def status_line(self, now: float) -> str:
        line = f"single worker, {self.state}; jobs since start: {self.jobs_done} run, {self.jobs_failed} failed"
        if self.waiting_since is None:
            return line
        return f"waiting for Redis at {self.where}: unreachable for {now - self.waiting_since:.0f} s; {line}"


def follow_single_worker(worker: Any) -> None:
    """Under systemd (NOTIFY_SOCKET set), make a single worker's reports its notifications."""
    if os.environ.get("NOTIFY_SOCKET"):
        worker.report = SingleWorkerNotifier(worker.outage.where, worker.report)
