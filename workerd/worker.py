"""The worker: registers in Redis, fetches a job, has it run, commits the outcome, heartbeats.

    run()       = setup; while not done: run_once(); teardown
    run_once()  = commands -> signals -> watch the job -> settle it -> heartbeat -> housekeeping
                  -> next job -> wait (one select, until the earliest deadline)

Everything the worker waits for - the wake-up pipe of its signal handlers, its pub/sub channel,
its queues (when idle) and the horse's pipe and pidfd (when busy) - is waited on at once, until
the earliest named deadline (`Due`). The job in hand is a `Running`, from its fetch to its commit.

A job is run in a horse forked for it (EXECUTION = "fork", the default) or in this process
("inprocess"). Either way the worker alone writes the job's state, through workerd.commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import logging
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import redis

from workerd import __version__, presence, rqview, schema, suspension, untrusted, webhooks
from workerd import connection as connection_module
from workerd import horse as horse_module
from workerd import waiter as waiter_module
from workerd.commit import (
    Applied,
    Claim,
    Committer,
    Fetched,
    Lease,
    Recovery,
    Verdict,
    poison_pill_reason,
)
from workerd.control import Command, parse_command
from workerd.errors import AbandonedJobError, ConfigError, ExitCode, RedisUnavailableError
from workerd.execution import (
    BaseDeathPenalty,
    ExceptionHandler,
    effective_timeout_s,
    perform,
    run_callback,
    run_exception_handlers,
)
from workerd.job import Job, JobStatus
from workerd.logs import job_fields, rotate_log_file_if_needed, set_worker_name
from workerd.maintenance import clean_registries
from workerd.memory import measure as measure_memory
from workerd.outcome import Outcome
from workerd.process import STOP_SIGNALS, describe_wait_status, ignore_master_signals, set_title
from workerd.queue import Queue
from workerd.reports import JobOutcome, KillReason, Report, StopReason, WorkerState
from workerd.scheduler import Scheduler
from workerd.serializers import resolve_serializer
from workerd.settings import Settings
from workerd.utils import import_attribute, printable_id

log = logging.getLogger("workerd.worker")

# After a job's timeout the horse gets this long to stop by itself (its death penalty raises
# inside the job) before the worker SIGKILLs its process group.
HORSE_KILL_GRACE_S = 2.0
# Without a pidfd (Linux < 5.3) nothing becomes readable when the horse exits after closing its
# pipe: the worker then looks with waitpid() at least this often.
HORSE_POLL_S = 1.0
# Second SIGINT/SIGTERM within this window is a duplicate (a terminal's Ctrl+C reaching both a
# supervisor and its worker), not a request for a cold stop; rq uses the same guard.
DUPLICATE_SIGNAL_WINDOW_S = 1.0
# In burst mode a Redis that cannot be reached at start is given this long before exiting 69.
BURST_CONNECT_GIVE_UP_S = 30.0
# A suspended worker looks at rq:suspended again this often (at most).
SUSPENDED_CHECK_S = 1.0
MAX_BACKOFF_S = 30.0
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class Outage:
    """Log a Redis outage once and its end once, and pace the retries with exponential backoff.

    The backoff is capped at `max_backoff_s` (the heartbeat interval): a worker holding a finished
    job retries its commit at least once per heartbeat, so it is back well within the grace period
    other workers give it after an outage (`settled`), and never loses its lease to them.
    """

    def __init__(self, where: str, who: str = "", max_backoff_s: float = MAX_BACKOFF_S) -> None:
        self.where = where
        self.who = who
        self.max_backoff_s = max_backoff_s
        self.since: float | None = None
        self.ended_at = 0.0  # monotonic time the last outage ended
        self.backoff_s = min(0.5, max_backoff_s)

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next try."""
        if self.since is None:
            self.since = time.monotonic()
            log.error("%scannot reach Redis at %s (%s); retrying with backoff; %s", self.who, self.where, exc,
                      connection_module.hint(exc))  # fmt: skip
        delay = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.max_backoff_s)
        return delay

    def succeeded(self) -> None:
        if self.since is not None:
            self.ended_at = time.monotonic()
            log.warning("%sRedis at %s is reachable again after %.1f s", self.who, self.where,
                        self.ended_at - self.since)  # fmt: skip
        self.since = None
        self.backoff_s = min(0.5, self.max_backoff_s)

    def settled(self, grace_s: float) -> bool:
        """Redis is up, and has been for `grace_s` (time for every worker to renew its leases)."""
        return self.since is None and time.monotonic() >= self.ended_at + grace_s

    @property
    def down_for_s(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


class Due(enum.Enum):
    """The named deadlines the loop sleeps until (the earliest of them)."""

    REGISTER = "register"  # at start: reach Redis and register (again once it is back)
    HEARTBEAT = "heartbeat"  # worker key, lease renewal, recovery of expired leases
    SCHEDULER = "scheduler"  # --with-scheduler: the scheduler's tick
    MAINTENANCE = "maintenance"  # registry clean-up
    KILL = "kill"  # the job's timeout plus HORSE_KILL_GRACE_S: its horse is killed
    MEMORY_CHECK = "memory_check"  # the horse's memory against the soft and hard limits
    HORSE_POLL = "horse_poll"  # no pidfd: look for the horse's exit with waitpid()
    COMMIT = "commit"  # the job ended: commit its outcome (again once Redis is back)
    FETCH = "fetch"  # no job in hand and none waited for: fetch (again once Redis is back)


class Interrupt(str, enum.Enum):
    """Why the worker ended a job's horse before the job ended by itself. The first reason stands,
    except that a stop-job or a cold stop changes what is committed and so always wins."""

    TIMEOUT = "timeout"  # failed: JobTimeoutException
    SOFT_MEMORY = "soft_memory"  # failed: MemoryLimitExceeded (SIGTERM, then SIGKILL after the grace)
    HARD_MEMORY = "hard_memory"  # failed: MemoryLimitExceeded (SIGKILL)
    STOP_JOB = "stop_job"  # the stop-job command: committed as stopped
    COLD_STOP = "cold_stop"  # the worker's cold stop: the job goes back to its queue

    @property
    def commits_differently(self) -> bool:
        return self in (Interrupt.STOP_JOB, Interrupt.COLD_STOP)


class Idle(enum.Enum):
    """What the worker does between jobs, as its last fetch decided."""

    FETCH = "fetch"  # fetch at once (ids were skipped, or Redis failed: once it is back)
    WAIT = "wait"  # the queues were empty: wait on them
    SUSPENDED = "suspended"  # rq:suspended is set: look again after SUSPENDED_CHECK_S


@dataclass
class Running:
    """The job in hand, from its fetch until its outcome is committed (or it is requeued)."""

    claim: Claim
    started_at: float  # monotonic
    timeout_s: float  # 0: none
    kill_at: float | None = None  # monotonic: past it the horse is killed; None once it was
    horse: horse_module.Horse | None = None  # fork mode
    interrupt: Interrupt | None = None
    interrupt_detail: str = ""  # the memory limit's message
    ended: bool = False  # the job ran (its horse is reaped): what is left is its commit
    outcome: Outcome | None = None  # what to commit once ended (None: requeue, for a cold stop)
    commit_tries: int = 0  # failed commit attempts (Redis unreachable)

    @property
    def live_horse(self) -> horse_module.Horse | None:
        return None if self.ended else self.horse

    def interrupted(self, reason: Interrupt, detail: str = "") -> None:
        if self.interrupt is None or reason.commits_differently:
            self.interrupt, self.interrupt_detail = reason, detail


class Worker:
    """One worker process. `Worker(queues, connection=...).work()` runs it in the calling process."""

    # rq documents these for custom worker classes (`class MyWorker(Worker): job_class = CustomJob`);
    # the job_class / queue_class settings override them per worker. workerd commits jobs with its
    # own Job whatever they are; a job_class that subclasses rq's Job is the class of the job the
    # job's code gets from rq.get_current_job() (workerd.rqview).
    job_class: type = Job
    queue_class: type = Queue

    def __init__(
        self,
        queues: Sequence[str] | str = ("default",),
        connection: redis.Redis | None = None,
        name: str | None = None,
        settings: Settings | None = None,
        reporter: Callable[[Report], None] | None = None,
        predecessors: Sequence[tuple[str, str | None]] = (),
        **overrides: Any,
    ) -> None:
        names = [queues] if isinstance(queues, str) else [getattr(q, "name", q) for q in queues]
        base = settings or Settings()
        self.settings = base.updated({"queues": names, **({"name": name} if name else {}), **overrides})
        self._constructed_settings = self.settings  # what each work() call starts from
        self.name: str = self.settings.name or uuid.uuid4().hex
        self.redis = connection if connection is not None else connection_module.connect(self.settings)
        # The queue names, in the order the next fetch tries them (round_robin/random reorder them).
        self.queue_order: list[str] = list(self.settings.queues)
        problem = untrusted.settings_problem(self.settings.serializer, self.settings.allowed_functions)
        if problem is not None:
            raise ConfigError(f"allowed_functions: {problem}")
        self.serializer = resolve_serializer(self.settings.serializer)
        if self.settings.job_class:  # else the class attribute (a subclass may set its own, as rq's)
            self.job_class = import_attribute(self.settings.job_class)
        if self.settings.queue_class:
            self.queue_class = import_attribute(self.settings.queue_class)
        self.death_penalty_class: type[BaseDeathPenalty] = import_attribute(self.settings.death_penalty_class)
        self.exception_handlers: list[ExceptionHandler] = [
            import_attribute(path) for path in self.settings.exception_handlers
        ]
        set_worker_name(self.name)
        if self.settings.sentry_dsn is not None:  # first in the chain; the SDK starts here, after any fork
            from workerd import sentry

            self.exception_handlers.insert(0, sentry.exception_handler(self.settings, self.name))
        self.committer = Committer(self.redis, self.name, self.serializer)
        self.webhook_sender = webhooks.Sender(self.settings, self.name)
        self.outage = Outage(connection_module.describe(self.settings), f"Worker {self.name}: ",
                             max_backoff_s=self.settings.effective_heartbeat_s)  # fmt: skip
        # The loop's seams: tests drive run_once(now) with a fake clock and a fake select.
        self.clock: Callable[[], float] = time.monotonic
        self.select: Callable[[Sequence[int], float], object] = _select
        self.jobs_done = 0
        self.jobs_failed = 0
        self.exit_code = ExitCode.OK
        self.stop_reason: StopReason | None = None
        self.running: Running | None = None  # the job in hand
        self.idle_next = Idle.FETCH
        self._signals: list[int] = []
        self._warm_stop_at: float | None = None
        self._cold_stop = False
        self._waiter: waiter_module.QueueWaiter | None = None
        self._wake_read, self._wake_write = -1, -1
        self._next_heartbeat = 0.0
        self._next_maintenance = 0.0
        self._next_memory_check = 0.0
        self._next_suspended_check = 0.0
        self._redis_retry_at = 0.0  # after a failed Redis call: the backoff's end (monotonic)
        self._connect_give_up_at: float | None = None  # burst mode, until the first connection
        self._recovery_after = 0.0
        self._last_job_at = time.monotonic()
        self._registered = False
        self._jobs_this_run = 0
        # Under a master: how the worker reports its state, and the workers it replaces that the
        # master saw die (name, and the reason it killed them if it did).
        self.reporter = reporter
        self.predecessors = list(predecessors)
        self.scheduler = Scheduler(self.redis, self.name, self.queue_order) if self.settings.with_scheduler else None
        self._pubsub: Any = None
        self._suspended = False
        self._keeper: LeaseKeeper | None = None
        self._warm_horse: horse_module.Horse | None = None
        self._woke_from_idle = False  # the last fetch found nothing: the next job is a wake-up
        self._idle_written = False  # whether "state idle" is in our hash since we last changed it
        self._fetched_ahead: Fetched | None = None  # the next job, fetched in the last commit's round trip
        self._claims_looked_at = False  # a fetch without a waiter looked in our claim lists since the last waiter

    # -- rq's public Worker attributes, same names and meanings (docs/workers.md, connections.md) ----

    @property
    def connection(self) -> redis.Redis:
        return self.redis

    @property
    def key(self) -> str:
        """The worker's hash in Redis, rq:worker:<name>."""
        return schema.worker_key(self.name)

    @property
    def queues(self) -> list[Any]:
        """rq's: the queues as objects of `queue_class`, in the order the next fetch tries them."""
        return [self.queue_class(name, connection=self.redis, serializer=self.serializer) for name in self.queue_order]

    def queue_names(self) -> list[str]:
        return list(self.queue_order)

    def queue_keys(self) -> list[str]:
        return [schema.queue_key(name) for name in self.queue_order]

    @property
    def worker_ttl(self) -> int:
        return self.settings.worker_ttl

    @worker_ttl.setter
    def worker_ttl(self, seconds: int) -> None:  # rq's scripts set it between work() calls
        self._constructed_settings = self._constructed_settings.updated({"worker_ttl": seconds})
        self.settings = self.settings.updated({"worker_ttl": seconds})

    @property
    def dequeue_timeout(self) -> int:
        """How long one blocking wait for a job lasts: 15 s under worker_ttl, as rq's."""
        return max(1, self.worker_ttl - 15)

    @property
    def connection_timeout(self) -> int:
        """rq's socket timeout for its blocking wait; workerd's waiter reads only when a reply is there."""
        return self.dequeue_timeout + 10

    def get_current_job_id(self) -> str | None:
        """The id of the job this worker runs (the worker hash's current_job), or None."""
        current: bytes | None = self.redis.hget(self.key, "current_job")  # type: ignore[assignment]
        return None if current is None else schema.decode_id(current)

    def push_exc_handler(self, handler: ExceptionHandler) -> None:
        """Add `handler` at the end of the chain (rq's stack runs in the order handlers were pushed)."""
        self.exception_handlers.append(handler)

    def pop_exc_handler(self) -> ExceptionHandler:
        return self.exception_handlers.pop()

    def __eq__(self, other: object) -> bool:  # as rq: a worker is its name (its key), like a WorkerInfo
        return getattr(other, "key", None) == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    # -- registered workers (rq's Worker.all/count/find_by_key; workerd's and RQ's alike) -----------

    @classmethod
    def all(cls, connection: redis.Redis, queue: Any = None) -> list[presence.WorkerInfo]:
        """Live registered workers, of one queue (a name or a Queue) or of all."""
        return presence.WorkerInfo.all(connection, queue=getattr(queue, "name", queue))

    @classmethod
    def count(cls, connection: redis.Redis, queue: Any = None) -> int:
        return presence.WorkerInfo.count(connection, queue=getattr(queue, "name", queue))

    @classmethod
    def find_by_key(cls, worker_key: str, connection: redis.Redis) -> presence.WorkerInfo | None:
        return presence.WorkerInfo.find_by_key(worker_key, connection)

    # -- the loop ---------------------------------------------------------------------------------

    def work(self, burst: bool = False, max_jobs: int | None = None, max_idle_time: int | None = None,
             with_scheduler: bool = False, dequeue_strategy: Any = None) -> bool:  # fmt: skip
        """rq's Worker.work(): run until stopped; True if any job ran in this call.

        Callable again on the same object, as rq's: each call is a run of its own (its own burst,
        max_jobs, max_idle_time and dequeue strategy, a fresh stop state, a fresh registration in
        Redis, as rq's register_birth). `dequeue_strategy` takes rq's DequeueStrategy or its value."""
        base = self._constructed_settings
        per_run: dict[str, Any] = {"burst": burst or base.burst, "max_jobs": max_jobs or base.max_jobs}
        if max_idle_time is not None:
            per_run["max_idle_time"] = int(max_idle_time)
        if dequeue_strategy is not None:
            per_run["dequeue_strategy"] = getattr(dequeue_strategy, "value", dequeue_strategy)
        if with_scheduler:
            per_run["with_scheduler"] = True
            if self.scheduler is None:
                self.scheduler = Scheduler(self.redis, self.name, self.queue_order)
        self.settings = base.updated(per_run)
        done_before = self.jobs_done
        self.run()
        return self.jobs_done > done_before

    def run(self) -> ExitCode:
        self.setup()
        try:
            while not self.done:
                self.run_once()
        finally:
            self.teardown()
        return self.exit_code

    @property
    def done(self) -> bool:
        """Stopping, and no job in hand any more."""
        return self.stop_reason is not None and self.running is None

    def run_once(self, now: float | None = None) -> None:
        """One turn: act on what is ready or due at `now` (the clock's reading unless given), then
        wait for the next thing."""
        now = self.clock() if now is None else now
        self._with_redis(self.register_if_needed, now)
        self._with_redis(self.handle_commands, now)
        self.handle_signals(now)
        self.watch_job(now)
        self.settle_job(now)
        self._with_redis(self.heartbeat_if_due, now)
        self._with_redis(self.housekeeping_if_due, now)
        self._with_redis(self.next_job, now)
        self.wait(self.clock())  # the steps took time (an in-process job all of its run)

    def _with_redis(self, step: Callable[[float], bool | None], now: float) -> None:
        """Run a step that talks to Redis, unless a failed call's backoff runs (the first step,
        register_if_needed, fails until the worker is registered); a step that returns True reached
        Redis (an outage is over)."""
        if now < self._redis_retry_at:
            return
        try:
            if step(now):
                self.outage.succeeded()
        except CONNECTION_ERRORS as exc:
            self._redis_failed(exc, now)

    # -- setup and teardown -----------------------------------------------------------------------

    def setup(self) -> None:
        self._begin_run()
        self._install_signal_handlers()

    def register_if_needed(self, now: float) -> bool:
        """Reach Redis (run_once retries with backoff until it does), then register and start."""
        if self._registered:
            return False
        redis_was_down = self.outage.since is not None
        if not self._reach_redis(now):
            return False
        self._register(now, redis_was_down)
        return True

    def _reach_redis(self, now: float) -> bool:
        try:
            connection_module.check_version(self.redis)
        # A refused password, ACL (NoPermissionError: always a refusal) or certificate is a settings
        # error, reported at once rather than retried as an outage (connection.refusal).
        except (*CONNECTION_ERRORS, redis.exceptions.NoPermissionError) as exc:
            refused = connection_module.refusal(exc, self.outage.where)
            if refused is not None:
                raise refused from None
            self._connect_failed(exc, now)
            return False
        self.outage.succeeded()
        return True

    def _register(self, now: float, redis_was_down: bool) -> None:
        presence.register_birth(self.redis, self.name, self.queue_order, self.settings.worker_ttl)
        self._registered = True
        # Leases already expired at a normal start belong to dead workers: recover them at once
        # (a pool whose master keeps dying never lives a lease period). Only after an outage do
        # live workers need one lease period to renew theirs before anyone judges them.
        self._recovery_after = now + (self.settings.lease_s if redis_was_down else 0.0)
        self._recover_predecessors()
        self._subscribe()
        if self.settings.burst and suspension.is_suspended(self.redis):
            log.error('RQ is currently suspended, to resume job execution run "rq resume" (or workerd resume)')
            self.exit_code = ExitCode.FAILURE
            self.stop(StopReason.SUSPENDED, "suspended")
        if self.settings.pid:
            with open(self.settings.pid, "w") as handle:
                handle.write(f"{os.getpid()}\n")
        log.info("Worker %s: started with PID %d, version workerd %s", self.name, os.getpid(), __version__)
        log.info("*** Listening on %s...", ", ".join(self.queue_order))
        self._set_idle_title()
        self.report(Report(state=WorkerState.IDLE))
        rqview.load()  # before any fork, so that every horse shares rq's modules (if rq is installed)
        self.prefork()

    def _connect_failed(self, exc: BaseException, now: float) -> None:
        """Redis is unreachable at start: back off (a burst worker gives up after a while)."""
        delay = self.outage.failed(exc)
        # Alive, waiting for Redis: the master's READY and watchdog count on it.
        self.report(Report(outage=True))
        if self._connect_give_up_at is not None and now + delay > self._connect_give_up_at:
            raise RedisUnavailableError(
                f"Redis at {self.outage.where} was unreachable for {self.outage.down_for_s:.0f} s "
                f"({exc}); {connection_module.hint(exc)}"
            ) from None
        self._redis_retry_at = now + delay

    def _begin_run(self) -> None:
        """Forget how the previous run (an earlier work() call on this object) ended."""
        self.stop_reason = None
        self.exit_code = ExitCode.OK
        self.running = None
        self.idle_next = Idle.FETCH
        self._signals.clear()
        self._warm_stop_at = None
        self._cold_stop = False
        self._jobs_this_run = 0
        self._registered = False
        self._claims_looked_at = False  # a previous life of this worker (same name) may have left ids
        self._redis_retry_at = 0.0
        self._connect_give_up_at = self.clock() + BURST_CONNECT_GIVE_UP_S if self.settings.burst else None

    def teardown(self) -> None:
        if self._warm_horse is not None:
            self._warm_horse.discard()
            self._warm_horse = None
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        waits_ended = True
        if self._waiter is not None:
            waits_ended = self._waiter.close()
            self._waiter = None
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._registered:
                # Ids handed to our waits and not started go back to the front of their queues now.
                self.committer.recover_claims({queue: [self.name] for queue in self.queue_order}, worker_is_dead=True,
                                              linger_s=None if waits_ended else self.settings.lease_s)  # fmt: skip
                if self.scheduler is not None:
                    self.scheduler.release()
            if self._pubsub is not None:
                self._pubsub.close()
                self._pubsub = None
        self.webhook_sender.close(0.0 if self._cold_stop else webhooks.DRAIN_S)
        if self._registered:
            try:
                presence.register_death(self.redis, self.name, self.queue_order)
            except CONNECTION_ERRORS:
                log.warning("Worker %s: could not register death: Redis unreachable", self.name)
        if self.settings.pid and self._registered:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.pid)
        for fd in (self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._wake_read = self._wake_write = -1
        signal.set_wakeup_fd(-1)

    def stop(self, reason: StopReason, detail: str) -> None:
        """Stop after the job in hand, for `reason` (said as `detail` in the log)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("Worker %s: stopping: %s", self.name, detail)
            self.report(Report(stopping=detail, stop_reason=reason))

    # -- signals: the handlers only record -----------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        signal.set_wakeup_fd(self._wake_write)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record_signal)
        ignore_master_signals()  # also a single worker, which has no master to act on them
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by a master across fork()

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def handle_signals(self, now: float) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGQUIT:  # the master's cold stop: no duplicate guard
                self._cold_stop_now(now)
            elif self._warm_stop_at is None:
                self._warm_stop_at = now
                log.info("Worker %s [PID %d]: warm shut down requested (%s)", self.name, os.getpid(),
                         signal.Signals(signum).name)  # fmt: skip
                if self.running is None:
                    self.stop(StopReason.WARM_SHUTDOWN, "warm shut down")
            elif now - self._warm_stop_at > DUPLICATE_SIGNAL_WINDOW_S:
                self._cold_stop_now(now)

    def _cold_stop_now(self, now: float) -> None:
        if self._cold_stop:
            return
        self._cold_stop = True
        if self._warm_stop_at is None:
            self._warm_stop_at = now
        log.warning("Worker %s [PID %d]: cold shut down: the running job goes back to its queue",
                    self.name, os.getpid())  # fmt: skip
        self.stop(StopReason.COLD_SHUTDOWN, "cold shut down")

    # -- commands over pub/sub -------------------------------------------------------------------

    def _subscribe(self) -> None:
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(schema.pubsub_channel(self.name))
        log.info("Worker %s: subscribing to channel %s", self.name, schema.pubsub_channel(self.name))

    def _command_fds(self) -> list[int]:
        connection = getattr(self._pubsub, "connection", None)
        sock = connection._get_socket() if connection is not None else None
        return [sock.fileno()] if sock is not None else []

    def handle_commands(self, now: float) -> None:
        """Act on the commands waiting on our channel (never blocks)."""
        while self._pubsub is not None:
            message = self._pubsub.get_message(timeout=0)
            if message is None:
                return
            if message.get("type") != "message":
                continue
            try:
                command = parse_command(message["data"])
            except ValueError as exc:
                log.warning("Worker %s: ignored a malformed command %r: %s", self.name, message["data"][:200], exc)
                continue
            self.on_command(command)

    def on_command(self, command: Command) -> None:
        log.info("Worker %s: received command %s%s", self.name, command.name,
                 f" for job {printable_id(command.job_id)}" if command.job_id else "")  # fmt: skip
        running = self.running
        horse = running.live_horse if running is not None else None
        if command.name == "shutdown":
            self._signals.append(signal.SIGINT)  # as rq: the same as a first Ctrl+C
        elif command.name == "kill-horse":
            if horse is None:
                log.info("Worker %s: no horse to kill", self.name)
            else:
                _kill_group(horse.pid)
        elif command.name == "stop-job":
            shown = printable_id(command.job_id or "")
            if running is None or running.claim.job.id != command.job_id:
                log.info("Worker %s: Not working on job %s, command ignored.", self.name, shown)
            elif horse is None:
                log.warning("Worker %s: cannot stop job %s: it runs in-process", self.name, shown)
            else:
                running.interrupted(Interrupt.STOP_JOB)
                _kill_group(horse.pid)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- heartbeats and recovery -------------------------------------------------------------------

    def heartbeat_if_due(self, now: float, in_keeper: bool = False) -> bool:
        """Heartbeat if it is time; True if it did (and so reached Redis). The LeaseKeeper thread
        calls it too, while an in-process job holds the main thread (`in_keeper`: no recovery then,
        whose callbacks would run beside the job, and no log rotation)."""
        if now < self._next_heartbeat:
            return False
        self._next_heartbeat = now + self.settings.effective_heartbeat_s
        if self.reporter is None and not in_keeper:  # a single worker rotates its own log file; in a pool, the master
            rotate_log_file_if_needed(self.settings)
        self.heartbeat(now, recover=not in_keeper)
        return True

    def heartbeat(self, now: float, recover: bool = True) -> None:
        """One round trip: worker heartbeat, lease renewal, and a look for expired leases."""
        running = self.running
        claim = running.claim if running is not None else None
        busy_ttl = self.settings.job_monitoring_interval + 60
        ttl = busy_ttl if claim else presence.idle_ttl_s(self.settings.worker_ttl)
        # After an outage, leases look expired until their workers renew them: wait a lease first.
        recover = recover and now >= self._recovery_after and self.outage.settled(self.settings.lease_s)
        with self.redis.pipeline(transaction=False) as pipe:
            key = presence.queue_heartbeat(pipe, self.name, ttl, self.queue_order, self.settings.lease_s)
            lease = None if running is None else self.committer.renew_lease(running.claim, self.settings.lease_s,
                                                                            now - running.started_at, pipe)  # fmt: skip
            expired = self.committer.expired_leases(self.queue_order, time.time(), pipe) if recover else None
            claims = self.committer.expired_claims(self.queue_order, time.time(), pipe) if recover else None
            replies = pipe.execute()
        if not key.read(replies):
            # Our key expired (a long stall or outage) or was deleted: register again so rq's tools see us.
            log.warning("Worker %s: its worker key was gone from Redis (expired during a stall, deleted, or Redis "
                        "was flushed); registered again", self.name)  # fmt: skip
            presence.register_birth(self.redis, self.name, self.queue_order, self.settings.worker_ttl, False)
            self._idle_written = False
            if claim is not None:
                presence.set_state(self.redis, self.name, WorkerState.BUSY.value)
        if claim is not None and lease is not None and not lease.read(replies):
            self._lease_lost(claim)
        self.report(Report(heartbeat=True))
        if claims is not None:
            self.committer.recover_claims(claims.read(replies))
        if expired is not None:
            for queue, members in expired.read(replies).items():
                for member in members:
                    self._recover(queue, member)

    def _recover(self, queue: str, member: bytes) -> None:
        if self.running is not None and member == self.running.claim.member:
            return
        recovery = self.committer.recover(queue, member, time.time(), self.settings.abandoned_max_attempts)
        job_id = schema.split_wip_member(member)[0]
        shown = printable_id(job_id)
        extra = {"job_id": shown, "queue": queue, "worker": self.name}
        if recovery is Recovery.REQUEUED:
            log.warning("Worker %s: job %s was abandoned by a worker that stopped heartbeating; "
                        "requeued at the front of %s", self.name, shown, queue, extra=extra)  # fmt: skip
        elif recovery is Recovery.FAILED:
            log.error("Worker %s: job %s was abandoned %d times; failed as a possible poison pill",
                      self.name, shown, self.settings.abandoned_max_attempts, extra=extra)  # fmt: skip
        self._after_recovery(queue, job_id, recovery, poison_pill_reason(self.settings.abandoned_max_attempts))

    def _recover_predecessors(self) -> None:
        """Recover at once the job of each worker the master saw die (no need to wait out its lease)."""
        dead = [name for name, _ in self.predecessors]
        self.committer.recover_claims({queue: dead for queue in self.queue_order}, worker_is_dead=True)
        for name, kill_reason in self.predecessors:
            if self.scheduler is not None:
                self.scheduler.release_for(name)
            current: bytes | None = self.redis.hget(schema.worker_key(name), "current_job")  # type: ignore[assignment]
            if current is None:  # an empty id is still an id
                continue
            job_id = schema.decode_id(current)
            for queue in self.queue_order:
                started: list[bytes] = self.redis.zrange(schema.started_key(queue), 0, -1)  # type: ignore[assignment]
                for member in started:
                    if schema.split_wip_member(member)[0] != job_id:
                        continue
                    attempts = self.settings.abandoned_max_attempts
                    recovery = self.committer.recover(queue, member, time.time(), attempts, True, kill_reason)
                    because = f" ({kill_reason})" if kill_reason else ""
                    shown = printable_id(job_id)
                    log.warning("Worker %s: job %s of dead worker %s %s%s", self.name, shown, name, recovery.value,
                                because, extra={"job_id": shown, "queue": queue, "worker": self.name})  # fmt: skip
                    self._after_recovery(queue, job_id, recovery, kill_reason or poison_pill_reason(attempts))

    def _after_recovery(self, queue: str, job_id: str, recovery: Recovery, reason: str) -> None:
        """Count a recovery. A job it failed gets its failure callback and the exception handlers
        here, with AbandonedJobError, as RQ's registry cleanup does in the process that cleans up.
        A requeued job gets neither: it will run again, and report its own outcome then."""
        if recovery.outcome is None:
            return
        self.report(Report(outcome=recovery.outcome, queue=queue))
        if recovery is not Recovery.FAILED:
            return
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=self.serializer)
        except Exception:  # gone (failure_ttl) or undecodable: nothing to call back
            return
        if untrusted.refusal(job, self.settings.allowed_functions) is not None:
            return  # a forged callback path is never imported (docs/SECURITY.md)
        exc = AbandonedJobError(reason)
        if job.failure_callback_name:
            try:
                # As RQ: the "traceback" is the cleaning process's stack; no job frame exists.
                run_callback(job, "failure", self.death_penalty_class, self.settings.allowed_functions,
                             AbandonedJobError, exc, traceback.extract_stack())  # fmt: skip
            except Exception:
                shown = printable_id(job_id)
                log.exception("Worker %s: the failure callback of abandoned job %s raised", self.name, shown,
                              extra={"job_id": shown, "queue": queue, "worker": self.name})  # fmt: skip
        run_exception_handlers(job, exc, self.exception_handlers)

    def report(self, report: Report) -> None:
        """Tell the master (if any) what this worker is doing; never blocks."""
        if self.reporter is not None:
            self.reporter(report)

    def _lease_lost(self, claim: Claim) -> None:
        # Say what happened, not what usually happens: after a FLUSHALL (or a restart of a Redis that
        # does not persist) nobody recovered the job; it is gone.
        status: bytes | None = self.redis.hget(schema.job_key(claim.job.id), "status")  # type: ignore[assignment]
        if status == JobStatus.CANCELED.value.encode():  # a requeue, or an execution record that expired
            log.info("Worker %s: job %s was canceled while it ran; it stays canceled", self.name,
                     printable_id(claim.job.id))  # fmt: skip
            return
        if status is None:
            why = "its hash is gone from Redis (deleted, expired, or Redis was flushed or restarted without its data)"
        else:
            why = (f"it was taken back while this worker was not heartbeating (its status is now "
                   f"{status.decode(errors='replace')})")  # fmt: skip
        log.error("Worker %s: lost the lease on job %s: %s; its outcome here will be discarded", self.name,
                  printable_id(claim.job.id), why)  # fmt: skip

    def _redis_failed(self, exc: BaseException, now: float) -> None:
        """A Redis call failed: no Redis step runs until the backoff is over. Every pooled socket is
        dropped, so that after a Redis restart no stale one fails again (which would log a second
        outage); an idle worker's queue waiter is closed too (the next idle spell opens a new one).
        A running horse goes on; a commit waits for Redis."""
        delay = self.outage.failed(exc)
        self.report(Report(outage=True))
        self.redis.connection_pool.disconnect()
        connection = getattr(self._pubsub, "connection", None)
        if connection is not None:  # it reconnects and subscribes again on its next read
            connection.disconnect()
        if self._waiter is not None and self.running is None:
            self._waiter.close()
            self._waiter = None
        self._redis_retry_at = now + delay
        self.idle_next = Idle.FETCH
        # Give live workers one lease period to renew before anyone's lease is judged expired.
        self._recovery_after = self._redis_retry_at + self.settings.lease_s + delay

    # -- between jobs ----------------------------------------------------------------------------

    def next_job(self, now: float) -> bool:
        """With no job in hand: stop if asked, else fetch one and start it (or wait for one). A stop
        signal that arrived during this turn is handled first (the next turn), not after a fetch."""
        if self.running is not None or self.stop_reason is not None or self._signals:
            return False
        if self._warm_stop_at is not None:
            self.stop(StopReason.WARM_SHUTDOWN, "warm shut down")
            return False
        if self.idle_next is Idle.SUSPENDED and now < self._next_suspended_check:
            return False
        self.take(self.fetch(), now)
        return True

    def take(self, fetched: Fetched, now: float) -> None:
        """Act on what a fetch found: start the job, or wait, or look again."""
        if fetched.suspended:
            self.suspended(now)
        elif fetched.claim is not None:
            self.start(fetched.claim, now)
        elif fetched.skipped:  # ids were skipped (hash gone): the queue may hold more, fetch again
            self.idle_next = Idle.FETCH
        else:
            self.idle(now)

    def fetch(self) -> Fetched:
        waits = self._fetch_waits()
        if waits is None:  # no job was handed to us: none to fetch
            return Fetched(None, [])
        return self._fetched(self.committer.fetch_and_start(self.queue_order, self.settings.lease_s, waits))

    def _fetch_waits(self) -> waiter_module.EndingWaits | None:
        """What the next fetch must do about the queue waits; None if a fetch would find nothing."""
        if self._waiter is None:
            # Only a wait moves ids into our claim lists: with none since the last look, no need to look.
            return waiter_module.NOTHING_CLAIMED if self._claims_looked_at else waiter_module.NO_WAITS
        return None if self._waiter.quiet else self._waiter.end_waits()

    def _fetched(self, fetched: Fetched) -> Fetched:
        if self._waiter is None:
            self._claims_looked_at = True
        for job_id in fetched.skipped:
            log.warning("Worker %s: skipped job %s: its hash is gone (expired ttl or deleted)", self.name,
                        printable_id(job_id))  # fmt: skip
        if not fetched.suspended and self._suspended:
            self._suspended = False
            log.info("Worker %s: resumed", self.name)
        if fetched.claim is not None:
            self._idle_written = False  # the fetch script marked us busy
            self._reorder_queues(fetched.claim.queue)
        return fetched

    def suspended(self, now: float) -> None:
        """rq:suspended is set: take nothing; a burst worker leaves, others check again each second."""
        if not self._suspended:
            self._suspended = True
            log.info("Worker %s: suspended, run `rq resume` (or `workerd resume`) to resume", self.name)
            presence.set_state(self.redis, self.name, WorkerState.SUSPENDED.value)
            self._idle_written = False
        if self.settings.burst:
            self.stop(StopReason.SUSPENDED, "suspended")
            return
        self.idle_next = Idle.SUSPENDED
        self._next_suspended_check = now + min(SUSPENDED_CHECK_S, self.settings.effective_heartbeat_s)

    def idle(self, now: float) -> None:
        """The queues are empty: a burst worker leaves, others wait on them (or stop, idle too long)."""
        self._woke_from_idle = True
        if self.settings.burst:
            log.info("Worker %s: No more work, burst finished.", self.name)
            self.stop(StopReason.BURST_FINISHED, "burst finished")
            return
        max_idle = self.settings.max_idle_time
        if max_idle is not None and now - self._last_job_at >= max_idle:
            self.stop(StopReason.MAX_IDLE, f"idle for {max_idle} s (max idle time)")
            return
        if not self._idle_written:  # once per idle spell (a commit wrote it already), not on every wake-up
            presence.set_state(self.redis, self.name, WorkerState.IDLE.value)
            self._idle_written = True
        if self._waiter is None:
            self._waiter = waiter_module.QueueWaiter(self.redis, self.queue_order, self.name, self.dequeue_timeout)
            self._claims_looked_at = False  # its waits move ids into the claim lists, and may outlive it
        # A fetch just found nothing (perhaps the one a commit carried, earlier in this turn): the
        # next one follows a wait that hands us a job. A job pushed meanwhile is there for the wait.
        self._waiter.quiet = True
        self.idle_next = Idle.WAIT

    def housekeeping_if_due(self, now: float) -> bool:
        """The scheduler's tick (with --with-scheduler) and the periodic registry clean-up, also
        while a job runs. True if either ran (and so reached Redis)."""
        ticked = self.scheduler.tick_if_due(now) if self.scheduler is not None else False
        if now < self._next_maintenance:
            return ticked
        self._next_maintenance = now + self.settings.maintenance_interval
        clean_registries(self.redis, self.committer, self.queue_order)
        return True

    def _reorder_queues(self, served: str) -> None:
        strategy = self.settings.dequeue_strategy
        if strategy == "round_robin":
            index = self.queue_order.index(served) + 1
            self.queue_order = self.queue_order[index:] + self.queue_order[:index]
        elif strategy == "random":
            random.shuffle(self.queue_order)

    # -- starting a job --------------------------------------------------------------------------

    def start(self, claim: Claim, now: float) -> None:
        """Take the job in hand: a horse runs it (fork mode), or it runs here and now (in-process)."""
        job = claim.job
        shown = printable_id(job.id)
        described = shown if self.settings.disable_job_desc_logging else f"{job.description} ({shown})"
        log.info("Worker %s: %s: %s", self.name, claim.queue, described, extra=job_fields(job, claim.queue, self.name))
        timeout_s = effective_timeout_s(job)
        running = self.running = Running(claim=claim, started_at=now, timeout_s=timeout_s)
        self.idle_next = Idle.FETCH  # once it is done: a backlog is likely
        inprocess_timeout = timeout_s and self.settings.execution == "inprocess"
        kill_at = time.time() + timeout_s + HORSE_KILL_GRACE_S if inprocess_timeout else None
        self.report(Report(state=WorkerState.BUSY, job=shown, kill_at=kill_at))
        refused = self._refusal(claim)
        if refused is not None:  # nothing to run
            self._ended(running, _failed_outcome(refused))
            return
        set_title(f"worker {self.name}: busy with {shown} {job.func_name} from {claim.queue} since {_clock()}")
        if self.settings.execution == "inprocess":
            self._ended(running, self.run_inprocess(running))
            return
        title = f"horse of {self.name}: {shown} {job.func_name} from {claim.queue} since {_clock()}"
        running.horse = self._horse_for(job, title)
        if timeout_s:
            running.kill_at = now + timeout_s + HORSE_KILL_GRACE_S
        # With a backlog, the next job's horse forks while this one runs: the overlap is throughput.
        # A job that woke an idle worker likely has no successor yet, and on a small machine a fork
        # now competes for the CPU with the job it is meant to speed up: fork once this one is done.
        if not self._woke_from_idle:
            self.prefork()

    def _refusal(self, claim: Claim) -> str | None:
        """Why the job cannot be run at all (undecodable, or a function not allowed), or None."""
        try:
            claim.job.func_name  # noqa: B018 - decodes the job's data
        except Exception as exc:  # undecodable data: fail the job here, there is nothing to run
            return f"{type(exc).__name__}: {exc}\n"
        refused = untrusted.refusal(claim.job, self.settings.allowed_functions)  # before any import or fork
        return None if refused is None else f"{refused}\n"

    def perform(self, job: Job) -> Outcome:
        """Run the job's function here (in the horse, or in-process). Never raises."""
        return perform(job, self.death_penalty_class, self.exception_handlers,
                       record_failure=not self.settings.disable_default_exception_handler,
                       allowed_functions=self.settings.allowed_functions, view_class=self.job_class)  # fmt: skip

    def prefork(self) -> None:
        """Keep one horse forked in advance (fork mode), so a job starts without waiting for fork()."""
        if self.settings.execution == "fork" and self._warm_horse is None and self.stop_reason is None:
            self._warm_horse = horse_module.prefork(self.perform, self.redis, self.name)

    def _horse_for(self, job: Job, title: str) -> horse_module.Horse:
        warm, self._warm_horse = self._warm_horse, None
        if warm is not None and warm.give(job, title):
            return warm
        if warm is not None:
            warm.discard()  # killed while waiting, or a job that cannot be pickled
        return horse_module.spawn(job, self.perform, title)

    def run_inprocess(self, running: Running) -> Outcome:
        """Run the job in this process; the LeaseKeeper thread heartbeats while the job holds the
        main thread.

        The master enforces the timeout from outside (it SIGKILLs this worker past the deadline the
        worker reported), and the job's cwd and signal handlers are restored afterwards.
        """
        claim = running.claim
        cwd = os.getcwd()
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
        stdio = _save_stdio()
        if self._keeper is None:
            self._keeper = LeaseKeeper(self)
            self._keeper.start()
        self._keeper.busy.set()
        real_exit = os._exit
        os._exit = self._exit_guard(running, real_exit)  # type: ignore[assignment]  # same signature, a closure
        try:
            return self.perform(claim.job)
        finally:
            os._exit = real_exit
            self._keeper.busy.clear()
            _restore_stdio(stdio)
            os.chdir(cwd)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def _exit_guard(self, running: Running, real_exit: Callable[[int], NoReturn]) -> Callable[[int], NoReturn]:
        """What os._exit is while an in-process job runs: the process still ends, but not silently.

        os._exit runs no atexit, no finally, nothing of ours: without this, a job calling it would end
        the worker with the job's exit code (0 for a clean-looking stop, which Restart=on-failure does
        not restart) and the job left started. So the job is failed with the reason, one log line names
        it, and the worker leaves with exit code 1. A child the job forked exits as it asked. Only calls
        through os._exit are seen: posix._exit or the C library's _exit (ctypes) bypass it."""
        worker_pid = os.getpid()
        claim = running.claim

        def guarded_exit(code: int) -> NoReturn:
            if os.getpid() != worker_pid:
                real_exit(code)
            reason = (f"SystemExit: the job called os._exit({code}) in the worker process (execution "
                      f"inprocess); the worker exited with code {int(ExitCode.FAILURE)}\n")  # fmt: skip
            log.error("Worker %s: job %s called os._exit(%s); failing it, then exiting with code %d", self.name,
                      printable_id(claim.job.id), code, int(ExitCode.FAILURE),
                      extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip
            with contextlib.suppress(Exception):  # one try: Redis down, the lease expires and recovery fails it
                self.committer.commit_failure(claim, _failed_outcome(reason, running.started_at))
            logging.shutdown()  # flush the line above
            real_exit(ExitCode.FAILURE)

        return guarded_exit

    # -- watching the horse ----------------------------------------------------------------------

    def watch_job(self, now: float) -> None:
        """Read the horse's report, reap it once it exited; enforce a cold stop, the memory limits
        and the timeout (its kill time)."""
        running = self.running
        horse = running.live_horse if running is not None else None
        if running is None or horse is None:
            return
        horse.read_available()
        pid, status = os.waitpid(horse.pid, os.WNOHANG)
        if pid:
            self._reaped(running, status)
        elif self._cold_stop:
            running.interrupted(Interrupt.COLD_STOP)
            _kill_group(horse.pid)
            os.waitpid(horse.pid, 0)
            self._release_horse(horse)
            running.ended = True
        else:
            self._check_memory(running, horse, now)
            self._kill_if_past_timeout(running, horse, now)

    def _kill_if_past_timeout(self, running: Running, horse: horse_module.Horse, now: float) -> None:
        if running.kill_at is None or now < running.kill_at:
            return
        running.kill_at = None
        running.interrupted(Interrupt.TIMEOUT)
        claim = running.claim
        log.warning("Worker %s: job %s ran past its timeout of %g s; killing its horse", self.name,
                    printable_id(claim.job.id), running.timeout_s,
                    extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip
        self.report(Report(kill=KillReason.TIMEOUT))
        _kill_group(horse.pid)

    def _check_memory(self, running: Running, horse: horse_module.Horse, now: float) -> None:
        """Enforce the memory limits on the horse."""
        soft, hard = self.settings.soft_memory_limit, self.settings.hard_memory_limit
        if (soft is None and hard is None) or now < self._next_memory_check:
            return
        self._next_memory_check = now + self.settings.memory_check_interval
        if horse.term_sent_at is not None:
            if now - horse.term_sent_at >= self.settings.memory_kill_grace:
                _kill_group(horse.pid)
            return
        use = measure_memory(horse.pid)
        if use is None:
            return
        if hard is not None and use.uss_mib > hard:
            _kill_group(horse.pid)
            # Under a master this worker is replaced (documented). A single worker is its own
            # supervisor for its horses: stopping here would end it with exit code 0, the queue not
            # drained, and a unit with Restart=on-failure would leave it down. It forks the next one.
            if self.reporter is not None:
                self.stop(StopReason.HARD_MEMORY, "replaced after its horse hit the hard memory limit")
            self.report(Report(kill=KillReason.HARD_MEMORY))
            running.interrupted(Interrupt.HARD_MEMORY,
                                f"MemoryLimitExceeded: the work-horse used {use.uss_mib:.0f} MiB, over the hard "
                                f"memory limit of {hard} MiB, and was killed (SIGKILL)")  # fmt: skip
        elif soft is not None and use.uss_mib > soft:
            horse.term_sent_at = now
            _signal_group(horse.pid, signal.SIGTERM)
            self.report(Report(kill=KillReason.SOFT_MEMORY))
            running.interrupted(Interrupt.SOFT_MEMORY,
                                f"MemoryLimitExceeded: the work-horse used {use.uss_mib:.0f} MiB, over the soft "
                                f"memory limit of {soft} MiB, and was stopped (SIGTERM, then SIGKILL after "
                                f"{self.settings.memory_kill_grace:g} s)")  # fmt: skip

    def _reaped(self, running: Running, status: int) -> None:
        """The horse exited: what it reported, or why it ended without a report."""
        horse = running.horse
        assert horse is not None
        horse.read_available()
        self._release_horse(horse)
        self._ended(running, self._horse_outcome(running, horse, status))
        self.prefork()

    def _release_horse(self, horse: horse_module.Horse) -> None:
        _kill_group(horse.pid)  # grandchildren the job left behind share the horse's group
        horse.close()

    def _horse_outcome(self, running: Running, horse: horse_module.Horse, status: int) -> Outcome:
        outcome = horse.outcome()
        started = horse.started_monotonic
        if running.interrupt is Interrupt.STOP_JOB:
            return _failed_outcome("Job stopped by user, work-horse terminated.", started)
        if running.interrupt in (Interrupt.SOFT_MEMORY, Interrupt.HARD_MEMORY):
            return _failed_outcome(f"{running.interrupt_detail}; the horse was {describe_wait_status(status)}\n",
                                   started)  # fmt: skip
        if running.interrupt is Interrupt.TIMEOUT:
            return _failed_outcome(
                f"JobTimeoutException: Task exceeded maximum timeout value ({running.timeout_s:g} seconds); the job "
                f"did not stop by itself and its work-horse was killed after a {HORSE_KILL_GRACE_S:g} s grace\n",
                started,
            )
        if outcome is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return outcome
        signal_part = f" (signal {os.WTERMSIG(status)})" if os.WIFSIGNALED(status) else ""
        return _failed_outcome(
            f"Work-horse terminated unexpectedly; waitpid returned {status}{signal_part}; "
            f"the horse was {describe_wait_status(status)}\n",
            started,
        )

    def _ended(self, running: Running, outcome: Outcome) -> None:
        running.ended, running.outcome = True, outcome

    # -- settling the job: commit (or requeue) ---------------------------------------------------

    def settle_job(self, now: float) -> None:
        """The job ended: commit its outcome (a cold stop requeues it instead). While Redis is down
        the commit waits for the backoff and tries again; a cold stop then gives up (the lease
        expires and the job is recovered)."""
        running = self.running
        if running is None or not running.ended:
            return
        claim = running.claim
        if running.interrupt is Interrupt.COLD_STOP:
            self._requeue(claim)
        elif running.commit_tries and self._cold_stop:
            log.error("Worker %s: cold stop while Redis is unreachable: job %s will be recovered "
                      "when its lease expires", self.name, printable_id(claim.job.id))  # fmt: skip
        elif now < self._redis_retry_at:
            return
        else:
            assert running.outcome is not None
            try:
                self.commit(running, running.outcome)
                self.outage.succeeded()
            except CONNECTION_ERRORS as exc:
                running.commit_tries += 1
                self._redis_failed(exc, now)
                return
        self._finished(now)
        ahead, self._fetched_ahead = self._fetched_ahead, None
        if ahead is not None:  # the commit's round trip fetched the next job: it is started in Redis
            self.take(self._fetched(ahead), now)

    def _finished(self, now: float) -> None:
        """The job is out of hand: count it, and stop after max_jobs."""
        self.running = None
        self._set_idle_title()
        self.report(Report(state=WorkerState.IDLE, jobs=self.jobs_done + 1, failed=self.jobs_failed))
        self._woke_from_idle = False
        self.jobs_done += 1
        self._last_job_at = now
        self._jobs_this_run += 1
        if self.settings.max_jobs is not None and self._jobs_this_run >= self.settings.max_jobs:
            self.stop(StopReason.MAX_JOBS, f"finished {self.jobs_done} jobs (max jobs reached)")

    def _requeue(self, claim: Claim) -> None:
        try:
            if self.committer.requeue(claim).lease is Lease.LOST:
                self._lease_lost(claim)
                return
            log.warning("Worker %s: job %s put back at the front of %s", self.name, printable_id(claim.job.id),
                        claim.queue, extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip
            self.report(Report(outcome=JobOutcome.REQUEUED, queue=claim.queue))
        except CONNECTION_ERRORS:
            log.error("Worker %s: Redis unreachable; job %s stays claimed and will be recovered "
                      "when its lease expires", self.name, printable_id(claim.job.id))  # fmt: skip

    def commit(self, running: Running, outcome: Outcome) -> None:
        """Write the outcome (one try; CONNECTION_ERRORS reach settle_job, which tries again)."""
        claim = running.claim
        try:
            self._commit_once(running, outcome)
        except redis.ResponseError as exc:  # the script stopped at an error; Redis kept its writes so far
            self._commit_failed(claim, outcome, exc)

    def _commit_once(self, running: Running, outcome: Outcome) -> None:
        claim = running.claim
        job = claim.job
        if running.interrupt is Interrupt.STOP_JOB:
            self._commit_stopped(claim, outcome)
            return
        if outcome.succeeded and outcome.retry is not None:
            committed = self.committer.commit_retry_requested(claim, outcome)
            self._note_canceled(claim, committed.applied)
            if self._held(running, committed.applied):
                log.info("Worker %s: job %s asked to be retried: %s", self.name, printable_id(job.id),
                         committed.detail)  # fmt: skip
                if committed.verdict is Verdict.FAILED:  # past its max: failed, with no exception (as RQ)
                    self.send_webhooks(job, "failed", outcome.ended_at, "")
            return
        if outcome.succeeded:
            applied = self._commit_success(running, outcome)
            if not self._held(running, applied):
                return
            self._note_canceled(claim, applied)
            self._log_success(claim, outcome)
            self.report(Report(outcome=JobOutcome.FINISHED, queue=claim.queue, duration_s=outcome.duration_s))
            self.send_webhooks(job, "finished", outcome.ended_at)
            return
        self.jobs_failed += 1
        committed = self.committer.commit_failure(claim, outcome)
        if not self._held(running, committed.applied):
            return
        self._note_canceled(claim, committed.applied)
        self.report(Report(outcome=committed.outcome, queue=claim.queue, duration_s=outcome.duration_s))
        extra = job_fields(job, claim.queue, self.name)
        try:
            func_name = job.func_name
        except Exception:
            func_name = "<undecodable>"
        shown = printable_id(job.id)
        log.error("Worker %s: job %s: exception raised while executing (%s)\n%s",
                  self.name, shown, func_name, outcome.exc_string, extra=extra)  # fmt: skip
        if committed.verdict is Verdict.RETRIED:
            log.info("Worker %s: job %s: %s (%s retries left)", self.name, shown, committed.detail,
                     (job.retries_left or 1) - 1, extra=extra)  # fmt: skip
        else:
            self.send_webhooks(job, "failed", outcome.ended_at, outcome.exc_string)

    def _commit_success(self, running: Running, outcome: Outcome) -> Applied:
        """commit_success; when the worker goes on to another job, with the next fetch in the same
        round trip (its result is taken once this job is out of hand: settle_job)."""
        waits = self._fetch_ahead_waits(running)
        if waits is None:
            return self.committer.commit_success(running.claim, outcome, self.settings.result_ttl)
        applied, self._fetched_ahead = self.committer.commit_success_then_fetch(
            running.claim, outcome, self.settings.result_ttl, self.queue_order, self.settings.lease_s, waits
        )
        return applied

    def _fetch_ahead_waits(self, running: Running) -> waiter_module.EndingWaits | None:
        """The waits for a fetch sent with this job's commit, if the worker will fetch right after
        it: not stopping (nor a stop signal recorded this turn), not at its last job, nothing
        interrupting the job."""
        max_jobs = self.settings.max_jobs
        if (self.stop_reason is not None or self._warm_stop_at is not None or self._cold_stop or self._signals
                or running.interrupt is not None or running.commit_tries
                or (max_jobs is not None and self._jobs_this_run + 1 >= max_jobs)):  # fmt: skip
            return None
        return self._fetch_waits()

    def _held(self, running: Running, applied: Applied) -> bool:
        """Whether the commit wrote: the lease held, or this very commit had landed (retried because
        the connection dropped after Redis applied it). If not, say why. A commit that wrote also
        wrote "state idle"."""
        claim = running.claim
        if applied.lease is Lease.LOST and not (running.commit_tries and self.committer.landed(claim)):
            self._lease_lost(claim)
            return False
        if applied.lease is Lease.LOST:
            log.info("Worker %s: the commit of job %s had landed before the connection to Redis dropped",
                     self.name, printable_id(claim.job.id))  # fmt: skip
        self._idle_written = True
        return True

    def _note_canceled(self, claim: Claim, applied: Applied) -> None:
        if applied.lease is Lease.CANCELED:
            log.info("Worker %s: job %s was canceled while it ran; its outcome is committed as rq's worker "
                     "commits it (a success keeps its result and leaves its dependents deferred)", self.name,
                     printable_id(claim.job.id), extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip

    def _commit_failed(self, claim: Claim, outcome: Outcome, exc: redis.ResponseError) -> None:
        """A commit the checks in workerd.job did not foresee: fail the job by the path with fixed
        values, so it does not stay half-committed (and this worker goes on)."""
        log.error("Worker %s: could not commit the outcome of job %s (%s: %s); failing it instead",
                  self.name, claim.job.id, type(exc).__name__, exc,
                  extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip
        if outcome.succeeded:  # a failure was counted before its commit was tried
            self.jobs_failed += 1
        if self.committer.fail_uncommittable(claim, outcome, exc).lease is Lease.LOST:
            self._lease_lost(claim)
            return
        self.report(Report(outcome=JobOutcome.FAILED, queue=claim.queue, duration_s=outcome.duration_s))
        self.send_webhooks(claim.job, "failed", outcome.ended_at, outcome.exc_string)

    def _commit_stopped(self, claim: Claim, outcome: Outcome) -> None:
        """stop-job: status stopped, failed registry, dependents not released; on_stopped runs here."""
        job = claim.job
        if job.stopped_callback_name:
            try:
                run_callback(job, "stopped", self.death_penalty_class, self.settings.allowed_functions)
            except Exception as exc:
                log.error("Worker %s: the stopped callback of job %s raised: %s", self.name, printable_id(job.id), exc)
        self.committer.commit_failure(claim, outcome, stopped=True)
        log.info("Worker %s: job %s stopped", self.name, printable_id(job.id))

    def send_webhooks(self, job: Job, status: str, ended_at: float, exc_string: str | None = None) -> None:
        """The job's webhooks for its final `status`, once the commit has landed: handed to the sender
        process, never waited for (workerd.webhooks)."""
        self.webhook_sender.send(job, status, ended_at, exc_string)

    def _log_success(self, claim: Claim, outcome: Outcome) -> None:
        job = claim.job
        shown = printable_id(job.id)
        described = shown if self.settings.disable_job_desc_logging else job.description
        extra = job_fields(job, claim.queue, self.name)
        log.info("Successfully completed %s job in %ss on worker %s", described,
                 dt.timedelta(seconds=outcome.duration_s), self.name, extra=extra)  # fmt: skip
        log.info("Worker %s: %s: Job OK (%s)", self.name, claim.queue, shown, extra=extra)
        ttl = job.result_ttl if job.result_ttl is not None else self.settings.result_ttl
        if ttl == 0:
            log.info("Worker %s: job %s result discarded immediately", self.name, shown, extra=extra)
        elif ttl < 0:
            log.info("Worker %s: job %s result will never expire, clean up result key manually", self.name, shown,
                     extra=extra)  # fmt: skip
        else:
            log.info("Worker %s: job %s result is kept for %d seconds", self.name, shown, ttl, extra=extra)

    # -- waiting ---------------------------------------------------------------------------------

    def deadlines(self, now: float) -> dict[Due, float]:
        """When each thing the worker must do next is due (monotonic); the loop sleeps until the
        earliest. After a failed Redis call nothing that needs Redis is due before the backoff ends."""
        redis_at = max(now, self._redis_retry_at)
        due = {
            Due.HEARTBEAT: max(redis_at, self._next_heartbeat),
            Due.MAINTENANCE: max(redis_at, self._next_maintenance),
        }
        if self.scheduler is not None:
            due[Due.SCHEDULER] = max(redis_at, self.scheduler.next_tick_at)
        running = self.running
        if not self._registered:
            due[Due.REGISTER] = redis_at
        elif running is None:
            due.update(self._between_jobs_deadlines(redis_at))
        else:
            due.update(self._job_deadlines(running, now, redis_at))
        return due

    def _between_jobs_deadlines(self, redis_at: float) -> dict[Due, float]:
        if self.idle_next is Idle.FETCH:
            return {Due.FETCH: redis_at}
        if self.idle_next is Idle.SUSPENDED:
            return {Due.FETCH: max(redis_at, self._next_suspended_check)}
        return {}  # waiting on the queues: the queue waiter wakes the loop

    def _job_deadlines(self, running: Running, now: float, redis_at: float) -> dict[Due, float]:
        if running.ended:  # a cold stop requeues (or gives up) at once; a commit needs Redis
            gives_up = running.interrupt is Interrupt.COLD_STOP or (self._cold_stop and running.commit_tries > 0)
            return {Due.COMMIT: now if gives_up else redis_at}
        due: dict[Due, float] = {}
        if running.horse is None:
            return due
        if running.kill_at is not None:
            due[Due.KILL] = running.kill_at
        if self.settings.soft_memory_limit is not None or self.settings.hard_memory_limit is not None:
            due[Due.MEMORY_CHECK] = self._next_memory_check
        if running.horse.pidfd < 0:
            due[Due.HORSE_POLL] = now + HORSE_POLL_S
        return due

    def next_deadline(self, now: float) -> tuple[Due, float]:
        """The earliest deadline: what the loop wakes for if nothing is ready before."""
        return min(self.deadlines(now).items(), key=lambda item: item[1])

    def wait(self, now: float) -> None:
        """Sleep until the earliest deadline, or until something is ready: a signal (the wake-up
        pipe), a command (the pub/sub socket), the horse (its pipe and pidfd), or - idle - a job on
        one of the queues (the queue waiter's sockets, in the same select)."""
        if self.done:
            return
        timeout_s = max(0.0, self.next_deadline(now)[1] - now)
        running = self.running
        horse = running.live_horse if running is not None else None
        fds = [self._wake_read, *self._command_fds(), *(horse.wait_fds() if horse is not None else ())]
        waiter = self._waiter if running is None and self.idle_next is Idle.WAIT else None
        if waiter is None:
            self.select(fds, timeout_s)
        else:
            try:
                waiter.wait(timeout_s, wake_fds=fds)
            except CONNECTION_ERRORS as exc:
                self._redis_failed(exc, self.clock())
        self._drain_wake_pipe()

    def _set_idle_title(self) -> None:
        set_title(f"worker {self.name}: idle, listening on {','.join(self.queue_order)}")


def _save_stdio() -> list[tuple[int, str, Any, int]]:
    """Duplicates of fds 1 and 2 and the sys streams, so an in-process job that closes them cannot
    take the worker's logging with it."""
    saved = []
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            saved.append((fd, name, getattr(sys, name), os.dup(fd)))
        except OSError:  # already closed when we started: nothing to restore
            continue
    return saved


def _restore_stdio(saved: list[tuple[int, str, Any, int]]) -> None:
    for fd, name, stream, copy in saved:
        with contextlib.suppress(OSError):
            os.dup2(copy, fd)
        os.close(copy)
        if stream is not None and getattr(stream, "closed", False):
            fresh = open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
            setattr(sys, name, fresh)
            for handler in logging.getLogger("workerd").handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                    handler.stream = fresh  # not setStream(): it flushes the closed stream, which raises


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _kill_group(pid: int) -> None:
    _signal_group(pid, signal.SIGKILL)


def _select(fds: Sequence[int], timeout_s: float) -> object:
    return select.select(fds, [], [], timeout_s)


class LeaseKeeper(threading.Thread):
    """In-process mode: while a job holds the main thread, this thread runs the loop's heartbeat
    step for it when it is due - the same code as in fork mode (worker key, lease renewal,
    re-registration of an expired worker key, a lost lease noticed). Started once: a thread per job
    would cost more than the jobs it is made for."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="workerd-lease-keeper", daemon=True)
        self.worker = worker
        self.busy = threading.Event()  # set by the main thread while it runs a job
        self._done = threading.Event()

    def run(self) -> None:
        worker = self.worker
        while True:
            self.busy.wait()
            if self._done.wait(max(0.0, worker._next_heartbeat - worker.clock())):
                return
            if not self.busy.is_set():
                continue
            try:
                worker.heartbeat_if_due(worker.clock(), in_keeper=True)
            except CONNECTION_ERRORS:
                worker.report(Report(outage=True))  # the job goes on; the commit will wait for Redis

    def stop(self) -> None:
        self._done.set()
        self.busy.set()
        self.join(timeout=5)


def _failed_outcome(exc_string: str, started_monotonic: float | None = None) -> Outcome:
    now = time.time()
    started = now - (time.monotonic() - started_monotonic) if started_monotonic else now
    return Outcome(succeeded=False, started_at=started, ended_at=now, exc_string=exc_string,
                   reason=exc_string.splitlines()[0] if exc_string else "")  # fmt: skip


def _clock() -> str:
    return time.strftime("%H:%M:%S")
