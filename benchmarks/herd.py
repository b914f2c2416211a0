"""Herd case (issue 15 target 4), a rough first cut, not yet part of bench.py.

N idle in-process workerd workers (one pool) on queues a and b: Redis commands/s per idle worker
with no jobs, then commands and Redis CPU per job with 150 no-op jobs enqueued at 50/s.

    .venv/bin/python benchmarks/herd.py redis://127.0.0.1:PORT/0 1 8 32 64
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import redis
import rq

JOBS = 150
GAP_S = 0.02  # 50 jobs/s
IDLE_S = 3.0


def commands(client: redis.Redis) -> int:
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def herd(client: redis.Redis, url: str, n: int) -> str:
    client.flushdb()
    argv = [".venv/bin/workerd", "-u", url, "--execution", "inprocess", "--workers", str(n), "a", "b"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(client.smembers("rq:workers")) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # let startup traffic settle
        c0, t0 = commands(client), time.monotonic()
        time.sleep(IDLE_S)
        # One INFO of ours falls inside the window.
        idle = (commands(client) - c0 - 1) / (time.monotonic() - t0) / n
        queue = rq.Queue("a", connection=client)
        c0, r0 = commands(client), redis_cpu_s(client)
        for _ in range(JOBS):
            queue.enqueue("benchmarks.jobs.noop")
            time.sleep(GAP_S)
        while client.zcard("rq:finished:a") < JOBS and time.monotonic() < deadline + 60:
            time.sleep(0.01)
        per_job = (commands(client) - c0) / JOBS  # includes rq's enqueue commands, the same for every N
        cpu_ms = 1000 * (redis_cpu_s(client) - r0) / JOBS
        return f"| {n} | {idle:.2f} | {per_job:.1f} | {cpu_ms:.2f} |"
    finally:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            p.send_signal(signal.SIGKILL)
        proc.wait(10)


def main() -> int:
    url = sys.argv[1]
    client = redis.Redis.from_url(url)
    print("| idle workers | commands/s per idle worker | commands/job | Redis CPU ms/job |\n|---:|---:|---:|---:|")
    for n in [int(x) for x in sys.argv[2:]]:
        print(herd(client, url, n), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
