"""Prometheus metrics and the HTTP `/health` probe, served by the master (METRICS_PORT) from its loop.

Where the numbers live: in the master, in one ordinary prometheus_client registry. Workers already
report their state to the master over a pipe (one JSON object a line, workerd.supervisor); they
add one report per job outcome (`{"outcome": "finished", "queue": "q", "duration_s": 0.2}`), per
horse they kill (`{"kill": "timeout"}`) and the reason they stop (`{"stopping": "..."}`). So:

- a horse never touches metrics (the worker knows the outcome), and a worker holds no metric
  state that dies with it: a recycled or killed worker loses nothing it already reported;
- no PROMETHEUS_MULTIPROC_DIR, no per-pid files growing with every recycled worker, no
  `mark_process_dead`, and live gauges (workers by state) come from the one process that knows.

Queue depths and registry sizes are read from Redis at scrape time, in one pipeline per Redis
(9 O(1)/O(log n) commands a configured queue), with short timeouts and no retries
(SCRAPE_REDIS_TIMEOUT_S): the master serves HTTP from its own loop, never from a thread, because it
forks (MetricsServer says why, and what that costs).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import http
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import psutil
import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from workerd import connection as connection_module
from workerd import memory, presence, schema
from workerd.counts import REGISTRIES, queue_counts
from workerd.errors import ExitCode, ListenError
from workerd.process import MASTER_SIGNALS, STOP_SIGNALS, die_with_parent, set_title
from workerd.reports import (
    HORSE_KILLS,
    WORKER_KILLS,
    ExitKind,
    JobOutcome,
    KillReason,
    RecycleReason,
    Report,
    ReportError,
    WorkerState,
)
from workerd.settings import Settings
from workerd.timeutil import utcparse

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("workerd.metrics")

OUTCOMES = tuple(outcome.value for outcome in JobOutcome)
WORKER_STATES = tuple(state.value for state in WorkerState)
# A scrape reads Redis in the serving process's loop: a Redis that does not answer costs it this long
# (to connect, then as long again for a reply), once per scrape, and reads as workerd_redis_up 0.
SCRAPE_REDIS_TIMEOUT_S = 1.0
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)

# Every label value a kill can carry, by process kind, so that each series exists (at 0) from the start.
_KILL_LABELS = {"horse": HORSE_KILLS, "worker": WORKER_KILLS}


class PoolEntry(NamedTuple):
    """One live child of the master, as the metrics see it."""

    group: str
    state: str
    name: str
    ready: bool
    pid: int


class PoolMetrics:
    """The master's metrics: fed and read (at a scrape) by the master's loop."""

    def __init__(self, settings: Settings, groups: Sequence[Any] = (), process_pid: int | None = None) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.jobs = Counter("workerd_jobs", "Job outcomes committed by workers (finished, failed, retried, "
                            "requeued).", ["queue", "outcome"], registry=self.registry)  # fmt: skip
        self.duration = Histogram("workerd_job_duration_seconds", "Run time of jobs that finished or failed "
                                  "(including retried).", ["queue"], buckets=DURATION_BUCKETS,
                                  registry=self.registry)  # fmt: skip
        self.recycles = Counter("workerd_worker_recycles", "Workers replaced by design, by reason.",
                                ["group", "reason"], registry=self.registry)  # fmt: skip
        self.kills = Counter("workerd_kills", "Processes killed over a limit, by process (worker or horse) and "
                             "reason.", ["group", "process", "reason"], registry=self.registry)  # fmt: skip
        self.deaths = Counter("workerd_worker_deaths", "Workers that died unexpectedly (crash, external kill).",
                              ["group"], registry=self.registry)  # fmt: skip
        # Every live child, replaced as a whole by the master's loop.
        self.pool: list[PoolEntry] = []
        self._sources: list[tuple[redis.Redis, list[str], Settings]] = []
        self._groups: list[str] = []
        self.set_groups(groups)
        self.registry.register(_ScrapeCollector(self))
        # The master's own CPU, memory and file descriptors (process_*), as every Prometheus exporter has
        # them; a single worker's (process_pid) when its metrics process serves them.
        ProcessCollector(pid=lambda: "self" if process_pid is None else process_pid, registry=self.registry)

    # -- fed by the master --------------------------------------------------------------------

    def set_groups(self, groups: Sequence[Any]) -> None:
        """(Re)build the Redis clients of the groups' Redis servers and the queues to read there."""
        by_target: dict[str, tuple[redis.Redis, list[str], Settings]] = {}
        for group in groups:
            settings: Settings = group.settings
            target = connection_module.describe(settings)
            if target not in by_target:
                by_target[target] = (_scrape_client(settings), [], settings)
            queues = by_target[target][1]
            if not getattr(group, "daemon", None):
                queues.extend(q for q in settings.queues if q not in queues)
        self._sources = list(by_target.values())
        self._groups = [group.name for group in groups]
        self._create_series_at_zero(groups)

    def _create_series_at_zero(self, groups: Sequence[Any]) -> None:
        """Make every known counter series exist before its first event.

        `increase(x[5m])` needs a sample before the first increment: a series that appears at 1
        has no increase, so an alert on the first worker death would never fire."""
        for group in groups:
            self.deaths.labels(group.name)
            for recycle in RecycleReason:
                self.recycles.labels(group.name, recycle.value)
            for process, kills in _KILL_LABELS.items():
                for kill in kills:
                    self.kills.labels(group.name, process, kill.value)
            if not getattr(group, "daemon", None):
                for queue in group.settings.queues:
                    self.duration.labels(queue)
                    for outcome in OUTCOMES:
                        self.jobs.labels(queue, outcome)

    def set_pool(self, children: Iterable[tuple[str, str, str, bool, int]]) -> None:
        """Replace the live children (group, state, name, ready, pid)."""
        self.pool = [PoolEntry(*child) for child in children]

    def on_report(self, group: str, report: Report) -> None:
        if report.outcome is not None:
            queue = report.queue or ""
            self.jobs.labels(queue, report.outcome.value).inc()
            if report.duration_s is not None:
                self.duration.labels(queue).observe(max(0.0, report.duration_s))
        if report.kill is not None:
            self.kills.labels(group, "horse", report.kill.value).inc()

    def on_exit(self, group: str, kind: ExitKind, killed_for: KillReason | None,
                recycle: RecycleReason | None) -> None:  # fmt: skip
        """A worker exited: `killed_for` names a kill, `recycle` a recycle."""
        if kind is ExitKind.KILLED and killed_for is not None:
            self.kills.labels(group, "worker", killed_for.value).inc()
        elif kind is ExitKind.RECYCLED and recycle is not None:
            self.recycles.labels(group, recycle.value).inc()
        elif kind is ExitKind.DIED:
            self.deaths.labels(group).inc()

    def on_shutdown_kill(self, group: str) -> None:
        self.kills.labels(group, "worker", KillReason.SHUTDOWN_TIMEOUT.value).inc()

    # -- read at a scrape --------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> str | None:
        """None if healthy: Redis answers and one of this master's workers heartbeated recently."""
        limit = presence.heartbeat_limit_s(self.settings)
        names = [entry.name for entry in self.pool if entry.ready]
        problems = []
        for client, _, settings in self._sources:
            try:
                with client.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.hget(schema.worker_key(name), "last_heartbeat")
                    stamps = pipe.execute() if names else []
                client.ping()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                problems.append(f"Redis at {connection_module.describe(settings)} is unreachable: {exc}")
                continue
            now = dt.datetime.now(dt.timezone.utc)
            for stamp in stamps:
                if stamp and (now - utcparse(stamp)).total_seconds() < limit:
                    return None
        if problems:
            return "; ".join(problems)
        return f"none of the master's {len(names)} ready workers has heartbeaten in the last {limit:g} s"

    def collect_scrape(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily("workerd_workers", "Live workers of the master, by group and state.",
                                    labels=["group", "state"])  # fmt: skip
        tally = collections.Counter((entry.group, entry.state) for entry in self.pool)
        for group in self._groups:
            for state in WORKER_STATES:
                tally.setdefault((group, state), 0)
        for (group, state), count in sorted(tally.items()):
            workers.add_metric([group, state], count)
        yield workers
        yield from self._collect_memory()
        depth = GaugeMetricFamily("workerd_queue_depth", "Jobs waiting in the queue (LLEN), read at scrape time.",
                                  labels=["queue"])  # fmt: skip
        registry = GaugeMetricFamily("workerd_queue_registry_jobs", "Jobs in each registry of the queue, read at "
                                     "scrape time (expired finished/failed entries not counted).",
                                     labels=["queue", "registry"])  # fmt: skip
        up = GaugeMetricFamily("workerd_redis_up", "1 if Redis answered this scrape.")
        seconds = GaugeMetricFamily("workerd_scrape_redis_seconds", "Time spent reading Redis for this scrape.")
        started = time.perf_counter()
        ok = 1
        seen: set[str] = set()
        for client, queues, _ in self._sources:
            try:
                counts = queue_counts(client, queues)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                log.warning("metrics: cannot read queue depths: %s", exc)
                ok = 0
                continue
            for c in counts:
                if c.name in seen:  # the same queue name on a second Redis: the first one is shown
                    continue
                seen.add(c.name)
                depth.add_metric([c.name], c.queued)
                for name in REGISTRIES:
                    registry.add_metric([c.name, name], c.registry(name))
        up.add_metric([], ok)
        seconds.add_metric([], time.perf_counter() - started)
        yield from (depth, registry, up, seconds)

    def _collect_memory(self) -> Iterator[Metric]:
        """USS of each worker and of its horses: the number the memory limits act on (workerd.memory)."""
        workers = GaugeMetricFamily("workerd_worker_memory_uss_bytes", "Memory only this worker uses (USS), "
                                    "read at scrape time.", labels=["group", "worker"])  # fmt: skip
        horses = GaugeMetricFamily("workerd_horse_memory_uss_bytes", "Memory only the worker's horses use (USS "
                                   "of its child processes: the running horse and a pre-forked one), read at "
                                   "scrape time.", labels=["group", "worker"])  # fmt: skip
        for entry in self.pool:
            own = memory.measure(entry.pid)
            if own is None:  # exited since the master's last look
                continue
            workers.add_metric([entry.group, entry.name], own.uss_bytes)
            horses.add_metric([entry.group, entry.name], _children_uss_bytes(entry.pid))
        yield from (workers, horses)


def _children_uss_bytes(pid: int) -> int:
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return 0
    # Not a single worker's metrics process (this one), which is its child too but no horse.
    uses = (memory.measure(child.pid) for child in children if child.pid != os.getpid())
    return sum(use.uss_bytes for use in uses if use is not None)


class _ScrapeCollector(Collector):
    def __init__(self, metrics: PoolMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect_scrape()


def _scrape_client(settings: Settings) -> redis.Redis:
    """A client whose every call is over within SCRAPE_REDIS_TIMEOUT_S to connect plus as long to
    answer: the scrape runs in the master's loop. No retries: redis-py's default (3, with backoff)
    would make a refused connection cost 4 s of the loop, where one failed try says "down" as well."""
    client = connection_module.connect(settings)
    pool_kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if isinstance(pool_kwargs, dict):
        pool_kwargs["socket_timeout"] = SCRAPE_REDIS_TIMEOUT_S
        pool_kwargs["socket_connect_timeout"] = SCRAPE_REDIS_TIMEOUT_S
        pool_kwargs["retry"] = Retry(NoBackoff(), 0)
    return client


# -- the HTTP server ----------------------------------------------------------------------------

REQUEST_MAX_BYTES = 8192  # a GET's request line and headers; a longer request is answered 431 and closed
CONNECTION_IDLE_S = 10.0  # a client gets this long for its whole exchange (slow or half-open: closed)
MAX_CONNECTIONS = 32  # beyond this, the oldest connection is dropped: a flood costs fds, never the loop
TEXT = "text/plain; charset=utf-8"


@dataclasses.dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    request: bytes = b""
    response: bytes | None = None  # set once the request is complete; sent as the socket takes it


class MetricsServer:
    """/metrics and /health, answered from the select loop of the process that owns the numbers.

    No thread, because the master (and a worker) fork: a lock another thread holds at fork() stays
    held forever in the child (Python 3.12+ warns: "This process is multi-threaded, use of fork()
    may lead to deadlocks in the child"). In the master's own loop rather than in a process of its
    own, because every number is born there (reports, exits, the pool); a copy elsewhere would need
    each change shipped to it. Nothing a client does can stall the loop: every socket is
    non-blocking, a request is read to at most REQUEST_MAX_BYTES, a connection has
    CONNECTION_IDLE_S for its whole exchange, and there are at most MAX_CONNECTIONS. What the loop
    does pay is a scrape's Redis reads: see _scrape_client, which bounds them.
    """

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family, backlog=MAX_CONNECTIONS)
        self.listener.setblocking(False)
        self.connections: dict[int, _Connection] = {}

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def read_fds(self) -> list[int]:
        return [self.listener.fileno(), *(fd for fd, c in self.connections.items() if c.response is None)]

    def write_fds(self) -> list[int]:
        return [fd for fd, c in self.connections.items() if c.response is not None]

    def handle(self, readable: Collection[int], writable: Collection[int], metrics: PoolMetrics) -> None:
        """One step, after select() on read_fds/write_fds: accept, read, answer, send, expire."""
        if self.listener.fileno() in readable:
            self._accept()
        now = time.monotonic()
        for fd, connection in list(self.connections.items()):
            if now >= connection.deadline:
                self._drop(fd)
            elif fd in readable and connection.response is None:
                self._receive(fd, connection, metrics)
            elif fd in writable and connection.response is not None:
                self._send(fd, connection)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and the like: try again at the next step
                log.warning("metrics: cannot accept a connection: %s", exc)
                return
            sock.setblocking(False)
            if len(self.connections) >= MAX_CONNECTIONS:
                self._drop(next(iter(self.connections)))
            self.connections[sock.fileno()] = _Connection(sock, time.monotonic() + CONNECTION_IDLE_S)

    def _receive(self, fd: int, connection: _Connection, metrics: PoolMetrics) -> None:
        try:
            chunk = connection.sock.recv(REQUEST_MAX_BYTES + 1 - len(connection.request))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not chunk:  # the client went away before its request was complete
            self._drop(fd)
            return
        connection.request += chunk
        if b"\r\n\r\n" in connection.request or b"\n\n" in connection.request:
            connection.response = _respond(connection.request, metrics)
        elif len(connection.request) > REQUEST_MAX_BYTES:
            connection.response = _response(431, b"request too large\n", TEXT)
        else:
            return
        self._send(fd, connection)  # most answers fit the socket buffer: sent now, not a step later

    def _send(self, fd: int, connection: _Connection) -> None:
        assert connection.response is not None
        try:
            sent = connection.sock.send(connection.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        connection.response = connection.response[sent:]
        if not connection.response:  # HTTP/1.0: the answer ends with the connection
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        connection = self.connections.pop(fd)
        with contextlib.suppress(OSError):
            connection.sock.close()

    def close(self) -> None:
        for fd in list(self.connections):
            self._drop(fd)
        self.listener.close()

    def release(self) -> None:
        """Close this process's copies of the sockets, in a process that has them by fork() but never
        serves (the master's children; a single worker, whose metrics process serves). detach()
        first, so that the socket objects' finalisers cannot close an fd number reused since."""
        for sock in (self.listener, *(c.sock for c in self.connections.values())):
            with contextlib.suppress(OSError):
                os.close(sock.detach())
        self.connections.clear()


def _respond(request: bytes, metrics: PoolMetrics) -> bytes:
    method, _, rest = request.partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("latin-1")
    if method != b"GET":
        return _response(405, b"only GET is served\n", TEXT)
    try:
        if path == "/metrics":
            return _response(200, metrics.render(), CONTENT_TYPE_LATEST)
        if path in ("/health", "/healthz"):
            reason = metrics.health()
            code, text = (200, "healthy") if reason is None else (503, f"unhealthy: {reason}")
            return _response(code, f"{text}\n".encode(), TEXT)
        return _response(404, b"not found: try /metrics or /health\n", TEXT)
    except Exception as exc:  # a scrape must never take the server (or the master) down
        log.exception("metrics: %s failed", path)
        return _response(500, f"error: {type(exc).__name__}\n".encode(), TEXT)


def _response(code: int, body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.0 {code} {http.HTTPStatus(code).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    return head.encode("latin-1") + body


def listen(settings: Settings) -> MetricsServer:
    """Bind METRICS_HOST:METRICS_PORT, or raise ListenError (exit 71, which systemd restarts: a port
    held by another process, or by the previous workerd still shutting down, may be free next time)."""
    try:
        return MetricsServer(settings.metrics_host, settings.metrics_port or 0)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                          f"{exc.strerror or exc}; is another process (or another workerd) using that port?"
                          ) from None  # fmt: skip


# -- a single worker's metrics process ------------------------------------------------------------


def serve_single_worker(worker: Any, settings: Settings) -> None:
    """No master (a single worker): a small process of its own serves the worker's metrics, fed by
    the worker's reports over a pipe, as a master is by its workers'.

    Not a thread of the worker, which forks horses; not the worker's loop, which blocks in Redis
    calls and, in in-process mode, in the job itself. The port is bound here, in the worker, so that
    a port in use is the worker's exit 71. The process ignores every signal a `systemctl kill` or
    `kill -- -PGID` sends the worker's group, and leaves when the worker does (its pipe reaches EOF;
    PR_SET_PDEATHSIG if the worker is killed)."""
    server = listen(settings)
    read_fd, write_fd = os.pipe()
    worker_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(write_fd)
            die_with_parent(worker_pid)
            for signum in (*STOP_SIGNALS, *MASTER_SIGNALS):
                signal.signal(signum, signal.SIG_IGN)
            set_title(f"metrics of worker {worker.name}")
            _serve_reports(server, read_fd, settings, worker.name, worker_pid)
        except BaseException:
            log.exception("metrics: the metrics process of worker %s failed", worker.name)
            code = int(ExitCode.SOFTWARE)
        finally:
            os._exit(code)
    os.close(read_fd)
    port = server.port
    server.release()
    os.set_blocking(write_fd, False)
    forward = worker.report

    def report(report: Report) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):  # metrics never stall a worker
            os.write(write_fd, report.encode())
        forward(report)

    worker.report = report
    log.info("metrics on http://%s:%d/metrics (and /health), served by process %d", settings.metrics_host,
             port, pid)  # fmt: skip


def _serve_reports(server: MetricsServer, reports_fd: int, settings: Settings, name: str, worker_pid: int) -> None:
    metrics = PoolMetrics(settings, [_SingleGroup(settings)], process_pid=worker_pid)
    metrics.set_pool([("default", "starting", name, True, worker_pid)])
    pending = b""
    while True:
        readable, writable, _ = select.select([reports_fd, *server.read_fds()], server.write_fds(), [],
                                              CONNECTION_IDLE_S / 4)  # fmt: skip
        if reports_fd in readable:
            chunk = os.read(reports_fd, 65536)
            if not chunk:  # the worker has exited
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                try:
                    report = Report.decode(line)
                except ReportError as exc:
                    log.error("metrics: worker %s: %s", name, exc)
                    continue
                metrics.on_report("default", report)
                if report.state is not None:
                    metrics.set_pool([("default", report.state.value, name, True, worker_pid)])
        server.handle(readable, writable, metrics)


class _SingleGroup:
    name = "default"
    daemon = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
