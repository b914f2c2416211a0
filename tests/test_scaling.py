"""Scale-out (docs/SCALING.md): many pools on one Redis, a host lost, a Sentinel failover, and the
Redis deployments workerd refuses (a Sentinel given as the Redis URL, a Redis Cluster)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import WorkerdProcess, run_workerd, wait_until
from tests.redis_server import RedisServer, SentinelServer, free_port
from workerd import Queue, schema

HEARTBEAT_S = 0.5
HEARTBEAT = ("--heartbeat-interval", str(HEARTBEAT_S))
JOB_S = 1.0


def _statuses(r: redis.Redis, ids: list[str]) -> Counter[str]:
    with r.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(schema.job_key(job_id), "status")
        return Counter((s or b"<none>").decode() for s in pipe.execute())


def _worker_of(r: redis.Redis, job_id: str) -> str:
    return (r.hget(schema.job_key(job_id), "worker_name") or b"").decode()


def _assert_all_finished(r: redis.Redis, ids: list[str]) -> None:
    """Every job finished, and the registries agree: nothing lost, nothing stuck."""
    assert _statuses(r, ids) == Counter({"finished": len(ids)})
    finished = {m.decode() for m in r.zrange(schema.finished_key("default"), 0, -1)}
    assert finished == set(ids)
    assert r.llen(schema.queue_key("default")) == 0
    assert r.zcard(schema.started_key("default")) == 0
    assert r.zcard(schema.failed_key("default")) == 0


def _enqueue(r: redis.Redis, n: int, seconds: float) -> list[str]:
    q = Queue("default", connection=r)
    return [q.enqueue("testjobs.sleep_for", seconds, result_ttl=3600).id for _ in range(n)]


# -- a host lost ----------------------------------------------------------------------------------


def test_a_lost_pools_jobs_finish_on_the_other_pools(
    r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess]
) -> None:
    """Three pools as three hosts; one is frozen (SIGSTOP) and then killed whole (SIGKILL), as a host
    that vanishes: the jobs it had started are recovered by the others (their leases expire, they go
    back to the queue, docs/RELIABILITY.md) and run again there. Every job ends finished."""
    pools = {name: workerd("--workers", "2", "-n", name, "-u", redis_url, *HEARTBEAT) for name in ("a", "b", "c")}
    wait_until(lambda: len(r.smembers(schema.WORKERS)) == 6, timeout=15, message="6 workers registered")
    ids = _enqueue(r, 12, JOB_S)

    def held_by_victim() -> list[str] | None:
        held = [i for i in ids if _worker_of(r, i).startswith("a.") and _statuses(r, [i])["started"]]
        return held if len(held) == 2 else None

    victims = wait_until(held_by_victim, timeout=10, message="pool a running 2 jobs")
    tree = [psutil.Process(pools["a"].pid), *psutil.Process(pools["a"].pid).children(recursive=True)]
    assert len(tree) >= 5  # the master, 2 workers, their horses
    for process in tree:  # frozen first, so that no process of the pool sees another die and reacts
        process.send_signal(signal.SIGSTOP)
    for process in tree:
        process.send_signal(signal.SIGKILL)
    pools["a"].wait(timeout=10)

    wait_until(lambda: _statuses(r, ids)["finished"] == len(ids), timeout=20, interval=0.1,
               message=f"every job to finish: {_statuses(r, ids)}")  # fmt: skip
    _assert_all_finished(r, ids)
    for job_id in victims:  # re-run by a live pool
        assert _worker_of(r, job_id)[:2] in ("b.", "c."), job_id
    for name in ("b", "c"):
        assert pools[name].process.poll() is None, pools[name].output()


# -- Sentinel -------------------------------------------------------------------------------------


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, list[SentinelServer]]]:
    """A master, its replica and 3 Sentinels (quorum 2) that know both."""
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(master.port)])
    replica.start()
    watchers = [SentinelServer(tmp_path / f"sentinel{i}", master.port) for i in range(3)]
    try:
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up",
                   message="the replica in sync")  # fmt: skip
        for watcher in watchers:
            watcher.start()

        def ready() -> bool:
            return all(len(w.client().sentinel_sentinels(w.MASTER_NAME)) == 2
                       and len(w.client().sentinel_slaves(w.MASTER_NAME)) == 1 for w in watchers)  # fmt: skip

        wait_until(ready, timeout=15, interval=0.1, message="the Sentinels to know each other and the replica")
        yield master, replica, watchers
    finally:
        for watcher in watchers:
            watcher.stop()
        replica.stop(kill=True)
        master.stop(kill=True)


def _workerd_clients(server: redis.Redis) -> list[dict[str, str]]:
    """The connections to `server` that can write, other than this test's own, the Sentinels' and a
    replica's. A client blocked in BLMOVE (flag b) is left out: a horse forked before the failover
    holds a copy of its worker's queue-waiter socket until it runs a job, and only waits on it."""
    own = server.client_id()
    return [c for c in server.client_list() if int(c["id"]) != own and not c.get("name", "").startswith("sentinel-")
            and not {"S", "b"} & set(c.get("flags", ""))]  # fmt: skip


def _sentinel_env(addresses: list[tuple[str, int]], master_name: str = "mymaster") -> dict[str, str]:
    return {"WORKERD_SENTINEL": json.dumps({"INSTANCES": addresses, "MASTER_NAME": master_name})}


def test_workers_follow_a_sentinel_failover(
    sentinels: tuple[RedisServer, RedisServer, list[SentinelServer]], workerd: Callable[..., WorkerdProcess]
) -> None:
    master, replica, watchers = sentinels
    env = _sentinel_env([("127.0.0.1", w.port) for w in watchers])
    pool = workerd("--workers", "2", "--heartbeat-interval", str(HEARTBEAT_S), env=env)
    old, new = master.client(), replica.client()
    wait_until(lambda: len(old.smembers(schema.WORKERS)) == 2, timeout=15, message="2 workers registered")
    ids = _enqueue(old, 12, 0.3)
    assert old.wait(1, 5000) == 1  # on the replica before the failover: enqueued, not lost in it

    wait_until(lambda: _statuses(old, ids)["finished"] >= 2, timeout=10, message="a few jobs done")
    watchers[0].client().execute_command("SENTINEL", "FAILOVER", SentinelServer.MASTER_NAME)
    wait_until(lambda: watchers[0].master_address() == ("127.0.0.1", replica.port), timeout=10,
               message="the Sentinels to name the replica as the master")  # fmt: skip
    wait_until(lambda: new.info("replication")["role"] == "master", message="the replica promoted")
    # Within about a heartbeat every workerd connection has left the old master, which Sentinel leaves
    # a master for ~10 s more (redis-py alone kept writing to it all that time).
    try:
        wait_until(lambda: not _workerd_clients(old), timeout=3 * HEARTBEAT_S + 2, interval=0.05,
                   message="workerd to leave the old master")  # fmt: skip
    except AssertionError as exc:  # the clients left now, not when the wait began
        raise AssertionError(f"{exc}: {_workerd_clients(old)}\n{pool.output()}") from None
    later = _enqueue(new, 4, 0.1)  # only on the new master: the workers must be listening there

    everything = ids + later
    wait_until(lambda: _statuses(new, everything)["finished"] == len(everything), timeout=30, interval=0.1,
               message=f"every job finished on the new master: {_statuses(new, everything)}")  # fmt: skip
    _assert_all_finished(new, everything)
    assert pool.process.poll() is None, pool.output()
    assert "Sentinel moved master 'mymaster'" in pool.output()


def test_no_sentinel_answers(tmp_path: Path, workerd: Callable[..., WorkerdProcess]) -> None:
    """Every Sentinel down: an outage (the worker retries), reported at once with their addresses;
    `workerd info` says the same and exits 1, as for an unreachable Redis."""
    addresses = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    env = _sentinel_env(addresses)
    named = ", ".join(f"127.0.0.1:{port}" for _, port in addresses)
    worker = workerd(env=env)
    worker.wait_for_output(f"(Sentinels {named})", timeout=15)
    output = worker.output()
    assert "No master found for 'mymaster'" in output and "check SENTINEL's INSTANCES" in output, output
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0, worker.output()

    started = time.monotonic()
    info = run_workerd("info", env=env, timeout=30)
    assert info.returncode == 1, info.stdout + info.stderr
    assert f"(Sentinels {named}) is unreachable" in info.stderr
    assert time.monotonic() - started < 15  # 2 s per Sentinel, no retries


def test_a_sentinel_given_as_the_redis_url_is_refused(tmp_path: Path) -> None:
    lone = SentinelServer(tmp_path / "sentinel", master_port=free_port(), quorum=1)  # watching nothing: enough
    lone.start()
    try:
        result = run_workerd("--burst", "-u", f"redis://127.0.0.1:{lone.port}/0", timeout=30)
    finally:
        lone.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    assert "is a Redis Sentinel, not a Redis server" in output and "WORKERD_SENTINEL" in output, output


# -- Redis Cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    tmp_path = tmp_path_factory.mktemp("cluster")
    # The cluster bus port defaults to port + 10000, past 65535 for most free ports: a free one of its own.
    args = ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
            "--cluster-config-file", str(tmp_path / "nodes.conf")]  # fmt: skip
    node = RedisServer(tmp_path / "cluster", extra_args=args)
    node.start()
    node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
    wait_until(lambda: node.client().cluster("info")["cluster_state"] == "ok", message="the cluster ok")
    yield node
    node.stop(kill=True)


@pytest.mark.parametrize("pool", [False, True], ids=["single", "pool"])
def test_redis_cluster_is_refused(cluster_node: RedisServer, pool: bool) -> None:
    result = run_workerd(*(("--workers", "2") if pool else ("--burst",)), "-u", cluster_node.url, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    assert "is a Redis Cluster node: workerd does not support Redis Cluster" in output, output
    assert "CROSSSLOT" in output, output
