"""Redis outages (issue 5): a Redis restart and a Redis outage while jobs run.

The master and the workers stay up (same pids), each process logs the outage once and the recovery
once (not a line per retry), outcomes of jobs that finished during the outage are committed once
Redis is back, nothing is lost, and no job runs twice (nothing here is killed).

The suite's outage lasts 10 s; the 30 s outage of the issue is `python scripts/chaos.py --scenario
redis-outage` (docs/RELIABILITY.md), which also adds kills. What systemd sees during an outage (the
watchdog, READY, STATUS) is tests/test_systemd.py.
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import WorkerdProcess, wait_until
from tests.redis_server import RedisServer, free_port
from workerd import Queue, connection, schema
from workerd.settings import Settings

OUTAGE_S = 6.0  # three leases (2 heartbeats + 1 s) and more: a lease would have run out in it
HEARTBEAT = ("--heartbeat-interval", "0.5")
DOWN = "cannot reach Redis"
UP = "is reachable again after"


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, with AOF (appendfsync always), so that a restart keeps the data."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop(kill=True)


def _records(path: Path) -> list[tuple[str, str, int, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, tag, pid, at = line.split()
        rows.append((kind, tag, int(pid), float(at)))
    return rows


def _running_since(path: Path, within_s: float) -> bool:
    """Some job started less than `within_s` ago and has not ended."""
    rows = _records(path)
    ended = {tag for kind, tag, _, _ in rows if kind == "end"}
    return any(kind == "start" and tag not in ended and time.time() - at < within_s for kind, tag, _, at in rows)


def _statuses(r: redis.Redis, ids: list[str]) -> Counter[str]:
    with r.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(schema.job_key(job_id), "status")
        return Counter((s or b"<none>").decode() for s in pipe.execute())


def _pool_pids(proc: WorkerdProcess) -> set[int]:
    """The master and its workers (the horses come and go)."""
    master = psutil.Process(proc.pid)
    return {master.pid, *(child.pid for child in master.children(recursive=False))}


def _worker_lines(output: str, text: str) -> Counter[str]:
    """How many lines containing `text` each process wrote (lines carry the worker's name)."""
    found: Counter[str] = Counter()
    for line in output.splitlines():
        if text in line:
            match = re.search(r"Worker (\S+):", line)
            found[match.group(1) if match else "?"] += 1
    return found


def _run_through_outage(server: RedisServer, proc: WorkerdProcess, jobs_file: Path, ids: list[str],
                        restart_only: bool) -> dict[str, float]:  # fmt: skip
    """Let some jobs start, take Redis away (a restart, or OUTAGE_S), bring it back, wait for all."""
    r = server.client()
    wait_until(lambda: sum(1 for row in _records(jobs_file) if row[0] == "end") >= 2, timeout=20,
               message="a few jobs to finish before the outage")  # fmt: skip
    if not restart_only:  # stop Redis while a job has most of its second still to run
        wait_until(lambda: _running_since(jobs_file, 0.5), timeout=10, interval=0.01, message="a job just started")
    server.stop()
    down_at = time.time()
    if not restart_only:
        # Jobs keep running and finishing while Redis is away (they record to a file, not to Redis).
        wait_until(lambda: time.time() - down_at >= OUTAGE_S
                   and any(row[0] == "end" and row[3] > down_at for row in _records(jobs_file)),
                   timeout=OUTAGE_S + 10, interval=0.1, message="the outage, with a job ending in it")  # fmt: skip
        assert wait_until(lambda: proc.output().count(DOWN) >= 1, timeout=5, message="the outage to be logged")
    server.start()
    up_at = time.time()
    r = server.client()
    wait_until(lambda: _statuses(r, ids)["finished"] == len(ids), timeout=60, interval=0.2,
               message=f"every job to finish: {_statuses(r, ids)}")  # fmt: skip
    return {"down_at": down_at, "up_at": up_at, "all_done_at": time.time()}


def _check_nothing_lost_or_repeated(r: redis.Redis, jobs_file: Path, ids: list[str], tags: list[str]) -> None:
    assert _statuses(r, ids) == Counter({"finished": len(ids)})
    starts = Counter(tag for kind, tag, _, _ in _records(jobs_file) if kind == "start")
    assert set(starts) == set(tags)
    assert max(starts.values()) == 1, f"jobs ran twice: {[t for t, n in starts.items() if n > 1]}"
    for queue in ("default",):
        assert r.zcard(schema.started_key(queue)) == 0
        assert r.llen(schema.queue_key(queue)) == 0


@pytest.mark.parametrize("kind", ["restart", "outage"])
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "single"])
def test_redis_goes_away_while_jobs_run(aof_server: RedisServer, workerd: Callable[..., WorkerdProcess],
                                        tmp_path: Path, kind: str, pool: bool) -> None:  # fmt: skip
    r = aof_server.client()
    jobs_file = tmp_path / "jobs.txt"
    q = Queue("default", connection=r)
    tags = [f"job{i}" for i in range(8)]  # a few before the outage, one ending in it, the rest after
    # 1 s jobs back to back: when Redis goes, the workers are in the middle of one.
    ids = [q.enqueue("reliability_jobs.record", str(jobs_file), tag, 1.0, result_ttl=3600).id for tag in tags]
    proc = workerd("-u", aof_server.url, *HEARTBEAT, *(("--workers", "2") if pool else ()))
    if pool:
        wait_until(lambda: len(_pool_pids(proc)) == 3, message="the master and 2 workers")
    pids_before = _pool_pids(proc) if pool else {proc.pid}

    times = _run_through_outage(aof_server, proc, jobs_file, ids, restart_only=kind == "restart")

    assert proc.process.poll() is None, proc.output()
    assert (_pool_pids(proc) if pool else {proc.pid}) == pids_before, proc.output()
    output = proc.output()
    assert "Traceback" not in output, output
    _check_nothing_lost_or_repeated(r, jobs_file, ids, tags)
    down, up = _worker_lines(output, DOWN), _worker_lines(output, UP)
    # Each worker that noticed the outage logged it once, and its end once.
    assert all(n == 1 for n in down.values()), output
    assert down == up, output
    if kind == "outage":
        assert len(down) == (2 if pool else 1), output
        assert "lost the lease" not in output
        # Jobs that ended while Redis was away were committed after it came back.
        ended_in_outage = [row for row in _records(jobs_file) if row[0] == "end" and row[3] < times["up_at"]
                           and row[3] > times["down_at"]]  # fmt: skip
        assert ended_in_outage
        recovered = [float(m) for m in re.findall(r"reachable again after ([0-9.]+) s", output)]
        assert all(OUTAGE_S - 1 <= s <= OUTAGE_S + 6 for s in recovered), recovered


def test_after_a_flushall_the_worker_says_what_happened(r: redis.Redis, redis_url: str, workerd) -> None:
    """A FLUSHALL mid-job: nobody recovered the job, it is gone; the log must not claim a recovery."""
    single = workerd("-u", redis_url, "--heartbeat-interval", "0.2")
    single.wait_for_output("Listening on")
    Queue("default", connection=r).enqueue("testjobs.mark_then_sleep", redis_url, "running", 2)
    wait_until(lambda: r.llen("running") == 1, message="the job running")
    r.flushall()
    single.wait_for_output("registered again")
    single.wait_for_output("lost the lease on job", timeout=20)
    output = single.output()
    assert "its hash is gone from Redis (deleted, expired, or Redis was flushed" in output
    assert "recovered while this worker was not heartbeating" not in output
    after = Queue("default", connection=r).enqueue("testjobs.add", 1, 1)
    wait_until(lambda: r.hget(schema.job_key(after.id), "status") == b"finished", message="the worker going on")


@pytest.mark.parametrize("how", ["url", "host and port"])
def test_one_failed_redis_call_fails_at_once_however_the_client_is_built(how: str) -> None:
    """workerd's loops retry with their own backoff and report the outage meanwhile; a client that
    retried inside redis-py (its default for host/port clients: 10 times, with backoff) hid it."""
    port = free_port()  # nothing listens there: refused at once
    fields = (
        {"redis_url": f"redis://127.0.0.1:{port}/0"}
        if how == "url"
        else {"redis_host": "127.0.0.1", "redis_port": port}
    )
    client = connection.connect(Settings(**fields))
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("how", ["url", "host and port"])
def test_a_redis_that_never_replies_fails_a_call_after_redis_socket_timeout(how: str) -> None:
    """The reply wait is the setting, not the 30 s default: the master's stuck threshold is built on it."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever answers
        port = silent.getsockname()[1]
        fields: dict[str, object] = (
            {"redis_url": f"redis://127.0.0.1:{port}/0"}
            if how == "url"
            else {"redis_host": "127.0.0.1", "redis_port": port}
        )
        client = connection.connect(Settings(**fields, redis_socket_timeout=1.0))
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert 1.0 <= time.monotonic() - started < 3.0
