"""The master: keeps each group's workers alive, enforces limits, speaks to systemd. It never touches jobs.

    run()      = setup (signals, preload, gc.freeze) ; while not done: run_once() ; teardown
    run_once() = wait for an event -> read worker reports -> act on signals -> reap children
                 -> enforce limits -> scale (spawn, recycle, rolling reload) or drain -> notify systemd

With PRELOAD, each generation's workers are forked by that generation's zygote (workerd.zygote),
which imported PRELOAD afresh, so they share those pages and a reload deploys new code; they are
re-parented to the master (a child subreaper), whose children they are. Without PRELOAD (or where
the master cannot be a subreaper: it then imports PRELOAD itself, once), the master forks them.
Each opens its own Redis connection after the fork. They report their state over a pipe (one JSON
object a line), which is how the master knows who is busy, who is alive (every loop of a worker
reports at least once per heartbeat interval, Redis up or down), and the deadline of an in-process
job. A worker (and its horse) dies with the master: PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import gc
import logging
import os
import random
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from workerd import connection as connection_module
from workerd import memory
from workerd.errors import BootFailureError, ConfigError, ExitCode, RedisAuthError, WorkerdError
from workerd.logs import LOGGING_SETTINGS, reopen_log_files, rotate_log_file_if_needed, setup_logging
from workerd.process import STOP_SIGNALS, describe_wait_status, die_with_parent, ignore_master_signals, set_title
from workerd.reports import ExitKind, KillReason, RecycleReason, Report, ReportError, StopReason, WorkerState
from workerd.sdnotify import Notifier
from workerd.settings import RESTART_ONLY, Settings, changed_settings
from workerd.utils import import_attribute
from workerd.zygote import SpawnRequest, Zygote, ZygoteError, become_subreaper, import_preloaded, wait_for_adoption
from workerd.zygote import start as start_zygote

if TYPE_CHECKING:
    from workerd.metrics import MetricsServer, PoolMetrics

log = logging.getLogger("workerd.master")

MAX_RESTART_BACKOFF_S = 30.0
# A worker that dies by itself within this long of being ready is crash-looping (every job it takes
# kills it, or something in Redis makes it fail): its group's restarts back off as after boot
# failures. A worker that lived this long after it was ready resets the backoff.
EARLY_DEATH_S = 30.0
# After the graceful timeout, workers get a cold stop (their jobs go back to the queue), and this
# long to do it before SIGKILL.
COLD_STOP_GRACE_S = 10.0
# The watchdog says whether workerd's loops turn, not whether Redis answers (a Redis outage is
# reported in STATUS=, the logs and the metrics). Every loop of a worker reports over its pipe at
# least once per heartbeat interval, Redis up or down (an outage is a report too). A started worker
# silent for this many heartbeats (60 s at the default 3 s) is stuck: the master stops pinging the
# watchdog, and systemd restarts the unit after WatchdogSec more.
STUCK_HEARTBEATS = 20
TICK_S = 0.25
_GROUP_ONLY_KEYS = ("name", "workers", "daemon")


@dataclass
class Group:
    name: str
    settings: Settings
    target: int
    daemon: str | None = None
    consecutive_boot_failures: int = 0
    consecutive_early_deaths: int = 0  # died within EARLY_DEATH_S of being ready (never given up on)
    next_spawn_at: float = 0.0
    # Workers seen dying with a job in hand: the next worker of the group recovers it at once.
    predecessors: list[tuple[str, str | None]] = field(default_factory=list)


def build_groups(settings: Settings) -> list[Group]:
    """The groups of the settings; without [[groups]], one group 'default' of WORKERS workers."""
    if not settings.groups:
        return [Group("default", settings, settings.workers or 1)]
    base = settings.model_dump(exclude={"groups", "workers"})
    groups = []
    for position, table in enumerate(settings.groups, start=1):
        values = {str(k).lower(): v for k, v in table.items()}
        name = str(values.pop("name", f"group{position}"))
        where = f"groups[{position}] ({name})"
        workers = values.pop("workers", 1)
        daemon = values.pop("daemon", None)
        for key in values:
            if key not in Settings.model_fields or key == "groups":
                close = difflib.get_close_matches(key, [*Settings.model_fields, *_GROUP_ONLY_KEYS], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"{where}: workers = {workers!r}: must be a whole number >= 1")
        try:
            group_settings = Settings.model_validate({**base, **values})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{where}: {problems}") from None
        if daemon is not None:
            try:
                import_attribute(str(daemon))
            except Exception as exc:
                raise ConfigError(f"{where}: daemon = {daemon!r} cannot be imported: {exc}") from exc
        groups.append(Group(name, group_settings, workers, str(daemon) if daemon else None))
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"group names must be unique, got {names}")
    return groups


class StopMode(enum.Enum):
    """How the master stops its pool: warm (jobs finish, up to GRACEFUL_TIMEOUT) or cold (now)."""

    WARM = "warm"
    COLD = "cold"


@dataclass
class Child:
    group: str
    generation: int
    pid: int
    name: str
    status_fd: int
    started: float = field(default_factory=time.monotonic)
    buffer: bytes = b""
    ready_at: float | None = None  # monotonic time of its first state report (registered, listening)
    state: WorkerState = WorkerState.STARTING
    job: str | None = None
    kill_at_epoch: float | None = None
    jobs_done: int = 0
    jobs_failed: int = 0
    last_report: float = field(default_factory=time.monotonic)  # monotonic time of its last report of any kind
    outage_since: float | None = None  # it reported that it cannot reach Redis, since then (monotonic)
    stop_reason: StopReason | None = None  # why the master asked it to stop (or killed it)
    stop_detail: str | None = None  # ... as logged
    kill_reason: str | None = None  # why the master SIGKILLed it (its job then fails with this)
    killed_for: KillReason | None = None  # ... as a metric label
    worker_stop_reason: StopReason | None = None  # why the worker said it stops (max jobs, ...)

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def reported(self) -> bool:
        """It said it is alive: ready, or waiting for Redis (a worker that could not register yet)."""
        return self.ready_at is not None or self.outage_since is not None

    @property
    def recycle(self) -> RecycleReason | None:
        """The recycle its stop is, if it is one: the master's reason first, then the worker's."""
        for reason in (self.stop_reason, self.worker_stop_reason):
            if reason is not None and reason.recycle is not None:
                return reason.recycle
        return None

    def exit_kind(self, clean: bool) -> ExitKind:
        """How it ended: killed by the master, recycled, asked to stop (or done), or died."""
        if self.killed_for is not None:
            return ExitKind.KILLED
        if self.recycle is not None:
            return ExitKind.RECYCLED
        if clean or self.stop_reason is not None:
            return ExitKind.STOPPED
        return ExitKind.DIED

    def apply(self, report: Report, now: float | None = None) -> None:
        """Take in one report, received at `now` on the master's clock (monotonic when not given)."""
        now = time.monotonic() if now is None else now
        self.last_report = now  # any report: its loop turns, whatever Redis does
        if report.state is not None:
            self.state = report.state
            if self.ready_at is None:
                self.ready_at = now
            self.job = report.job
            self.kill_at_epoch = report.kill_at
        if report.jobs is not None:
            self.jobs_done = report.jobs
            self.jobs_failed = self.jobs_failed if report.failed is None else report.failed
        if report.heartbeat or report.state is not None:  # it reached Redis
            self.outage_since = None
        if report.outage and self.outage_since is None:
            self.outage_since = self.last_report
        if report.stop_reason is not None:
            self.worker_stop_reason = report.stop_reason


class Master:
    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.settings = settings
        self.clock = clock  # every deadline of the loop is on this clock (tests/test_master_loop.py fakes it)
        self.reload_settings = reload
        self.groups = build_groups(settings)
        self.children: dict[int, Child] = {}
        self.generation = 0
        self.exit_code = ExitCode.OK
        self.notifier = Notifier()
        self._signals: list[int] = []
        self._wake_read, self._wake_write = -1, -1
        self._stopping: StopMode | None = None
        self._stop_deadline = 0.0
        self._kill_deadline: float | None = None
        self._done = False
        self._ready_sent = False
        self._serial = 0
        self._name_base = settings.name or f"{socket.gethostname()}.{os.getpid()}"
        self._next_limit_check = 0.0
        self._next_watchdog = 0.0
        self._next_status = 0.0
        self._burst_finished: set[str] = set()
        self._stuck: set[int] = set()  # pids of the workers silent past _stuck_after_s
        # Jobs of the workers that exited (recycled, replaced on reload, died): STATUS= counts since start.
        self._exited_jobs_done = 0
        self._exited_jobs_failed = 0
        self.metrics: PoolMetrics | None = None
        self._metrics_server: MetricsServer | None = None
        self.zygote: Zygote | None = None  # the current generation's, with PRELOAD on a subreaper master
        self._old_zygotes: list[Zygote] = []  # stopped, not reaped yet
        self._zygote_failures = 0
        self._next_zygote_at = 0.0
        self._adopts: bool | None = None  # it is a child subreaper (known once PRELOAD needs it)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> ExitCode:
        self.setup()
        try:
            while not self._done:
                self.run_once()
        except WorkerdError as exc:
            log.error("master: %s", exc)
            self.exit_code = exc.exit_code
        finally:
            self.teardown()
        return self.exit_code

    def run_once(self) -> None:
        readable, writable = self.wait_for_events(TICK_S)
        self.read_reports()
        self.handle_signals()
        self.reap()
        self.enforce_limits()
        self.serve_metrics(readable, writable)
        rotate_log_file_if_needed(self.settings)
        if self._stopping:
            self.drain()
        else:
            self.scale()
        self.notify()

    # -- setup and teardown -----------------------------------------------------------------------

    def setup(self) -> None:
        # First, with nothing of the master's to leave behind yet; a failed import is the ConfigError
        # it was before the master existed (check_imports): the same message and exit code.
        self.zygote = self.preload(self.settings, self.groups, self.generation, relog=False)
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_write)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
                       signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD):  # fmt: skip
            signal.signal(signum, self._record_signal)
        if self.settings.pid:
            with open(self.settings.pid, "w") as handle:
                handle.write(f"{os.getpid()}\n")
        self.start_metrics()
        # Move everything imported so far out of the collector's reach: a collection in a child
        # would otherwise write to (and so un-share) every object's page it shares with the master.
        gc.freeze()
        log.info("master %d: starting %s", os.getpid(),
                 ", ".join(f"{g.name}: {g.target} worker{'s' * (g.target > 1)}" for g in self.groups))  # fmt: skip

    def preload(self, settings: Settings, groups: list[Group], generation: int, relog: bool) -> Zygote | None:
        """Import PRELOAD for a generation: in a new zygote (relog: it sets up the changed logging
        first), or, where the master cannot adopt the zygote's workers, in the master itself."""
        if not settings.preload:
            return None
        if self._adopts is None:
            self._adopts = become_subreaper()
        if not self._adopts:  # not Linux: fork the workers from the master, as before zygotes
            for module in settings.preload:
                log.info("master: preloaded %s in %.0f ms", module, import_preloaded(module, settings))
            return None

        def prepare() -> None:
            self._leave_master()
            if relog:
                setup_logging(settings)

        def become_worker(request: SpawnRequest, write_fd: int) -> NoReturn:
            group = next(g for g in groups if g.name == request.group)
            self._child_main(lambda: wait_for_adoption(master_pid), group, request.name, write_fd,
                             request.predecessors)  # fmt: skip

        master_pid = os.getpid()
        gc.freeze()  # the zygote's collections (while it imports PRELOAD) would otherwise un-share the master's pages
        return start_zygote(settings, generation, prepare, become_worker)

    def start_metrics(self) -> None:
        """METRICS_PORT: listen for /metrics and /health, answered by serve_metrics in this loop (the
        master forks: it runs no other thread, see workerd.metrics.MetricsServer)."""
        if self.settings.metrics_port is None:
            return
        from workerd.metrics import PoolMetrics, listen

        self.metrics = PoolMetrics(self.settings, self.groups)
        self._metrics_server = listen(self.settings)
        log.info("master: metrics on http://%s:%d/metrics (and /health)", self.settings.metrics_host,
                 self._metrics_server.port)  # fmt: skip

    def teardown(self) -> None:
        for zygote in self._zygotes():
            zygote.kill()
        for child in list(self.children.values()):
            _signal(child.pid, signal.SIGKILL)
        deadline = self.clock() + 5
        while self.children and self.clock() < deadline:
            self.reap(block_s=0.05)
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.settings.pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.pid)
        self.notifier.close()
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- events and signals (the handler only records) ------------------------------------------

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def wait_for_events(self, timeout_s: float) -> tuple[list[int], list[int]]:
        """Wait for a signal, a report, or a metrics client; returns the readable and writable fds."""
        fds = [self._wake_read, *(c.status_fd for c in self.children.values())]
        server = self._metrics_server
        readable: list[int] = []
        writable: list[int] = []
        with contextlib.suppress(InterruptedError):
            readable, writable, _ = select.select([*fds, *(server.read_fds() if server else [])],
                                                  server.write_fds() if server else [], [], timeout_s)  # fmt: skip
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 512):
                pass
        return readable, writable

    def serve_metrics(self, readable: list[int], writable: list[int]) -> None:
        """Give the metrics this step's pool, then answer the scrapes that are ready (never blocks on a client)."""
        if self.metrics is None or self._metrics_server is None:
            return
        self.metrics.set_pool((c.group, c.state.value, c.name, c.ready, pid) for pid, c in self.children.items())
        self._metrics_server.handle(readable, writable, self.metrics)

    def read_reports(self) -> None:
        for child in self.children.values():
            self._read_reports_of(child)

    def _read_reports_of(self, child: Child) -> None:
        while True:
            try:
                chunk = os.read(child.status_fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            child.buffer += chunk
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            try:
                report = Report.decode(line)
            except ReportError as exc:
                log.error("master: worker %s (pid %d): %s", child.name, child.pid, exc)
                continue
            child.apply(report, self.clock())
            if self.metrics is not None:
                self.metrics.on_report(child.group, report)

    def handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGINT, signal.SIGTERM):
                if self._stopping is None:
                    self.begin_stop(StopMode.WARM)
                else:
                    self.begin_stop(StopMode.COLD)
            elif signum == signal.SIGQUIT:
                self.begin_stop(StopMode.COLD)
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum in (signal.SIGTTIN, signal.SIGTTOU):
                self.resize(+1 if signum == signal.SIGTTIN else -1)
            elif signum == signal.SIGUSR1:
                self.reopen_logs()

    # -- stopping ---------------------------------------------------------------------------------

    def begin_stop(self, mode: StopMode) -> None:
        if mode is StopMode.WARM:
            self._stopping = StopMode.WARM
            self._stop_deadline = self.clock() + self.settings.graceful_timeout
            log.info("master: warm stop: %d workers finish their jobs (up to %g s), then exit",
                     len(self.children), self.settings.graceful_timeout)  # fmt: skip
            for child in self.children.values():
                self._ask_to_stop(child, StopReason.WARM_SHUTDOWN, "shutting down")
        elif self._kill_deadline is None:
            self._stopping = StopMode.COLD
            log.warning("master: cold stop: running jobs go back to their queues")
            self._cold_stop_all()
        self.notifier.send(STOPPING=1, STATUS="stopping")

    def _cold_stop_all(self) -> None:
        self._kill_deadline = self.clock() + COLD_STOP_GRACE_S
        for child in self.children.values():
            _signal(child.pid, signal.SIGQUIT)

    def drain(self) -> None:
        now = self.clock()
        if not self.children:
            log.info("master: all workers stopped; exiting")
            self._done = True
            return
        if self._stopping is StopMode.WARM and self._kill_deadline is None and now >= self._stop_deadline:
            log.warning("master: graceful timeout of %g s reached with %d workers busy; stopping them cold",
                        self.settings.graceful_timeout, len(self.children))  # fmt: skip
            self._cold_stop_all()
        if self._kill_deadline is not None and now >= self._kill_deadline:
            for child in self.children.values():
                log.error("master: worker %s did not stop; SIGKILL", child.name)
                _signal(child.pid, signal.SIGKILL)
                if self.metrics is not None:
                    self.metrics.on_shutdown_kill(child.group)
            self._kill_deadline = now + COLD_STOP_GRACE_S

    # -- children -------------------------------------------------------------------------------

    def spawn(self, group: Group) -> Child | None:
        """Start a worker of the group: from the zygote if there is one; None if it failed."""
        if self.settings.preload and self._adopts and self.zygote is None and not self._ensure_zygote():
            return None
        read_fd, write_fd = os.pipe()
        self._serial += 1
        name = f"{self._name_base}.{group.name}.{self._serial}"
        predecessors, group.predecessors = group.predecessors, []
        pid = self._fork_worker(group, name, read_fd, write_fd, predecessors)
        os.close(write_fd)
        if pid is None:
            os.close(read_fd)
            group.predecessors = predecessors + group.predecessors  # for the next try
            return None
        os.set_blocking(read_fd, False)
        now = self.clock()
        child = Child(group=group.name, generation=self.generation, pid=pid, name=name, status_fd=read_fd,
                      started=now, last_report=now)  # fmt: skip
        self.children[pid] = child
        log.info("master: started worker %s (pid %d)", name, pid)
        return child

    def _fork_worker(self, group: Group, name: str, read_fd: int, write_fd: int,
                     predecessors: list[tuple[str, str | None]]) -> int | None:  # fmt: skip
        if self.zygote is not None:
            try:
                pid = self.zygote.spawn(SpawnRequest(group.name, name, predecessors), write_fd)
            except ZygoteError as exc:
                log.error("master: %s; worker %s not started, the zygote is restarted", exc, name)
                self._lose_zygote(self.zygote)
                return None
            self._zygote_failures = 0
            return pid
        master_pid = os.getpid()
        # Block the stop signals across fork(): one sent to the child before it has installed its
        # own handlers would otherwise hit the master's inherited handler and be lost. The child
        # unblocks them once its handlers are in place; pending ones are delivered then.
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)

            def prepare() -> None:
                die_with_parent(master_pid)
                self._leave_master()

            self._child_main(prepare, group, name, write_fd, predecessors)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return pid

    def _leave_master(self) -> None:
        """In a child of the master (a worker it forks, a zygote): drop the master's fds and handlers."""
        signal.set_wakeup_fd(-1)
        if self._metrics_server is not None:
            self._metrics_server.release()
        for fd in (self._wake_read, self._wake_write, *(c.status_fd for c in self.children.values())):
            with contextlib.suppress(OSError):
                os.close(fd)
        for zygote in self._zygotes():
            zygote.sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        ignore_master_signals()

    def _child_main(self, prepare: Callable[[], None], group: Group, name: str, write_fd: int,
                    predecessors: list[tuple[str, str | None]]) -> NoReturn:  # fmt: skip
        """In the forked child: prepare (die with the master, leave its state behind), then become a
        worker (or a daemon) of `group`. Never returns."""
        code = int(ExitCode.SOFTWARE)
        try:
            prepare()
            os.set_blocking(write_fd, False)
            code = int(run_child(group, name, _pipe_reporter(write_fd), predecessors))
        except WorkerdError as exc:
            log.error("worker %s: %s", name, exc)
            code = int(exc.exit_code)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        except BaseException:
            log.error("worker %s crashed:\n%s", name, traceback.format_exc())
        finally:
            os._exit(code)

    def reap(self, block_s: float = 0.0) -> None:
        while self.children or self._zygotes():
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if block_s <= 0:
                    return
                time.sleep(block_s)  # teardown only: a bounded wait for SIGKILLed children
                block_s = 0
                continue
            child = self.children.pop(pid, None)
            if child is not None:
                self._child_exited(child, status)
            else:  # a zygote; or an orphan the master adopted as a subreaper (a job's grandchild): reaped
                self._zygote_exited(pid, status)

    # -- zygotes ----------------------------------------------------------------------------------

    def _zygotes(self) -> list[Zygote]:
        return [*self._old_zygotes, *([self.zygote] if self.zygote is not None else [])]

    def _zygote_exited(self, pid: int, status: int) -> None:
        how = describe_wait_status(status)
        stopped = [z for z in self._old_zygotes if z.pid == pid]
        self._old_zygotes = [z for z in self._old_zygotes if z.pid != pid]
        for zygote in stopped:
            log.info("master: zygote %d of generation %d exited (%s)", pid, zygote.generation, how)
        if self.zygote is not None and self.zygote.pid == pid:
            log.warning("master: zygote %d of generation %d died (%s)", pid, self.zygote.generation, how)
            self.zygote.stop()  # reaped already: no signal to its pid, which may be reused
            self.zygote = None
            self._back_off_zygote()

    def _lose_zygote(self, zygote: Zygote) -> None:
        """The current zygote failed to fork a worker: kill it; the next spawn starts another, backed off."""
        zygote.kill()
        self._old_zygotes.append(zygote)  # until reaped
        self.zygote = None
        self._back_off_zygote()

    def _back_off_zygote(self) -> None:
        self._zygote_failures += 1
        delay = min(0.5 * 2 ** (self._zygote_failures - 1), MAX_RESTART_BACKOFF_S)
        self._next_zygote_at = self.clock() + delay
        log.warning("master: restarting the zygote of generation %d in %.1f s (failure %d in a row)",
                    self.generation, delay, self._zygote_failures)  # fmt: skip

    def _ensure_zygote(self) -> bool:
        """Restart the current generation's zygote, once its backoff is over (it imports PRELOAD
        afresh: what is on disk now). False while there is none."""
        if self.clock() < self._next_zygote_at:
            return False
        try:
            self.zygote = self.preload(self.settings, self.groups, self.generation, relog=False)
        except (ConfigError, ZygoteError) as exc:
            log.error("master: cannot restart the zygote of generation %d: %s", self.generation, exc)
            self._back_off_zygote()
            return False
        return self.zygote is not None

    def _child_exited(self, child: Child, status: int) -> None:
        # What it wrote just before it died, e.g. that it was ready: a boot failure is judged on it.
        self._read_reports_of(child)
        with contextlib.suppress(OSError):
            os.close(child.status_fd)
        self._exited_jobs_done += child.jobs_done
        self._exited_jobs_failed += child.jobs_failed
        group = self._group(child.group)
        lived_s = self.clock() - child.started
        # Exit code 0 with a job in hand is no clean stop (a worker reports idle before it stops):
        # an in-process job called os._exit(0). Its replacement recovers the job, as after a crash.
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and child.job is None
        how = describe_wait_status(status)
        if self.metrics is not None:
            self.metrics.on_exit(child.group, child.exit_kind(clean), child.killed_for, child.recycle)
        if child.stop_reason or (clean and not self._stopping):
            log.info("master: worker %s exited (%s) after %.1f s%s", child.name, how, lived_s,
                     f": {child.stop_detail}" if child.stop_detail else "")  # fmt: skip
        else:
            log.warning("master: worker %s died (%s) after %.1f s%s", child.name, how, lived_s,
                        f"; it was running job {child.job}" if child.job else "")  # fmt: skip
        if group is None:
            return
        if not clean:  # its replacement recovers its job (if any) and frees its scheduler locks
            group.predecessors.append((child.name, child.kill_reason))
        if clean and group.settings.burst:
            self._burst_finished.add(child.group)
        if not self._stopping:
            _give_up_if_no_restart_helps(child, status, how)
            self._pace_restarts(group, child, clean, how)

    def _pace_restarts(self, group: Group, child: Child, clean: bool, how: str) -> None:
        """Back off the group's restarts after a worker died by itself before it was ready (a boot
        failure: after BOOT_FAILURE_LIMIT in a row the master gives up) or within EARLY_DEATH_S of
        it (a crash loop: backed off the same way, never given up on, as the cause may be a job or
        what Redis holds rather than the settings). One that lived longer (killed from outside by
        the OOM killer or an operator) is simply replaced, and resets the backoff."""
        ready_for_s = None if child.ready_at is None else self.clock() - child.ready_at
        lived_long = ready_for_s is not None and ready_for_s >= EARLY_DEATH_S
        if ready_for_s is not None:
            group.consecutive_boot_failures = 0
        if lived_long:
            group.consecutive_early_deaths = 0
        if clean or child.stop_reason or child.kill_reason or lived_long:
            return
        if ready_for_s is None:
            group.consecutive_boot_failures += 1
            failures = group.consecutive_boot_failures
            if failures >= self.settings.boot_failure_limit:
                raise BootFailureError(
                    f"workers of group '{group.name}' failed to start {failures} times in a row (last: {how}); "
                    "see the log above for the cause, fix it, then start workerd again"
                )
            why = f"failure {failures} of {self.settings.boot_failure_limit}"
        else:
            group.consecutive_early_deaths += 1
            failures = group.consecutive_early_deaths
            why = f"it died {ready_for_s:.1f} s after it was ready; {failures} such deaths in a row"
        delay = min(0.5 * 2 ** (failures - 1), MAX_RESTART_BACKOFF_S)
        group.next_spawn_at = self.clock() + delay
        log.warning("master: restarting a worker of group '%s' in %.1f s (%s)", group.name, delay, why)

    def _group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)

    def _ask_to_stop(self, child: Child, reason: StopReason, detail: str) -> None:
        if child.stop_reason is None:
            child.stop_reason, child.stop_detail = reason, detail
            _signal(child.pid, signal.SIGTERM)

    def _kill(self, child: Child, why: KillReason, reason: str) -> None:
        log.error("master: killing worker %s: %s", child.name, reason)
        child.kill_reason = reason
        child.killed_for = why
        if child.stop_reason is None:
            child.stop_reason, child.stop_detail = StopReason.KILLED, "killed"
        _signal(child.pid, signal.SIGKILL)

    # -- limits ---------------------------------------------------------------------------------

    def enforce_limits(self) -> None:
        now = self.clock()
        if now < self._next_limit_check:
            return
        self._next_limit_check = now + self.settings.memory_check_interval
        for child in list(self.children.values()):
            group = self._group(child.group)
            if group is None or child.kill_reason:
                continue
            limits = group.settings
            if child.kill_at_epoch is not None and child.job and time.time() > child.kill_at_epoch:
                self._kill(child, KillReason.TIMEOUT, f"JobTimeoutException: job {child.job} ran past its timeout "
                                                      "in-process; the worker running it was killed")  # fmt: skip
                continue
            if limits.max_age is not None and now - child.started > limits.max_age:
                self._ask_to_stop(child, StopReason.MAX_AGE, f"max age of {limits.max_age:g} s reached")
            if limits.soft_memory_limit is None and limits.hard_memory_limit is None:
                continue
            use = memory.measure(child.pid)
            if use is None:
                continue
            if limits.hard_memory_limit is not None and use.uss_mib > limits.hard_memory_limit:
                why = (f"MemoryLimitExceeded: worker {child.name} used {use.uss_mib:.0f} MiB, over the hard memory "
                       f"limit of {limits.hard_memory_limit} MiB")  # fmt: skip
                self._kill(child, KillReason.HARD_MEMORY, why)
            elif limits.soft_memory_limit is not None and use.uss_mib > limits.soft_memory_limit:
                self._ask_to_stop(
                    child,
                    StopReason.SOFT_MEMORY,
                    f"soft memory limit: {use.uss_mib:.0f} MiB > {limits.soft_memory_limit} MiB",
                )

    # -- scaling, recycling and rolling reloads ---------------------------------------------------

    def scale(self) -> None:
        for child in self.children.values():
            if self._group(child.group) is None:
                self._ask_to_stop(child, StopReason.RELOAD, "its group was removed from the settings")
        for group in self.groups:
            self._scale_group(group)
        if not self.children and all(g.name in self._burst_finished for g in self.groups):
            log.info("master: burst finished in every group; exiting")
            self._done = True

    def _scale_group(self, group: Group) -> None:
        # A worker the master killed keeps its slot until it is reaped, so that its replacement
        # is told about the job it held (see Group.predecessors).
        mine = [c for c in self.children.values() if c.group == group.name and (c.stop_reason is None or c.kill_reason)]
        current = [c for c in mine if c.generation == self.generation]
        outdated = [c for c in mine if c.generation < self.generation]
        ready_current = [c for c in current if c.ready]
        if outdated and len(ready_current) + len(outdated) > group.target:
            self._ask_to_stop(outdated.pop(0), StopReason.RELOAD, "replaced after a reload")
        while len(current) > group.target:
            self._ask_to_stop(current.pop(), StopReason.SCALE_DOWN, "pool shrunk")
        if group.name in self._burst_finished or self.clock() < group.next_spawn_at:
            return
        # During a rolling reload, one new worker at a time, and only once the last one is ready.
        wanted = group.target + 1 - len(outdated) if outdated else group.target
        starting = [c for c in current if not c.ready]
        if len(current) < wanted and not (outdated and starting):
            self.spawn(group)

    def resize(self, delta: int) -> None:
        group = self.groups[0]
        group.target = max(1, group.target + delta)
        log.info("master: group '%s' now has %d workers (%s)", group.name, group.target,
                 "TTIN" if delta > 0 else "TTOU")  # fmt: skip

    def reload(self) -> None:
        if self.reload_settings is None:
            log.warning("master: HUP ignored: no settings file to reload")
            return
        self.notifier.send(RELOADING=1, STATUS="reloading settings")
        try:
            settings = self.reload_settings()
            groups = build_groups(settings)
            changed = changed_settings(self.settings, settings)
            # The new generation's PRELOAD, imported afresh by its zygote: the code on disk now.
            zygote = self.preload(settings, groups, self.generation + 1, relog=bool(changed & LOGGING_SETTINGS))
        except (WorkerdError, ImportError) as exc:
            log.error("master: reload failed, keeping the current settings and workers: %s", exc)
            self.notifier.send(READY=1, STATUS="reload failed; running with the previous settings")
            return
        # The old generation's workers are the master's children: they drain without their zygote.
        if self.zygote is not None:
            self.zygote.stop()
            self._old_zygotes.append(self.zygote)
        self.zygote, self._zygote_failures = zygote, 0
        pending = sorted(changed & RESTART_ONLY)
        # What the master read once at start stays as it was, so that it keeps acting on it (the
        # pid file it wrote is the one it removes at exit); a later reload warns again.
        settings = settings.model_copy(update={name: getattr(self.settings, name) for name in pending})
        # The file's worker counts win over earlier TTIN/TTOU adjustments.
        self.settings = settings
        self.groups = groups
        self.generation += 1
        if self.metrics is not None:
            self.metrics.set_groups(groups)
        if changed & LOGGING_SETTINGS:  # before the next line, and before the new workers inherit it
            setup_logging(settings)
        log.info("master: settings reloaded (changed: %s); replacing workers one at a time",
                 ", ".join(sorted(changed)) or "none")  # fmt: skip
        if pending:
            log.warning("master: changed settings that need a restart to take effect (kept as they were): %s",
                        ", ".join(pending))  # fmt: skip
        self.notifier.send(READY=1)

    def reopen_logs(self) -> None:
        # Workers notice a moved log file by themselves (WatchedFileHandler); the master reopens now.
        reopen_log_files()
        log.info("master: log files reopened")

    # -- systemd and the process title ------------------------------------------------------------

    def notify(self) -> None:
        now = self.clock()
        live = list(self.children.values())
        busy = sum(1 for c in live if c.state is WorkerState.BUSY)
        target = sum(g.target for g in self.groups)
        if not self._ready_sent and not self._stopping and sum(1 for c in live if c.reported) >= target:
            # READY = the pool is up and supervised: each worker registered in Redis, or alive and
            # waiting for it. A start during a Redis outage is a start, so that neither TimeoutStartSec
            # nor the start limit can turn an outage of any length into a failed unit.
            self._ready_sent = True
            self.notifier.send(READY=1, STATUS=self._status_line(live, busy))
            waiting = sum(1 for c in live if c.outage_since is not None)
            log.info("master: %d workers ready%s", target,
                     f" ({waiting} waiting for Redis)" if waiting else "")  # fmt: skip
        if now >= self._next_status:
            self._next_status = now + 2.0
            waiting_title = ", waiting for Redis" if any(c.outage_since is not None for c in live) else ""
            set_title(f"master: {' '.join(f'{g.name} {self._count(g)}/{g.target}' for g in self.groups)}, "
                      f"{busy} busy{waiting_title}")  # fmt: skip
            if self._ready_sent:
                self.notifier.send(STATUS=self._status_line(live, busy))
            if self._stopping and self.notifier.enabled:
                remaining_s = max(self._stop_deadline - now, 0) + COLD_STOP_GRACE_S + 5
                self.notifier.send(EXTEND_TIMEOUT_USEC=int(remaining_s * 1_000_000))
        alive = self.alive()  # judged at every turn, so that a stuck worker is logged without systemd too
        interval = self.notifier.watchdog_interval_s()
        if interval is not None and now >= self._next_watchdog and alive:
            self._next_watchdog = now + interval
            self.notifier.send(WATCHDOG=1)

    def alive(self) -> bool:
        """The watchdog is fed while every started worker reports over its pipe: its loop turns,
        whether or not it reaches Redis. A stuck one is logged once, when it falls silent."""
        now = self.clock()
        children = self.children.items()
        stuck = {pid for pid, c in children if c.reported and now - c.last_report >= self._stuck_after_s(c)}
        for pid in sorted(stuck - self._stuck):
            child = self.children[pid]
            log.error("master: worker %s (pid %d) has not reported for %.0f s: stuck; the systemd watchdog (if "
                      "any) is no longer pinged", child.name, pid, now - child.last_report)  # fmt: skip
        for pid in sorted(self._stuck - stuck):
            if pid in self.children:
                log.warning("master: worker %s (pid %d) reports again", self.children[pid].name, pid)
        self._stuck = stuck
        return not stuck

    def _stuck_after_s(self, child: Child) -> float:
        settings = self._settings_of(child)
        heartbeat_s = settings.effective_heartbeat_s
        # A worker blocked in one Redis call to a host that drops packets (rather than refusing
        # them) is waiting for Redis, not stuck: the call ends within the client's timeouts.
        one_call_s = settings.redis_connect_timeout + settings.redis_socket_timeout
        return max(STUCK_HEARTBEATS * heartbeat_s, one_call_s + heartbeat_s)

    def _count(self, group: Group) -> int:
        return sum(1 for c in self.children.values() if c.group == group.name)

    def _status_line(self, live: list[Child], busy: int) -> str:
        done = self._exited_jobs_done + sum(c.jobs_done for c in live)
        failed = self._exited_jobs_failed + sum(c.jobs_failed for c in live)
        line = f"{len(live)} workers, {busy} busy; jobs since start: {done} run, {failed} failed"
        waiting = [c for c in live if c.outage_since is not None]
        if not waiting:
            return line
        down_s = self.clock() - min(c.outage_since or 0.0 for c in waiting)
        where = sorted({connection_module.describe(self._settings_of(c)) for c in waiting})
        return (f"waiting for Redis at {', '.join(where)}: unreachable for {down_s:.0f} s "
                f"({len(waiting)} of {len(live)} workers); {line}")  # fmt: skip

    def _settings_of(self, child: Child) -> Settings:
        group = self._group(child.group)
        return group.settings if group is not None else self.settings


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _pipe_reporter(fd: int) -> Callable[[Report], None]:
    def report(report: Report) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(fd, report.encode())

    return report


def run_child(group: Group, name: str, reporter: Callable[[Report], None],
              predecessors: list[tuple[str, str | None]]) -> ExitCode:  # fmt: skip
    """The body of a forked child: a queue worker, or the group's daemon class."""
    settings = group.settings
    if group.daemon:
        from workerd.daemon import run_daemon

        return run_daemon(import_attribute(group.daemon), settings, name, reporter)
    from workerd.worker import Worker

    max_jobs = settings.max_jobs
    if max_jobs is not None and settings.max_jobs_jitter:
        max_jobs += random.randint(0, settings.max_jobs_jitter)
    worker_class: type[Worker] = import_attribute(settings.worker_class) if settings.worker_class else Worker
    # pid=None: the PID file is the master's.
    worker = worker_class(settings.queues, settings=settings, name=name, reporter=reporter,
                          predecessors=predecessors, max_jobs=max_jobs, pid=None)  # fmt: skip
    return worker.run()


def uses_master(settings: Settings) -> bool:
    return settings.workers is not None or bool(settings.groups)


def _give_up_if_no_restart_helps(child: Child, status: int, how: str) -> None:
    """A worker that could not start because Redis refused its credentials (77) or its settings are
    invalid (78) meets the same refusal at every restart: the master stops at once, with that code."""
    if child.ready_at is not None or not os.WIFEXITED(status):
        return
    hopeless: dict[int, type[WorkerdError]] = {ExitCode.NO_PERMISSION: RedisAuthError, ExitCode.CONFIG: ConfigError}
    error = hopeless.get(os.WEXITSTATUS(status))
    if error is not None:
        raise error(f"worker {child.name} could not start ({how}): see its error above; restarting it would "
                    "not help, so the master stops")  # fmt: skip
