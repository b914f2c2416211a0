"""The worker: registers in Redis, fetches a job, has it run, commits the outcome, heartbeats.

    run()       = setup; while not stopping: run_once(); teardown
    run_once()  = signals -> heartbeat (and recovery) -> fetch -> execute -> commit

A job is run in a horse forked for it (EXECUTION = "fork", the default) or in this process
("inprocess"). Either way the worker alone writes the job's state, through workerd.commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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
from typing import Any, NoReturn

import redis

from workerd import __version__, presence, rqview, schema, suspension, untrusted, webhooks
from workerd import connection as connection_module
from workerd import horse as horse_module
from workerd import scheduler as scheduler_module
from workerd import waiter as waiter_module
from workerd.commit import (
    CANCELED,
    LEASE_LOST,
    Claim,
    Committer,
    Fetched,
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
# Second SIGINT/SIGTERM within this window is a duplicate (a terminal's Ctrl+C reaching both a
# supervisor and its worker), not a request for a cold stop; rq uses the same guard.
DUPLICATE_SIGNAL_WINDOW_S = 1.0
# In burst mode a Redis that cannot be reached at start is given this long before exiting 69.
BURST_CONNECT_GIVE_UP_S = 30.0
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
        self.jobs_done = 0
        self.jobs_failed = 0
        self.exit_code = ExitCode.OK
        self.stop_reason: StopReason | None = None
        self._signals: list[int] = []
        self._warm_stop_at: float | None = None
        self._cold_stop = False
        self._claim: Claim | None = None
        self._waiter: waiter_module.QueueWaiter | None = None
        self._wake_read, self._wake_write = -1, -1
        self._next_heartbeat = 0.0
        self._recovery_after = 0.0
        self._last_job_at = time.monotonic()
        self._registered = False
        self._next_memory_check = 0.0
        self._jobs_this_run = 0
        # Under a master: how the worker reports its state, and the workers it replaces that the
        # master saw die (name, and the reason it killed them if it did).
        self.reporter = reporter
        self.predecessors = list(predecessors)
        self.scheduler = Scheduler(self.redis, self.name, self.queue_order) if self.settings.with_scheduler else None
        self._pubsub: Any = None
        self._horse: horse_module.Horse | None = None
        self._stop_job_id: str | None = None
        self._suspended = False
        self._next_maintenance = 0.0
        self._keeper: LeaseKeeper | None = None
        self._warm_horse: horse_module.Horse | None = None
        self._woke_from_idle = False  # the last fetch found nothing: the next job is a wake-up
        self._idle_written = False  # whether "state idle" is in our hash since we last changed it

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
            while self.stop_reason is None:
                try:
                    self.run_once()
                    self.outage.succeeded()
                except CONNECTION_ERRORS as exc:
                    self._on_outage(exc)
        finally:
            self.teardown()
        return self.exit_code

    def run_once(self) -> None:
        """One step: act on signals, heartbeat when due, then fetch and run one job or wait for one."""
        self.handle_signals()
        self.handle_commands()
        self.heartbeat_if_due()
        self.housekeeping_if_due()
        if self.stop_reason is not None or self._warm_stop_at is not None:
            self.stop(StopReason.WARM_SHUTDOWN, "warm shut down")  # unless it stops already
            return
        fetched = self.fetch()
        if fetched.suspended:
            self.suspended()
            return
        claim = fetched.claim
        if claim is None:
            if not fetched.skipped:  # ids were skipped (hash gone): the queue may hold more, fetch again
                self.idle()
                self._woke_from_idle = True
            return
        self.execute(claim)
        self._woke_from_idle = False
        self.jobs_done += 1
        self._last_job_at = time.monotonic()
        self._jobs_this_run += 1
        if self.settings.max_jobs is not None and self._jobs_this_run >= self.settings.max_jobs:
            self.stop(StopReason.MAX_JOBS, f"finished {self.jobs_done} jobs (max jobs reached)")

    # -- setup and teardown -----------------------------------------------------------------------

    def setup(self) -> None:
        self._begin_run()
        self._install_signal_handlers()
        redis_was_down = self._connect_with_retry()
        presence.register_birth(self.redis, self.name, self.queue_order, self.settings.worker_ttl)
        self._registered = True
        # Leases already expired at a normal start belong to dead workers: recover them at once
        # (a pool whose master keeps dying never lives a lease period). Only after an outage do
        # live workers need one lease period to renew theirs before anyone judges them.
        self._recovery_after = time.monotonic() + (self.settings.lease_s if redis_was_down else 0.0)
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

    def _begin_run(self) -> None:
        """Forget how the previous run (an earlier work() call on this object) ended."""
        self.stop_reason = None
        self.exit_code = ExitCode.OK
        self._signals.clear()
        self._warm_stop_at = None
        self._cold_stop = False
        self._jobs_this_run = 0

    def _connect_with_retry(self) -> bool:
        """Wait for Redis (with backoff). Returns True if it was unreachable at first."""
        give_up_at = time.monotonic() + BURST_CONNECT_GIVE_UP_S if self.settings.burst else None
        was_down = False
        while True:
            try:
                connection_module.check_version(self.redis)
                self.outage.succeeded()
                return was_down
            # A refused password, ACL (NoPermissionError: always a refusal) or certificate is a settings
            # error, reported at once rather than retried as an outage (connection.refusal).
            except (*CONNECTION_ERRORS, redis.exceptions.NoPermissionError) as exc:
                refused = connection_module.refusal(exc, self.outage.where)
                if refused is not None:
                    raise refused from None
                was_down = True
                delay = self.outage.failed(exc)
                # Alive, waiting for Redis: the master's READY and watchdog count on it.
                self.report(Report(outage=True))
                if give_up_at is not None and time.monotonic() + delay > give_up_at:
                    raise RedisUnavailableError(
                        f"Redis at {self.outage.where} was unreachable for {self.outage.down_for_s:.0f} s "
                        f"({exc}); {connection_module.hint(exc)}"
                    ) from None
                self.sleep(delay)
                self.handle_signals()
                if self.stop_reason is not None or self._warm_stop_at is not None:
                    raise SystemExit(0) from None

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
            # Ids handed to our waits and not started go back to the front of their queues now.
            self.committer.recover_claims({queue: [self.name] for queue in self.queue_order}, worker_is_dead=True,
                                          linger_s=None if waits_ended else self.settings.lease_s)  # fmt: skip
            if self.scheduler is not None:
                self.scheduler.release()
            if self._pubsub is not None:
                self._pubsub.close()
        self.webhook_sender.close(0.0 if self._cold_stop else webhooks.DRAIN_S)
        if self._registered:
            try:
                presence.register_death(self.redis, self.name, self.queue_order)
            except CONNECTION_ERRORS:
                log.warning("Worker %s: could not register death: Redis unreachable", self.name)
        if self.settings.pid:
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

    def handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            now = time.monotonic()
            if signum == signal.SIGQUIT:  # the master's cold stop: no duplicate guard
                self._cold_stop_now()
            elif self._warm_stop_at is None:
                self._warm_stop_at = now
                log.info("Worker %s [PID %d]: warm shut down requested (%s)", self.name, os.getpid(),
                         signal.Signals(signum).name)  # fmt: skip
                if self._claim is None:
                    self.stop(StopReason.WARM_SHUTDOWN, "warm shut down")
            elif now - self._warm_stop_at > DUPLICATE_SIGNAL_WINDOW_S:
                self._cold_stop_now()

    def _cold_stop_now(self) -> None:
        if self._cold_stop:
            return
        self._cold_stop = True
        if self._warm_stop_at is None:
            self._warm_stop_at = time.monotonic()
        log.warning("Worker %s [PID %d]: cold shut down: the running job goes back to its queue",
                    self.name, os.getpid())  # fmt: skip
        self.stop(StopReason.COLD_SHUTDOWN, "cold shut down")

    def sleep(self, seconds: float, extra_fds: Sequence[int] = ()) -> None:
        """Sleep, but wake at once on a signal (or when one of `extra_fds` is readable)."""
        if seconds > 0:
            select.select([self._wake_read, *extra_fds], [], [], seconds)
            self._drain_wake_pipe()

    # -- commands over pub/sub -------------------------------------------------------------------

    def _subscribe(self) -> None:
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(schema.pubsub_channel(self.name))
        log.info("Worker %s: subscribing to channel %s", self.name, schema.pubsub_channel(self.name))

    def _command_fds(self) -> list[int]:
        connection = getattr(self._pubsub, "connection", None)
        sock = connection._get_socket() if connection is not None else None
        return [sock.fileno()] if sock is not None else []

    def handle_commands(self) -> None:
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
        if command.name == "shutdown":
            self._signals.append(signal.SIGINT)  # as rq: the same as a first Ctrl+C
            self.handle_signals()
        elif command.name == "kill-horse":
            if self._horse is None:
                log.info("Worker %s: no horse to kill", self.name)
            else:
                _kill_group(self._horse.pid)
        elif command.name == "stop-job":
            shown = printable_id(command.job_id or "")
            if self._claim is None or self._claim.job.id != command.job_id:
                log.info("Worker %s: Not working on job %s, command ignored.", self.name, shown)
            elif self._horse is None:
                log.warning("Worker %s: cannot stop job %s: it runs in-process", self.name, shown)
            else:
                self._stop_job_id = command.job_id
                _kill_group(self._horse.pid)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- heartbeats and recovery -------------------------------------------------------------------

    def heartbeat_if_due(self) -> bool:
        """Heartbeat if it is time; True if it did (and so reached Redis)."""
        now = time.monotonic()
        if now < self._next_heartbeat:
            return False
        self._next_heartbeat = now + self.settings.effective_heartbeat_s
        if self.reporter is None:  # a single worker rotates its own log file; in a pool, the master does
            rotate_log_file_if_needed(self.settings)
        self.heartbeat()
        return True

    def heartbeat(self) -> None:
        """One round trip: worker heartbeat, lease renewal, and a look for expired leases."""
        claim = self._claim
        busy_ttl = self.settings.job_monitoring_interval + 60
        ttl = busy_ttl if claim else presence.idle_ttl_s(self.settings.worker_ttl)
        # After an outage, leases look expired until their workers renew them: wait a lease first.
        recover = time.monotonic() >= self._recovery_after and self.outage.settled(self.settings.lease_s)
        with self.redis.pipeline(transaction=False) as pipe:
            key = presence.queue_heartbeat(pipe, self.name, ttl, self.queue_order, self.settings.lease_s)
            lease = None if claim is None else self.committer.renew_lease(claim, self.settings.lease_s,
                                                                          self._working_time_s(), pipe)  # fmt: skip
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
                presence.set_state(self.redis, self.name, "busy")
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
        if self._claim is not None and member == self._claim.member:
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

    def _redis_failed(self, exc: BaseException) -> float:
        """Record a failed Redis call; returns the backoff. Every pooled socket is dropped, so that
        after a Redis restart no stale one fails again (which would log a second outage)."""
        delay = self.outage.failed(exc)
        self.report(Report(outage=True))
        self.redis.connection_pool.disconnect()
        connection = getattr(self._pubsub, "connection", None)
        if connection is not None:  # it reconnects and subscribes again on its next read
            connection.disconnect()
        return delay

    def _on_outage(self, exc: BaseException) -> None:
        delay = self._redis_failed(exc)
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        self.sleep(delay)
        self.handle_signals()
        # Give live workers one lease period to renew before anyone's lease is judged expired.
        self._recovery_after = time.monotonic() + self.settings.lease_s + delay

    # -- fetching --------------------------------------------------------------------------------

    def fetch(self) -> Fetched:
        if self._waiter is not None and self._waiter.quiet:  # no job was handed to us: none to fetch
            return Fetched(None, [])
        waits = waiter_module.NO_WAITS if self._waiter is None else self._waiter.end_waits()
        fetched = self.committer.fetch_and_start(self.queue_order, self.settings.lease_s, waits)
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

    def suspended(self) -> None:
        """rq:suspended is set: take nothing; a burst worker leaves, others check again each second."""
        if not self._suspended:
            self._suspended = True
            log.info("Worker %s: suspended, run `rq resume` (or `workerd resume`) to resume", self.name)
            presence.set_state(self.redis, self.name, "suspended")
            self._idle_written = False
        if self.settings.burst:
            self.stop(StopReason.SUSPENDED, "suspended")
            return
        self.sleep(min(1.0, self.settings.effective_heartbeat_s), self._command_fds())

    def housekeeping_if_due(self) -> None:
        """The scheduler's tick (with --with-scheduler) and the periodic registry clean-up."""
        if self.scheduler is not None:
            self.scheduler.tick_if_due()
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.settings.maintenance_interval
            clean_registries(self.redis, self.committer, self.queue_order)

    def _reorder_queues(self, served: str) -> None:
        strategy = self.settings.dequeue_strategy
        if strategy == "round_robin":
            index = self.queue_order.index(served) + 1
            self.queue_order = self.queue_order[index:] + self.queue_order[:index]
        elif strategy == "random":
            random.shuffle(self.queue_order)

    def idle(self) -> None:
        if self.settings.burst:
            log.info("Worker %s: No more work, burst finished.", self.name)
            self.stop(StopReason.BURST_FINISHED, "burst finished")
            return
        max_idle = self.settings.max_idle_time
        if max_idle is not None and time.monotonic() - self._last_job_at >= max_idle:
            self.stop(StopReason.MAX_IDLE, f"idle for {max_idle} s (max idle time)")
            return
        if not self._idle_written:  # once per idle spell, not on every wake-up
            presence.set_state(self.redis, self.name, "idle")
            self._idle_written = True
        if self._waiter is None:
            self._waiter = waiter_module.QueueWaiter(self.redis, self.queue_order, self.name, self.dequeue_timeout)
        wait_s = max(0.0, self._next_heartbeat - time.monotonic())
        if self.scheduler is not None:
            wait_s = min(wait_s, scheduler_module.TICK_S)
        self._waiter.wait(wait_s, wake_fds=[self._wake_read, *self._command_fds()])
        self._drain_wake_pipe()

    # -- executing -------------------------------------------------------------------------------

    def execute(self, claim: Claim) -> None:
        self._claim = claim
        job = claim.job
        shown = printable_id(job.id)
        described = shown if self.settings.disable_job_desc_logging else f"{job.description} ({shown})"
        log.info("Worker %s: %s: %s", self.name, claim.queue, described, extra=job_fields(job, claim.queue, self.name))
        self._claim_started = time.monotonic()
        timeout_s = effective_timeout_s(job)
        inprocess_timeout = timeout_s and self.settings.execution == "inprocess"
        kill_at = time.time() + timeout_s + HORSE_KILL_GRACE_S if inprocess_timeout else None
        self.report(Report(state=WorkerState.BUSY, job=shown, kill_at=kill_at))
        try:
            outcome = self.run_job(claim)
            if outcome is None:  # cold stop: the job went back to its queue
                return
            self.commit(claim, outcome)
        finally:
            self._claim = None
            self._set_idle_title()
            self.report(Report(state=WorkerState.IDLE, jobs=self.jobs_done + 1, failed=self.jobs_failed))

    def perform(self, job: Job) -> Outcome:
        """Run the job's function here (in the horse, or in-process). Never raises."""
        return perform(job, self.death_penalty_class, self.exception_handlers,
                       record_failure=not self.settings.disable_default_exception_handler,
                       allowed_functions=self.settings.allowed_functions, view_class=self.job_class)  # fmt: skip

    def run_job(self, claim: Claim) -> Outcome | None:
        job = claim.job
        shown = printable_id(job.id)  # a process title must be valid text
        try:
            title = f"horse of {self.name}: {shown} {job.func_name} from {claim.queue} since {_clock()}"
        except Exception as exc:  # undecodable data: fail the job here, there is nothing to run
            return _failed_outcome(f"{type(exc).__name__}: {exc}\n")
        refused = untrusted.refusal(job, self.settings.allowed_functions)  # before any import or fork
        if refused is not None:
            return _failed_outcome(f"{refused}\n")
        set_title(f"worker {self.name}: busy with {shown} {job.func_name} from {claim.queue} since {_clock()}")
        if self.settings.execution == "inprocess":
            return self.run_inprocess(claim)
        horse = self._horse_for(job, title)
        self._horse = horse
        # With a backlog, the next job's horse forks while this one runs: the overlap is throughput.
        # A job that woke an idle worker likely has no successor yet, and on a small machine a fork
        # now competes for the CPU with the job it is meant to speed up: fork once this one is done.
        if not self._woke_from_idle:
            self.prefork()
        try:
            outcome = self.monitor(claim, horse)
        finally:
            self._horse = None
        self.prefork()
        return outcome

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

    def run_inprocess(self, claim: Claim) -> Outcome:
        """Run the job in this process; a thread keeps the lease while the job holds the main thread.

        The master enforces the timeout from outside (it SIGKILLs this worker past the deadline the
        worker reported), and the job's cwd and signal handlers are restored afterwards.
        """
        cwd = os.getcwd()
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
        stdio = _save_stdio()
        if self._keeper is None:
            self._keeper = LeaseKeeper(self)
            self._keeper.start()
        self._keeper.claim = claim
        real_exit = os._exit
        os._exit = self._exit_guard(claim, real_exit)  # type: ignore[assignment]  # same signature, a closure
        try:
            return self.perform(claim.job)
        finally:
            os._exit = real_exit
            self._keeper.claim = None
            _restore_stdio(stdio)
            os.chdir(cwd)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def _exit_guard(self, claim: Claim, real_exit: Callable[[int], NoReturn]) -> Callable[[int], NoReturn]:
        """What os._exit is while an in-process job runs: the process still ends, but not silently.

        os._exit runs no atexit, no finally, nothing of ours: without this, a job calling it would end
        the worker with the job's exit code (0 for a clean-looking stop, which Restart=on-failure does
        not restart) and the job left started. So the job is failed with the reason, one log line names
        it, and the worker leaves with exit code 1. A child the job forked exits as it asked. Only calls
        through os._exit are seen: posix._exit or the C library's _exit (ctypes) bypass it."""
        worker_pid = os.getpid()

        def guarded_exit(code: int) -> NoReturn:
            if os.getpid() != worker_pid:
                real_exit(code)
            reason = (f"SystemExit: the job called os._exit({code}) in the worker process (execution "
                      f"inprocess); the worker exited with code {int(ExitCode.FAILURE)}\n")  # fmt: skip
            log.error("Worker %s: job %s called os._exit(%s); failing it, then exiting with code %d", self.name,
                      printable_id(claim.job.id), code, int(ExitCode.FAILURE),
                      extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip
            with contextlib.suppress(Exception):  # one try: Redis down, the lease expires and recovery fails it
                self.committer.commit_failure(claim, _failed_outcome(reason, self._claim_started))
            logging.shutdown()  # flush the line above
            real_exit(ExitCode.FAILURE)

        return guarded_exit

    def monitor(self, claim: Claim, horse: horse_module.Horse) -> Outcome | None:
        """Wait for the horse: read its report, heartbeat, enforce the timeout, obey a cold stop."""
        timeout_s = effective_timeout_s(claim.job)
        kill_at = horse.started_monotonic + timeout_s + HORSE_KILL_GRACE_S if timeout_s else None
        killed_for_timeout = False
        killed_for_memory: str | None = None
        status: int | None = None
        try:
            while status is None:
                tick = max(0.01, self._next_heartbeat - time.monotonic())
                if kill_at is not None:
                    tick = min(tick, max(0.01, kill_at - time.monotonic()))
                select.select([*horse.wait_fds(), self._wake_read, *self._command_fds()], [], [], min(tick, 1.0))
                self._drain_wake_pipe()
                horse.read_available()
                pid, status_or_zero = os.waitpid(horse.pid, os.WNOHANG)
                if pid:
                    status = status_or_zero
                    break
                self.handle_signals()
                with contextlib.suppress(*CONNECTION_ERRORS):
                    self.handle_commands()
                    if self.scheduler is not None:
                        self.scheduler.tick_if_due()
                if self._cold_stop:
                    _kill_group(horse.pid)
                    os.waitpid(horse.pid, 0)
                    self._requeue(claim)
                    return None
                try:
                    if self.heartbeat_if_due():  # not due is no news: Redis may still be down
                        self.outage.succeeded()
                except CONNECTION_ERRORS as exc:
                    self._redis_failed(exc)  # keep the horse running; the commit waits for Redis
                memory_kill = self._check_horse_memory(horse)
                if memory_kill is not None:
                    killed_for_memory = memory_kill
                if kill_at is not None and time.monotonic() >= kill_at and not killed_for_timeout:
                    killed_for_timeout = True
                    log.warning("Worker %s: job %s ran past its timeout of %g s; killing its horse",
                                self.name, printable_id(claim.job.id), timeout_s,
                                extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip
                    self.report(Report(kill=KillReason.TIMEOUT))
                    _kill_group(horse.pid)
            horse.read_available()
        finally:
            _kill_group(horse.pid)  # grandchildren the job left behind share the horse's group
            horse.close()
        outcome = horse.outcome()
        if self._stop_job_id == claim.job.id:
            return _failed_outcome("Job stopped by user, work-horse terminated.", horse.started_monotonic)
        if killed_for_memory is not None:
            return _failed_outcome(f"{killed_for_memory}; the horse was {describe_wait_status(status)}\n",
                                   horse.started_monotonic)  # fmt: skip
        if killed_for_timeout:
            return _failed_outcome(
                f"JobTimeoutException: Task exceeded maximum timeout value ({timeout_s:g} seconds); the job did "
                f"not stop by itself and its work-horse was killed after a {HORSE_KILL_GRACE_S:g} s grace\n",
                horse.started_monotonic,
            )
        if outcome is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return outcome
        signal_part = f" (signal {os.WTERMSIG(status)})" if os.WIFSIGNALED(status) else ""
        return _failed_outcome(
            f"Work-horse terminated unexpectedly; waitpid returned {status}{signal_part}; "
            f"the horse was {describe_wait_status(status)}\n",
            horse.started_monotonic,
        )

    def _check_horse_memory(self, horse: horse_module.Horse) -> str | None:
        """Enforce the memory limits on the horse; returns the reason once it has been killed."""
        soft, hard = self.settings.soft_memory_limit, self.settings.hard_memory_limit
        now = time.monotonic()
        if (soft is None and hard is None) or now < self._next_memory_check:
            return None
        self._next_memory_check = now + self.settings.memory_check_interval
        if horse.term_sent_at is not None:
            if now - horse.term_sent_at >= self.settings.memory_kill_grace:
                _kill_group(horse.pid)
            return None
        use = measure_memory(horse.pid)
        if use is None:
            return None
        if hard is not None and use.uss_mib > hard:
            _kill_group(horse.pid)
            # Under a master this worker is replaced (documented). A single worker is its own
            # supervisor for its horses: stopping here would end it with exit code 0, the queue not
            # drained, and a unit with Restart=on-failure would leave it down. It forks the next one.
            if self.reporter is not None:
                self.stop(StopReason.HARD_MEMORY, "replaced after its horse hit the hard memory limit")
            self.report(Report(kill=KillReason.HARD_MEMORY))
            return (f"MemoryLimitExceeded: the work-horse used {use.uss_mib:.0f} MiB, over the hard memory "
                    f"limit of {hard} MiB, and was killed (SIGKILL)")  # fmt: skip
        if soft is not None and use.uss_mib > soft:
            horse.term_sent_at = now
            _signal_group(horse.pid, signal.SIGTERM)
            self.report(Report(kill=KillReason.SOFT_MEMORY))
            return (f"MemoryLimitExceeded: the work-horse used {use.uss_mib:.0f} MiB, over the soft memory "
                    f"limit of {soft} MiB, and was stopped (SIGTERM, then SIGKILL after "
                    f"{self.settings.memory_kill_grace:g} s)")  # fmt: skip
        return None

    def _requeue(self, claim: Claim) -> None:
        try:
            if self.committer.requeue(claim) == LEASE_LOST:
                self._lease_lost(claim)
                return
            log.warning("Worker %s: job %s put back at the front of %s", self.name, printable_id(claim.job.id),
                        claim.queue, extra=job_fields(claim.job, claim.queue, self.name))  # fmt: skip
            self.report(Report(outcome=JobOutcome.REQUEUED, queue=claim.queue))
        except CONNECTION_ERRORS:
            log.error("Worker %s: Redis unreachable; job %s stays claimed and will be recovered "
                      "when its lease expires", self.name, printable_id(claim.job.id))  # fmt: skip

    # -- committing --------------------------------------------------------------------------------

    def commit(self, claim: Claim, outcome: Outcome) -> None:
        """Write the outcome; while Redis is down, keep retrying (a cold stop gives up: the lease
        then expires and the job is recovered)."""
        while True:
            try:
                self._commit_once(claim, outcome)
                self.outage.succeeded()
                return
            except redis.ResponseError as exc:  # the script stopped at an error; Redis kept its writes so far
                self._commit_failed(claim, outcome, exc)
                return
            except CONNECTION_ERRORS as exc:
                self.sleep(self._redis_failed(exc))
                self.handle_signals()
                if self._cold_stop:
                    log.error("Worker %s: cold stop while Redis is unreachable: job %s will be recovered "
                              "when its lease expires", self.name, printable_id(claim.job.id))  # fmt: skip
                    return

    def _commit_once(self, claim: Claim, outcome: Outcome) -> None:
        job = claim.job
        if self._stop_job_id == job.id:
            self._commit_stopped(claim, outcome)
            return
        if outcome.succeeded and outcome.retry is not None:
            committed = self.committer.commit_retry_requested(claim, outcome)
            self._note_canceled(claim, committed.released)
            if committed.released != LEASE_LOST:
                log.info("Worker %s: job %s asked to be retried: %s", self.name, printable_id(job.id),
                         committed.detail)  # fmt: skip
                if committed.verdict is Verdict.FAILED:  # past its max: failed, with no exception (as RQ)
                    self.send_webhooks(job, "failed", outcome.ended_at, "")
            return
        if outcome.succeeded:
            released = self.committer.commit_success(claim, outcome, self.settings.result_ttl)
            if released == LEASE_LOST:
                self._lease_lost(claim)
                return
            self._note_canceled(claim, released)
            self._log_success(claim, outcome)
            self.report(Report(outcome=JobOutcome.FINISHED, queue=claim.queue, duration_s=outcome.duration_s))
            self.send_webhooks(job, "finished", outcome.ended_at)
            return
        self.jobs_failed += 1
        committed = self.committer.commit_failure(claim, outcome)
        if committed.released == LEASE_LOST:
            self._lease_lost(claim)
            return
        self._note_canceled(claim, committed.released)
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

    def _note_canceled(self, claim: Claim, released: int) -> None:
        if released == CANCELED:
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
        if self.committer.fail_uncommittable(claim, outcome, exc) == LEASE_LOST:
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
        self._stop_job_id = None
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

    # -- small helpers ---------------------------------------------------------------------------

    def _working_time_s(self) -> float:
        return time.monotonic() - getattr(self, "_claim_started", time.monotonic())

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


class LeaseKeeper(threading.Thread):
    """In-process mode: one thread per worker that renews the lease of the job in hand (and reports
    to the master) while the job holds the main thread. Started once: a thread per job would cost
    more than the jobs it is made for."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="workerd-lease-keeper", daemon=True)
        self.worker = worker
        self.claim: Claim | None = None  # set by the main thread around each job
        self._done = threading.Event()
        # Its own client on the shared pool: a connection is never used by two threads at once.
        self.redis = redis.Redis(connection_pool=worker.redis.connection_pool)

    def run(self) -> None:
        interval = self.worker.settings.effective_heartbeat_s
        while not self._done.wait(interval):
            claim = self.claim
            if claim is None:
                continue
            try:
                with self.redis.pipeline(transaction=False) as pipe:
                    presence.queue_heartbeat(pipe, self.worker.name, self.worker.settings.job_monitoring_interval + 60,
                                             self.worker.queue_order, self.worker.settings.lease_s)  # fmt: skip
                    self.worker.committer.renew_lease(claim, self.worker.settings.lease_s,
                                                      self.worker._working_time_s(), pipe)  # fmt: skip
                    pipe.execute()
                self.worker.report(Report(heartbeat=True))
            except CONNECTION_ERRORS:
                self.worker.report(Report(outage=True))  # the job goes on; the commit will wait for Redis

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


def _failed_outcome(exc_string: str, started_monotonic: float | None = None) -> Outcome:
    now = time.time()
    started = now - (time.monotonic() - started_monotonic) if started_monotonic else now
    return Outcome(succeeded=False, started_at=started, ended_at=now, exc_string=exc_string,
                   reason=exc_string.splitlines()[0] if exc_string else "")  # fmt: skip


def _clock() -> str:
    return time.strftime("%H:%M:%S")
