"""systemd emulated (issue 14, defect 1): a bound datagram socket as NOTIFY_SOCKET, a 2 s WATCHDOG_USEC.

The watchdog says whether workerd's loops turn, not whether Redis answers: through a Redis outage
longer than the watchdog interval and than 20 worker heartbeats, WATCHDOG=1 keeps arriving, STATUS=
says workerd is waiting for Redis, the pids stay, and the jobs resume when Redis is back. A start
with Redis down is a start: READY=1 comes within a bound, and the jobs run once Redis is up. A pool
still stops the pings when one of its workers is really stuck (SIGSTOP). STATUS= counts jobs since
the master started, across a reload.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import WorkerdProcess, wait_until
from tests.redis_server import RedisServer, free_port
from workerd import Queue, schema
from workerd.supervisor import STUCK_HEARTBEATS

WATCHDOG_USEC = 2_000_000
HEARTBEAT_S = 0.1
# systemd's watchdog fires after WATCHDOG_USEC without a ping; workerd pings every half of it. The
# slack is a loop tick (0.25 s) and scheduling on a loaded 2-core box.
MAX_PING_GAP_S = WATCHDOG_USEC / 1e6 / 2 + 0.6
# A pool's workers are judged stuck after max(20 heartbeats, one Redis call's timeouts + a
# heartbeat) without a report: the pool's outage outlasts that, so that only the workers' outage
# reports (not the threshold) can keep the watchdog fed.
# The Redis timeouts are set short here (a worker stopped on a local Redis is what is tested), so
# that 20 heartbeats are the threshold and not the 35 s of the default timeouts.
REDIS_TIMEOUTS_S = {"socket": 2.0, "connect": 0.5}
REDIS_TIMEOUTS_ENV = {f"WORKERD_REDIS_{kind.upper()}_TIMEOUT": str(s) for kind, s in REDIS_TIMEOUTS_S.items()}
STUCK_S = max(STUCK_HEARTBEATS * HEARTBEAT_S, sum(REDIS_TIMEOUTS_S.values()) + HEARTBEAT_S)
POOL_OUTAGE_S = STUCK_S + 4
SINGLE_OUTAGE_S = 8.0  # 4 watchdog intervals, 80 heartbeats; a single worker has no stuck threshold


@dataclass
class Message:
    at: float  # monotonic time of arrival
    fields: dict[str, str]


class NotifySocket:
    """systemd's end of sd_notify: a bound AF_UNIX datagram socket; a thread stamps each message."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self.messages: list[Message] = []
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError, OSError):
                data = self._sock.recv(65536)
                fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
                self.messages.append(Message(time.monotonic(), fields))

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def with_key(self, key: str, since: float = 0.0) -> list[Message]:
        return [m for m in list(self.messages) if key in m.fields and m.at >= since]

    def statuses(self, since: float = 0.0) -> list[str]:
        return [m.fields["STATUS"] for m in self.with_key("STATUS", since)]

    def ping_gaps(self, start: float, end: float) -> list[float]:
        """Gaps between WATCHDOG=1 pings over [start, end], counting from start and up to end."""
        pings = [m.at for m in self.with_key("WATCHDOG") if start <= m.at <= end]
        return [b - a for a, b in zip([start, *pings], [*pings, end], strict=True)]

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self._sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, with AOF, so that stopping and starting it keeps the queued jobs."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    yield server
    server.stop(kill=True)


def _pids(proc: WorkerdProcess, pool: bool) -> set[int]:
    """The master and its workers, or the single worker (horses come and go)."""
    if not pool:
        return {proc.pid}
    master = psutil.Process(proc.pid)
    return {master.pid, *(child.pid for child in master.children(recursive=False))}


def _start(workerd: Callable[..., WorkerdProcess], server: RedisServer, notify: NotifySocket, pool: bool,
           *extra: str) -> WorkerdProcess:  # fmt: skip
    args = ["-u", server.url, "--heartbeat-interval", str(HEARTBEAT_S), *(("--workers", "2") if pool else ()), *extra]
    return workerd(*args, env={**notify.env(), **REDIS_TIMEOUTS_ENV})


def _enqueue(server: RedisServer, count: int, tag: str) -> list[str]:
    q = Queue("default", connection=server.client())
    return [q.enqueue("testjobs.add", i, 1, job_id=f"{tag}-{i}", result_ttl=3600).id for i in range(count)]


def _all_finished(server: RedisServer, ids: list[str]) -> bool:
    with server.client().pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(schema.job_key(job_id), "status")
        return all(status == b"finished" for status in pipe.execute())


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None


@pytest.mark.parametrize("pool", [True, False], ids=["pool", "single"])
def test_a_redis_outage_keeps_the_watchdog_fed_and_the_pids(own_redis: RedisServer, notify: NotifySocket,
                                                            workerd: Callable[..., WorkerdProcess],
                                                            pool: bool) -> None:  # fmt: skip
    own_redis.start()
    metrics_port = free_port()
    proc = _start(workerd, own_redis, notify, pool, "--metrics-port", str(metrics_port))
    wait_until(lambda: notify.with_key("READY"), timeout=20, message="READY=1")
    before = _enqueue(own_redis, 5, "before")
    wait_until(lambda: _all_finished(own_redis, before), timeout=20, message="the jobs before the outage")
    if pool:
        wait_until(lambda: len(_pids(proc, pool)) == 3, message="the master and its 2 workers")
    pids = _pids(proc, pool)
    assert _metric(metrics_port, "workerd_redis_up") == 1.0

    own_redis.stop()
    down_at = time.monotonic()
    outage_s = POOL_OUTAGE_S if pool else SINGLE_OUTAGE_S
    wait_until(lambda: any("waiting for Redis" in s for s in notify.statuses(down_at)), timeout=10,
               message="STATUS= to report the outage")  # fmt: skip
    assert _metric(metrics_port, "workerd_redis_up") == 0.0
    wait_until(lambda: time.monotonic() - down_at >= outage_s, timeout=outage_s + 5, interval=0.2,
               message="the outage to last")  # fmt: skip
    assert proc.process.poll() is None, proc.output()
    assert _pids(proc, pool) == pids, "workers were restarted during the outage"
    own_redis.start()
    up_at = time.monotonic()

    after = _enqueue(own_redis, 5, "after")
    wait_until(lambda: _all_finished(own_redis, before + after), timeout=30, message="the jobs after the outage")
    done_at = time.monotonic()
    wait_until(lambda: any("waiting for Redis" not in s for s in notify.statuses(done_at)), timeout=10,
               message="STATUS= without the outage")  # fmt: skip
    gaps = notify.ping_gaps(down_at - 1, time.monotonic())
    assert max(gaps) <= MAX_PING_GAP_S, f"watchdog silent for {max(gaps):.2f} s during a {outage_s:.0f} s outage"
    outage_statuses = [s for s in notify.statuses(down_at + 2) if "waiting for Redis" in s]
    assert outage_statuses and all(f"127.0.0.1:{own_redis.port}" in s for s in outage_statuses)
    assert not notify.with_key("READY", down_at) and not notify.with_key("STOPPING")
    assert _pids(proc, pool) == pids
    assert _metric(metrics_port, "workerd_redis_up") == 1.0
    assert "has not reported for" not in proc.output() and "Traceback" not in proc.output(), proc.output()
    assert up_at - down_at >= outage_s


@pytest.mark.parametrize("pool", [True, False], ids=["pool", "single"])
def test_a_start_with_redis_down_is_ready_and_serves_once_redis_is_up(own_redis: RedisServer, notify: NotifySocket,
                                                                      workerd: Callable[..., WorkerdProcess],
                                                                      pool: bool) -> None:  # fmt: skip
    started_at = time.monotonic()
    proc = _start(workerd, own_redis, notify, pool)  # Redis not started
    ready = wait_until(lambda: notify.with_key("READY"), timeout=10, message="READY=1 with Redis down")
    assert "waiting for Redis at" in ready[0].fields["STATUS"], ready[0].fields
    if pool:
        wait_until(lambda: len(_pids(proc, pool)) == 3, message="the master and its 2 workers")
    pids = _pids(proc, pool)
    # Down for longer than 3 watchdog intervals and 20 heartbeats.
    wait_until(lambda: time.monotonic() - started_at >= 3 * WATCHDOG_USEC / 1e6, timeout=20, interval=0.2,
               message="Redis to stay down")  # fmt: skip
    assert proc.process.poll() is None, proc.output()
    own_redis.start()
    ids = _enqueue(own_redis, 5, "late")
    wait_until(lambda: _all_finished(own_redis, ids), timeout=30, message="the jobs once Redis is up")
    gaps = notify.ping_gaps(ready[0].at, time.monotonic())
    assert max(gaps) <= MAX_PING_GAP_S, f"watchdog silent for {max(gaps):.2f} s"
    assert _pids(proc, pool) == pids, "workers were restarted while Redis was down"
    assert len(notify.with_key("READY")) == 1


def test_a_stuck_worker_stops_the_watchdog(own_redis: RedisServer, notify: NotifySocket,
                                           workerd: Callable[..., WorkerdProcess]) -> None:  # fmt: skip
    """What the watchdog still catches: a worker whose loop does not turn (SIGSTOP), Redis up."""
    own_redis.start()
    proc = _start(workerd, own_redis, notify, True)
    wait_until(lambda: notify.with_key("READY"), timeout=20, message="READY=1")
    wait_until(lambda: len(_pids(proc, True)) == 3, message="the master and its 2 workers")
    pids = _pids(proc, True)
    worker = min(pids - {proc.pid})
    psutil.Process(worker).send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_until(lambda: "has not reported for" in proc.output(), timeout=STUCK_S + 10, interval=0.2,
                   message="the master to call the worker stuck")  # fmt: skip
        silent_from = time.monotonic()
        wait_until(lambda: time.monotonic() - silent_from > 2 * MAX_PING_GAP_S, timeout=10, interval=0.2,
                   message="a few watchdog intervals")  # fmt: skip
        assert not notify.with_key("WATCHDOG", silent_from + 0.5)
        last_ping = notify.with_key("WATCHDOG")[-1].at
        assert STUCK_S - 1.5 <= last_ping - stopped_at <= STUCK_S + 0.5
    finally:
        psutil.Process(worker).send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    wait_until(lambda: notify.with_key("WATCHDOG", resumed_at), timeout=10, message="pings once it reports again")
    assert _pids(proc, True) == pids  # the master judged it, did not replace it
    assert "reports again" in proc.output()


def test_status_counts_survive_a_reload(own_redis: RedisServer, notify: NotifySocket,
                                        workerd: Callable[..., WorkerdProcess], tmp_path: Path) -> None:  # fmt: skip
    own_redis.start()
    settings = tmp_path / "workerd.toml"
    settings.write_text(f'redis_url = "{own_redis.url}"\nworkers = 2\nheartbeat_interval = {HEARTBEAT_S}\n')
    proc = workerd("-c", str(settings), env=notify.env())
    wait_until(lambda: notify.with_key("READY"), timeout=20, message="READY=1")
    ids = _enqueue(own_redis, 6, "counted")
    Queue("default", connection=own_redis.client()).enqueue("testjobs.fail", job_id="counted-fail")
    wait_until(lambda: _all_finished(own_redis, ids), timeout=20, message="the jobs")
    wait_until(lambda: any("jobs since start: 7 run, 1 failed" in s for s in notify.statuses()), timeout=10,
               message=f"the counts in STATUS=: {notify.statuses()[-1:]}")  # fmt: skip
    old_workers = _pids(proc, True) - {proc.pid}
    proc.signal(signal.SIGHUP)
    wait_until(lambda: len(_pids(proc, True) - {proc.pid} - old_workers) == 2
               and not old_workers & _pids(proc, True), timeout=30, message="both workers replaced")  # fmt: skip
    replaced_at = time.monotonic()
    wait_until(lambda: notify.statuses(replaced_at + 0.1), timeout=10, message="a STATUS= after the reload")
    assert "jobs since start: 7 run, 1 failed" in notify.statuses(replaced_at + 0.1)[-1]
