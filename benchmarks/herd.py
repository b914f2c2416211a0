"""Herd case (issue 15 target 4): what idle workers cost Redis, per job and per second.

N idle workers (one pool) on queues a and b: Redis commands and round trips per second per idle
worker with no jobs, then commands, round trips and Redis CPU per job with 150 no-op jobs enqueued
on a at 50/s (each job arrives while every worker is idle). A round trip is one read Redis served
(INFO's total_reads_processed): a pipeline or a blocking wait counts once.

    .venv/bin/python benchmarks/herd.py redis://127.0.0.1:PORT/0 1 8 32 64
    .venv/bin/python benchmarks/herd.py --rq redis://127.0.0.1:PORT/0 1 8 32 64   # rq worker-pool too

The per-job figures include rq's enqueue (the same for every N and system). Target: commands per
job with 64 idle workers <= 1.1x the figure with 1; an idle worker <= 0.5 round trips/s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
import rq

ROOT = Path(__file__).resolve().parent.parent
BINDIR = Path(sys.executable).parent  # the venv's workerd and rq
JOBS = 150
GAP_S = 0.02  # 50 jobs/s
IDLE_S = 6.0  # two heartbeats of workerd's default 3 s
SETTLE_S = 1.0


@dataclass(frozen=True)
class Counters:
    commands: int
    reads: int
    cpu_s: float

    @classmethod
    def read(cls, client: redis.Redis) -> Counters:
        info = client.info()
        calls = sum(int(v["calls"]) for v in client.info("commandstats").values())
        cpu_s = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return cls(calls, int(info["total_reads_processed"]), cpu_s)

    def since(self, before: Counters) -> Counters:
        # Our own two INFOs (INFO, INFO commandstats) per read are not the workers': taken off.
        return Counters(self.commands - before.commands - 2, self.reads - before.reads - 2, self.cpu_s - before.cpu_s)


@dataclass(frozen=True)
class Herd:
    """What n idle workers cost: per idle worker per second with no jobs, and per job trickling in."""

    idle_commands_s: float
    idle_round_trips_s: float
    commands_per_job: float
    round_trips_per_job: float
    redis_cpu_ms_per_job: float

    def row(self, system: str, n: int) -> str:
        return (f"| {system} | {n} | {self.idle_commands_s:.2f} | {self.idle_round_trips_s:.2f} "
                f"| {self.commands_per_job:.1f} | {self.round_trips_per_job:.1f} "
                f"| {self.redis_cpu_ms_per_job:.2f} |")  # fmt: skip


def argv_for(system: str, url: str, n: int, bindir: Path = BINDIR) -> list[str]:
    if system == "workerd":
        return [str(bindir / "workerd"), "-u", url, "--execution", "inprocess", "--workers", str(n), "a", "b"]
    return [str(bindir / "rq"), "worker-pool", "-u", url, "-n", str(n), "-q", "a", "b"]


def herd(client: redis.Redis, url: str, system: str, n: int, bindir: Path = BINDIR) -> Herd:
    client.flushdb()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv_for(system, url, n, bindir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(client.smembers("rq:workers")) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(SETTLE_S)  # let startup traffic settle
        before, t0 = Counters.read(client), time.monotonic()
        time.sleep(IDLE_S)
        idle = Counters.read(client).since(before)
        idle_s = (time.monotonic() - t0) * n
        queue = rq.Queue("a", connection=client)
        before = Counters.read(client)
        for _ in range(JOBS):
            queue.enqueue("benchmarks.jobs.noop")
            time.sleep(GAP_S)
        polls = 1  # ours, not the workers': each ZCARD is one command and one read
        while client.zcard("rq:finished:a") < JOBS and time.monotonic() < deadline + 60:
            polls += 1
            time.sleep(0.01)
        busy = Counters.read(client).since(before)
        return Herd(idle.commands / idle_s, idle.reads / idle_s, (busy.commands - polls) / JOBS,
                    (busy.reads - polls) / JOBS, 1000 * busy.cpu_s / JOBS)  # fmt: skip
    finally:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            p.send_signal(signal.SIGKILL)
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rq", action="store_true", help="also run `rq worker-pool -n N` on the same queues")
    parser.add_argument("url")
    parser.add_argument("workers", nargs="+", type=int)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    print("| system | idle workers | idle: commands/s per worker | idle: round trips/s per worker | commands/job "
          "| round trips/job | Redis CPU ms/job |\n|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for system in ["workerd", *(["rq-pool"] if args.rq else [])]:
        for n in args.workers:
            print(herd(client, args.url, system, n).row(system, n), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
