"""Micro-measurement for issue 15: per-job CPU of forking horses from the busy worker vs from an idle
horse parent. Not a test; run it on a quiet machine and note `uptime` beside the numbers.

    .venv/bin/python benchmarks/horse_parent_micro.py --jobs 500 --heap-mb 46 --touch-mb 4

Both modes keep one horse forked ahead (as workerd's prefork does) and, per job, "touch" part of the
worker's heap the way committing and fetching run Python over it:

- direct: the worker forks the horse itself; the horse shares the worker's pages while the worker
  touches its heap, so the worker takes copy-on-write faults every job.
- parent: a horse parent, forked once from the worker and then idle, forks an intermediate that
  forks the horse and exits, so the horse is re-parented to the worker (a child subreaper) and the
  worker waitpid()s it as today. The worker's pages are shared with the horse parent only: they turn
  private once, at the first touch.
- relay: as parent, but the horse parent forks the horse itself (one fork, no intermediate) and
  relays its exit status to the worker, which cannot waitpid() a horse that is not its child.

CPU is the whole tree's: the worker's own and its reaped descendants' (horses; the horse parent with
the intermediates it reaped, as RUSAGE_CHILDREN counts them once it is reaped). Linux only.

Measured 2026-12-03 (2 cores, load 1.6-2.7, 46 MB heap, 500 jobs x 2 rounds), ms CPU per job:
touch 0 MB: direct 4.1-4.6, parent 9.1-9.4, relay 5.0-6.1; touch 4 MB: direct 8.5-10.3,
parent 11.5-13.7, relay 4.6-6.5; touch 16 MB: direct 24.9-25.1, parent 13.8-16.0, relay 7.3-7.7.
The intermediate costs a second fork of a 46 MB image per horse (~5 ms), more than the worker's
copy-on-write faults it saves unless the worker dirties over ~10 MB a job.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import time
from collections.abc import Callable

from workerd.zygote import become_subreaper


def _heap(mb: int) -> list[bytearray]:
    """Pages the worker owns, 4 KiB each, so a touch dirties exactly one page."""
    return [bytearray(4096) for _ in range(mb * 256)]


def _touch(heap: list[bytearray], mb: int, job: int) -> None:
    pages = mb * 256
    start = (job * pages) % len(heap)
    for i in range(start, start + pages):
        heap[i % len(heap)][0] = job & 0xFF


def _horse(job_read: int) -> None:
    """A pre-forked horse: wait for a job on the pipe, 'run' it, leave."""
    os.read(job_read, 64)
    os._exit(0)


def _fork_direct() -> tuple[int, int]:
    job_read, job_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(job_write)
        _horse(job_read)
    os.close(job_read)
    return pid, job_write


def _horse_parent_main(sock: socket.socket, relay: bool) -> None:
    """Fork horses on request: an intermediate forks the horse and exits; reply with the horse's pid.
    With `relay`, fork the horse itself (one fork, not two), reap it and send its exit status."""
    horses: list[int] = []
    while True:
        data, fds, _, _ = socket.recv_fds(sock, 64, 1)
        if not data:
            os._exit(0)
        if relay:
            if data == b"wait":
                sock.send(str(os.waitpid(horses.pop(0), 0)[1]).encode())
                continue
            horse = os.fork()
            if horse == 0:
                sock.close()
                _horse(fds[0])
            os.close(fds[0])
            horses.append(horse)
            sock.send(str(horse).encode())
            continue
        pid_read, pid_write = os.pipe()
        intermediate = os.fork()
        if intermediate == 0:
            horse = os.fork()
            if horse == 0:
                sock.close()
                _horse(fds[0])
            os.write(pid_write, str(horse).encode())
            os._exit(0)
        os.close(pid_write)
        written = os.read(pid_read, 64)
        os.close(pid_read)
        os.close(fds[0])
        os.waitpid(intermediate, 0)
        sock.send(written)


def _start_horse_parent(relay: bool) -> tuple[int, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        _horse_parent_main(theirs, relay)
    theirs.close()
    return pid, ours


def run(mode: str, jobs: int, heap: list[bytearray], touch_mb: int) -> tuple[float, float]:
    """(CPU seconds per job, jobs per second) of one mode."""
    fork: Callable[[], tuple[int, int]]
    parent_pid = -1

    def reap(pid: int) -> object:
        return os.waitpid(pid, 0)

    if mode in ("parent", "relay"):
        parent_pid, sock = _start_horse_parent(mode == "relay")
        if mode == "relay":

            def reap(pid: int) -> object:
                sock.send(b"wait")
                return sock.recv(64)

        def fork() -> tuple[int, int]:
            job_read, job_write = os.pipe()
            socket.send_fds(sock, [b"fork"], [job_read])
            os.close(job_read)
            return int(sock.recv(64)), job_write
    else:
        fork = _fork_direct
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    warm = fork()
    for job in range(jobs):
        pid, job_write = warm
        os.write(job_write, b"go")
        os.close(job_write)
        warm = fork()  # the next horse, forked ahead while this job "runs"
        _touch(heap, touch_mb, job)  # the worker commits this job and fetches the next
        reap(pid)
    elapsed = time.perf_counter() - started
    pid, job_write = warm
    os.close(job_write)
    reap(pid)
    if parent_pid > 0:  # reaped, its CPU and its reaped intermediates' count in RUSAGE_CHILDREN
        sock.close()
        os.waitpid(parent_pid, 0)
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(a.ru_utime + a.ru_stime - (b.ru_utime + b.ru_stime) for a, b in zip(after, before, strict=True))
    return cpu / jobs, jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--heap-mb", type=int, default=46, help="the worker's heap (issue 15: ~46 MB)")
    parser.add_argument("--touch-mb", type=int, default=4, help="heap the worker dirties per job")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not become_subreaper():
        raise SystemExit("needs Linux PR_SET_CHILD_SUBREAPER")
    heap = _heap(args.heap_mb)
    print(f"load average {os.getloadavg()[0]:.2f}; heap {args.heap_mb} MB, touch {args.touch_mb} MB/job")
    for round_ in range(args.rounds):
        for mode in ("direct", "parent", "relay"):
            cpu, rate = run(mode, args.jobs, heap, args.touch_mb)
            print(f"round {round_ + 1} {mode:6}: {cpu * 1000:6.2f} ms CPU/job  {rate:7.1f} jobs/s")


if __name__ == "__main__":
    main()
