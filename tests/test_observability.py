"""Observability against a running pool of the real binary: info, health, metrics, JSON logs, Sentry."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import http.server
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_workerd, wait_until
from tests.redis_server import RedisServer, free_port
from workerd import Queue, Retry, presence, schema
from workerd.timeutil import utcformat, utcnow, utcparse


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if value else None


def _all_done(r: redis.Redis, jobs: list, statuses: tuple[str, ...] = ("finished", "failed")) -> bool:
    return all(_status(r, j.id) in statuses for j in jobs)


# -- info ---------------------------------------------------------------------------------------


def test_info_shows_queues_registries_and_workerd_and_rq_workers(r, redis_url, workerd) -> None:
    import rq

    q = Queue("default", connection=r)
    q.enqueue("testjobs.add", 1, 2)
    q.enqueue("testjobs.fail")
    Queue("low", connection=r).enqueue_in(dt.timedelta(hours=1), "testjobs.add", 1, 1)
    pool = workerd("-u", redis_url, "--workers", "2", "--heartbeat-interval", "0.5", "default", "low")
    wait_until(lambda: r.zcard(schema.finished_key("default")) == 1 and r.zcard(schema.failed_key("default")) == 1,
               message="one finished and one failed job")  # fmt: skip
    long_jobs = [q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 30) for _ in range(2)]
    wait_until(lambda: r.llen("runs") == 2, message="both workers busy")
    for _ in range(3):
        q.enqueue("testjobs.add", 2, 2)
    rq_worker = rq.Worker(["default"], connection=redis.Redis.from_url(redis_url), name="an-rq-worker")
    rq_worker.register_birth()

    done = run_workerd("info", "-u", redis_url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    lines = out.splitlines()
    default_line = next(line for line in lines if line.startswith("default "))
    assert default_line.endswith(" 3, 2 executing, 1 finished, 1 failed, 0 deferred, 0 scheduled"), out
    assert "\u2588" in default_line
    low_line = next(line for line in lines if line.startswith("low "))
    assert low_line.endswith(" 0, 0 executing, 0 finished, 0 failed, 0 deferred, 1 scheduled"), out
    assert "2 queues, 3 jobs total" in out
    for job in long_jobs:  # the function, queue and how long it has run, from the job's hash
        shown = f": busy job {job.id} (testjobs.mark_then_sleep from default, running "
        busy = [line for line in lines if shown in line]
        assert len(busy) == 1 and "s ago" in busy[0], out
        shown_s = float(busy[0].split(", running ")[1].split(" s)")[0])
        running_s = (utcnow() - utcparse(r.hget(schema.job_key(job.id), "started_at"))).total_seconds()
        assert running_s - 5 < shown_s <= running_s + 0.05, (shown_s, running_s)  # shown to 0.1 s
    assert any(line.startswith("an-rq-worker (") and ": ? default. jobs: 0 finished" in line for line in lines), out
    assert "3 workers, 2 queues" in out
    assert pool.process.poll() is None

    raw = run_workerd("info", "-u", redis_url, "--raw", "default")
    assert raw.returncode == 0
    assert raw.stdout.splitlines()[0].startswith("queue default ")
    assert all(line.startswith(("queue ", "worker ")) for line in raw.stdout.splitlines()), raw.stdout
    assert not any(line.split()[1] == "low" for line in raw.stdout.splitlines() if line.startswith("queue "))

    unreachable = run_workerd("info", "-u", f"redis://127.0.0.1:{free_port()}/0")
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr


def test_info_shows_a_running_jobs_function_but_never_its_arguments_nor_a_custom_description(r) -> None:
    from workerd.info import describe_job, running_jobs
    from workerd.presence import WorkerInfo

    started_at = "2026-01-02T03:04:05.000000Z"
    rq_default = {"description": "app.mail.send('to@x', password='pw')", "origin": "mail", "started_at": started_at}
    r.hset(schema.job_key("rq-default"), mapping=rq_default)
    r.hset(schema.job_key("custom"), mapping={"description": "send pw to bob", "origin": "mail"})
    workers = [WorkerInfo.from_hash(name, {b"current_job": name.encode()}) for name in ("rq-default", "custom", "gone")]
    running = running_jobs(r, workers)
    now = dt.datetime(2026, 1, 2, 3, 5, 5, tzinfo=dt.timezone.utc)
    shown = [describe_job(name, running.get(name), now) for name in ("rq-default", "custom", "gone")]
    assert shown == [" job rq-default (app.mail.send from mail, running 60.0 s)", " job custom (from mail)",
                     " job gone"]  # fmt: skip


def test_a_queue_named_info_is_given_after_a_double_dash(r, redis_url) -> None:
    job = Queue("info", connection=r).enqueue("testjobs.add", 3, 4)
    done = run_workerd("--burst", "-u", redis_url, "--", "info")
    assert done.returncode == 0, done.stderr
    assert _status(r, job.id) == "finished"


# -- health -------------------------------------------------------------------------------------


def _fake_worker(r: redis.Redis, name: str, heartbeat_age_s: float) -> None:
    presence.register_birth(r, name, ["default"], 420)
    stamp = utcformat(utcnow().fromtimestamp(time.time() - heartbeat_age_s, utcnow().tzinfo))
    r.hset(schema.worker_key(name), mapping={"last_heartbeat": stamp, "hostname": socket.gethostname()})


def test_health_of_redis_and_of_this_hosts_worker_heartbeats(r, redis_url) -> None:
    down = run_workerd("health", "-u", f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 1 and "unreachable" in down.stdout, down.stdout
    nobody = run_workerd("health", "-u", redis_url)
    assert nobody.returncode == 1 and "no worker on" in nobody.stdout
    _fake_worker(r, "stale", heartbeat_age_s=60)  # 3 x 3 s + 5 s is the limit by default
    stale = run_workerd("health", "-u", redis_url)
    assert stale.returncode == 1 and "(1 registered on this host)" in stale.stdout, stale.stdout
    _fake_worker(r, "fresh", heartbeat_age_s=1)
    ok = run_workerd("health", "-u", redis_url)
    assert ok.returncode == 0 and ok.stdout.strip() == "workerd: healthy"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def test_health_of_a_pool_by_pid_file_and_http_endpoint(r, redis_url, workerd, tmp_path) -> None:
    port = free_port()
    pid_file = tmp_path / "master.pid"
    config = tmp_path / "pool.toml"
    config.write_text(f'redis_url = "{redis_url}"\nworkers = 2\npid = "{pid_file}"\nmetrics_port = {port}\n'
                      'heartbeat_interval = 0.5\n')  # fmt: skip
    master = workerd("-c", str(config))
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/health")[0] == 200, message="the pool healthy over HTTP")
    assert pid_file.read_text().strip() == str(master.pid)  # the master's pid, not a worker's
    ok = run_workerd("health", "-c", str(config))
    assert ok.returncode == 0, ok.stdout
    assert _get(f"http://127.0.0.1:{port}/nothing")[0] == 404
    os.kill(master.pid, signal.SIGKILL)  # workers die with it; the pid file stays behind
    master.wait(10)
    _fake_worker(r, "someone-else", heartbeat_age_s=1)  # a live worker of this host, not the master's
    gone = run_workerd("health", "-c", str(config))
    assert gone.returncode == 1 and "is not running" in gone.stdout, gone.stdout
    pid_file.unlink()
    no_http = run_workerd("health", "-u", redis_url, env={"WORKERD_METRICS_PORT": str(port)})
    assert no_http.returncode == 1 and "does not answer" in no_http.stdout, no_http.stdout


def test_http_health_turns_503_when_the_workers_stop_heartbeating(r, redis_url, workerd) -> None:
    port = free_port()
    master = workerd("-u", redis_url, "--workers", "1", "--metrics-port", str(port), "--heartbeat-interval", "0.1")
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/health")[0] == 200, message="the pool healthy over HTTP")
    worker_pid = int(next(iter(r.hgetall(k)[b"pid"] for k in r.smembers(schema.WORKERS))))
    os.kill(worker_pid, signal.SIGSTOP)  # alive to the master, silent to Redis: 3 x 0.1 s + 5 s later, unhealthy
    try:
        _, text = wait_until(lambda: (got := _get(f"http://127.0.0.1:{port}/health"))[0] == 503 and got,
                                timeout=15, interval=0.2, message="/health to say 503")  # fmt: skip
        assert "has heartbeaten in the last 5.3 s" in text, text
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/health")[0] == 200, message="healthy again")
    assert master.process.poll() is None


# -- metrics ------------------------------------------------------------------------------------


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_of_a_pool_across_horses_and_recycled_workers(r, redis_url, workerd) -> None:
    port = free_port()
    workerd("-u", redis_url, "--workers", "2", "--max-jobs", "4", "--metrics-port", str(port),
            "--heartbeat-interval", "0.5", "--soft-memory-limit", "150")  # fmt: skip
    q = Queue("default", connection=r)
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/metrics")[0] == 200, message="the metrics server up")
    wait_until(lambda: _value(_scrape(port), "workerd_workers", group="default", state="idle") == 2,
               message="two idle workers in the metrics")  # fmt: skip
    sleepers = [q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 1.5) for _ in range(2)]
    wait_until(lambda: r.llen("runs") == 2, message="both workers busy")
    adds = [q.enqueue("testjobs.add", i, i) for i in range(3)]
    busy = _scrape(port)
    assert _value(busy, "workerd_workers", group="default", state="busy") == 2
    assert _value(busy, "workerd_queue_depth", queue="default") == 3
    assert _value(busy, "workerd_queue_registry_jobs", queue="default", registry="started") == 2
    assert _value(busy, "workerd_redis_up") == 1

    failing = [q.enqueue("testjobs.fail") for _ in range(2)]
    retried = q.enqueue("testjobs.fail", retry=Retry(max=1))
    hog = q.enqueue("testjobs.allocate_mib", 250, 3.0)  # its horse goes over the soft limit: SIGTERM
    jobs = [*sleepers, *adds, *failing, retried, hog]
    wait_until(lambda: _all_done(r, jobs), timeout=30, message="every job done")
    # 11 executions, at most 4 per worker: at least two workers were recycled for max jobs. A worker
    # reports an outcome to the master just after committing it: wait for the counts, then compare.
    samples = wait_until(
        lambda: (
            (s := _scrape(port))
            and _value(s, "workerd_worker_recycles_total", group="default", reason="max_jobs") >= 2
            and _value(s, "workerd_job_duration_seconds_count", queue="default") >= 10
            and s
        ),
        message="two max-jobs recycles and ten outcomes in the metrics",
    )
    assert _value(samples, "workerd_jobs_total", queue="default", outcome="finished") == 5
    assert _value(samples, "workerd_jobs_total", queue="default", outcome="failed") == 4
    assert _value(samples, "workerd_jobs_total", queue="default", outcome="retried") == 1
    assert _value(samples, "workerd_job_duration_seconds_count", queue="default") == 10
    assert _value(samples, "workerd_job_duration_seconds_bucket", queue="default", le="0.5") >= 7
    assert _value(samples, "workerd_job_duration_seconds_bucket", queue="default", le="1.0") <= 8
    assert _value(samples, "workerd_kills_total", group="default", process="horse", reason="soft_memory") == 1
    assert _value(samples, "workerd_worker_deaths_total", group="default") == 0
    assert _value(samples, "workerd_queue_registry_jobs", queue="default", registry="failed") == 4
    assert _value(samples, "workerd_queue_registry_jobs", queue="default", registry="finished") == 5
    assert _value(samples, "workerd_queue_depth", queue="default") == 0

    started = time.perf_counter()
    for _ in range(10):
        _scrape(port)
    per_scrape_ms = (time.perf_counter() - started) * 100
    assert per_scrape_ms < 250, f"a scrape took {per_scrape_ms:.1f} ms"
    print(f"scrape: {per_scrape_ms:.1f} ms, redis part {_value(samples, 'workerd_scrape_redis_seconds') * 1000:.2f} ms")


# -- JSON logs --------------------------------------------------------------------------------


def test_json_log_lines_carry_the_job_on_every_line_about_a_job(r, redis_url) -> None:
    q = Queue("default", connection=r)
    ok = q.enqueue("testjobs.add", 1, 2)
    bad = q.enqueue("testjobs.fail", "kaput")
    done = run_workerd("--burst", "-u", redis_url, "--log-format", "json", "-n", "jsonworker")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message", "worker", "pid"} <= set(line) for line in lines)
    assert all(line["worker"] == "jsonworker" for line in lines)
    for job in (ok, bad):
        about = [line for line in lines if job.id in line["message"]]
        assert len(about) >= 2, lines
        for line in about:
            fields = (line["job_id"], line["queue"], line["worker"], line["attempt"])
            assert fields == (job.id, "default", "jsonworker", 1), line
    failure = next(line for line in lines if line.get("job_id") == bad.id and line["level"] == "ERROR")
    assert "ValueError: kaput" in failure["message"]


# -- Sentry -------------------------------------------------------------------------------------


class _Ingest(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # type: ignore[import-not-found]

            body = brotli.decompress(body)
        type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ingest() -> Iterator[tuple[int, list[bytes]]]:
    _Ingest.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ingest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1]), _Ingest.bodies
    server.shutdown()
    server.server_close()


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "secret-redis", password="s3cret-Pa55word")
    server.start()
    yield server
    server.stop(kill=True)


def _events(bodies: list[bytes]) -> list[dict]:
    events = []
    for body in bodies:
        items = body.split(b"\n")
        for header, payload in zip(items[1::2], items[2::2], strict=False):
            if json.loads(header).get("type") == "event":
                events.append(json.loads(payload))
    return events


@pytest.mark.parametrize("mode", ["fork-pool", "inprocess-single"])
def test_sentry_one_event_per_failed_job_tagged_without_the_password(secret_redis, ingest, mode) -> None:
    port, bodies = ingest
    url = secret_redis.url
    client = secret_redis.client()
    q = Queue("default", connection=client)
    bad = [q.enqueue("testjobs.fail", f"could not reach {url}"), q.enqueue("testjobs.fail", "plain")]
    good = q.enqueue("testjobs.add", 1, 1)
    extra = ["--workers", "1"] if mode == "fork-pool" else ["--execution", "inprocess"]
    done = run_workerd("--burst", "-u", url, "-n", "sentry-w", "--sentry-dsn", f"http://public@127.0.0.1:{port}/1",
                       *extra)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _all_done(client, [*bad, good])
    events = wait_until(lambda: len(_events(bodies)) >= 2 and _events(bodies), message="two Sentry events")
    assert len(events) == 2, events  # one per failed job: the worker's error log line is not an event
    assert sorted(e["tags"]["job_id"] for e in events) == sorted(j.id for j in bad)
    for event in events:
        assert event["tags"]["func"] == "testjobs.fail"
        assert event["tags"]["queue"] == "default"
        assert event["tags"]["worker"].startswith("sentry-w")
        assert event["exception"]["values"][-1]["type"] == "ValueError"
    everything = b"".join(bodies)
    assert b"s3cret-Pa55word" not in everything
    assert b"[Filtered]" in everything
    with contextlib.suppress(Exception):
        client.close()


def test_a_single_worker_serves_its_own_metrics(r, redis_url, workerd) -> None:
    port = free_port()
    workerd("-u", redis_url, "--metrics-port", str(port), "-n", "solo", "--heartbeat-interval", "0.5")
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/health")[0] == 200, message="the worker healthy over HTTP")
    q = Queue("default", connection=r)
    jobs = [q.enqueue("testjobs.add", 1, 1), q.enqueue("testjobs.fail")]
    wait_until(lambda: _all_done(r, jobs), message="both jobs done")
    # The outcome and the idle state arrive in reports of their own, just after the commit: wait for both.
    samples = wait_until(
        lambda: (
            (s := _scrape(port))
            and _value(s, "workerd_jobs_total", queue="default", outcome="failed")
            and _value(s, "workerd_workers", group="default", state="idle")
            and s
        ),
        message="the failure counted and the worker idle again",
    )
    assert _value(samples, "workerd_jobs_total", queue="default", outcome="finished") == 1
    assert _value(samples, "workerd_workers", group="default", state="idle") == 1


def test_a_password_cut_in_two_by_the_sdk_is_filtered() -> None:
    """Older sentry-sdk releases cut strings at 1,024 characters (max_value_length; unlimited by
    default in recent ones) before before_send sees them: no start of a straddling password survives."""
    from sentry_sdk.utils import strip_string

    from workerd.sentry import FILTERED, scrub

    password = "s3cret-Pa55word"
    secrets = [f"redis://:{password}@127.0.0.1:6379/0", password]
    for chars_before_cut in range(1, len(password)):
        text = "x" * (1021 - len("redis://:") - chars_before_cut) + secrets[0]
        cut = strip_string(text, max_length=1024).value  # what the SDK hands to before_send
        assert password[:chars_before_cut] in cut  # the cut is where this test means it to be
        scrubbed = scrub({"value": cut}, secrets)["value"]
        assert scrubbed.endswith(f"{FILTERED}...") and password[:chars_before_cut] not in scrubbed, scrubbed
    assert scrub("a plain cut string...", secrets) == "a plain cut string..."


def test_every_counter_series_exists_at_zero_right_after_start(r, redis_url, workerd) -> None:
    """`increase(...[5m])` sees the first worker death only if the series existed at 0 before it."""
    port = free_port()
    workerd("-u", redis_url, "--workers", "1", "--metrics-port", str(port), "high", "low")
    samples = wait_until(
        lambda: _get(f"http://127.0.0.1:{port}/metrics")[0] == 200 and _scrape(port), message="the first scrape"
    )
    expected = [("workerd_worker_deaths_total", {"group": "default"})]
    recycles = ("max_jobs", "max_age", "max_idle", "soft_memory", "hard_memory", "reload", "scale_down")
    kills = ("timeout", "hard_memory", "soft_memory", "other")
    expected += [("workerd_worker_recycles_total", {"group": "default", "reason": reason}) for reason in recycles]
    expected += [("workerd_kills_total", {"group": "default", "process": process, "reason": reason})
                 for process in ("worker", "horse") for reason in kills]  # fmt: skip
    expected += [("workerd_kills_total", {"group": "default", "process": "worker", "reason": "shutdown_timeout"})]
    expected += [("workerd_jobs_total", {"queue": queue, "outcome": outcome})
                 for queue in ("high", "low") for outcome in ("finished", "failed", "retried", "requeued")]  # fmt: skip
    expected += [("workerd_job_duration_seconds_count", {"queue": queue}) for queue in ("high", "low")]
    for name, labels in expected:
        key = (name, tuple(sorted(labels.items())))
        assert samples.get(key) == 0, f"{name}{labels} is {samples.get(key, 'missing')} right after start"


def _series(samples: dict, name: str) -> list[float]:
    return [value for (sample, _), value in samples.items() if sample == name]


def test_the_memory_the_limits_act_on_is_scraped(r, redis_url, workerd) -> None:
    port = free_port()
    workerd("-u", redis_url, "--workers", "1", "--metrics-port", str(port))
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/health")[0] == 200, message="the pool healthy over HTTP")
    job = Queue("default", connection=r).enqueue("testjobs.allocate_mib", 60, 5.0)
    samples = wait_until(
        lambda: (
            (s := _scrape(port)) and any(v > 50 * 2**20 for v in _series(s, "workerd_horse_memory_uss_bytes")) and s
        ),
        message="a horse holding 60 MiB in the metrics",
    )
    [worker_uss] = _series(samples, "workerd_worker_memory_uss_bytes")
    assert 1 * 2**20 < worker_uss < 50 * 2**20  # the worker's own pages, not its horse's
    assert _value(samples, "process_resident_memory_bytes") > 10 * 2**20  # the master's own
    wait_until(lambda: _all_done(r, [job]), message="the allocation job done")


@pytest.mark.parametrize("pool", [["--workers", "1"], []], ids=["master", "single-worker"])
def test_a_metrics_port_in_use_exits_71_which_systemd_restarts(redis_url, pool) -> None:
    """Not a settings error (78, never restarted): the port may be free once its holder is gone."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_workerd("-u", redis_url, *pool, "--metrics-port", str(port), "--burst", timeout=30)
    assert result.returncode == 71, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr


# -- no fork beside a thread ----------------------------------------------------------------------

# CPython swallows its fork-with-threads warning when it is made an error (the fork has happened by
# then), so the warning is shown ("always") and looked for.
SHOW_DEPRECATIONS = {"PYTHONWARNINGS": "always::DeprecationWarning"}


def _ancestor_threads(r: redis.Redis) -> list[dict[str, int]]:
    return [json.loads(value) for value in r.lrange("threads", 0, -1)]


def test_a_pool_with_metrics_and_sentry_never_forks_beside_a_thread(r, redis_url, workerd, ingest) -> None:
    """The master serves metrics and spawns workers; a worker with Sentry reports a job it failed
    itself (abandoned by the worker killed before it: the SDK's first capture in a worker process)
    and forks horses. At every fork the forking process has one thread: each horse records how many
    its worker and its master have, while a half-open scraper stays connected."""
    port, bodies = ingest
    metrics_port = free_port()
    master = workerd("-u", redis_url, "--workers", "1", "--max-jobs", "3", "--metrics-port", str(metrics_port),
                     "--sentry-dsn", f"http://public@127.0.0.1:{port}/1", "--abandoned-max-attempts", "1",
                     "--heartbeat-interval", "0.5", env=SHOW_DEPRECATIONS)  # fmt: skip
    wait_until(lambda: _get(f"http://127.0.0.1:{metrics_port}/health")[0] == 200, message="the pool healthy")
    half_open = socket.create_connection(("127.0.0.1", metrics_port))
    half_open.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
    q = Queue("default", connection=r)
    abandoned = q.enqueue("testjobs.mark_then_sleep", redis_url, "runs", 60)
    horse_pid = int(wait_until(lambda: r.lindex("runs", 0), message="the first job running"))
    os.kill(psutil.Process(horse_pid).ppid(), signal.SIGKILL)  # its worker; the horse dies with it
    wait_until(lambda: _status(r, abandoned.id) == "failed", message="the abandoned job failed by the next worker")
    wait_until(lambda: any(e["exception"]["values"][-1]["type"] == "AbandonedJobError" for e in _events(bodies)),
               message="the worker's own Sentry event")  # fmt: skip
    records = [q.enqueue("testjobs.record_ancestor_threads", redis_url, "threads") for _ in range(7)]
    started = time.perf_counter()
    samples = _scrape(metrics_port)  # answered while the half-open client holds a connection
    assert time.perf_counter() - started < 2
    wait_until(lambda: _scrape(metrics_port) and _all_done(r, records, ("finished",)), timeout=30,
               message="every record job finished, scraped meanwhile")  # fmt: skip
    assert _ancestor_threads(r) == [{"worker": 1, "parent": 1}] * len(records)
    samples = _scrape(metrics_port)
    assert _value(samples, "workerd_worker_recycles_total", group="default", reason="max_jobs") >= 2
    assert _value(samples, "workerd_worker_deaths_total", group="default") == 1
    half_open.settimeout(15)
    assert half_open.recv(1) == b"", "the half-open client was not disconnected"
    half_open.close()
    assert "multi-threaded" not in master.output(), master.output()
    assert master.process.poll() is None


def test_a_single_worker_with_metrics_and_sentry_never_forks_beside_a_thread(r, redis_url, workerd, ingest) -> None:
    port, _ = ingest
    metrics_port = free_port()
    worker = workerd("-u", redis_url, "--metrics-port", str(metrics_port), "--heartbeat-interval", "0.5",
                     "--sentry-dsn", f"http://public@127.0.0.1:{port}/1", env=SHOW_DEPRECATIONS)  # fmt: skip
    wait_until(lambda: _get(f"http://127.0.0.1:{metrics_port}/health")[0] == 200, message="the worker healthy")
    q = Queue("default", connection=r)
    records = [q.enqueue("testjobs.record_ancestor_threads", redis_url, "threads") for _ in range(3)]
    wait_until(lambda: _scrape(metrics_port) and _all_done(r, records, ("finished",)), timeout=30,
               message="every record job finished, scraped meanwhile")  # fmt: skip
    assert [counts["worker"] for counts in _ancestor_threads(r)] == [1, 1, 1]  # its parent is this test
    wait_until(lambda: _value(_scrape(metrics_port), "workerd_jobs_total", queue="default", outcome="finished") == 3,
               message="the metrics process to count the 3 jobs the worker reported")  # fmt: skip
    assert "multi-threaded" not in worker.output(), worker.output()
