#!/usr/bin/env python
"""workerd vs RQ: one command, its own Redis, several rounds, medians and ratios.

    .venv/bin/python benchmarks/bench.py                # full run, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --quick        # ~1-minute smoke run
    .venv/bin/python benchmarks/bench.py --markdown docs/perf-run.md --cases 1,2,6

How the numbers are taken (docs/PERFORMANCE.md has the long version):

* Every run starts the worker as a real process (``rq ...`` / ``workerd ...`` from the venv) on a fresh,
  flushed Redis that this script started itself, after the jobs were enqueued.
* Throughput (cases 1-4): the wall time from spawning the worker until the last job is in
  ``rq:finished:<queue>`` (polled every 2 ms), once with 1 job (T1) and once with N jobs (TN), in the
  same round. ``jobs/s`` = (N-1) / (TN - T1): the startup, the first job and the shutdown cancel out,
  what is left is the steady per-job cost. ``jobs/s incl. startup`` = N / TN is printed too.
  ``CPU ms/job`` uses the same difference over the rusage of the worker process tree (wait4).
* Redis cost (case 6): ``INFO commandstats`` and ``total_reads_processed`` before enqueue-free spawn
  and after the worker exited, for the T1 and TN runs; per job = (TN-run - T1-run) / (N-1), with this
  script's own polling subtracted. A read event is one client request batch, so reads/job counts round
  trips (a pipeline or MULTI/EXEC block is one).
* Latency (case 5): an idle worker (not burst); the script records time.time() just before each
  enqueue call, the job returns time.time() as its first statement; the next job is enqueued only
  after the previous one finished plus a gap, so the worker is idle each time.
* Memory (case 7): k workers (k = 1 and 4) that each run one job of ``benchmarks.jobs_bigmem`` and
  stay inside it; PSS summed over the whole process tree and USS per worker (worker + its job
  children), read with psutil ``memory_full_info()`` while all k jobs are running, then again idle.

Everything the script starts runs in its own session; every wait is bounded; on exit, error or
Ctrl+C all of it (worker process groups, their descendants, redis-server) is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

REPO = Path(__file__).resolve().parent.parent
QUEUE = "bench"
POLL_S = 0.002
WORKER_EXIT_TIMEOUT_S = 30.0
MAX_JOBS_FACTOR = 40  # a fast system may be given up to this many times the case's job count


class BenchError(Exception):
    """A run that could not be measured; the row shows the reason and the harness goes on."""


class Skip(Exception):
    """A system or mode that is not available; the row shows the reason."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Processes: each child in its own session; cleanup kills groups and every known descendant.


class Procs:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.live: list[subprocess.Popen[bytes]] = []
        self.counter = 0

    def spawn(self, argv: Sequence[str], label: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.counter += 1
        safe = "".join(c if c.isalnum() else "_" for c in label)[:40]
        logpath = self.logdir / f"{self.counter:03d}-{safe}.log"
        full_env = dict(os.environ)
        # The job modules are found from the repo root by both systems, whatever their -P handling.
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        full_env.update(env or {})
        with open(logpath, "wb") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.logpath = logpath  # type: ignore[attr-defined]
        self.live.append(proc)
        return proc

    @staticmethod
    def tail(proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        try:
            text = Path(proc.logpath).read_text(errors="replace")  # type: ignore[attr-defined]
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    @staticmethod
    def descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
        try:
            return psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def wait(self, proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float] | None:
        """Reap ``proc`` within ``timeout_s``; return (exit code, CPU seconds of it and its reaped tree)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.returncode is not None:
                return proc.returncode, getattr(proc, "cpu_s", 0.0)
            try:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:
                proc.returncode = proc.returncode if proc.returncode is not None else -1
                return proc.returncode, 0.0
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                proc.cpu_s = usage.ru_utime + usage.ru_stime  # type: ignore[attr-defined]
                if proc in self.live:
                    self.live.remove(proc)
                return proc.returncode, proc.cpu_s  # type: ignore[attr-defined]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def exited(self, proc: subprocess.Popen[bytes]) -> bool:
        # Never Popen.poll(): it would reap the child and lose the rusage that wait4 returns.
        return self.wait(proc, 0.0) is not None

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
        """Ask politely, then kill the group and every descendant we can still see."""
        kids = self.descendants(proc)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            if self.wait(proc, grace_s) is None:
                kids += self.descendants(proc)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                self.wait(proc, 5.0)
        # Job children may live in process groups of their own (rq's horse calls setpgrp).
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                kid.kill()
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.live):
            self.stop(proc, signal.SIGKILL, grace_s=2.0)


# --------------------------------------------------------------------------------------------------
# Redis: our own server on a free loopback port, no persistence.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, procs: Procs, binary: str, tmpdir: Path) -> None:
        self.port = free_port()
        datadir = tmpdir / "redis"
        datadir.mkdir()
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(datadir),
            "--daemonize",
            "no",
        ]
        self.proc = procs.spawn(argv, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("redis-server did not start:\n" + Procs.tail(self.proc)) from None
                time.sleep(0.02)
        self.version = str(self.client.info("server")["redis_version"])


# --------------------------------------------------------------------------------------------------
# Floors: what no worker can beat on this machine.


def fork_floor(n: int) -> float:
    """Seconds per bare fork + _exit + waitpid of this Python process."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rtt_floor(port: int, n: int) -> tuple[float, float]:
    """Median seconds per PING round trip: raw socket, and through redis-py."""
    raw = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(b"PING\r\n")
            buf = b""
            while not buf.endswith(b"\r\n"):
                buf += s.recv(64)
            raw.append(time.perf_counter() - t0)
    client = redis.Redis(port=port)
    client.ping()
    py = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.ping()
        py.append(time.perf_counter() - t0)
    client.close()
    return statistics.median(raw), statistics.median(py)


# --------------------------------------------------------------------------------------------------
# Systems: how to start each worker flavour for each case.


@dataclasses.dataclass
class System:
    key: str  # stable id, used for ratios
    label: str  # as printed
    kind: str  # "rq", "workerd" or "peer" (huey, dramatiq)
    argv: Callable[[str, bool], list[list[str]]]  # (url, burst) -> one argv per process
    needs: tuple[str, ...] = ()  # workerd flags this row needs
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Tools:
    rq: str
    workerd: str
    workerd_problem: str | None  # why workerd rows are skipped, if they are
    workerd_help: str


def rq_worker(tools: Tools, *extra: str) -> Callable[[str, bool], list[list[str]]]:
    def argv(url: str, burst: bool) -> list[list[str]]:
        return [[tools.rq, "worker", "-u", url, *extra, *(["--burst"] if burst else []), QUEUE]]

    return argv


def rq_pool(tools: Tools, n: int, *extra: str) -> Callable[[str, bool], list[list[str]]]:
    def argv(url: str, burst: bool) -> list[list[str]]:
        return [[tools.rq, "worker-pool", "-u", url, "-n", str(n), *extra, *(["--burst"] if burst else []), QUEUE]]

    return argv


def rq_many(tools: Tools, n: int) -> Callable[[str, bool], list[list[str]]]:
    def argv(url: str, burst: bool) -> list[list[str]]:
        return [rq_worker(tools)(url, burst)[0] for _ in range(n)]

    return argv


def wd(tools: Tools, *extra: str) -> Callable[[str, bool], list[list[str]]]:
    def argv(url: str, burst: bool) -> list[list[str]]:
        flags = list(extra)
        # `--execution fork` is workerd's default mode: a build without the flag runs the same thing.
        if "--execution" not in tools.workerd_help:
            for i in range(len(flags) - 1):
                if flags[i : i + 2] == ["--execution", "fork"]:
                    del flags[i : i + 2]
                    break
        return [[tools.workerd, "-u", url, *flags, *(["--burst"] if burst else []), QUEUE]]

    return argv


def peer_system(key: str, label: str, *argv: str) -> System:
    """huey or dramatiq: one fixed command line, no burst mode (benchmarks/peers.py times them)."""
    return System(key, label, "peer", lambda url, burst: [list(argv)])


def needs_of(extra: Sequence[str]) -> tuple[str, ...]:
    needs = []
    for i, arg in enumerate(extra):
        if arg in ("--workers", "--preload") or (arg == "--execution" and extra[i + 1] != "fork"):
            needs.append(arg)
    return tuple(needs)


def wd_system(tools: Tools, key: str, label: str, *extra: str) -> System:
    return System(key, label, "workerd", wd(tools, *extra), needs=needs_of(extra))


def check_workerd(path: str) -> tuple[str | None, str]:
    if not path or not (os.path.exists(path) or shutil.which(path)):
        return f"workerd not installed ({path or 'not on PATH'}): pip install -e . in the venv", ""
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`workerd --help` failed: {exc}", ""
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return f"`workerd --help` exited {out.returncode}: {last[0][:200]}", ""
    return None, out.stdout + out.stderr


SKIPPED: dict[str, None] = {}  # reasons, in order, for the notes


def skip_reason(system: System, tools: Tools) -> str | None:
    reason = None
    if system.kind != "workerd":
        return None
    if tools.workerd_problem:
        reason = f"workerd rows skipped: {tools.workerd_problem}"
    else:
        missing = [flag for flag in system.needs if flag not in tools.workerd_help]
        if missing:
            reason = f"{system.label} skipped: `workerd --help` does not list {', '.join(missing)} yet"
    if reason:
        SKIPPED[reason] = None
    return reason


# --------------------------------------------------------------------------------------------------
# Measurements.


@dataclasses.dataclass
class Counters:
    calls: dict[str, int]
    reads: int
    cpu_s: float  # the server's own CPU (user + sys), our polling included

    @classmethod
    def snapshot(cls, client: redis.Redis) -> Counters:
        pipe = client.pipeline(transaction=False)
        pipe.info("commandstats")
        pipe.info("stats")
        pipe.info("cpu")
        cmdstats, stats, cpu = pipe.execute()
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in cmdstats.items()}
        return cls(calls, int(stats["total_reads_processed"]), float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))

    def minus(self, before: Counters) -> Counters:
        keys = set(self.calls) | set(before.calls)
        calls = {k: self.calls.get(k, 0) - before.calls.get(k, 0) for k in keys}
        return Counters(calls, self.reads - before.reads, self.cpu_s - before.cpu_s)


@dataclasses.dataclass
class RunResult:
    n_jobs: int
    t_done_s: float
    cpu_s: float
    commands: int
    reads: int
    redis_cpu_s: float
    by_command: dict[str, int]


class Bench:
    def __init__(self, procs: Procs, server: RedisServer, tmpdir: Path) -> None:
        self.procs = procs
        self.server = server
        self.client = server.client
        self.tmpdir = tmpdir

    def fresh(self) -> None:
        self.client.flushall()

    def enqueue(self, func: str, n: int, args: tuple[Any, ...] = ()) -> list[str]:
        from rq import Queue  # imported late: only the harness needs it, and only once Redis is up

        q = Queue(QUEUE, connection=self.client)
        if n == 1:
            return [q.enqueue(func, *args).id]
        ids: list[str] = []
        for start in range(0, n, 1000):
            batch = [Queue.prepare_data(func, args=args) for _ in range(min(1000, n - start))]
            ids.extend(job.id for job in q.enqueue_many(batch))
        return ids

    def counts(self) -> tuple[int, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"rq:finished:{QUEUE}")
        pipe.zcard(f"rq:failed:{QUEUE}")
        finished, failed = pipe.execute()
        return int(finished), int(failed)

    def spawn_all(self, system: System, burst: bool, label: str) -> list[subprocess.Popen[bytes]]:
        return [
            self.procs.spawn(argv, f"{label}-{system.key}", system.env) for argv in system.argv(self.server.url, burst)
        ]

    def describe_failure(self, procs: list[subprocess.Popen[bytes]], what: str) -> BenchError:
        tails = "\n".join(
            f"--- {p.args[0] if isinstance(p.args, list) else p.args} (exit {p.returncode}) "
            f"log {p.logpath}:\n{Procs.tail(p)}"
            for p in procs
        )  # type: ignore[attr-defined]
        return BenchError(f"{what}\n{tails}")

    def burst_run(self, system: System, func: str, n: int, timeout_s: float) -> RunResult:
        """Enqueue n jobs, start the worker(s) in burst mode, time until all n are finished."""
        self.fresh()
        self.enqueue(func, n)
        before = Counters.snapshot(self.client)
        polls = 0
        t0 = time.perf_counter()
        procs = self.spawn_all(system, burst=True, label=f"burst{n}")
        try:
            deadline = time.monotonic() + timeout_s
            exited_at: float | None = None
            while True:
                finished, failed = self.counts()
                polls += 1
                if finished >= n:
                    t_done = time.perf_counter() - t0
                    break
                if failed:
                    raise self.describe_failure(procs, f"{failed} job(s) failed")
                if all(self.procs.exited(p) for p in procs):
                    # A burst worker may exit a moment before its last commit is visible to us.
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 2.0:
                        raise self.describe_failure(procs, f"worker exited with {finished}/{n} jobs finished")
                if time.monotonic() > deadline:
                    raise self.describe_failure(procs, f"timeout after {timeout_s:.0f}s, {finished}/{n} finished")
                time.sleep(POLL_S)
            cpu = 0.0
            for p in procs:
                res = self.procs.wait(p, WORKER_EXIT_TIMEOUT_S)
                if res is None:
                    raise self.describe_failure(
                        procs,
                        f"burst worker still running {WORKER_EXIT_TIMEOUT_S:.0f}s after the queue was drained",
                    )
                if res[0] != 0:
                    raise self.describe_failure(procs, f"worker exited with code {res[0]}")
                cpu += res[1]
        finally:
            for p in procs:
                self.procs.stop(p)
        after = Counters.snapshot(self.client)
        delta = after.minus(before)
        # Our own traffic: 2 ZCARDs per poll (one read each poll), the 3 INFOs of `before`, and the read
        # that carried `after` (counted before INFO ran). Its CPU stays in (a few µs a poll, every 2 ms).
        delta.calls["zcard"] = delta.calls.get("zcard", 0) - 2 * polls
        delta.calls["info"] = delta.calls.get("info", 0) - 3
        reads = delta.reads - polls - 1
        by_command = {k: v for k, v in delta.calls.items() if v}
        finished, failed = self.counts()
        if finished != n or failed:
            raise BenchError(f"after the run: {finished} finished, {failed} failed, expected {n} finished")
        return RunResult(n, t_done, cpu, sum(by_command.values()), reads, delta.cpu_s, by_command)

    def latency_run(self, system: System, n: int, gap_s: float) -> list[float]:
        """Latencies (s) from the enqueue call to the job's first statement, with an idle worker."""
        from rq.job import Job

        self.fresh()
        procs = self.spawn_all(system, burst=False, label="latency")
        try:

            def wait_finished(count: int, timeout_s: float) -> None:
                deadline = time.monotonic() + timeout_s
                while True:
                    finished, failed = self.counts()
                    if finished >= count:
                        return
                    if failed:
                        raise self.describe_failure(procs, f"{failed} job(s) failed")
                    if any(self.procs.exited(p) for p in procs):
                        raise self.describe_failure(procs, "worker exited")
                    if time.monotonic() > deadline:
                        raise self.describe_failure(procs, f"timeout: {finished}/{count} finished")
                    time.sleep(0.001)

            # A first job warms up the worker (start-up, imports) and proves it listens.
            self.enqueue("benchmarks.jobs.record_start", 1)
            wait_finished(1, 60.0)
            time.sleep(0.3)
            samples: list[tuple[str, float]] = []
            for i in range(n):
                t_enqueue = time.time()
                (job_id,) = self.enqueue("benchmarks.jobs.record_start", 1)
                samples.append((job_id, t_enqueue))
                wait_finished(i + 2, 30.0)
                time.sleep(gap_s)
            jobs = Job.fetch_many([job_id for job_id, _ in samples], connection=self.client)
            out = []
            for (job_id, t_enqueue), job in zip(samples, jobs, strict=True):
                started = job.return_value() if job is not None else None
                if not isinstance(started, float):
                    raise BenchError(f"job {job_id} has no float return value ({started!r})")
                out.append(started - t_enqueue)
            return out
        finally:
            for p in procs:
                self.procs.stop(p)

    def memory_run(self, system: System, k: int) -> dict[str, float]:
        """Memory of a k-worker tree while k bigmem jobs run, and again once they are done."""
        self.fresh()
        marker_dir = Path(tempfile.mkdtemp(prefix="mem-", dir=self.tmpdir))
        procs = self.spawn_all(system, burst=False, label=f"mem{k}")
        if len(procs) != 1:
            raise BenchError("memory case expects one root process per system")
        root = procs[0]
        try:
            deadline = time.monotonic() + 120
            while int(self.client.scard("rq:workers")) < k:
                if self.procs.exited(root):
                    raise self.describe_failure(procs, "worker exited before registering")
                if time.monotonic() > deadline:
                    raise self.describe_failure(procs, f"only {self.client.scard('rq:workers')}/{k} workers registered")
                time.sleep(0.05)
            time.sleep(1.0)  # registered comes just before listening; let every worker block on its queue
            self.enqueue("benchmarks.jobs_bigmem.hold", k, args=(str(marker_dir),))
            deadline = time.monotonic() + 180
            while len([m for m in marker_dir.iterdir() if m.name != "release"]) < k:
                _, failed = self.counts()
                if failed or self.procs.exited(root):
                    raise self.describe_failure(procs, f"bigmem job failed or worker exited ({failed} failed)")
                if time.monotonic() > deadline:
                    raise self.describe_failure(procs, "bigmem jobs did not all start")
                time.sleep(0.05)
            time.sleep(0.5)
            busy = tree_memory(root.pid)
            (marker_dir / "release").touch()
            deadline = time.monotonic() + 60
            while self.counts()[0] < k:
                if time.monotonic() > deadline:
                    raise self.describe_failure(procs, "bigmem jobs did not finish")
                time.sleep(0.05)
            time.sleep(1.0)
            idle = tree_memory(root.pid)
        finally:
            (marker_dir / "release").touch()
            self.procs.stop(root)
        return {
            "busy_pss": busy["pss"],
            "busy_uss_worker": busy["uss_per_worker"],
            "idle_pss": idle["pss"],
            "idle_uss_worker": idle["uss_per_worker"],
            "busy_procs": busy["procs"],
        }


def tree_memory(root_pid: int) -> dict[str, float]:
    """PSS of the whole tree, and the mean USS of each direct child (a worker) with its descendants."""
    root = psutil.Process(root_pid)
    total_pss = 0
    per_worker: list[int] = []
    procs = 0

    def full(p: psutil.Process) -> tuple[int, int]:
        try:
            info = p.memory_full_info()
            return int(info.pss), int(info.uss)
        except psutil.NoSuchProcess:
            return 0, 0

    pss, _ = full(root)
    total_pss += pss
    procs += 1
    children = root.children()
    for worker in children:
        pss, uss = full(worker)
        total_pss += pss
        procs += 1
        for sub in worker.children(recursive=True):
            spss, suss = full(sub)
            total_pss += spss
            uss += suss
            procs += 1
        per_worker.append(uss)
    if not per_worker:  # a single process that is its own worker (rq worker, not a pool)
        per_worker.append(full(root)[1])
    mib = 1024 * 1024
    return {"pss": total_pss / mib, "uss_per_worker": statistics.mean(per_worker) / mib, "procs": procs}


# --------------------------------------------------------------------------------------------------
# Cases and the table.


@dataclasses.dataclass
class Row:
    case: str
    system: System
    metric: str
    values: list[float] = dataclasses.field(default_factory=list)
    baseline: str | None = None  # key of the rq system this row is compared to
    note: str = ""
    fmt: str = "{:.1f}"

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


NO_RATIO = {"jobs in timed run"}


class Table:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def row(self, case: str, system: System, metric: str, baseline: str | None = None, fmt: str = "{:.1f}") -> Row:
        for r in self.rows:
            if r.case == case and r.system.key == system.key and r.metric == metric:
                return r
        r = Row(case, system, metric, baseline=baseline, fmt=fmt)
        self.rows.append(r)
        return r

    def ratio(self, r: Row) -> str:
        if r.system.kind != "workerd" or r.baseline is None or r.median is None or r.metric in NO_RATIO:
            return ""
        for b in self.rows:
            if b.case == r.case and b.system.key == r.baseline and b.metric == r.metric and b.median:
                return f"{r.median / b.median:.2f}x"
        return ""

    def find(self, case: str, key: str, metric: str) -> Row | None:
        for r in self.rows:
            if r.case == CASE_TITLES[case] and r.system.key == key and r.metric == metric:
                return r
        return None

    def markdown(self) -> str:
        lines = ["| case | system | metric | median | ratio workerd/baseline |", "|---|---|---|---:|---:|"]
        collapsed: set[tuple[str, str]] = set()
        for r in self.rows:
            if r.median is None:
                # A skipped or failed system gets one line per case, not one per metric.
                if (r.case, r.system.key) in collapsed:
                    continue
                collapsed.add((r.case, r.system.key))
                lines.append(f"| {r.case} | {r.system.label} | all | {r.note or '—'} | |")
                continue
            value = r.fmt.format(r.median)
            lines.append(f"| {r.case} | {r.system.label} | {r.metric} | {value} | {self.ratio(r)} |")
        return "\n".join(lines)

    def targets(self) -> list[str]:
        """Issue 15's targets, each beside what this run measured ("not measured" if its case did not run)."""

        def ratio(case: str, key: str, metric: str) -> float | None:
            r = self.find(case, key, metric)
            text = self.ratio(r) if r else ""
            return float(text.rstrip("x")) if text else None

        def value(case: str, key: str, metric: str = "jobs/s") -> float | None:
            r = self.find(case, key, metric)
            return r.median if r else None

        def over_best_peer() -> float | None:
            ours, peers = value("8", "wd-peer-2"), [value("8", "huey-2"), value("8", "dramatiq")]
            best = max((p for p in peers if p), default=None)
            return ours / best if ours and best else None

        most = max((int(r.system.key.rsplit("-", 1)[1]) for r in self.rows if r.system.key.startswith("workerd-herd-")),
                   default=64)  # fmt: skip

        def herd_growth() -> float | None:
            one, many = value("9", "workerd-herd-1", "commands/job"), value("9", f"workerd-herd-{most}", "commands/job")
            return many / one if one and many else None

        # (target, wanted, measured, bound, higher is better)
        checks: list[tuple[str, str, float | None, float, bool]] = [
            ("1 fork, 1 worker: jobs/s / `rq worker`", ">= 8x", ratio("1", "wd-fork", "jobs/s"), 8, True),
            ("1 fork, --workers 2: jobs/s / `rq worker-pool -n 2`", ">= 4x", ratio("3", "wd-2", "jobs/s"), 4, True),
            ("2 in-process, 1 process: jobs/s / huey -w 1 -k process", ">= 1.2x",
             ratio("8", "wd-peer-1", "jobs/s"), 1.2, True),
            ("2 in-process, --workers 2: jobs/s / best of huey -w 2, dramatiq -p 2 -t 8", ">= 1x",
             over_best_peer(), 1.0, True),
            ("3 backlog, in-process: round trips/job", "<= 1", value("6", "wd-inproc@2", "round trips/job"), 1, False),
            ("3 backlog, in-process: Redis CPU ms/job", "<= 0.1 ms",
             value("6", "wd-inproc@2", "Redis CPU ms/job"), 0.1, False),
            ("3 backlog, fork: round trips/job", "<= 1", value("6", "wd-fork@1", "round trips/job"), 1, False),
            (f"4 herd: commands/job, {most} idle workers / 1 idle worker", "<= 1.1x", herd_growth(), 1.1, False),
            (f"4 herd: round trips/s per idle worker, {most} idle", "<= 0.5",
             value("9", f"workerd-herd-{most}", "idle round trips/s per worker"), 0.5, False),
            ("5 200 ms import, --preload: jobs/s / `rq worker`", ">= 40x",
             ratio("4", "wd-preload", "jobs/s"), 40, True),
            ("6 enqueue → start p99, fork, module preloaded", "<= 5 ms", value("5", "wd-fork-pre", "p99 ms"), 5, False),
            ("6 enqueue → start p99, in-process", "<= 5 ms", value("5", "wd-inproc", "p99 ms"), 5, False),
            ("7 PSS of 4 preloaded workers / PSS of 1", "<= 1.5", value("7", "wd-mem", "PSS 4/1 busy"), 1.5, False),
        ]  # fmt: skip
        lines = ["| target | wanted | measured | |", "|---|---|---:|---|"]
        for name, wanted, got, bound, higher in checks:
            if got is None:
                lines.append(f"| {name} | {wanted} | — | not measured |")
                continue
            met = got >= bound if higher else got <= bound
            unit = "x" if wanted.endswith("x") else " ms" if wanted.endswith("ms") else ""
            lines.append(f"| {name} | {wanted} | {got:.2f}{unit} | {'MET' if met else 'MISSED'} |")
        return lines


CASE_TITLES = {
    "1": "1 no-op, 1 worker, fork",
    "2": "2 no-op, 1 worker, in-process",
    "3": "3 no-op, 2 workers",
    "4": "4 200 ms import",
    "5": "5 latency, idle worker",
    "6": "6 Redis per job",
    "7": "7 memory, 200 MB module",
    "8": "8 in-process beside huey and dramatiq",
    "9": "9 idle herd, 2 queues, jobs trickling in",
}


@dataclasses.dataclass
class Sizes:
    fork_jobs: int
    inproc_jobs: int
    pool_jobs: int
    heavy_jobs: int
    latency_jobs: int
    peer_jobs: int
    herd_workers: tuple[int, ...]
    mem_rounds: int
    fork_floor_n: int
    rtt_n: int
    min_span_s: float


FULL = Sizes(
    fork_jobs=300,
    inproc_jobs=2000,
    pool_jobs=300,
    heavy_jobs=30,
    latency_jobs=100,
    peer_jobs=2000,
    herd_workers=(1, 64),
    mem_rounds=1,
    fork_floor_n=300,
    rtt_n=2000,
    min_span_s=2.0,
)
QUICK = Sizes(
    fork_jobs=60,
    inproc_jobs=400,
    pool_jobs=60,
    heavy_jobs=8,
    latency_jobs=30,
    peer_jobs=400,
    herd_workers=(1, 16),
    mem_rounds=1,
    fork_floor_n=100,
    rtt_n=500,
    min_span_s=0.5,
)


def throughput_case(
    bench: Bench,
    table: Table,
    tools: Tools,
    case: str,
    systems: list[tuple[System, str | None]],
    func: str,
    n: int,
    rounds: int,
    per_job_budget_s: float,
    notes: list[str],
    redis_case: bool,
    min_span_s: float,
) -> None:
    title = CASE_TITLES[case]
    base_n = n
    for rnd in range(1, rounds + 1):
        for system, baseline in systems:
            n = base_n
            jobs_row = table.row(title, system, "jobs/s", baseline)
            reason = skip_reason(system, tools)
            if reason or jobs_row.note:
                jobs_row.note = jobs_row.note or "skipped (see notes)"
                continue
            try:
                one = bench.burst_run(system, func, 1, timeout_s=60 + per_job_budget_s)
                n_run = n
                while True:
                    many = bench.burst_run(system, func, n_run, timeout_s=60 + per_job_budget_s * n_run)
                    dt = many.t_done_s - one.t_done_s
                    if dt >= min_span_s or n_run >= MAX_JOBS_FACTOR * n:
                        break
                    # Too short to time against the start-up noise: grow N (same rule for every system).
                    factor = min(20.0, max(2.0, 1.5 * min_span_s / max(dt, 0.05)))
                    n_run = min(MAX_JOBS_FACTOR * n, int(n_run * factor))
                    log(f"  {system.label}: span {dt:.2f}s < {min_span_s}s, again with {n_run} jobs")
            except BenchError as exc:
                jobs_row.note = f"error: {str(exc).splitlines()[0]}"
                notes.append(f"case {title}, {system.label}: {exc}")
                log(f"  !! {system.label}: {exc}")
                continue
            if dt <= 0:
                jobs_row.note = f"error: {n_run} jobs took no longer than 1 job"
                notes.append(f"case {title}, {system.label}: {jobs_row.note}")
                continue
            n = n_run  # the rates below are per job of the run that was timed
            rate = (n - 1) / dt
            jobs_row.values.append(rate)
            table.row(title, system, "jobs in timed run", baseline, "{:.0f}").values.append(n)
            table.row(title, system, "jobs/s incl. startup", baseline).values.append(n / many.t_done_s)
            table.row(title, system, "first job done (s)", baseline, "{:.2f}").values.append(one.t_done_s)
            cpu_ms = 1000 * (many.cpu_s - one.cpu_s) / (n - 1)
            table.row(title, system, "worker CPU ms/job", baseline, "{:.2f}").values.append(cpu_ms)
            cmds = (many.commands - one.commands) / (n - 1)
            reads = (many.reads - one.reads) / (n - 1)
            if redis_case:
                t6 = CASE_TITLES["6"]
                label_sys = dataclasses.replace(
                    system, label=f"{system.label} [{title.split()[0]}]", key=f"{system.key}@{case}"
                )
                base6 = f"{baseline}@{case}" if baseline else None
                table.row(t6, label_sys, "commands/job", base6, "{:.1f}").values.append(cmds)
                table.row(t6, label_sys, "round trips/job", base6, "{:.1f}").values.append(reads)
                redis_ms = 1000 * (many.redis_cpu_s - one.redis_cpu_s) / (n - 1)
                table.row(t6, label_sys, "Redis CPU ms/job", base6, "{:.3f}").values.append(redis_ms)
                if rnd == 1:
                    per = {k: (v - one.by_command.get(k, 0)) / (n - 1) for k, v in many.by_command.items()}
                    top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05)
                    notes.append(f"case 6, {system.label} [{title.split()[0]}] commands/job: {top}")
            log(
                f"  {title} | {system.label} | round {rnd}: T1 {one.t_done_s:.2f}s, "
                f"T{n} {many.t_done_s:.2f}s → {rate:.1f} jobs/s, {cpu_ms:.2f} CPU ms/job, "
                f"{cmds:.1f} cmds/job, {reads:.1f} round trips/job"
            )


def latency_case(
    bench: Bench,
    table: Table,
    tools: Tools,
    systems: list[tuple[System, str | None]],
    n: int,
    rounds: int,
    gap_s: float,
    notes: list[str],
) -> None:
    title = CASE_TITLES["5"]
    pooled: dict[str, list[float]] = {}
    for rnd in range(1, rounds + 1):
        for system, baseline in systems:
            p50 = table.row(title, system, "p50 ms", baseline, "{:.2f}")
            p99 = table.row(title, system, "p99 ms", baseline, "{:.2f}")
            reason = skip_reason(system, tools)
            if reason or p50.note:
                p50.note = p99.note = p50.note or "skipped (see notes)"
                continue
            try:
                lat = bench.latency_run(system, n, gap_s)
            except BenchError as exc:
                p50.note = p99.note = f"error: {str(exc).splitlines()[0]}"
                notes.append(f"case {title}, {system.label}: {exc}")
                log(f"  !! {system.label}: {exc}")
                continue
            pooled.setdefault(system.key, []).extend(lat)
            log(
                f"  {title} | {system.label} | round {rnd}: p50 {1000 * percentile(lat, 50):.2f} ms, "
                f"p99 {1000 * percentile(lat, 99):.2f} ms, max {1000 * max(lat):.2f} ms"
            )
    # Percentiles over all rounds' samples pooled: a p99 of 100 samples is just the maximum.
    for system, _ in systems:
        lat = pooled.get(system.key)
        if lat:
            table.row(title, system, "p50 ms").values[:] = [1000 * percentile(lat, 50)]
            table.row(title, system, "p99 ms").values[:] = [1000 * percentile(lat, 99)]


def peers_case(bench: Bench, table: Table, tools: Tools, n: int, rounds: int, notes: list[str]) -> None:
    """workerd in-process beside huey and dramatiq, each at its default or best documented settings,
    all timed the same way (benchmarks/peers.py): none of the peers has a burst mode."""
    title = CASE_TITLES["8"]
    try:
        from benchmarks import peers
    except ImportError as exc:  # the peers are benchmark-only dependencies: pip install -e '.[bench]'
        notes.append(f"case {title} skipped: {exc} (install them with: .venv/bin/pip install -e '.[bench]')")
        return
    bindir = Path(sys.executable).parent
    huey = [str(bindir / "huey_consumer"), "benchmarks.peer_tasks.huey"]
    dramatiq = [str(bindir / "dramatiq"), "benchmarks.peer_tasks"]
    runs = [
        (peer_system("huey-1", "huey -w 1 -k process", *huey, "-w", "1", "-k", "process"), None, "huey"),
        (peer_system("huey-2", "huey -w 2 -k process", *huey, "-w", "2", "-k", "process"), None, "huey"),
        (peer_system("dramatiq", "dramatiq -p 2 -t 8", *dramatiq, "-p", "2", "-t", "8"), None, "dramatiq"),
        (wd_system(tools, "wd-peer-1", "workerd inprocess", "--execution", "inprocess"), "huey-1", "workerd"),
        (wd_system(tools, "wd-peer-2", "workerd --workers 2 inprocess", "--workers", "2", "--execution", "inprocess"),
         "huey-2", "workerd"),
    ]  # fmt: skip
    for rnd in range(1, rounds + 1):
        for system, baseline, peer in runs:
            jobs_row = table.row(title, system, "jobs/s", baseline)
            if skip_reason(system, tools) or jobs_row.note:
                jobs_row.note = jobs_row.note or "skipped (see notes)"
                continue
            try:
                (argv,) = system.argv(bench.server.url, False)
                measured = peers.run(peer, argv, bench.server.url, n, timeout_s=120)
            except (SystemExit, OSError) as exc:
                jobs_row.note = f"error: {exc}"
                notes.append(f"case {title}, {system.label}: {exc}")
                continue
            jobs_row.values.append(measured["jobs_s"])
            table.row(title, system, "worker CPU ms/job", baseline, "{:.2f}").values.append(measured["worker_cpu_ms"])
            table.row(title, system, "Redis CPU ms/job", baseline, "{:.3f}").values.append(measured["redis_cpu_ms"])
            log(f"  {title} | {system.label} | round {rnd}: {measured['jobs_s']:.0f} jobs/s")


def herd_case(bench: Bench, table: Table, tools: Tools, sizes: tuple[int, ...], kinds: set[str],
              notes: list[str]) -> None:  # fmt: skip
    """N idle workers on two queues (benchmarks/herd.py): commands and round trips per job as jobs
    trickle in, and what an idle worker costs per second; `rq worker-pool -n N` beside workerd."""
    from benchmarks import herd

    title = CASE_TITLES["9"]
    for kind, system_name in (("workerd", "workerd"), ("rq", "rq-pool")):
        if kind not in kinds:
            continue
        for n in sizes:
            argv = herd.argv_for(system_name, bench.server.url, n, Path(tools.workerd).parent)
            label = f"{'workerd --workers' if kind == 'workerd' else 'rq worker-pool -n'} {n} (idle)"
            system = System(f"{system_name}-herd-{n}", label, kind, lambda url, burst, argv=argv: [argv])
            baseline = f"rq-pool-herd-{n}" if kind == "workerd" else None
            if skip_reason(system, tools):
                table.row(title, system, "commands/job", baseline).note = "skipped (see notes)"
                continue
            try:
                measured = herd.herd(bench.client, bench.server.url, system_name, n, Path(tools.workerd).parent)
            except (OSError, redis.RedisError, psutil.Error) as exc:
                table.row(title, system, "commands/job", baseline).note = f"error: {exc}"
                notes.append(f"case {title}, {label}: {exc}")
                continue
            for metric, value, fmt in (
                ("commands/job", measured.commands_per_job, "{:.1f}"),
                ("round trips/job", measured.round_trips_per_job, "{:.1f}"),
                ("Redis CPU ms/job", measured.redis_cpu_ms_per_job, "{:.2f}"),
                ("idle commands/s per worker", measured.idle_commands_s, "{:.2f}"),
                ("idle round trips/s per worker", measured.idle_round_trips_s, "{:.2f}"),
            ):
                table.row(title, system, metric, baseline, fmt).values.append(value)
            log(f"  {title} | {label}: {measured.commands_per_job:.1f} cmds/job, "
                f"{measured.idle_round_trips_s:.2f} idle round trips/s per worker")  # fmt: skip


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * pct / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def memory_case(
    bench: Bench,
    table: Table,
    tools: Tools,
    pairs: list[tuple[Callable[[int], System], str | None]],
    rounds: int,
    notes: list[str],
) -> None:
    title = CASE_TITLES["7"]
    for rnd in range(1, rounds + 1):
        for make, baseline in pairs:
            sys4, sys1 = make(4), make(1)
            rows = {
                m: table.row(title, sys4, m, baseline)
                for m in (
                    "PSS 4 busy MiB",
                    "USS/worker 4 busy MiB",
                    "PSS 1 busy MiB",
                    "PSS 4/1 busy",
                    "PSS 4 idle MiB",
                    "USS/worker 4 idle MiB",
                )
            }
            rows["PSS 4/1 busy"].fmt = "{:.2f}"
            reason = skip_reason(sys4, tools)
            if reason or rows["PSS 4 busy MiB"].note:
                for r in rows.values():
                    r.note = r.note or "skipped (see notes)"
                continue
            try:
                m1 = bench.memory_run(sys1, 1)
                m4 = bench.memory_run(sys4, 4)
            except BenchError as exc:
                for r in rows.values():
                    r.note = f"error: {str(exc).splitlines()[0]}"
                notes.append(f"case {title}, {sys4.label}: {exc}")
                log(f"  !! {sys4.label}: {exc}")
                continue
            rows["PSS 4 busy MiB"].values.append(m4["busy_pss"])
            rows["USS/worker 4 busy MiB"].values.append(m4["busy_uss_worker"])
            rows["PSS 1 busy MiB"].values.append(m1["busy_pss"])
            rows["PSS 4/1 busy"].values.append(m4["busy_pss"] / m1["busy_pss"])
            rows["PSS 4 idle MiB"].values.append(m4["idle_pss"])
            rows["USS/worker 4 idle MiB"].values.append(m4["idle_uss_worker"])
            log(
                f"  {title} | {sys4.label} | round {rnd}: busy PSS 1w {m1['busy_pss']:.0f} MiB, "
                f"4w {m4['busy_pss']:.0f} MiB ({m4['busy_procs']:.0f} procs), "
                f"USS/worker {m4['busy_uss_worker']:.0f}; "
                f"idle PSS 4w {m4['idle_pss']:.0f} MiB"
            )


# --------------------------------------------------------------------------------------------------
# Main.


def machine_info(server_version: str, tools: Tools) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import rq

    info = {
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "Redis server": server_version,
        "redis-py": redis.__version__,
        "RQ": rq.__version__,
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["repo commit"] = head or "unknown"
    info["workerd"] = "skipped: " + tools.workerd_problem if tools.workerd_problem else tools.workerd
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    bindir = Path(sys.executable).parent
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds per case (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="small job counts and 1 round: a ~1-minute smoke run")
    p.add_argument("--cases", default="1,2,3,4,5,6,7,8,9", help="comma-separated case numbers (6 needs 1, 2 or 3)")
    p.add_argument("--systems", default="rq,workerd", help="rq, workerd or both")
    p.add_argument("--markdown", metavar="FILE", help="also write the report as Markdown to FILE")
    p.add_argument("--rq", default=str(bindir / "rq") if (bindir / "rq").exists() else (shutil.which("rq") or "rq"))
    p.add_argument(
        "--workerd",
        default=str(bindir / "workerd")
        if (bindir / "workerd").exists()
        else (shutil.which("workerd") or str(bindir / "workerd")),
    )
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument("--latency-gap-ms", type=float, default=20.0, help="pause after each latency job (default 20)")
    p.add_argument("--jobs-scale", type=float, default=1.0, help="multiply every job count")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (worker logs) at the end")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # run as a file: the benchmarks package (peers, herd) is found from the root
    sizes = dataclasses.replace(QUICK if args.quick else FULL)
    for f in ("fork_jobs", "inproc_jobs", "pool_jobs", "heavy_jobs", "latency_jobs", "peer_jobs"):
        setattr(sizes, f, max(2, round(getattr(sizes, f) * args.jobs_scale)))
    rounds = args.rounds or (1 if args.quick else 3)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    kinds = {s.strip() for s in args.systems.split(",") if s.strip()}

    # SIGTERM (and SIGHUP) unwind like Ctrl+C, so the finally blocks below kill what we started.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    workerd_problem, workerd_help = check_workerd(args.workerd) if "workerd" in kinds else ("not selected", "")
    tools = Tools(args.rq, args.workerd, workerd_problem, workerd_help)
    if workerd_problem and "workerd" in kinds:
        log(f"workerd rows will be skipped: {workerd_problem}")

    tmpdir = Path(tempfile.mkdtemp(prefix="workerd-bench-"))
    procs = Procs(tmpdir)
    table = Table()
    notes: list[str] = []
    started = time.monotonic()
    try:
        server = RedisServer(procs, args.redis_server, tmpdir)
        bench = Bench(procs, server, tmpdir)
        log(f"redis-server {server.version} on port {server.port}; logs in {tmpdir}")

        fork_s = fork_floor(sizes.fork_floor_n)
        raw_rtt, py_rtt = rtt_floor(server.port, sizes.rtt_n)
        floors = [
            f"fork floor: bare os.fork() + os._exit(0) + waitpid of this Python: {1000 * fork_s:.2f} ms "
            f"→ {1 / fork_s:.0f} forks/s (median of {sizes.fork_floor_n})",
            f"RTT floor: PING round trip on loopback: {1e6 * raw_rtt:.0f} µs raw socket, "
            f"{1e6 * py_rtt:.0f} µs through redis-py (median of {sizes.rtt_n})",
        ]
        for line in floors:
            log(line)

        def want(*ks: str) -> bool:
            return bool(kinds & set(ks))

        def sel(pairs: list[tuple[System, str | None]]) -> list[tuple[System, str | None]]:
            return [(s, b) for s, b in pairs if s.kind in kinds]

        rq_fork = System("rq-fork", "rq worker", "rq", rq_worker(tools))
        rq_simple = System("rq-simple", "rq SimpleWorker", "rq", rq_worker(tools, "-w", "rq.worker.SimpleWorker"))
        wd_fork = wd_system(tools, "wd-fork", "workerd fork", "--execution", "fork")
        wd_inproc = wd_system(tools, "wd-inproc", "workerd inprocess", "--execution", "inprocess")
        do6 = "6" in cases

        if "1" in cases or (do6 and not cases & {"2", "3"}):
            log(f"case 1: {sizes.fork_jobs} no-op jobs, 1 worker, fork per job")
            throughput_case(
                bench,
                table,
                tools,
                "1",
                sel([(rq_fork, None), (wd_fork, "rq-fork")]),
                "benchmarks.jobs.noop",
                sizes.fork_jobs,
                rounds,
                0.5,
                notes,
                do6,
                sizes.min_span_s,
            )
        if "2" in cases:
            log(f"case 2: {sizes.inproc_jobs} no-op jobs, 1 worker, in-process")
            throughput_case(
                bench,
                table,
                tools,
                "2",
                sel([(rq_simple, None), (wd_inproc, "rq-simple")]),
                "benchmarks.jobs.noop",
                sizes.inproc_jobs,
                rounds,
                0.1,
                notes,
                do6,
                sizes.min_span_s,
            )
        if "3" in cases:
            log(f"case 3: {sizes.pool_jobs} no-op jobs, 2 workers, fork per job")
            pool = System("rq-pool2", "rq worker-pool -n 2", "rq", rq_pool(tools, 2))
            two = System("rq-2x", "2 x rq worker", "rq", rq_many(tools, 2))
            wd2 = wd_system(tools, "wd-2", "workerd --workers 2", "--workers", "2", "--execution", "fork")
            throughput_case(
                bench,
                table,
                tools,
                "3",
                sel([(pool, None), (two, None), (wd2, "rq-pool2")]),
                "benchmarks.jobs.noop",
                sizes.pool_jobs,
                rounds,
                0.5,
                notes,
                do6,
                sizes.min_span_s,
            )
        if "4" in cases:
            log(f"case 4: {sizes.heavy_jobs} jobs whose module takes 200 ms CPU to import")
            wd_pre = wd_system(
                tools,
                "wd-preload",
                "workerd fork --preload",
                "--execution",
                "fork",
                "--preload",
                "benchmarks.jobs_heavy",
            )
            throughput_case(
                bench,
                table,
                tools,
                "4",
                sel([(rq_fork, None), (wd_pre, "rq-fork")]),
                "benchmarks.jobs_heavy.noop",
                sizes.heavy_jobs,
                rounds,
                2.0,
                notes,
                False,
                sizes.min_span_s,
            )
        if "5" in cases:
            log(f"case 5: {sizes.latency_jobs} jobs per round to an idle worker, {args.latency_gap_ms:.0f} ms apart")
            # Issue 15's latency target is for fork mode with the job's module preloaded (no import per job).
            wd_fork_pre = wd_system(
                tools, "wd-fork-pre", "workerd fork --preload", "--execution", "fork", "--preload", "benchmarks.jobs"
            )
            latency_case(
                bench,
                table,
                tools,
                sel([(rq_fork, None), (wd_fork_pre, "rq-fork"), (rq_simple, None), (wd_inproc, "rq-simple")]),
                sizes.latency_jobs,
                rounds,
                args.latency_gap_ms / 1000,
                notes,
            )
        if "8" in cases and want("workerd"):
            log(f"case 8: {sizes.peer_jobs} no-op jobs, workerd in-process beside huey and dramatiq")
            peers_case(bench, table, tools, sizes.peer_jobs, rounds, notes)
        if "9" in cases:
            log(f"case 9: {', '.join(map(str, sizes.herd_workers))} idle workers on 2 queues, 150 jobs at 50/s")
            herd_case(bench, table, tools, sizes.herd_workers, kinds, notes)
        if "7" in cases:
            log("case 7: memory of 1 and 4 workers with a ~200 MB module loaded")
            mem: list[tuple[Callable[[int], System], str | None]] = []
            if want("rq"):
                mem.append(
                    (lambda k: System("rq-pool-mem", "rq worker-pool -n k (fork)", "rq", rq_pool(tools, k)), None)
                )
                mem.append(
                    (
                        lambda k: System(
                            "rq-pool-simple-mem",
                            "rq worker-pool -n k -w SimpleWorker",
                            "rq",
                            rq_pool(tools, k, "-w", "rq.worker.SimpleWorker"),
                        ),
                        None,
                    )
                )
            if want("workerd"):
                mem.append(
                    (
                        lambda k: wd_system(
                            tools,
                            "wd-mem",
                            "workerd --workers k fork --preload",
                            "--workers",
                            str(k),
                            "--execution",
                            "fork",
                            "--preload",
                            "benchmarks.jobs_bigmem",
                        ),
                        "rq-pool-mem",
                    )
                )
                mem.append(
                    (
                        lambda k: wd_system(
                            tools,
                            "wd-mem-inproc",
                            "workerd --workers k inprocess --preload",
                            "--workers",
                            str(k),
                            "--execution",
                            "inprocess",
                            "--preload",
                            "benchmarks.jobs_bigmem",
                        ),
                        "rq-pool-simple-mem",
                    )
                )
            memory_case(bench, table, tools, mem, min(rounds, sizes.mem_rounds), notes)

        elapsed = time.monotonic() - started
        info = machine_info(server.version, tools)
        report = render(info, floors, table, notes, rounds, sizes, args, elapsed)
        print(report)
        if args.markdown:
            Path(args.markdown).write_text(report + "\n")
            log(f"written to {args.markdown}")
        return 0 if not any(r.note.startswith("error") for r in table.rows) else 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log(f"kept {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)


def render(
    info: dict[str, str],
    floors: list[str],
    table: Table,
    notes: list[str],
    rounds: int,
    sizes: Sizes,
    args: argparse.Namespace,
    elapsed: float,
) -> str:
    out = ["## workerd benchmark", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += [
        f"- rounds: {rounds}{' (--quick)' if args.quick else ''}; jobs per run: fork {sizes.fork_jobs}, "
        f"in-process {sizes.inproc_jobs}, 2 workers {sizes.pool_jobs}, heavy import {sizes.heavy_jobs}, "
        f"latency {sizes.latency_jobs}/round (gap {args.latency_gap_ms:.0f} ms); total time {elapsed:.0f} s",
        "",
    ]
    out += ["### Floors", ""] + [f"- {f}" for f in floors] + [""]
    out += [
        "### Results",
        "",
        "Medians over rounds (latency percentiles over all rounds' samples pooled). "
        "jobs/s = (N-1)/(T_N - T_1), startup excluded; `incl. startup` = N/T_N. "
        "The ratio is workerd over its baseline (RQ; huey in case 8): higher is better for jobs/s, "
        "lower is better for ms, CPU, commands, round trips and MiB.",
        "",
        table.markdown(),
        "",
        "### Targets (issue 15)",
        "",
        *table.targets(),
        "",
    ]
    notes = list(SKIPPED) + notes
    if notes:
        out += ["### Notes", ""] + [f"- {n.splitlines()[0]}" if len(n) < 400 else f"- {n[:400]}…" for n in notes] + [""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
