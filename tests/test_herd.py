"""The herd (issue 15 target 4): a job wakes one idle worker, and what Redis hands to an idle
worker's wait (its claim list, workerd.waiter) is recovered like a running job of a dead worker.

Real workerd subprocesses against the suite's redis-server. A worker is frozen with SIGSTOP while
its waits are blocked, so that Redis hands it a job it cannot start: the job then sits in its claim
list, as it does for under one round trip normally.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
import rq

from tests.conftest import WorkerdProcess, run_workerd, wait_until
from tests.redis_server import RedisServer
from workerd import Queue, schema

HEARTBEAT_S = 0.5
LEASE_S = 2 * HEARTBEAT_S + 1  # settings.lease_s
RECORD = "reliability_jobs.record"


def blocked_waits(r: redis.Redis, worker: str) -> int:
    """Clients blocked in BLMOVE: the idle waits of the workers whose name starts with `worker`
    (one a queue a worker)."""
    clients = r.client_list()
    return sum(1 for c in clients if c.get("cmd") == "blmove" and "b" in c.get("flags", "")
               and c.get("name", "").startswith(worker))  # fmt: skip


def scripts_run(commandstats: dict[str, dict[str, int]]) -> int:
    evalsha = commandstats["cmdstat_evalsha"]
    return evalsha["calls"] - evalsha.get("failed_calls", 0) - evalsha.get("rejected_calls", 0)


def worker_pids(proc: WorkerdProcess) -> list[int]:
    return [child.pid for child in psutil.Process(proc.pid).children()]


def started_tags(path: Path) -> list[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[1] for line in lines if line.startswith("start ")]


def claimed(r: redis.Redis, queue: str, worker: str) -> list[bytes]:
    return r.lrange(schema.claim_list_key(queue, worker), 0, -1)  # type: ignore[return-value]


@pytest.fixture
def frozen() -> Iterator[Callable[[int], None]]:
    """SIGSTOP a process; SIGCONT it at the end of the test if it is still there (then killed)."""
    stopped: list[int] = []

    def freeze(pid: int) -> None:
        psutil.Process(pid).send_signal(signal.SIGSTOP)
        stopped.append(pid)

    yield freeze
    for pid in stopped:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).send_signal(signal.SIGCONT)


def _freeze_with_claim(r: redis.Redis, proc: WorkerdProcess, name: str, freeze: Callable[[int], None],
                       queue: Queue, *job_args: object) -> str:  # fmt: skip
    """Freeze the single worker `proc` while its wait blocks, then enqueue a job Redis hands to it."""
    wait_until(lambda: blocked_waits(r, name) == 1, message="the worker to wait")
    freeze(proc.pid)
    job = queue.enqueue(RECORD, *job_args)
    return job.id


def test_one_job_wakes_one_worker(r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess]) -> None:
    """With 4 idle workers on two queues, one job costs one fetch, then its commit with the fetch
    after it (2 scripts: COMMIT_THEN_FETCH), and the other workers' waits stay blocked: none of them is woken."""
    proc = workerd("-u", redis_url, "--workers", "4", "--name", "herd-4", "--execution", "inprocess",
                   "--heartbeat-interval", "60", "a", "b")  # fmt: skip
    wait_until(lambda: blocked_waits(r, "herd-4") == 8, timeout=30, message="4 workers blocked on 2 queues")
    before = r.info("commandstats")
    job = Queue("a", connection=r).enqueue("testjobs.add", 1, 2)
    wait_until(lambda: job.get_status(refresh=True) == "finished", message="the job to finish")
    wait_until(lambda: blocked_waits(r, "herd-4") == 8, message="the worker to wait again")
    after = r.info("commandstats")
    # A NOSCRIPT reply (a worker's first commit loads its script) is a failed or rejected call, not a script run.
    assert scripts_run(after) - scripts_run(before) == 2, proc.output()
    blmoves = after["cmdstat_blmove"]["calls"] - before["cmdstat_blmove"]["calls"]
    assert blmoves == 2, "only the woken worker waits anew (on both queues); the other waits stayed blocked"
    assert r.keys("rq:workerd:claim:*") == []


def test_a_dead_workers_claims_go_back_to_the_front_within_the_lease(
    r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess], tmp_path: Path,
    frozen: Callable[[int], None],
) -> None:  # fmt: skip
    record = tmp_path / "jobs.txt"
    queue = Queue("a", connection=r)
    frozen_worker = workerd("-u", redis_url, "--name", "herd-a", "--heartbeat-interval", str(HEARTBEAT_S), "a")
    first = _freeze_with_claim(r, frozen_worker, "herd-a", frozen, queue, str(record), "first")
    wait_until(
        lambda: claimed(r, "a", "herd-a") == [first.encode()], message="the job in the frozen worker's claim list"
    )
    queue.enqueue(RECORD, str(record), "second")
    assert queue.count == 1  # a claimed job is in neither the queue's length...
    assert r.zcard(schema.started_key("a")) == 0  # ...nor started: it is still queued
    assert queue.fetch_job(first).get_status() == "queued"  # type: ignore[union-attr]
    info = run_workerd("info", "-u", redis_url, "--raw", "a")
    assert "1 claimed (herd-a 1)" in info.stdout, info.stdout

    frozen_worker.kill_all()  # SIGKILL, while Redis holds its claim
    deadline = r.zscore(schema.claimers_key("a"), "herd-a")
    assert deadline is not None
    wait_until(lambda: r.time()[0] > deadline, timeout=LEASE_S + 1, message="the dead worker's claim lease to run out")
    burst = run_workerd("-u", redis_url, "--burst", "--name", "herd-b", "a")
    assert burst.returncode == 0, burst.stdout + burst.stderr
    assert started_tags(record) == ["first", "second"], "the claimed job went back to the FRONT of its queue"
    assert r.keys("rq:workerd:claim:*") == []


def test_a_pool_recovers_a_killed_workers_claims_at_once(
    r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess], tmp_path: Path,
    frozen: Callable[[int], None],
) -> None:  # fmt: skip
    """The master saw the worker die: its successor recovers the claim by name, not after the lease."""
    record = tmp_path / "jobs.txt"
    queue = Queue("a", connection=r)
    proc = workerd("-u", redis_url, "--workers", "2", "--name", "herd-2", "--heartbeat-interval", "30", "a")
    wait_until(lambda: blocked_waits(r, "herd-2") == 2, timeout=30, message="2 workers waiting")
    victim = worker_pids(proc)[0]
    frozen(victim)
    tags = [f"job{i}" for i in range(2)]
    for tag in tags:  # Redis serves the longest waiter first: by the second job, the frozen one
        queue.enqueue(RECORD, str(record), tag)
        wait_until(lambda: r.llen(schema.queue_key("a")) == 0, message="the job handed to a wait")
    held = wait_until(lambda: [k for k in r.keys("rq:workerd:claim:*") if r.llen(k)], message="a frozen claim")
    psutil.Process(victim).kill()
    # Lease 61 s: only the recovery by name of the master's new worker can bring it back this soon.
    wait_until(lambda: sorted(started_tags(record)) == tags, timeout=20, message=f"both jobs to run ({held})")
    assert r.llen(held[0]) == 0


def test_priority_across_queues_holds_with_claims(
    r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess], tmp_path: Path,
    frozen: Callable[[int], None],
) -> None:  # fmt: skip
    """Both waits of a frozen worker are handed a job; on waking it runs the high queue's first, and the
    low queue's claimed job goes back ahead of the one enqueued after it."""
    record = tmp_path / "jobs.txt"
    high, low = Queue("high", connection=r), Queue("low", connection=r)
    proc = workerd("-u", redis_url, "--name", "herd-p", "high", "low")
    wait_until(lambda: blocked_waits(r, "herd-p") == 2, message="both waits blocked")
    frozen(proc.pid)
    low.enqueue(RECORD, str(record), "low1")
    high.enqueue(RECORD, str(record), "high1")
    wait_until(lambda: len(claimed(r, "low", "herd-p")) == len(claimed(r, "high", "herd-p")) == 1,
               message="both jobs claimed")  # fmt: skip
    low.enqueue(RECORD, str(record), "low2")
    psutil.Process(proc.pid).send_signal(signal.SIGCONT)
    wait_until(lambda: len(started_tags(record)) == 3, message="the three jobs to run")
    assert started_tags(record) == ["high1", "low1", "low2"]


def test_a_redis_restart_while_workers_wait_loses_nothing(
    workerd: Callable[..., WorkerdProcess], tmp_path: Path, frozen: Callable[[int], None]
) -> None:
    """Redis restarts (AOF) while one worker holds a claim and another waits: every job runs once."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        r = server.client()
        record = tmp_path / "jobs.txt"
        queue = Queue("a", connection=r)
        holder = workerd("-u", server.url, "--name", "herd-r", "--heartbeat-interval", str(HEARTBEAT_S), "a")
        _freeze_with_claim(r, holder, "herd-r", frozen, queue, str(record), "claimed")
        wait_until(lambda: len(claimed(r, "a", "herd-r")) == 1, message="the claim")
        workerd("-u", server.url, "--name", "herd-o", "--heartbeat-interval", str(HEARTBEAT_S), "a")
        wait_until(lambda: blocked_waits(r, "herd-o") == 1, message="the other worker waiting")
        server.restart()
        psutil.Process(holder.pid).send_signal(signal.SIGCONT)
        r = server.client()
        tags = ["claimed", *(f"after{i}" for i in range(4))]
        for tag in tags[1:]:
            Queue("a", connection=r).enqueue(RECORD, str(record), tag)
        wait_until(lambda: sorted(started_tags(record)) == sorted(tags), timeout=30,
                   message=f"every job to run once: {started_tags(record)}\n{holder.output()}")  # fmt: skip
        assert r.keys("rq:workerd:claim:*") == [] or all(r.llen(k) == 0 for k in r.keys("rq:workerd:claim:*"))
    finally:
        server.stop(kill=True)


def test_without_client_unblock_workers_close_their_waits(
    r: redis.Redis, redis_server: RedisServer, workerd: Callable[..., WorkerdProcess], tmp_path: Path
) -> None:
    """An ACL that refuses CLIENT UNBLOCK: the worker closes its other waits instead, and loses nothing."""
    r.acl_setuser("herd", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                  commands=["+@all", "-client|unblock"])  # fmt: skip
    try:
        record = tmp_path / "jobs.txt"
        url = f"redis://herd:pw@127.0.0.1:{redis_server.port}/0"
        proc = workerd("-u", url, "--name", "acl-herd", "--execution", "inprocess", "a", "b")
        wait_until(lambda: blocked_waits(r, "acl-herd") == 2, message="both waits blocked")
        tags = [f"{name}{i}" for i in range(3) for name in ("a", "b")]
        for tag in tags:
            Queue(tag[0], connection=r).enqueue(RECORD, str(record), tag)
            wait_until(lambda t=tag: t in started_tags(record), message=f"{tag} to run\n{proc.output()}")
        wait_until(lambda: blocked_waits(r, "acl-herd") == 2, message="both waits blocked again")
        assert all(r.llen(k) == 0 for k in r.keys("rq:workerd:claim:*"))
        assert "Traceback" not in proc.output()
    finally:
        r.acl_deluser("herd")


@pytest.mark.parametrize("then", ["wakes", "dies"])
def test_a_claimed_job_canceled_meanwhile_never_runs(
    r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess], tmp_path: Path,
    frozen: Callable[[int], None], then: str,
) -> None:  # fmt: skip
    """rq's cancel takes a job off its queue with LREM, which misses one in a claim list: the fetch (the
    worker wakes) or the recovery (it died) drops it instead of starting it or queueing it again."""
    record = tmp_path / "jobs.txt"
    queue = Queue("a", connection=r)
    holder = workerd("-u", redis_url, "--name", "herd-c", "--heartbeat-interval", str(HEARTBEAT_S), "a")
    canceled = _freeze_with_claim(r, holder, "herd-c", frozen, queue, str(record), "canceled")
    wait_until(lambda: claimed(r, "a", "herd-c") == [canceled.encode()], message="the claim")
    rq.job.Job.fetch(canceled, connection=r).cancel()
    if then == "wakes":
        psutil.Process(holder.pid).send_signal(signal.SIGCONT)
    else:
        holder.kill_all()
        workerd("-u", redis_url, "--name", "herd-d", "--heartbeat-interval", str(HEARTBEAT_S), "a")
    wait_until(lambda: not claimed(r, "a", "herd-c"), timeout=20, message="the claim list emptied")
    queue.enqueue(RECORD, str(record), "after")
    wait_until(lambda: started_tags(record) == ["after"], message="the next job to run")
    assert queue.fetch_job(canceled).get_status() == "canceled"  # type: ignore[union-attr]
    assert r.llen(schema.queue_key("a")) == 0
