"""workerd in-process beside huey and dramatiq (issue 15): no-op jobs, burst-like runs on one Redis.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/peers.py -n 2000

Neither peer has a burst mode: each run times the first and the last visible completion,
rate = (N-1)/(TN-T1) as bench.py does, then the consumer is killed. Worker CPU is the rusage
of the consumer's process tree; Redis CPU is INFO used_cpu_sys+used_cpu_user over the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks.peer_tasks is imported by the enqueuer too
BIN = Path(sys.executable).parent
WORKERD_QUEUE = "bench"  # the queue bench.py's workerd command lines listen on


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def tree_cpu_s(root: psutil.Process, seen: dict[int, float]) -> None:
    # Children exit only when killed, so sampling live processes just before the kill is complete.
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            seen[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass


def done_count(client: redis.Redis, peer: str, n: int) -> int:
    if peer == "huey":
        return int(client.hlen("huey.results.bench"))
    if peer == "workerd":
        return int(client.zcard(f"rq:finished:{WORKERD_QUEUE}"))
    pending = int(client.hlen("dramatiq:default.msgs"))
    return n - pending


def run(peer: str, argv: list[str], url: str, n: int, timeout_s: float) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    os.environ["BENCH_REDIS_URL"] = url
    from benchmarks import peer_tasks

    if peer == "workerd":
        import rq  # a test dependency: it writes RQ's job hashes, which workerd runs

        queue = rq.Queue(WORKERD_QUEUE, connection=client)
        for _ in range(n):
            queue.enqueue("benchmarks.jobs.noop")
    for _ in range(n if peer != "workerd" else 0):
        (peer_tasks.huey_noop if peer == "huey" else peer_tasks.dramatiq_noop.send)()
    before = redis_cpu_s(client)
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    cpu: dict[int, float] = {}
    t1 = tn = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c = done_count(client, peer, n)
        now = time.monotonic()
        if t1 is None and c >= 1:
            t1 = now
        if c >= n:
            tn = now
            break
        if c > n // 2:
            tree_cpu_s(root, cpu)
        time.sleep(0.002)
    tree_cpu_s(root, cpu)
    after = redis_cpu_s(client)
    for child in [root, *root.children(recursive=True)]:
        child.send_signal(signal.SIGKILL)
    proc.wait(10)
    if t1 is None or tn is None:
        raise SystemExit(f"{peer}: {done_count(client, peer, n)}/{n} done in {timeout_s}s")
    return {
        "jobs_s": (n - 1) / (tn - t1),
        "worker_cpu_ms": 1000 * sum(cpu.values()) / n,
        "redis_cpu_ms": 1000 * (after - before) / n,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="redis://127.0.0.1:6379/0")
    p.add_argument("-n", type=int, default=2000)
    a = p.parse_args()
    huey = [str(BIN / "huey_consumer"), "benchmarks.peer_tasks.huey"]
    wd = [str(BIN / "workerd"), "-u", a.url, "--execution", "inprocess"]
    cases = [
        ("workerd --execution inprocess", "workerd", [*wd, WORKERD_QUEUE]),
        ("workerd --workers 2 --execution inprocess", "workerd", [*wd, "--workers", "2", WORKERD_QUEUE]),
        ("huey -w 1 -k process", "huey", [*huey, "-w", "1", "-k", "process"]),
        ("huey -w 2 -k process", "huey", [*huey, "-w", "2", "-k", "process"]),
        ("dramatiq -p 2 -t 8", "dramatiq", [str(BIN / "dramatiq"), "benchmarks.peer_tasks", "-p", "2", "-t", "8"]),
    ]
    print("| system | jobs/s | worker CPU ms/job | Redis CPU ms/job |\n|---|---:|---:|---:|")
    for label, peer, argv in cases:
        r = run(peer, argv, a.url, a.n, 120)
        print(f"| {label} | {r['jobs_s']:,.0f} | {r['worker_cpu_ms']:.2f} | {r['redis_cpu_ms']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
