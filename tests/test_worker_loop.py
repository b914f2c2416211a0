"""The fast tier of the worker: Worker.run_once(now) driven with a fake clock and a fake select.

Real Redis and (where a horse is the point) real forks; no `workerd` subprocess, no signals sent.
Each test asserts on the worker's state (its Running, its deadlines, its stop reason, its reports)
and on Redis, not on log text.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from tests.conftest import JOBS_DIR, wait_until
from workerd import schema, suspension
from workerd.control import Command
from workerd.job import Job
from workerd.queue import Queue
from workerd.reports import JobOutcome, KillReason, Report, StopReason
from workerd.waiter import NO_WAITS, EndingWaits
from workerd.worker import HORSE_KILL_GRACE_S, Due, Idle, Interrupt, Worker

if str(JOBS_DIR) not in sys.path:
    sys.path.insert(0, str(JOBS_DIR))

T0 = 1000.0  # the fake clock's start


class FakeWaiter:
    """Stands in for the queue waiter: records each wait, never blocks."""

    quiet = False  # as if each wait may have handed the worker a job: every fetch asks Redis

    def __init__(self) -> None:
        self.waits: list[float] = []

    def end_waits(self) -> EndingWaits:
        return NO_WAITS

    def wait(self, timeout_s: float, wake_fds: Sequence[int] = ()) -> bool:
        self.waits.append(timeout_s)
        return False

    def close(self) -> bool:
        return True


class Loop:
    """A worker, its fake clock, what it reported and what it would have waited for."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.now = T0
        self.reports: list[Report] = []
        self.selects: list[float] = []  # the timeout of each select
        self.waiter = FakeWaiter()
        worker.reporter = self.reports.append
        worker.clock = lambda: self.now
        worker.select = self._select
        worker._waiter = self.waiter  # type: ignore[assignment]  # the worker waits on its queues through it
        worker.setup()

    def _select(self, fds: Sequence[int], timeout_s: float) -> None:
        self.selects.append(timeout_s)

    def turn(self, at: float | None = None) -> None:
        if at is not None:
            self.now = at
        self.worker.run_once(self.now)

    def turns_until(self, predicate: Callable[[], bool], step_s: float = 0.0) -> None:
        """Turn (advancing the fake clock by step_s each time) until predicate holds: the real
        horse runs on real time, so this is bounded by wait_until."""

        def turned() -> bool:
            self.now += step_s
            self.worker.run_once(None if self.worker.clock is time.monotonic else self.now)
            return predicate()

        wait_until(turned, timeout=20, interval=0.01)


@pytest.fixture
def loop(r: redis.Redis) -> Iterator[Callable[..., Loop]]:
    made: list[Loop] = []
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}

    def make(**overrides: Any) -> Loop:
        settings = {"execution": "inprocess", "heartbeat_interval": 3.0, **overrides}
        made.append(Loop(Worker(["q"], connection=r, name=f"loop-{len(made)}", **settings)))
        return made[-1]

    yield make
    for each in made:
        if each.worker.running is not None and each.worker.running.live_horse is not None:
            each.worker.running.live_horse.discard()
        each.worker.teardown()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_the_first_turn_registers_then_sleeps_until_the_heartbeat(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop()
    it.turn(T0)
    assert r.exists(schema.worker_key("loop-0"))
    assert it.worker.idle_next is Idle.WAIT  # the queue is empty: wait on it
    assert it.worker.next_deadline(T0) == (Due.HEARTBEAT, T0 + 3.0)
    assert it.waiter.waits == [3.0]


def test_the_scheduler_tick_is_a_deadline_of_its_own(loop: Callable[..., Loop]) -> None:
    it = loop(with_scheduler=True)
    it.turn(T0)
    assert it.worker.next_deadline(T0) == (Due.SCHEDULER, T0 + 1.0)


def test_the_heartbeat_is_due_at_its_interval_and_not_before(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop()
    it.turn(T0)
    key = schema.worker_key("loop-0")
    r.hset(key, "last_heartbeat", "marker")
    it.turn(T0 + 2.9)
    assert r.hget(key, "last_heartbeat") == b"marker"
    it.turn(T0 + 3.0)
    assert r.hget(key, "last_heartbeat") != b"marker"
    assert it.worker.next_deadline(T0 + 3.0) == (Due.HEARTBEAT, T0 + 6.0)


def test_a_worker_key_gone_is_registered_again_by_the_heartbeat(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop()
    it.turn(T0)
    r.delete(schema.worker_key("loop-0"))
    it.turn(T0 + 3.0)
    assert r.exists(schema.worker_key("loop-0"))


def test_after_a_failed_redis_call_nothing_that_needs_redis_is_due_before_the_backoff(
    loop: Callable[..., Loop], r: redis.Redis
) -> None:
    it = loop()
    it.turn(T0)
    it.worker._redis_failed(redis.ConnectionError("test"), T0 + 3.0)
    due = it.worker.deadlines(T0 + 3.0)
    assert due[Due.HEARTBEAT] == due[Due.FETCH] == T0 + 3.5  # the first backoff is 0.5 s
    assert it.reports[-1] == Report(outage=True)
    r.hset(schema.worker_key("loop-0"), "last_heartbeat", "marker")
    it.turn(T0 + 3.2)  # in the backoff: no heartbeat
    assert r.hget(schema.worker_key("loop-0"), "last_heartbeat") == b"marker"
    it.turn(T0 + 3.5)
    assert r.hget(schema.worker_key("loop-0"), "last_heartbeat") != b"marker"
    assert it.worker.outage.since is None  # the heartbeat reached Redis: the outage is over


def test_a_suspended_worker_looks_again_after_a_second_and_resumes(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop()
    suspension.suspend(r)
    job = Queue("q", connection=r).enqueue("testjobs.add", 1, 2)
    it.turn(T0)
    assert it.worker.idle_next is Idle.SUSPENDED and it.worker.running is None
    assert it.worker.next_deadline(T0) == (Due.FETCH, T0 + 1.0)
    assert r.hget(schema.worker_key("loop-0"), "state") == b"suspended"
    suspension.resume(r)
    it.turn(T0 + 0.5)  # not yet time to look again
    assert r.hget(schema.job_key(job.id), "status") == b"queued"
    it.turns_until(lambda: it.worker.jobs_done == 1, step_s=0.5)
    assert r.hget(schema.job_key(job.id), "status") == b"finished"


def test_memory_checks_are_deadlines_while_a_horse_runs(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop(execution="fork", heartbeat_interval=10.0, soft_memory_limit=100_000, memory_check_interval=2.0)
    Queue("q", connection=r).enqueue("testjobs.sleep_for", 30)
    it.turn(T0)  # started: its first memory check is due at once
    due, at = it.worker.next_deadline(T0)
    assert due is Due.MEMORY_CHECK and at <= T0
    it.turn(T0)  # checked (well under the limit)
    assert it.worker.next_deadline(T0) == (Due.MEMORY_CHECK, T0 + 2.0)
    it.turn(T0 + 2.0)
    assert it.worker.next_deadline(T0 + 2.0) == (Due.MEMORY_CHECK, T0 + 4.0)
    running = it.worker.running
    assert running is not None and running.interrupt is None


def test_max_jobs_stops_the_worker_after_that_many_jobs(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop(max_jobs=2)
    for i in range(3):
        Queue("q", connection=r).enqueue("testjobs.add", i, 1)
    it.turns_until(lambda: it.worker.done)
    assert it.worker.stop_reason is StopReason.MAX_JOBS and it.worker.jobs_done == 2
    assert r.llen(schema.queue_key("q")) == 1
    assert it.selects[-1] == 0.0  # each ended job was committed without sleeping first


def test_max_idle_time_stops_an_idle_worker_once_it_has_passed(loop: Callable[..., Loop]) -> None:
    it = loop(max_idle_time=10)
    it.worker._last_job_at = T0
    it.turn(T0 + 9.0)
    assert it.worker.stop_reason is None
    it.turn(T0 + 10.0)
    assert it.worker.stop_reason is StopReason.MAX_IDLE and it.worker.done


def test_a_burst_worker_stops_when_the_queues_are_empty(loop: Callable[..., Loop]) -> None:
    it = loop(burst=True)
    it.turn(T0)
    assert it.worker.stop_reason is StopReason.BURST_FINISHED and it.worker.done


def test_a_warm_stop_waits_for_the_job_in_hand(loop: Callable[..., Loop], r: redis.Redis, redis_url: str) -> None:
    it = loop(execution="fork")
    job = Queue("q", connection=r).enqueue("testjobs.wait_for_go", redis_url, "go")
    it.turn(T0)
    assert it.worker.running is not None and it.worker.running.claim.job.id == job.id
    it.worker._record_signal(signal.SIGTERM, None)
    it.turn(T0 + 0.1)
    assert it.worker.stop_reason is None and not it.worker.done  # the job runs on
    r.rpush("go", 1)
    it.turns_until(lambda: it.worker.done)
    assert it.worker.stop_reason is StopReason.WARM_SHUTDOWN
    assert r.hget(schema.job_key(job.id), "status") == b"finished"


def test_a_stop_signal_that_arrives_in_the_turn_a_job_ends_fetches_nothing_with_its_commit(
    loop: Callable[..., Loop], r: redis.Redis, redis_url: str
) -> None:
    """The commit of a success fetches the next job in the same script (COMMIT_THEN_FETCH) only for a
    worker that goes on: a SIGTERM recorded after this turn's signal handling leaves the backlog queued."""
    it = loop(execution="fork")
    queue = Queue("q", connection=r)
    job = queue.enqueue("testjobs.wait_for_go", redis_url, "go")
    backlog = queue.enqueue("testjobs.add", 1, 2)
    it.turn(T0)
    assert it.worker.running is not None and it.worker.running.claim.job.id == job.id
    watch_job = it.worker.watch_job

    def signal_after_the_handling(now: float) -> None:
        watch_job(now)
        if it.worker.running is not None and it.worker.running.ended:  # the turn that commits the job
            it.worker._record_signal(signal.SIGTERM, None)  # delivered after handle_signals, before the commit
            it.worker.watch_job = watch_job  # type: ignore[method-assign]

    it.worker.watch_job = signal_after_the_handling  # type: ignore[method-assign]
    r.rpush("go", 1)
    it.turns_until(lambda: it.worker.done)
    assert r.hget(schema.job_key(job.id), "status") == b"finished"
    assert r.hget(schema.job_key(backlog.id), "status") == b"queued"
    assert r.lrange(schema.queue_key("q"), 0, -1) == [backlog.id.encode()]
    assert it.worker.stop_reason is StopReason.WARM_SHUTDOWN


def test_a_running_horse_has_its_lease_renewed_at_the_heartbeat(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop(execution="fork")
    job = Queue("q", connection=r).enqueue("testjobs.sleep_for", 30)
    it.turn(T0)
    running = it.worker.running
    assert running is not None and running.live_horse is not None
    (member, _), *_ = r.zrange(schema.started_key("q"), 0, -1, withscores=True)
    assert member == running.claim.member
    r.zadd(schema.started_key("q"), {member: 1.0}, xx=True)  # as if the lease were about to expire
    it.turn(T0 + 3.0)
    assert r.zscore(schema.started_key("q"), member) > time.time()
    assert r.hget(schema.job_key(job.id), "status") == b"started"


def test_the_kill_time_is_the_timeout_plus_the_grace_and_kills_the_horse(
    loop: Callable[..., Loop], r: redis.Redis
) -> None:
    it = loop(execution="fork", heartbeat_interval=10.0)
    job = Queue("q", connection=r).enqueue("testjobs.sleep_for", 30, job_timeout=5)
    it.turn(T0)
    assert it.worker.next_deadline(T0) == (Due.KILL, T0 + 5 + HORSE_KILL_GRACE_S)
    it.turn(T0 + 5 + HORSE_KILL_GRACE_S)
    running = it.worker.running
    assert running is not None and running.interrupt is Interrupt.TIMEOUT and running.kill_at is None
    assert Report(kill=KillReason.TIMEOUT) in it.reports
    it.turns_until(lambda: it.worker.running is None)
    assert r.hget(schema.job_key(job.id), "status") == b"failed"
    assert r.zscore(schema.failed_key("q"), job.id) is not None


def test_a_cold_stop_kills_the_horse_and_requeues_the_job(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop(execution="fork")
    job = Queue("q", connection=r).enqueue("testjobs.sleep_for", 30)
    it.turn(T0)
    it.worker._record_signal(signal.SIGQUIT, None)
    it.turn(T0 + 0.1)
    assert it.worker.stop_reason is StopReason.COLD_SHUTDOWN and it.worker.done
    assert r.lrange(schema.queue_key("q"), 0, -1) == [job.id.encode()]


def test_stop_job_commits_the_job_as_stopped(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop(execution="fork")
    job = Queue("q", connection=r).enqueue("testjobs.sleep_for", 30)
    it.turn(T0)
    it.worker.on_command(Command(name="stop-job", job_id=job.id))
    running = it.worker.running
    assert running is not None and running.interrupt is Interrupt.STOP_JOB
    it.turns_until(lambda: it.worker.running is None)
    assert r.hget(schema.job_key(job.id), "status") == b"stopped"
    assert it.worker.stop_reason is None  # the worker goes on


def test_a_commit_while_redis_is_down_waits_for_the_backoff(loop: Callable[..., Loop], r: redis.Redis) -> None:
    it = loop()
    job = Queue("q", connection=r).enqueue("testjobs.add", 1, 2)
    it.worker.commit = _failing_once(it.worker.commit)  # type: ignore[method-assign]
    it.turn(T0)  # fetched and ran (in-process): its commit is due at once
    assert it.worker.next_deadline(T0)[0] is Due.COMMIT and it.selects[-1] == 0.0
    it.turn(T0)  # the first commit fails
    running = it.worker.running
    assert running is not None and running.ended and running.commit_tries == 1
    assert it.worker.next_deadline(T0) == (Due.COMMIT, T0 + 0.5)
    it.turn(T0 + 0.5)
    assert it.worker.running is None
    assert r.hget(schema.job_key(job.id), "status") == b"finished"


@pytest.mark.parametrize("func, outcome", [("testjobs.add", JobOutcome.FINISHED),
                                           ("testjobs.fail", JobOutcome.FAILED)])  # fmt: skip
def test_a_commit_whose_reply_was_lost_is_known_as_landed_on_the_retry(
    loop: Callable[..., Loop], r: redis.Redis, func: str, outcome: JobOutcome
) -> None:
    """Redis applied the commit, then the connection dropped before its reply: the retry finds its
    own lease gone. The job was committed, not taken back: it counts, with no lost-lease error."""
    it = loop()
    job = Queue("q", connection=r).enqueue(func, 1, 2)
    _drop_the_first_reply(it.worker.committer, "commit_success", "commit_success_then_fetch", "commit_failure")
    it.turn(T0)  # fetched and ran
    it.turn(T0)  # the commit lands, its reply does not
    running = it.worker.running
    assert running is not None and running.commit_tries == 1
    assert r.hget(schema.job_key(job.id), "status") == outcome.value.encode()
    it.turn(T0 + 0.5)
    assert it.worker.running is None
    assert [each.outcome for each in it.reports if each.outcome is not None] == [outcome]


def _drop_the_first_reply(committer: Any, *methods: str) -> None:
    """The first of these calls is applied in Redis, then its reply is lost with the connection."""
    calls = []

    def dropping(commit: Callable[..., Any]) -> Callable[..., Any]:
        def dropped(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            applied = commit(*args, **kwargs)
            if len(calls) == 1:
                raise redis.ConnectionError("test: the connection dropped before the reply")
            return applied

        return dropped

    for method in methods:
        setattr(committer, method, dropping(getattr(committer, method)))


def test_an_inprocess_job_has_its_lease_kept_by_the_same_heartbeat(
    loop: Callable[..., Loop], r: redis.Redis, redis_url: str
) -> None:
    """The LeaseKeeper thread runs the loop's heartbeat while the job holds the main thread: it
    registers the worker again when its key is gone (here deleted by the job)."""
    it = loop(heartbeat_interval=0.2)
    it.worker.clock = time.monotonic  # the keeper thread sleeps on real time
    job = Queue("q", connection=r).enqueue("testjobs.delete_key_and_wait", redis_url, schema.worker_key("loop-0"))
    it.turns_until(lambda: it.worker.jobs_done == 1)
    assert r.hget(schema.job_key(job.id), "status") == b"finished"
    assert Job.fetch(job.id, connection=r).return_value() is True


def _failing_once(commit: Callable[..., None]) -> Callable[..., None]:
    calls = []

    def failing(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise redis.ConnectionError("test: Redis went away")
        commit(*args)

    return failing
