"""Prometheus metrics and the HTTP `/health` probe, served by the master (METRICS_PORT).

Where the numbers live: in the master, in one ordinary prometheus_client registry. Workers already
report their state to the master over a pipe (one JSON object a line, workerd.supervisor); they
add one report per job outcome (`{"outcome": "finished", "queue": "q", "duration_s": 0.2}`), per
horse they kill (`{"kill": "timeout"}`) and the reason they stop (`{"stopping": "..."}`). So:

- a horse never touches metrics (the worker knows the outcome), and a worker holds no metric
  state that dies with it: a recycled or killed worker loses nothing it already reported;
- no PROMETHEUS_MULTIPROC_DIR, no per-pid files growing with every recycled worker, no
  `mark_process_dead`, and live gauges (workers by state) come from the one process that knows.

Queue depths and registry sizes are read from Redis at scrape time, in one pipeline per Redis
(9 O(1)/O(log n) commands a configured queue), from the HTTP thread with short timeouts, so a slow
Redis slows a scrape, never the master's loop.
"""

from __future__ import annotations

import collections
import datetime as dt
import http.server
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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

from workerd import connection as connection_module
from workerd import info, memory, schema
from workerd.errors import ListenError
from workerd.settings import Settings
from workerd.timeutil import utcparse

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("workerd.metrics")

OUTCOMES = ("finished", "failed", "retried", "requeued")
WORKER_STATES = ("starting", "idle", "busy", "suspended")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)

# Free-text stop and kill reasons (as logged) -> the few label values a dashboard can group by.
_RECYCLE_REASONS = (
    ("max jobs", "max_jobs"), ("max age", "max_age"), ("max idle", "max_idle"), ("soft memory", "soft_memory"),
    ("hard memory", "hard_memory"), ("reload", "reload"), ("group was removed", "reload"),
    ("pool shrunk", "scale_down"),
)  # fmt: skip
_KILL_REASONS = (("Timeout", "timeout"), ("hard memory", "hard_memory"), ("soft memory", "soft_memory"))
# Every label value a kill can carry, by process kind, so that each series exists (at 0) from the start.
_KILL_LABELS = {
    "horse": [label for _, label in _KILL_REASONS] + ["other"],
    "worker": [label for _, label in _KILL_REASONS] + ["other", "shutdown_timeout"],
}


class PoolEntry(NamedTuple):
    """One live child of the master, as the metrics see it."""

    group: str
    state: str
    name: str
    ready: bool
    pid: int


def recycle_reason(text: str | None) -> str | None:
    """The recycle label for a stop reason, or None for a stop that is not a recycle (shutdown, burst)."""
    for needle, label in _RECYCLE_REASONS:
        if text and needle in text:
            return label
    return None


def kill_reason(text: str) -> str:
    for needle, label in _KILL_REASONS:
        if needle in text:
            return label
    return "other"


class PoolMetrics:
    """The master's metrics. Mutated by the master's loop; read by the HTTP thread."""

    def __init__(self, settings: Settings, groups: Sequence[Any] = ()) -> None:
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
        # The master's own CPU, memory and file descriptors (process_*), as every Prometheus exporter has them.
        ProcessCollector(registry=self.registry)

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
            for _, reason in _RECYCLE_REASONS:
                self.recycles.labels(group.name, reason)
            for process, reasons in _KILL_LABELS.items():
                for reason in reasons:
                    self.kills.labels(group.name, process, reason)
            if not getattr(group, "daemon", None):
                for queue in group.settings.queues:
                    self.duration.labels(queue)
                    for outcome in OUTCOMES:
                        self.jobs.labels(queue, outcome)

    def set_pool(self, children: Iterable[tuple[str, str, str, bool, int]]) -> None:
        """Replace the live children (group, state, name, ready, pid) in one swap: the HTTP thread reads it whole."""
        self.pool = [PoolEntry(*child) for child in children]

    def on_report(self, group: str, report: dict[str, Any]) -> None:
        outcome = report.get("outcome")
        if outcome in OUTCOMES:
            queue = str(report.get("queue", ""))
            self.jobs.labels(queue, outcome).inc()
            duration = report.get("duration_s")
            if isinstance(duration, (int, float)):
                self.duration.labels(queue).observe(max(0.0, float(duration)))
        kill = report.get("kill")
        if kill:
            self.kills.labels(group, "horse", str(kill)).inc()

    def on_exit(self, group: str, clean: bool, master_reason: str | None, worker_reason: str | None,
                killed_for: str | None) -> None:  # fmt: skip
        if killed_for:
            self.kills.labels(group, "worker", kill_reason(killed_for)).inc()
            return
        reason = recycle_reason(master_reason) or recycle_reason(worker_reason)
        if reason is not None:
            self.recycles.labels(group, reason).inc()
        elif not clean and not master_reason:
            self.deaths.labels(group).inc()

    def on_shutdown_kill(self, group: str) -> None:
        self.kills.labels(group, "worker", "shutdown_timeout").inc()

    # -- read by the HTTP thread ----------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> str | None:
        """None if healthy: Redis answers and one of this master's workers heartbeated recently."""
        limit = info.heartbeat_limit_s(self.settings)
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
                counts = info.queue_counts(client, queues)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                log.warning("metrics: cannot read queue depths: %s", exc)
                ok = 0
                continue
            for c in counts:
                if c.name in seen:  # the same queue name on a second Redis: the first one is shown
                    continue
                seen.add(c.name)
                depth.add_metric([c.name], c.queued)
                for name in info.REGISTRIES:
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
    uses = (memory.measure(child.pid) for child in children)
    return sum(use.uss_bytes for use in uses if use is not None)


class _ScrapeCollector(Collector):
    def __init__(self, metrics: PoolMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect_scrape()


def _scrape_client(settings: Settings) -> redis.Redis:
    client = connection_module.connect(settings)
    pool_kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if isinstance(pool_kwargs, dict):
        pool_kwargs["socket_timeout"] = info.PROBE_TIMEOUT_S
        pool_kwargs["socket_connect_timeout"] = info.PROBE_TIMEOUT_S
    return client


# -- the HTTP server ----------------------------------------------------------------------------


class MetricsServer:
    """/metrics and /health on a daemon thread. `socket_fd` is closed by forked children."""

    def __init__(self, host: str, port: int, render: Callable[[], bytes], health: Callable[[], str | None]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._answer(200, render(), CONTENT_TYPE_LATEST)
                    elif path in ("/health", "/healthz"):
                        reason = health()
                        code, text = (200, "healthy") if reason is None else (503, f"unhealthy: {reason}")
                        self._answer(code, f"{text}\n".encode(), "text/plain; charset=utf-8")
                    else:
                        self._answer(404, b"not found: try /metrics or /health\n", "text/plain; charset=utf-8")
                except Exception as exc:  # a scrape must never take the server down
                    log.exception("metrics: %s failed", path)
                    self._answer(500, f"error: {type(exc).__name__}\n".encode(), "text/plain; charset=utf-8")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s are not news
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="workerd-metrics", daemon=True)

    @property
    def socket_fd(self) -> int:
        return self.server.socket.fileno()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def listen(settings: Settings, metrics: PoolMetrics) -> MetricsServer:
    """Bind METRICS_HOST:METRICS_PORT for `metrics`, or raise ListenError (exit 71, which systemd restarts:
    a port held by another process, or by the previous workerd still shutting down, may be free next time)."""
    try:
        return MetricsServer(settings.metrics_host, settings.metrics_port or 0, metrics.render, metrics.health)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                          f"{exc.strerror or exc}; is another process (or another workerd) using that port?"
                          ) from None  # fmt: skip


def serve_single_worker(worker: Any, settings: Settings) -> MetricsServer:
    """No master (a single worker): the worker serves its own metrics, fed by its own reports.

    The worker's reports (which would go to a master) are applied to the metrics in-process; the
    HTTP thread is started before the first horse is forked, and horses never serve it.
    """
    metrics = PoolMetrics(settings, [_SingleGroup(settings)])
    metrics.set_pool([("default", "starting", worker.name, True, os.getpid())])
    forward = worker.report

    def report(**fields: Any) -> None:
        metrics.on_report("default", fields)
        if "state" in fields:
            metrics.set_pool([("default", str(fields["state"]), worker.name, True, os.getpid())])
        forward(**fields)

    worker.report = report
    server = listen(settings, metrics)
    server.start()
    log.info("metrics on http://%s:%d/metrics (and /health)", settings.metrics_host, server.port)
    return server


class _SingleGroup:
    name = "default"
    daemon = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
