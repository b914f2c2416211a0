"""The horse: a process forked per job. It runs the job and reports an Outcome over a pipe.

It never writes job state (the worker does, in one transaction), and it never returns into the
worker's code: whatever happens, it leaves with `os._exit`.

A worker keeps the next horse forked in advance (`prefork`): it waits on a pipe until the worker
hands it a job (`Horse.give`). fork() then happens while the previous job runs or while the worker
is idle, not between a job's arrival and its start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from workerd.job import Job
from workerd.outcome import Outcome
from workerd.process import die_with_parent, ignore_master_signals, set_title

if TYPE_CHECKING:
    from redis import Redis

# A horse that could not even report leaves with this code; the worker then fails the job with it.
REPORT_FAILED_EXIT_CODE = 1


@dataclass
class Horse:
    """The worker's handle on a running horse."""

    pid: int
    read_fd: int
    started_monotonic: float = field(default_factory=time.monotonic)
    buffer: bytearray = field(default_factory=bytearray)
    eof: bool = False
    term_sent_at: float | None = None  # when a soft memory limit sent it SIGTERM (monotonic)
    # Readable once the horse has exited (Linux 5.3+), so the worker sleeps in select() instead of
    # polling waitpid() between the pipe's end-of-file and the exit; -1 where unavailable.
    pidfd: int = -1
    job_fd: int = -1  # a pre-forked horse waits for its job on this pipe

    def __post_init__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(self.pid)

    def wait_fds(self) -> list[int]:
        """What to select() on: the report pipe until its end, and the exit of the horse."""
        fds = [] if self.eof else [self.read_fd]
        if self.pidfd >= 0:
            fds.append(self.pidfd)
        return fds

    def read_available(self) -> None:
        """Read what the pipe holds now (the worker polls it, so a big result never blocks the horse)."""
        while True:
            try:
                chunk = os.read(self.read_fd, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                self.eof = True
                return
            self.buffer += chunk

    def outcome(self) -> Outcome | None:
        if not self.buffer:
            return None
        try:
            outcome = pickle.loads(bytes(self.buffer))
        except Exception:  # a horse killed mid-write leaves a truncated pickle
            return None
        return outcome if isinstance(outcome, Outcome) else None

    def give(self, job: Job, title: str) -> bool:
        """Hand a pre-forked horse its job. False if it cannot take it (it died, or the job does not
        pickle, e.g. a custom serializer): then discard() it and spawn() a horse for the job."""
        try:
            payload = pickle.dumps((dataclasses.replace(job, connection=None, _decoded=None, _payload=None), title))
            view = memoryview(payload)
            os.set_blocking(self.job_fd, True)
            while view:
                view = view[os.write(self.job_fd, view) :]
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            return False
        finally:
            os.close(self.job_fd)
            self.job_fd = -1
        self.started_monotonic = time.monotonic()
        return True

    def discard(self) -> None:
        """Kill and reap a horse that will not run a job.

        The job pipe is closed first: a pre-forked horse that is still starting then finds it at its
        end and leaves by itself. The SIGKILL goes to the horse's group, which exists from the moment
        fork() returned here (see _own_group), and to the horse itself, so waitpid() returns whether
        or not the horse got as far as anything."""
        if self.job_fd >= 0:
            os.close(self.job_fd)
            self.job_fd = -1
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # not reaped yet, so the pid is still this horse's
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.close()

    def close(self) -> None:
        for fd in (self.read_fd, self.pidfd, self.job_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def spawn(job: Job, run: Callable[[Job], Outcome], title: str) -> Horse:
    """Fork a horse that runs `run(job)`; returns in the worker with the horse's handle."""
    read_fd, write_fd = os.pipe()
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the horse
        os.close(read_fd)
        _horse_main(lambda: (job, title), run, write_fd, parent_pid)
    _own_group(pid)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return Horse(pid=pid, read_fd=read_fd)


def prefork(run: Callable[[Job], Outcome], connection: Redis, worker_name: str) -> Horse:
    """Fork a horse now that waits for its job (see Horse.give); returns in the worker."""
    job_read, job_write = os.pipe()
    read_fd, write_fd = os.pipe()
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the horse
        os.close(read_fd)
        os.close(job_write)
        set_title(f"horse of {worker_name}: waiting for a job")
        _horse_main(lambda: _receive_job(job_read, connection), run, write_fd, parent_pid)
    _own_group(pid)
    os.close(write_fd)
    os.close(job_read)
    os.set_blocking(read_fd, False)
    return Horse(pid=pid, read_fd=read_fd, job_fd=job_write)


def _own_group(pid: int) -> None:
    """Put the new horse in its own process group from the worker's side too.

    The horse calls setpgrp() itself, but only once it runs: until then a killpg() from the worker
    finds no such group, and a worker that discarded a pre-forked horse in that window waited forever
    for a horse that waited for its job. Both sides calling setpgid() is the race-free idiom: whichever
    runs first creates the group, the other's call changes nothing."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone: waitpid will say so
        os.setpgid(pid, pid)


def _receive_job(job_read: int, connection: Redis) -> tuple[Job, str]:
    chunks = []
    while chunk := os.read(job_read, 1 << 20):
        chunks.append(chunk)
    os.close(job_read)
    if not chunks:  # discarded before it got a job
        os._exit(0)
    job, title = pickle.loads(b"".join(chunks))
    job.connection = connection  # redis-py opens fresh sockets in a forked child
    return job, title


def _horse_main(obtain: Callable[[], tuple[Job, str]], run: Callable[[Job], Outcome], write_fd: int,
                parent_pid: int) -> None:  # fmt: skip
    code = 0
    try:
        # Its own process group, so the worker can kill the job together with any grandchildren
        # (the worker sets it too, see _own_group).
        os.setpgrp()
        die_with_parent(parent_pid)  # a worker killed with -9 takes its horse along
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C on a terminal is for the worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        ignore_master_signals()  # the worker's handlers would run the worker's code in the horse
        signal.set_wakeup_fd(-1)  # the worker's wake-up pipe is not ours to write
        job, title = obtain()
        set_title(title)
        os.environ["RQ_JOB_ID"] = job.id
        payload = pickle.dumps(run(job), protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(payload)
        while view:
            written = os.write(write_fd, view)
            view = view[written:]
    except BaseException:  # nothing may escape into the worker's code in this child
        code = REPORT_FAILED_EXIT_CODE
    finally:
        os._exit(code)
