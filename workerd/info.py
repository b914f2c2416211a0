"""`workerd info` and `workerd health`: what is on the queues and who works them, read from Redis.

`info` is `rq info` for workerd's and RQ's workers alike (docs/PROTOCOL.md §9.3), with the heartbeat
age, current job and all registries added. Unlike `rq info` it is read-only: it cleans no
registry and removes no stale worker; expired finished/failed entries are simply not counted.

`health` is a probe for containers and load balancers: exit 0 when Redis answers, the master is
alive (if its pid file or metrics port is configured) and at least one worker of this host has
heartbeaten recently; else exit 1 with one line saying why. The master's HTTP `/health` applies the
same rules to its own workers (workerd.metrics).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from workerd import connection as connection_module
from workerd import schema, suspension
from workerd.config import build_settings
from workerd.counts import queue_counts
from workerd.errors import ExitCode
from workerd.presence import WorkerInfo, heartbeat_limit_s
from workerd.settings import Settings
from workerd.timeutil import utcparse
from workerd.utils import as_text, printable_id

# How long a probe waits for Redis or the master's HTTP endpoint.
PROBE_TIMEOUT_S = 3.0


def known_queues(client: redis.Redis) -> list[str]:
    members: Any = client.smembers(schema.QUEUES)
    return sorted(schema.queue_name_from_key(m) for m in members)


def heartbeat_age_s(worker: WorkerInfo, now: dt.datetime | None = None) -> float | None:
    if worker.last_heartbeat is None:
        return None
    return ((now or dt.datetime.now(dt.timezone.utc)) - worker.last_heartbeat).total_seconds()


@dataclass
class RunningJob:
    """What a busy worker runs, from its job's hash."""

    func: str | None  # the function, when the job's description is RQ's own "func(args...)"
    queue: str | None
    started_at: dt.datetime | None


# The function at the head of RQ's default description, `pkg.mod.func(1, 'a')`: only the name is
# shown, never the arguments (they may hold secrets), nor a description the application chose.
_CALL_HEAD = re.compile(r"([A-Za-z_][\w.]*)\(")


def running_jobs(client: redis.Redis, workers: Sequence[WorkerInfo]) -> dict[str, RunningJob]:
    """The current jobs of `workers`, by id, in one round trip. The job's data is not decoded
    (unpickling what Redis holds would run code): the function comes from its description."""
    ids = sorted({w.current_job_id for w in workers if w.current_job_id})
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(schema.job_key(job_id), ["description", "origin", "started_at"])
        replies = pipe.execute()
    running = {}
    for job_id, (description, origin, started_at) in zip(ids, replies, strict=True):
        head = _CALL_HEAD.match(as_text(description) or "")
        started = None
        with contextlib.suppress(ValueError):
            started = utcparse(started_at) if started_at else None
        running[job_id] = RunningJob(head.group(1) if head else None, as_text(origin), started)
    return running


def describe_job(job_id: str, job: RunningJob | None, now: dt.datetime) -> str:
    """` job <id> (<func> from <queue>, running 12.3 s)`, leaving out what is not known."""
    about = []
    if job is not None and (job.func or job.queue):
        about.append(" ".join(filter(None, [job.func, job.queue and f"from {job.queue}"])))
    if job is not None and job.started_at is not None:
        about.append(f"running {max((now - job.started_at).total_seconds(), 0.0):.1f} s")
    return f" job {printable_id(job_id)}" + (f" ({', '.join(about)})" if about else "")


def claimed_jobs(client: redis.Redis, queues: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per queue, how many ids Redis has handed to each idle workerd worker's wait and that worker
    has not started yet (schema.claim_list_key; normally for under one round trip), in two round
    trips. Queues and workers holding none are left out."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zrange(schema.claimers_key(queue), 0, -1)
        holders = pipe.execute()
    pairs = [(queue, as_text(w) or "") for queue, workers in zip(queues, holders, strict=True) for w in workers]
    with client.pipeline(transaction=False) as pipe:
        for queue, worker in pairs:
            pipe.llen(schema.claim_list_key(queue, worker))
        lengths = pipe.execute()
    claimed: dict[str, dict[str, int]] = {}
    for (queue, worker), length in zip(pairs, lengths, strict=True):
        if length:
            claimed.setdefault(queue, {})[worker] = int(length)
    return claimed


def describe_claimed(by_worker: dict[str, int]) -> str:
    """`, 2 claimed (w1 1, w2 1)`, or nothing when no worker holds one."""
    if not by_worker:
        return ""
    holders = ", ".join(f"{worker} {count}" for worker, count in sorted(by_worker.items()))
    return f", {sum(by_worker.values())} claimed ({holders})"


def workers_of(client: redis.Redis, queues: Sequence[str]) -> list[WorkerInfo]:
    if not queues:
        return WorkerInfo.all(client)
    seen: dict[str, WorkerInfo] = {}
    for queue in queues:
        for worker in WorkerInfo.all(client, queue):
            seen.setdefault(worker.name, worker)
    return sorted(seen.values(), key=lambda w: w.name)


# -- info ---------------------------------------------------------------------------------------


def render_info(
    client: redis.Redis,
    queues: Sequence[str],
    raw: bool = False,
    only_queues: bool = False,
    only_workers: bool = False,
    width: int = 20,
) -> str:
    names = list(queues) or known_queues(client)
    lines: list[str] = []
    if not only_workers:
        counts = queue_counts(client, names)
        claimed = claimed_jobs(client, names)
        scale = max([c.queued for c in counts] + [1])
        for c in counts:
            rest = (
                f"{c.queued}, {c.started} executing, {c.finished} finished, {c.failed} failed, "
                f"{c.deferred} deferred, {c.scheduled} scheduled{describe_claimed(claimed.get(c.name, {}))}"
            )
            if raw:
                lines.append(f"queue {c.name} {rest}")
            else:
                bar = "|" + "\u2588" * round(width * c.queued / scale)
                lines.append(f"{c.name:<12} {bar} {rest}")
        if not raw:
            lines += [f"{len(counts)} queues, {sum(c.queued for c in counts)} jobs total", ""]
    if not only_queues:
        now = dt.datetime.now(dt.timezone.utc)
        workers = workers_of(client, list(queues))
        running = running_jobs(client, workers)
        for w in workers:
            age = heartbeat_age_s(w, now)
            job = describe_job(w.current_job_id, running.get(w.current_job_id), now) if w.current_job_id else ""
            heartbeat = f"heartbeat {age:.1f} s ago" if age is not None else "no heartbeat"
            text = (
                f"{w.name} ({w.hostname} {w.ip_address} {w.pid}): {w.state}{job} {', '.join(w.queue_names)}. "
                f"jobs: {w.successful_job_count} finished, {w.failed_job_count} failed, "
                f"{w.total_working_time:.1f} s working; {heartbeat}; {w.version or 'unknown version'}"
            )
            lines.append(f"worker {text}" if raw else text)
        if not raw:
            lines += [
                f"{len(workers)} workers, {len(names)} queues",
                "",
                f"Updated: {dt.datetime.now().replace(microsecond=0)}",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- health -------------------------------------------------------------------------------------


def fresh_workers(workers: Iterable[WorkerInfo], max_age_s: float) -> list[WorkerInfo]:
    now = dt.datetime.now(dt.timezone.utc)
    return [w for w in workers if (age := heartbeat_age_s(w, now)) is not None and age < max_age_s]


def check_health(settings: Settings, client: redis.Redis | None = None) -> str | None:
    """None if healthy, else the reason in one line."""
    where = connection_module.describe(settings)
    client = client or _probe_client(settings)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
        refused = connection_module.refusal(exc, where)
        if refused is not None:  # not "unhealthy": restarting the container would not help (exit 77 or 78)
            raise refused from None
        return f"Redis at {where} is unreachable: {exc}"
    master_pid = None
    if settings.pid:
        try:
            with open(settings.pid) as handle:
                master_pid = int(handle.read().split()[0])
            os.kill(master_pid, 0)
        except (OSError, ValueError, IndexError) as exc:
            return f"the process of pid file {settings.pid} is not running ({type(exc).__name__}: {exc})"
    if settings.metrics_port:
        url = f"http://{_http_host(settings.metrics_host)}:{settings.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            return f"the master says: {exc.read().decode(errors='replace').strip() or exc}"
        except OSError as exc:
            return f"the master does not answer on {url}: {exc}"
    host = socket.gethostname()
    workers = [w for w in WorkerInfo.all(client) if w.hostname == host]
    if master_pid is not None:
        # The pid file is the master's (its workers are its children), or a single worker's own.
        own = [w for w in workers if w.pid == master_pid]
        children = _children_of(master_pid)
        if own:
            workers = own
        elif children is not None:
            workers = [w for w in workers if w.pid in children]
    limit = heartbeat_limit_s(settings)
    if not fresh_workers(workers, limit):
        return f"no worker on {host} has heartbeaten in the last {limit:g} s ({len(workers)} registered on this host)"
    return None


def _children_of(pid: int) -> set[int] | None:
    try:
        import psutil

        return {child.pid for child in psutil.Process(pid).children()}
    except Exception:  # psutil missing or the process gone: fall back to the host's workers
        return None


def _http_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _probe_client(settings: Settings) -> redis.Redis:
    client = connection_module.connect(settings)
    for kwargs in _connection_kwargs(client):
        kwargs["socket_timeout"] = PROBE_TIMEOUT_S
        kwargs["socket_connect_timeout"] = PROBE_TIMEOUT_S
    return client


def _connection_kwargs(client: redis.Redis) -> list[dict[str, Any]]:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    return [kwargs] if isinstance(kwargs, dict) else []


# -- the subcommands ----------------------------------------------------------------------------


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "info":
        parser = argparse.ArgumentParser(
            prog="workerd info",
            description="Queues with their depths and registries, and the workers "
            "(workerd's and RQ's) with their state, current job and heartbeat age. Read-only.",
        )
        parser.add_argument("queues", nargs="*", metavar="QUEUE", help="queues to show [default: all]")
        parser.add_argument("-r", "--raw", action="store_true", help="no bars or summaries; prefixed lines")
        parser.add_argument("-Q", "--only-queues", action="store_true", help="show only queues")
        parser.add_argument("-W", "--only-workers", action="store_true", help="show only workers")
        parser.add_argument("-i", "--interval", type=float, metavar="SECONDS", help="refresh every SECONDS")
    elif command == "suspend":
        parser = argparse.ArgumentParser(
            prog="workerd suspend",
            description="Workers (workerd's and RQ's) finish their current job and "
            "take no new one until `workerd resume` (or `rq resume`).",
        )
        parser.add_argument("--duration", type=int, metavar="SECONDS", help="resume by itself after SECONDS")
    elif command == "resume":
        parser = argparse.ArgumentParser(prog="workerd resume", description="Undo `workerd suspend`.")
    else:
        parser = argparse.ArgumentParser(
            prog="workerd health",
            description="Exit 0 if Redis answers, the master is alive (when PID or "
            "METRICS_PORT is configured) and a worker of this host heartbeats; else exit 1 with the reason.",
        )
    parser.add_argument("-u", "--url", metavar="URL", help="Redis URL [default: the settings' REDIS_URL]")
    parser.add_argument("-c", "--config", metavar="FILE|MODULE", help="settings file [env RQ_CONFIG]")
    return parser


def main(command: str, argv: Sequence[str]) -> int:
    args = _parser(command).parse_args(list(argv))
    config = args.config or os.environ.get("RQ_CONFIG") or None
    settings, _ = build_settings({"redis_url": args.url} if args.url else {}, config)
    where = connection_module.describe(settings)
    client = _probe_client(settings)
    try:
        if command == "health":
            reason = check_health(settings, client)
            if reason is not None:
                print(f"workerd: unhealthy: {reason}")
                return 1
            print("workerd: healthy")
            return ExitCode.OK
        if command in ("suspend", "resume"):
            return _suspend_or_resume(client, command, getattr(args, "duration", None))
        while True:
            width = min(20, shutil.get_terminal_size().columns - 20)
            text = render_info(client, args.queues, args.raw, args.only_queues, args.only_workers, width)
            if args.interval:
                sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "")
            sys.stdout.write(text)
            sys.stdout.flush()
            if not args.interval:
                return ExitCode.OK
            time.sleep(args.interval)
    # Refused credentials or certificate: exit 77 or 78 at once, as the worker does, not "unreachable".
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoPermissionError) as exc:
        refused = connection_module.refusal(exc, where)
        if refused is not None:
            raise refused from None
        print(f"workerd: error: Redis at {where} is unreachable: {exc}", file=sys.stderr)
        return 1


def _suspend_or_resume(client: redis.Redis, command: str, duration_s: int | None) -> int:
    if command == "resume":
        suspension.resume(client)
        print("Resuming workers.")
        return ExitCode.OK
    if duration_s is not None and duration_s < 1:
        print("workerd: error: --duration must be at least 1 second", file=sys.stderr)
        return ExitCode.USAGE
    suspension.suspend(client, duration_s)
    until = f" for {duration_s} seconds" if duration_s else ""
    print(f"Suspending workers{until}. No new jobs will be started, running jobs will be completed.")
    return ExitCode.OK
