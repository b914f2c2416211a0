"""The fast tier of the master (issue 16): `Master.run_once` driven with a fake clock and fake children.

The decisions of the master's loop (restart backoff, recycling, stop sequences, what a report does)
need no fork: the children here are pipes with made-up pids, their signals are recorded instead of
sent, and their exits are wait statuses the test hands to `reap`. Reports travel the real way, as
lines the worker's reporter writes into the child's pipe. What only real processes can show (the
fork, signal masks, a real worker's reports) stays in tests/test_supervisor.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from workerd import memory, supervisor
from workerd.errors import BootFailureError, ConfigError
from workerd.reports import KillReason, RecycleReason, Report, StopReason, WorkerState
from workerd.settings import Settings
from workerd.supervisor import COLD_STOP_GRACE_S, EARLY_DEATH_S, Child, Group, Master

FAKE_PID_BASE = 5_000_000  # above Linux's pid_max (4194304): no real process can have these pids


def exited(code: int) -> int:
    """The wait status of a process that exited with `code`."""
    return code << 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LoopMaster(Master):
    """A master whose children are pipes: spawn makes one, reap delivers the exits the test scripted,
    and the wait for events returns at once (the test is the clock)."""

    def __init__(self, settings: Settings, clock: FakeClock) -> None:
        super().__init__(settings, clock=clock)
        self._wake_read, self._wake_write = os.pipe()  # as setup() makes them
        self.writers: dict[int, int] = {}  # each fake child's end of its report pipe
        self.exits: list[tuple[int, int]] = []  # (pid, wait status) for the next reap

    def spawn(self, group: Group) -> Child:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._serial += 1
        pid = FAKE_PID_BASE + self._serial
        now = self.clock()
        child = Child(group=group.name, generation=self.generation, pid=pid, name=f"w{self._serial}",
                      status_fd=read_fd, started=now, last_report=now)  # fmt: skip
        self.children[pid] = child
        self.writers[pid] = write_fd
        return child

    def wait_for_events(self, timeout_s: float) -> tuple[list[int], list[int]]:
        return [], []

    def reap(self, block_s: float = 0.0) -> None:
        while self.exits:
            pid, status = self.exits.pop(0)
            self._child_exited(self.children.pop(pid), status)
            os.close(self.writers.pop(pid))

    def report(self, child: Child, report: Report) -> None:
        supervisor._pipe_reporter(self.writers[child.pid])(report)

    def only_child(self) -> Child:
        (child,) = self.children.values()
        return child

    def close(self) -> None:
        for fd in [self._wake_read, self._wake_write, *self.writers.values()]:
            os.close(fd)
        for child in self.children.values():
            os.close(child.status_fd)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The signals the master sends, as (pid, signal): recorded, never delivered."""
    signals: list[tuple[int, int]] = []
    monkeypatch.setattr(supervisor, "_signal", lambda pid, signum: signals.append((pid, signum)))
    monkeypatch.setattr(supervisor, "set_title", lambda title: None)  # the title of the test process
    return signals


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_master(clock: FakeClock, sent: list[tuple[int, int]]) -> Iterator[Any]:
    made: list[LoopMaster] = []

    def make(**settings: Any) -> LoopMaster:
        master = LoopMaster(Settings(**settings), clock)
        made.append(master)
        return master

    yield make
    for master in made:
        master.close()


# -- restarts -------------------------------------------------------------------------------------


def test_a_worker_that_dies_before_it_is_ready_is_restarted_with_doubling_backoff_then_given_up(
    make_master: Any, clock: FakeClock
) -> None:
    master = make_master(workers=1, boot_failure_limit=3)
    master.run_once()
    for delay_s in (0.5, 1.0):
        master.exits.append((master.only_child().pid, exited(1)))
        master.run_once()
        assert master.children == {}
        clock.advance(delay_s - 0.01)
        master.run_once()
        assert master.children == {}, f"restarted before its {delay_s} s backoff"
        clock.advance(0.01)
        master.run_once()
        assert len(master.children) == 1
    master.exits.append((master.only_child().pid, exited(1)))
    with pytest.raises(BootFailureError, match="failed to start 3 times in a row"):
        master.run_once()


def test_a_worker_refused_its_settings_stops_the_master_at_once(make_master: Any) -> None:
    master = make_master(workers=1)
    master.run_once()
    master.exits.append((master.only_child().pid, exited(78)))
    with pytest.raises(ConfigError):
        master.run_once()


def test_an_early_death_after_ready_backs_off_and_a_long_life_resets_the_backoff(
    make_master: Any, clock: FakeClock
) -> None:
    master = make_master(workers=1, boot_failure_limit=2)
    master.run_once()
    group = master.groups[0]
    for deaths in (1, 2, 3):  # never given up on, however many: the cause may be a job, not the settings
        child = master.only_child()
        master.report(child, Report(state=WorkerState.IDLE))
        master.run_once()
        assert child.ready
        clock.advance(1.0)
        master.exits.append((child.pid, exited(1)))
        master.run_once()
        assert group.consecutive_early_deaths == deaths
        assert group.next_spawn_at == clock.now + 0.5 * 2 ** (deaths - 1)
        clock.advance(0.5 * 2 ** (deaths - 1))
        master.run_once()
    child = master.only_child()
    master.report(child, Report(state=WorkerState.IDLE))
    master.run_once()
    clock.advance(EARLY_DEATH_S)
    master.exits.append((child.pid, signal.SIGKILL))  # the OOM killer, say
    master.run_once()
    assert group.consecutive_early_deaths == 0
    assert len(master.children) == 1, "a worker that lived long is replaced at once"


# -- recycling ------------------------------------------------------------------------------------


def test_a_worker_recycled_for_its_job_count_is_replaced_without_backoff(make_master: Any) -> None:
    master = make_master(workers=1)
    master.run_once()
    child = master.only_child()
    master.report(child, Report(state=WorkerState.IDLE, jobs=10))
    master.report(child, Report(stopping="max jobs (10) reached", stop_reason=StopReason.MAX_JOBS))
    master.run_once()
    assert (child.jobs_done, child.recycle) == (10, RecycleReason.MAX_JOBS)
    master.exits.append((child.pid, exited(0)))
    master.run_once()
    (replacement,) = master.children.values()
    assert replacement.pid != child.pid
    assert master.groups[0].next_spawn_at == 0.0


def test_a_worker_past_its_max_age_is_asked_to_stop_once(
    make_master: Any, clock: FakeClock, sent: list[tuple[int, int]]
) -> None:
    master = make_master(workers=1, max_age=60, memory_check_interval=5)
    master.run_once()
    child = master.only_child()
    clock.advance(59)
    master.run_once()
    assert sent == []
    clock.advance(2)  # past its age, but the limits are checked every memory_check_interval
    master.run_once()
    assert sent == []
    clock.advance(3)
    master.run_once()
    assert sent == [(child.pid, signal.SIGTERM)]
    assert (child.stop_reason, child.recycle) == (StopReason.MAX_AGE, RecycleReason.MAX_AGE)
    clock.advance(10)
    master.run_once()
    assert sent == [(child.pid, signal.SIGTERM)], "asked once, not at every check"


@pytest.mark.parametrize(
    ("uss_mib", "expected_signal", "stop_reason", "killed_for"),
    [
        (100, None, None, None),
        (300, signal.SIGTERM, StopReason.SOFT_MEMORY, None),
        (600, signal.SIGKILL, StopReason.KILLED, KillReason.HARD_MEMORY),
    ],
)
def test_memory_limits_recycle_or_kill_a_worker(
    make_master: Any,
    clock: FakeClock,
    sent: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
    uss_mib: int,
    expected_signal: int | None,
    stop_reason: StopReason | None,
    killed_for: KillReason | None,
) -> None:
    use = memory.MemoryUse(uss_bytes=uss_mib * 1024 * 1024, pss_bytes=uss_mib * 1024 * 1024)
    monkeypatch.setattr(memory, "measure", lambda pid: use)
    master = make_master(workers=1, soft_memory_limit=200, hard_memory_limit=500, memory_check_interval=5)
    master.run_once()  # spawns; its first check saw no child
    child = master.only_child()
    clock.advance(5)
    master.run_once()
    assert sent == ([] if expected_signal is None else [(child.pid, expected_signal)])
    assert (child.stop_reason, child.killed_for) == (stop_reason, killed_for)


def test_an_in_process_job_past_its_kill_time_gets_its_worker_killed(
    make_master: Any, clock: FakeClock, sent: list[tuple[int, int]]
) -> None:
    master = make_master(workers=1, memory_check_interval=5)
    master.run_once()
    child = master.only_child()
    master.report(child, Report(state=WorkerState.BUSY, job="j1", kill_at=time.time() - 1))
    clock.advance(5)  # the limits are checked every memory_check_interval
    master.run_once()
    assert (child.state, child.job) == (WorkerState.BUSY, "j1")
    assert sent == [(child.pid, signal.SIGKILL)]
    assert child.killed_for is KillReason.TIMEOUT
    assert "JobTimeoutException: job j1" in (child.kill_reason or "")


# -- stopping -------------------------------------------------------------------------------------


def test_a_warm_stop_turns_cold_after_the_graceful_timeout_then_kills(
    make_master: Any, clock: FakeClock, sent: list[tuple[int, int]]
) -> None:
    master = make_master(workers=2, graceful_timeout=30)
    master.run_once()
    master.run_once()  # one spawn a turn
    pids = sorted(master.children)
    master._record_signal(signal.SIGTERM, None)
    master.run_once()
    assert sorted(sent) == [(pid, signal.SIGTERM) for pid in pids]
    master.exits.append((pids[0], exited(0)))  # one finishes its job and exits
    master.run_once()
    assert list(master.children) == [pids[1]], "no replacement while stopping"
    sent.clear()
    clock.advance(30)
    master.run_once()
    assert sent == [(pids[1], signal.SIGQUIT)]
    clock.advance(COLD_STOP_GRACE_S)
    master.run_once()
    assert sent == [(pids[1], signal.SIGQUIT), (pids[1], signal.SIGKILL)]
    master.exits.append((pids[1], signal.SIGKILL))
    master.run_once()
    master.run_once()
    assert master._done


def test_a_second_stop_signal_stops_cold_at_once(make_master: Any, sent: list[tuple[int, int]]) -> None:
    master = make_master(workers=1)
    master.run_once()
    pid = master.only_child().pid
    master._record_signal(signal.SIGINT, None)
    master._record_signal(signal.SIGINT, None)
    master.run_once()
    assert sent == [(pid, signal.SIGTERM), (pid, signal.SIGQUIT)]


# -- reports --------------------------------------------------------------------------------------


def test_reports_arrive_over_the_pipe_and_set_the_childs_state(make_master: Any, clock: FakeClock) -> None:
    master = make_master(workers=1)
    master.run_once()
    child = master.only_child()
    master.report(child, Report(outage=True))
    clock.advance(1)
    master.run_once()
    assert (child.reported, child.ready, child.outage_since) == (True, False, clock.now)
    master.report(child, Report(state=WorkerState.BUSY, job="j7", heartbeat=True))
    clock.advance(1)
    master.run_once()
    assert (child.ready_at, child.outage_since, child.state, child.job) == (clock.now, None, WorkerState.BUSY, "j7")
    os.write(master.writers[child.pid], b"not a report\n")
    master.report(child, Report(state=WorkerState.IDLE, jobs=1, failed=0))
    master.run_once()
    assert (child.state, child.job, child.jobs_done) == (WorkerState.IDLE, None, 1), "a bad line is skipped"
