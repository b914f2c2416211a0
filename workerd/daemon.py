"""Custom daemons: a class the master supervises like a worker, for work that is not a queue.

A group with `daemon = "pkg.Class"` runs instances of Class in its worker processes:

    class TableScanner:
        def init(self) -> None: ...        # once, after the fork (open connections here)
        def run(self) -> bool: ...         # one unit of work; True if it did something
        def after_run(self) -> None: ...   # optional, after every run()

When run() returns False the daemon sleeps (DAEMON_IDLE_S) before the next call. The same limits
apply as to queue workers: MAX_JOBS counts units of work, MAX_AGE and the memory limits recycle
the process, SIGTERM stops it after the unit in hand.
"""

from __future__ import annotations

import logging
import os
import select
import signal
from collections.abc import Callable

from workerd.errors import ExitCode
from workerd.process import STOP_SIGNALS, set_title
from workerd.reports import Report, WorkerState
from workerd.settings import Settings

log = logging.getLogger("workerd.daemon")
DAEMON_IDLE_S = 1.0


def run_daemon(daemon_class: type, settings: Settings, name: str, reporter: Callable[[Report], None]) -> ExitCode:
    stop_requested: list[int] = []
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: stop_requested.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the master across fork()
    daemon = daemon_class()
    getattr(daemon, "init", lambda: None)()
    after_run = getattr(daemon, "after_run", lambda: None)
    set_title(f"daemon {name}: {daemon_class.__qualname__}")
    log.info("Daemon %s: started %s with PID %d", name, daemon_class.__qualname__, os.getpid())
    reporter(Report(state=WorkerState.IDLE))
    units = 0
    while not stop_requested:
        did_work = bool(daemon.run())
        after_run()
        if did_work:
            units += 1
            reporter(Report(jobs=units, heartbeat=True))
            if settings.max_jobs is not None and units >= settings.max_jobs:
                log.info("Daemon %s: %d units done (max jobs reached)", name, units)
                break
        else:
            reporter(Report(heartbeat=True))
            select.select([wake_read], [], [], DAEMON_IDLE_S)
    log.info("Daemon %s: stopping", name)
    return ExitCode.OK
