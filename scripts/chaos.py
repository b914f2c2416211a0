#!/usr/bin/env python
"""Chaos harness: enqueue N recorded jobs, run a worker system, inject faults, then count what happened.

    python scripts/chaos.py --system workerd --scenario kill-horses --jobs 20000 --json out.json
    python scripts/chaos.py --all --jobs 2000 --json matrix.json --markdown matrix.md

Systems (each run against its own ``redis-server``, AOF with ``appendfsync always``, on a free port):

* ``workerd``   -- ``workerd -u URL --workers 2 high default``: one supervised pool, one "unit".
* ``workerd-worker`` -- ``workerd -u URL high default`` (one worker, no master), two units.
* ``rq-worker`` -- ``rq worker -u URL high default``, two units (like ``rq@1``/``rq@2`` systemd units).
* ``rq-pool``   -- ``rq worker-pool -u URL -n 2 high default``: one unit.

Every unit is run "as systemd would" (see ``Unit``): when its main process dies, the rest of its
session gets SIGTERM, then SIGKILL after ``stop_timeout_s``, and with ``Restart=on-failure`` (a
non-zero exit or a signal) it is started again after ``restart_sec``.

Roles are found by walking the process tree from the unit's main PID, by depth, never by name:
depth 0 is the master (for ``rq worker`` the worker itself), depth 1 the workers (for ``rq worker``
the horse), depth 2 and deeper the horses. For ``rq worker-pool``, depth 2 also holds each worker's
scheduler process, so "kill horses" sometimes kills a scheduler there.

The jobs (``chaos_jobs.work``) record each execution's start and end (time, pid) in Redis. After the
fault phase (until the queues are empty or ``duration_limit_s``), the harness lets the system drain
(until every job is finished/failed, or nothing changed for ``settle_s``, or ``drain_s`` passed) and
then classifies every job: finished, failed (with the reason from its result), lost (nothing will
ever run it), stuck (not terminal, but still in a list or registry something could recover it
from), and counts duplicated executions.

``run_scenario`` is importable (no side effects at import, no global state) for the test suite.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

SCRIPTS_DIR = Path(__file__).resolve().parent
RQ_CLI = SCRIPTS_DIR.parent / "tests" / "rq_oracle" / "rq_cli.py"  # `rq`, with a fix for redis-py 8.2
SYSTEMS = ("workerd", "workerd-worker", "rq-worker", "rq-pool")
QUEUES = ("high", "default")  # priority order; two queues so RQ uses BLPOP (its multi-queue path)
JOB_FUNC = "chaos_jobs.work"
JOB_TIMEOUT_S = 60  # normal jobs: long enough for a job to wait out a 30 s outage inside its record
RESULT_TTL_S = 86400  # keep finished/failed hashes for the whole run (RQ's default 500 s is too short)
HIGH_FRACTION = 0.3

# Fault kinds: (min interval s, max interval s). Each scenario turns some on.
FAULT_INTERVALS = {
    "kill-horse": (0.2, 0.6),
    "kill-worker": (0.5, 1.5),
    "kill-master": (3.0, 6.0),
    "sigstop": (3.0, 6.0),
    "redis-restart": (4.0, 8.0),
    "kill-idle": (0.3, 0.8),
}
FAULT_ROLE = {"kill-horse": "horse", "kill-worker": "worker", "kill-master": "master", "sigstop": "worker",
              "kill-idle": "worker"}  # fmt: skip
SIGSTOP_HOLD_S = (2.0, 6.0)
# kill-idle: an idle worker is frozen this long before its SIGKILL, so that the jobs trickling in meanwhile
# are handed to its blocked waits (workerd's claim lists, RQ's BLPOP) and die with it.
IDLE_FREEZE_S = (0.2, 0.8)
REDIS_RESTARTS_MAX = 5
OUTAGE_AT_S = 3.0  # into the fault phase


ALL_KILLS = ("kill-horse", "kill-worker", "kill-master")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    faults: tuple[str, ...] = ()
    outage: bool = False
    hog_fraction: float = 0.0
    timeout_fraction: float = 0.0
    trickle_per_s: float = 0.0  # > 0: jobs are enqueued during the fault phase at this rate, not up front


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("baseline", "no faults"),
        Scenario("kill-horses", "kill horses (SIGKILL)", faults=("kill-horse",)),
        Scenario("kill-workers", "kill workers (SIGKILL)", faults=("kill-worker",)),
        Scenario("kill-master", "kill master (SIGKILL), restarted", faults=("kill-master",)),
        Scenario("kill-all", "kill horses + workers + master", faults=ALL_KILLS),
        Scenario("redis-restart", "Redis restarts (SIGKILL, AOF replay)", faults=("redis-restart",)),
        Scenario("redis-outage", "Redis outage (30 s)", outage=True),
        Scenario("memory-hog", "memory-hog jobs (5% hold 300 MB for 1 s)", hog_fraction=0.05),
        Scenario("timeouts", "timeout jobs (5% sleep past timeout)", timeout_fraction=0.05),
        Scenario("sigstop", "SIGSTOP/SIGCONT a worker (2-6 s)", faults=("sigstop",)),
        Scenario(
            "kill-idle",
            "kill idle workers (SIGKILL) as jobs trickle in at 10/s",
            faults=("kill-idle",),
            trickle_per_s=10.0,
        ),
    )
}
HOG_MB = 300
HOG_HOLD_MS = 1000.0  # held long enough for a memory check every 0.25 s to see it
TIMEOUT_JOB_TIMEOUT_S = 1
TIMEOUT_JOB_SLEEP_S = 3.0


# --------------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    queue: str
    duration_ms: float
    alloc_mb: int
    sleep_s: float
    timeout_s: int

    @property
    def expected_s(self) -> float:
        return self.duration_ms / 1000.0 + self.sleep_s


def make_jobs(scenario: Scenario, n: int, seed: int) -> list[JobSpec]:
    """Deterministic job mix: 90% take 1-5 ms, 10% 50-200 ms; plus the scenario's hogs or sleepers."""
    jobs = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        queue = QUEUES[0] if rng.random() < HIGH_FRACTION else QUEUES[1]
        duration_ms = rng.uniform(1, 5) if rng.random() < 0.9 else rng.uniform(50, 200)
        alloc_mb, sleep_s, timeout_s = 0, 0.0, JOB_TIMEOUT_S
        pick = rng.random()
        if pick < scenario.hog_fraction:
            alloc_mb, duration_ms = HOG_MB, HOG_HOLD_MS
        elif pick < scenario.hog_fraction + scenario.timeout_fraction:
            sleep_s, timeout_s = TIMEOUT_JOB_SLEEP_S, TIMEOUT_JOB_TIMEOUT_S
        job_id = f"chaos-{seed}-{i:06d}"
        jobs.append(JobSpec(job_id, queue, round(duration_ms, 2), alloc_mb, sleep_s, timeout_s))
    return jobs


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def enqueue_jobs(conn: redis.Redis, jobs: list[JobSpec]) -> None:
    """Enqueue with RQ's own client (``Queue.enqueue_many``, one pipeline per 500 jobs)."""
    from rq import Queue  # imported here so that importing this module stays cheap

    queues = {name: Queue(name, connection=conn) for name in QUEUES}
    for chunk in _chunks(jobs, 500):
        with conn.pipeline() as pipe:
            for name, queue in queues.items():
                datas = [
                    Queue.prepare_data(
                        JOB_FUNC,
                        args=(j.job_id, j.duration_ms),
                        kwargs={"alloc_mb": j.alloc_mb, "sleep_s": j.sleep_s},
                        timeout=j.timeout_s,
                        result_ttl=RESULT_TTL_S,
                        failure_ttl=RESULT_TTL_S,
                        job_id=j.job_id,
                    )
                    for j in chunk
                    if j.queue == name
                ]
                if datas:
                    queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()


# --------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (orphans included: they keep their session)."""
    found = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) == sid:
                found.append(pid)
    return found


def process_tree(root: int) -> dict[int, int]:
    """``{pid: depth}`` for ``root`` and its live (non-zombie) descendants."""
    children: dict[int, list[int]] = {}
    zombies = set()
    for proc in psutil.process_iter(["pid", "ppid", "status"]):
        info = proc.info
        children.setdefault(info["ppid"], []).append(info["pid"])
        if info["status"] == psutil.STATUS_ZOMBIE:
            zombies.add(info["pid"])
    depths: dict[int, int] = {}
    frontier = [(root, 0)] if psutil.pid_exists(root) else []
    while frontier:
        pid, depth = frontier.pop()
        if pid in depths:
            continue
        if pid not in zombies:
            depths[pid] = depth
        frontier.extend((child, depth + 1) for child in children.get(pid, ()))
    return depths


def send(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


class RedisServer:
    """A private ``redis-server`` whose data survives restarts (AOF, fsync on every write)."""

    def __init__(self, directory: Path, port: int, binary: str = "redis-server") -> None:
        self.directory, self.port, self.binary = directory, port, binary
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self, wait_s: float = 30.0) -> None:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    raise RuntimeError(f"redis-server exited with {code}; see {self.directory}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server not ready after {wait_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: with ``appendfsync always`` every acknowledged write is already on disk."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Unit:
    """One service run as systemd runs it: Restart=on-failure, RestartSec, KillMode=control-group.

    The session started for each run of the main process stands in for the cgroup. ``tick`` is
    called from the harness loop; it never blocks.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    on_kill: Callable[[list[int], str], None]
    restart_sec: float = 1.0
    stop_timeout_s: float = 10.0
    proc: subprocess.Popen | None = None
    sids: set[int] = field(default_factory=set)  # sessions of its runs that may still hold processes
    state: str = "new"  # running | stopping | waiting | stopped (exit 0) | failed (start limit)
    state_until: float = 0.0
    stopping_sid: int = 0
    exits: list[int] = field(default_factory=list)
    starts: int = 0
    # StartLimitBurst=5 in StartLimitIntervalSec=10, counted over exits the harness did not cause
    # (a unit that cannot start, e.g. on a bad flag, must not loop until the duration limit).
    own_exit_times: list[float] = field(default_factory=list)

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=str(SCRIPTS_DIR),
            )  # fmt: skip
        self.sids.add(self.proc.pid)
        self.starts += 1
        self.state = "running"

    @property
    def main_pid(self) -> int | None:
        if self.state == "running" and self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return None

    def tick(self, now: float) -> None:
        if self.state == "running" and self.proc is not None and self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            self.stopping_sid = self.proc.pid
            leftovers = session_pids(self.stopping_sid)
            for pid in leftovers:
                send(pid, signal.SIGTERM)
            self.on_kill(leftovers, "systemd-sigterm")
            self.state, self.state_until = "stopping", now + self.stop_timeout_s
        if self.state == "stopping":
            leftovers = session_pids(self.stopping_sid)
            if leftovers and now >= self.state_until:
                for pid in leftovers:
                    send(pid, signal.SIGKILL)
                self.on_kill(leftovers, "systemd-sigkill")
                leftovers = []
            if not leftovers:
                # Forget the emptied session: once nothing holds its id, the kernel hands that number
                # out again (pid_max is 32768 here, and a fork storm wraps it in minutes), e.g. to
                # another run's redis-server, which leads a session of its own; freeze() and
                # kill_everything() at the end would then signal processes that are not ours.
                self.sids.discard(self.stopping_sid)
                code = self.exits[-1]  # negative: killed by a signal
                if code >= 0:
                    self.own_exit_times = [t for t in self.own_exit_times if now - t < 10.0] + [now]
                if code == 0:
                    self.state = "stopped"
                elif len(self.own_exit_times) >= 5:
                    self.state = "failed"
                else:
                    self.state, self.state_until = "waiting", now + self.restart_sec
        if self.state == "waiting" and now >= self.state_until:
            self.start()

    def freeze(self) -> None:
        """SIGSTOP every process of the unit: a still picture to count from, in which no process is
        killed half-way through a step (which a final SIGKILL or SIGTERM could cause)."""
        for sid in self.sids:
            for pid in session_pids(sid):
                send(pid, signal.SIGSTOP)

    def kill_everything(self) -> None:
        for sid in self.sids:
            for pid in session_pids(sid):
                send(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.state = "stopped"


def system_argv(system: str, url: str, bin_dir: Path, workerd_args: Iterable[str]) -> list[list[str]]:
    """The command line of each unit of ``system``."""
    if system == "workerd":
        return [[str(bin_dir / "workerd"), "-u", url, "--workers", "2", *workerd_args, *QUEUES]]
    if system == "workerd-worker":  # no master: two single-worker units, like rq-worker
        return [[str(bin_dir / "workerd"), "-u", url, *workerd_args, *QUEUES] for _ in range(2)]
    if system == "rq-worker":
        return [[str(bin_dir / "python"), str(RQ_CLI), "worker", "-u", url, *QUEUES] for _ in range(2)]
    if system == "rq-pool":
        return [[str(bin_dir / "python"), str(RQ_CLI), "worker-pool", "-u", url, "-n", "2", *QUEUES]]
    raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")


def roles(system: str, units: list[Unit]) -> dict[str, list[int]]:
    """Current master, worker and horse PIDs, by depth in each unit's process tree."""
    found: dict[str, list[int]] = {"master": [], "worker": [], "horse": []}
    for unit in units:
        root = unit.main_pid
        if root is None:
            continue
        for pid, depth in process_tree(root).items():
            if system in ("rq-worker", "workerd-worker"):  # main process = worker; its children = horses
                role = ("worker", "horse")[min(depth, 1)]
                if depth == 0:
                    found["master"].append(pid)
            else:
                role = ("master", "worker", "horse")[min(depth, 2)]
            found[role].append(pid)
    return found


def idle_worker_pids(conn: redis.Redis) -> set[int]:
    """PIDs of the registered workers (workerd's or RQ's) whose hash says they are idle."""
    with conn.pipeline(transaction=False) as pipe:
        for key in conn.smembers("rq:workers"):
            pipe.hmget(key, "state", "pid")
        replies = pipe.execute()
    return {int(pid) for state, pid in replies if state == b"idle" and pid and pid.isdigit()}


# --------------------------------------------------------------------------------------------------
# Analysis


def _decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _parse_records(raw: list[bytes], parents: dict[int, int]) -> list[tuple[float, int]]:
    """(time, pid) per record; the parent pid of each recorded process goes into `parents`."""
    out = []
    for item in raw:
        ts, pid, *rest = item.decode().split()
        if rest:
            parents[int(pid)] = int(rest[0])
        out.append((float(ts), int(pid)))
    return out


def failure_reason(entry_fields: dict[bytes, bytes] | None) -> str:
    """One short line from the job's latest result: the last line of its traceback, digits folded."""
    if not entry_fields:
        return "(no result entry)"
    raw = entry_fields.get(b"exc_string")
    if not raw:
        return "(failed result without exc_string)"
    try:
        text = zlib.decompress(base64.b64decode(raw)).decode("utf-8", "replace")
    except (ValueError, zlib.error):
        text = raw.decode("utf-8", "replace")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "(empty exc_string)"
    last = re.sub(r"\d+(\.\d+)?", "N", last)
    return last[:120]


_LABEL_SUBS = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "*"),
    (re.compile(r"[0-9a-f]{16,}"), "*"),
    (re.compile(r"(?<=:)\d+(?=:|$)"), "*"),
)
# Keys whose members are not "places a job can be run from": terminal registries, bookkeeping.
_NOT_CONTAINERS = (
    "chaos:", "rq:job:", "rq:results:", "rq:finished:", "rq:failed:", "rq:canceled:", "rq:executions:",
    "rq:workers", "rq:queues", "rq:groups", "rq:cron", "rq:scheduler",
)  # fmt: skip


def _label(key: str) -> str:
    for pattern, repl in _LABEL_SUBS:
        key = pattern.sub(repl, key)
    return key


def job_locations(conn: redis.Redis, job_ids: set[str]) -> dict[str, str]:
    """Where each job id is still held: any list, sorted set or set outside the terminal registries.

    Generic on purpose: it finds RQ's queues, intermediate lists, ``rq:wip`` (members
    ``<job>:<execution>``), scheduled/deferred registries, and whatever lists workerd keeps.
    """
    where: dict[str, str] = {}
    for raw_key in conn.scan_iter(count=1000):
        key = raw_key.decode("utf-8", "replace")
        if key.startswith(_NOT_CONTAINERS):
            continue
        kind = conn.type(raw_key)
        if kind == b"list":
            members = conn.lrange(raw_key, 0, -1)
        elif kind == b"zset":
            members = conn.zrange(raw_key, 0, -1)
        elif kind == b"set":
            members = list(conn.smembers(raw_key))
        else:
            continue
        label = _label(key)
        for member in members:
            jid = member.decode("utf-8", "replace").split(":")[0]
            if jid in job_ids:
                where.setdefault(jid, label)
    return where


Kills = dict[int, list[float]]  # pid -> times the harness signalled it (or one of its ancestors)


def analyze(conn: redis.Redis, jobs: list[JobSpec], killed: Kills, spool_dir: Path) -> dict[str, Any]:
    """Classify every job and count executions (see the module docstring)."""
    ids = [j.job_id for j in jobs]
    spec = {j.job_id: j for j in jobs}
    statuses: dict[str, str | None] = {}
    starts: dict[str, list[tuple[float, int]]] = {}
    ends: dict[str, list[tuple[float, int]]] = {}
    parents: dict[int, int] = {}  # pid of a process that ran a job -> its parent's (the worker)
    for chunk in _chunks(ids, 1000):
        pipe = conn.pipeline(transaction=False)
        for jid in chunk:
            pipe.hget(f"rq:job:{jid}", "status")
            pipe.exists(f"rq:job:{jid}")
            pipe.lrange(f"chaos:start:{jid}", 0, -1)
            pipe.lrange(f"chaos:end:{jid}", 0, -1)
        replies = pipe.execute()
        for k, jid in enumerate(chunk):
            status, exists, st, en = replies[4 * k : 4 * k + 4]
            statuses[jid] = _decode(status) if status is not None else ("created" if exists else None)
            starts[jid] = _parse_records(st, parents)
            ends[jid] = _parse_records(en, parents)
    # Records that could not reach Redis in time were spooled to files by the job.
    for path in spool_dir.glob("spool-*.txt"):
        for line in path.read_text().splitlines():
            kind, jid, ts, pid, *rest = line.split()
            if rest:
                parents[int(pid)] = int(rest[0])
            (starts if kind == "start" else ends).setdefault(jid, []).append((float(ts), int(pid)))
    for recs in (*starts.values(), *ends.values()):
        recs.sort()

    id_set = set(ids)
    locations = job_locations(conn, id_set)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    stuck_where: Counter[str] = Counter()
    lost_examples: list[dict[str, Any]] = []
    anomalies: Counter[str] = Counter()
    failed_ids = [jid for jid in ids if statuses[jid] == "failed"]
    for chunk in _chunks(failed_ids, 1000):
        pipe = conn.pipeline(transaction=False)
        for jid in chunk:
            pipe.xrevrange(f"rq:results:{jid}", count=1)
        for entries in pipe.execute():
            reasons[failure_reason(entries[0][1] if entries else None)] += 1
    for jid in ids:
        status = statuses[jid]
        if status == "finished":
            counts["finished"] += 1
            if not ends[jid]:
                anomalies["finished without a completed execution"] += 1
            if jid in locations:
                anomalies["finished but still in " + locations[jid]] += 1
        elif status == "failed":
            counts["failed"] += 1
            if jid in locations:
                anomalies["failed but still in " + locations[jid]] += 1
        elif status is not None and jid in locations:
            counts["stuck"] += 1
            stuck_where[f"{status} in {locations[jid]}"] += 1
        else:
            counts["lost"] += 1
            if len(lost_examples) < 10:
                lost_examples.append({"job_id": jid, "status": status, "executions": len(starts[jid])})

    def killed_at(pid: int, since: float) -> float | None:
        """When the process that ran a job, or its parent (the worker), was killed after `since`."""
        suspects = (pid, parents.get(pid, -1))
        times = [t for suspect in suspects for t in killed.get(suspect, ()) if t >= since - 0.05]
        return min(times) if times else None

    dup_killed = dup_other = 0
    dup_other_examples: list[dict[str, Any]] = []
    recovery_gaps: list[float] = []
    other_gaps: list[float] = []
    for jid in ids:
        runs = starts[jid]
        if len(runs) < 2:
            continue
        all_killed = True
        for (ts, pid), (next_ts, _) in itertools.pairwise(runs):
            kill_time = killed_at(pid, ts)
            if kill_time is not None:
                recovery_gaps.append(next_ts - kill_time)
            else:
                all_killed = False
                ended = [e for e, epid in ends[jid] if epid == pid and e >= ts]
                other_gaps.append(next_ts - (ended[0] if ended else ts + spec[jid].expected_s))
        if all_killed:
            dup_killed += 1
        else:
            dup_other += 1
            if len(dup_other_examples) < 10:
                dup_other_examples.append(
                    {
                        "job_id": jid,
                        "starts": runs,
                        "ends": ends[jid],
                        "killed": {pid: killed.get(pid, []) for _, pid in runs},
                    }
                )
    executions = sum(len(r) for r in starts.values())
    first = min((r[0][0] for r in starts.values() if r), default=None)
    last = max((r[-1][0] for r in ends.values() if r), default=None)
    return {
        "enqueued": len(ids),
        "finished": counts["finished"],
        "failed": counts["failed"],
        "failed_reasons": dict(reasons.most_common()),
        "lost": counts["lost"],
        "lost_examples": lost_examples,
        "stuck": counts["stuck"],
        "stuck_where": dict(stuck_where.most_common()),
        "never_executed": sum(1 for r in starts.values() if not r),
        "executions": executions,
        "dup_jobs": dup_killed + dup_other,
        "dup_after_kill": dup_killed,
        "dup_other": dup_other,
        "dup_other_examples": dup_other_examples,
        "longest_abandoned_s": round(max(recovery_gaps), 3) if recovery_gaps else None,
        "median_abandoned_s": round(statistics.median(recovery_gaps), 3) if recovery_gaps else None,
        "longest_gap_other_s": round(max(other_gaps), 3) if other_gaps else None,
        "anomalies": dict(anomalies),
        "jobs_per_s": _rate(counts["finished"], first, last),
    }


# --------------------------------------------------------------------------------------------------
# The run


def _rate(count: int, first: float | None, last: float | None) -> float | None:
    return round(count / (last - first), 1) if first and last and last > first else None


def _try(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return default


def _terminal_count(conn: redis.Redis, ids: list[str]) -> tuple[int, int]:
    """(number of jobs finished or failed, number of recorded execution starts)."""
    done = started = 0
    for chunk in _chunks(ids, 2000):
        pipe = conn.pipeline(transaction=False)
        for jid in chunk:
            pipe.hget(f"rq:job:{jid}", "status")
            pipe.llen(f"chaos:start:{jid}")
        replies = pipe.execute()
        done += sum(1 for s in replies[0::2] if s in (b"finished", b"failed"))
        started += sum(replies[1::2])
    return done, started


def run_scenario(
    system: str,
    scenario: str,
    jobs: int,
    *,
    seed: int = 1,
    duration_limit_s: float = 900.0,
    drain_s: float = 120.0,
    settle_s: float = 45.0,
    outage_s: float = 30.0,
    max_faults: int = 10000,
    bin_dir: str | Path | None = None,
    workerd_args: Iterable[str] | None = None,
    restart_sec: float = 1.0,
    stop_timeout_s: float = 10.0,
    keep_dir: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one chaos scenario end to end and return the counts (see ``analyze``) plus run facts.

    Every wait is bounded: fault phase ``duration_limit_s`` (it also ends when the queues are
    empty), drain ``drain_s`` (ends early when every job is finished/failed, or when nothing has
    changed for ``settle_s``). Every process started here is killed in ``finally``.
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    scen = SCENARIOS[scenario]
    say = log or (lambda _msg: None)
    rng = random.Random(f"faults:{seed}:{system}:{scenario}")
    bin_path = Path(bin_dir) if bin_dir else Path(sys.executable).parent
    if workerd_args is None:
        workerd_args = ["--hard-memory-limit", "200"] if scen.hog_fraction else []
    specs = make_jobs(scen, jobs, seed)
    ids = [s.job_id for s in specs]

    tmp = Path(tempfile.mkdtemp(prefix=f"chaos-{system}-{scenario}-"))
    spool = tmp / "spool"
    spool.mkdir()
    server = RedisServer(tmp, free_port())
    units: list[Unit] = []
    killed: dict[int, list[float]] = {}
    faults: Counter[str] = Counter()
    stopped: dict[int, float] = {}  # SIGSTOPped pid -> when to SIGCONT
    result: dict[str, Any] = {"system": system, "scenario": scenario, "title": scen.title, "seed": seed}
    conn = redis.Redis(port=server.port, socket_connect_timeout=1, socket_timeout=10)

    def note_kill(pids: list[int], why: str) -> None:
        now = time.time()
        for pid in pids:
            killed.setdefault(pid, []).append(now)
        if pids and why.startswith("systemd"):
            faults[why] += len(pids)

    def kill_subtree(pid: int) -> None:
        tree = list(process_tree(pid))
        if send(pid, signal.SIGKILL):
            note_kill(tree or [pid], "harness")

    t_start = time.monotonic()
    try:
        server.start()
        t0 = time.monotonic()
        enqueued = 0 if scen.trickle_per_s else len(specs)
        enqueue_jobs(conn, specs[:enqueued])
        result["enqueue_s"] = round(time.monotonic() - t0, 2)
        env = dict(os.environ)
        env.update(
            CHAOS_REDIS_URL=server.url,
            CHAOS_SPOOL_DIR=str(spool),
            PYTHONPATH=os.pathsep.join(p for p in (str(SCRIPTS_DIR), env.get("PYTHONPATH", "")) if p),
            PYTHONUNBUFFERED="1",
        )
        for k, argv in enumerate(system_argv(system, server.url, bin_path, workerd_args)):
            unit = Unit(
                f"{system}-{k}", argv, env, tmp / f"{system}-{k}.log", note_kill,
                restart_sec=restart_sec, stop_timeout_s=stop_timeout_s,
            )  # fmt: skip
            unit.start()
            units.append(unit)
        result["argv"] = [u.argv for u in units]
        say(f"{system}/{scenario}: {enqueued} of {jobs} jobs enqueued in {result['enqueue_s']} s; {server.url}; "
            f"dir {tmp}")  # fmt: skip

        # ---- fault phase
        fault_start = time.monotonic()
        next_at = {kind: fault_start + rng.uniform(*FAULT_INTERVALS[kind]) for kind in scen.faults}
        outage_until: float | None = None
        outage_done = not scen.outage
        next_check = 0.0
        total_faults = 0
        doomed: dict[int, float] = {}  # kill-idle: frozen idle worker -> when to SIGKILL it
        while True:
            now = time.monotonic()
            for unit in units:
                unit.tick(now)
            for pid, until in list(stopped.items()):
                if now >= until:
                    send(pid, signal.SIGCONT)
                    del stopped[pid]
            for pid, until in list(doomed.items()):
                if now >= until:
                    kill_subtree(pid)
                    del doomed[pid]
            due = min(len(specs), int((now - fault_start) * scen.trickle_per_s)) if scen.trickle_per_s else enqueued
            if due > enqueued and server.up:
                with contextlib.suppress(redis.RedisError):  # Redis is restarting: on the next turn
                    enqueue_jobs(conn, specs[enqueued:due])
                    enqueued = due
            if outage_until is not None and now >= outage_until:
                server.start()
                outage_until, outage_done = None, True
                say(f"  redis back after {outage_s} s outage")
            if not outage_done and outage_until is None and now - fault_start >= OUTAGE_AT_S:
                server.kill()
                faults["redis-outage"] += 1
                outage_until = now + outage_s
                say(f"  redis down for {outage_s} s")
            for kind, when in next_at.items():
                if now < when or total_faults >= max_faults:
                    continue
                next_at[kind] = now + rng.uniform(*FAULT_INTERVALS[kind])
                if kind == "redis-restart":
                    if faults[kind] >= REDIS_RESTARTS_MAX or not server.up:
                        continue
                    server.kill()
                    server.start()
                    faults[kind] += 1
                    total_faults += 1
                    continue
                candidates = [p for p in roles(system, units)[FAULT_ROLE[kind]] if p not in stopped and p not in doomed]
                if kind == "kill-idle":
                    idle = _try(lambda: idle_worker_pids(conn), set())
                    candidates = [p for p in candidates if p in idle]
                if not candidates:
                    continue
                victim = rng.choice(candidates)
                if kind == "kill-idle":
                    if send(victim, signal.SIGSTOP):
                        doomed[victim] = now + rng.uniform(*IDLE_FREEZE_S)
                        faults[kind] += 1
                        total_faults += 1
                elif kind == "sigstop":
                    if stopped:
                        continue  # one stopped worker at a time
                    if send(victim, signal.SIGSTOP):
                        stopped[victim] = now + rng.uniform(*SIGSTOP_HOLD_S)
                        faults[kind] += 1
                        total_faults += 1
                else:
                    kill_subtree(victim)
                    faults[kind] += 1
                    total_faults += 1
            if now >= next_check and server.up:
                next_check = now + 0.5
                backlog = _try(lambda: sum(conn.llen(f"rq:queue:{q}") for q in QUEUES))
                if backlog == 0 and outage_done and enqueued == len(specs):
                    break
            if all(unit.state in ("stopped", "failed") for unit in units):
                say("  every unit has stopped for good; ending the fault phase")
                break
            if now - fault_start >= duration_limit_s:
                say(f"  fault phase hit its limit of {duration_limit_s} s")
                result["fault_phase_hit_limit"] = True
                break
            time.sleep(0.05)
        for pid in list(stopped):
            send(pid, signal.SIGCONT)
        stopped.clear()
        for pid in list(doomed):
            kill_subtree(pid)
        doomed.clear()
        if not server.up:  # the limit can end the phase mid-outage
            server.start()
        result["fault_phase_s"] = round(time.monotonic() - fault_start, 1)
        say(f"  fault phase over after {result['fault_phase_s']} s: {dict(faults)}")

        # ---- drain
        # The cap counts from when the queue lists are empty (a fault phase cut short by its limit
        # leaves a backlog that is worked off here, without faults), bounded by drain_s +
        # duration_limit_s overall.
        drain_start = time.monotonic()
        last_change, last_state, backlog_gone = drain_start, None, drain_start
        result["drain_end"] = "cap"
        while True:
            now = time.monotonic()
            if now - backlog_gone >= drain_s or now - drain_start >= drain_s + duration_limit_s:
                break
            for unit in units:
                unit.tick(now)
            state = _try(lambda: _terminal_count(conn, ids))
            backlog = _try(lambda: sum(conn.llen(f"rq:queue:{q}") for q in QUEUES))
            if backlog:
                backlog_gone = now
            if state is not None:
                if state[0] == len(ids):
                    result["drain_end"] = "all finished or failed"
                    break
                if state != last_state:
                    last_state, last_change = state, now
                elif now - last_change >= settle_s:
                    result["drain_end"] = f"no progress for {settle_s:g} s"
                    break
            time.sleep(1.0)
        result["drain_s"] = round(time.monotonic() - drain_start, 1)
        say(f"  drain over after {result['drain_s']} s ({result['drain_end']})")

        # Freeze the system before counting, so that nothing moves while we look.
        result["unit_final_states"] = [u.state for u in units]
        for unit in units:
            unit.freeze()
        result.update(analyze(conn, specs, killed, spool))
        for unit in units:
            unit.kill_everything()
        result["faults"] = dict(faults)
        result["unit_starts"] = sum(u.starts for u in units)
        result["unit_exit_codes"] = dict(Counter(str(c) for u in units for c in u.exits))
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        result["jobs"] = jobs
        return result
    finally:
        for pid in stopped:
            send(pid, signal.SIGCONT)
        for unit in units:
            with contextlib.suppress(Exception):
                unit.kill_everything()
        conn.close()
        server.kill()
        if keep_dir:
            result["dir"] = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Report


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not measured"
    if "error" in r:
        return f"error: {r['error'][:60]}"
    gap = r.get("longest_abandoned_s")
    gap_s = "-" if gap is None else f"{gap:.1f} s"
    # Jobs still waiting in a queue list when the drain's time cap ended the run: not run yet, not lost.
    waiting = sum(n for where, n in r["stuck_where"].items() if where.startswith("queued in rq:queue:"))
    stuck = f"**{r['stuck']}**" + (f" ({waiting} waiting in a queue)" if waiting else "")
    return (
        f"{r['enqueued']} / {r['finished']} / {r['failed']} / **{r['lost']}** / {stuck} / "
        f"{r['dup_jobs']} ({r['dup_after_kill']}+{r['dup_other']}) / {gap_s}"
    )


def markdown(results: list[dict[str, Any]]) -> str:
    by_key = {(r["system"], r["scenario"]): r for r in results}
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in results)] or list(SYSTEMS)
    lines = [
        "Cell: enqueued / finished / failed-with-reason / **lost** / **stuck** / "
        "duplicated jobs (after a kill + other) / longest abandoned",
        "",
        "| scenario | " + " | ".join(f"`{s}`" for s in systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    for name, scen in SCENARIOS.items():
        if not any(r["scenario"] == name for r in results):
            continue
        lines.append(f"| {scen.title} | " + " | ".join(_cell(by_key.get((s, name))) for s in systems) + " |")
    lines += ["", "Failure reasons, stuck places, faults injected and run times per run:", ""]
    lines += ["| system | scenario | faults | failed reasons | stuck in | wall s (fault/drain) | end |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            continue
        reasons = "; ".join(f"{v} x {k}" for k, v in r["failed_reasons"].items()) or "-"
        where = "; ".join(f"{v} x {k}" for k, v in r["stuck_where"].items()) or "-"
        faults = ", ".join(f"{k} {v}" for k, v in r["faults"].items()) or "-"
        lines.append(
            f"| {r['system']} | {r['scenario']} | {faults} | {reasons.replace('|', '/')} | {where} | "
            f"{r['wall_s']} ({r['fault_phase_s']}/{r['drain_s']}) | {r['drain_end']} |"
        )
    return "\n".join(lines) + "\n"


def _load(path: str | None) -> list[dict[str, Any]]:
    if path and os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, list) else [data]
    return []


def _merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keyed = {(r["system"], r["scenario"]): r for r in old}
    keyed.update({(r["system"], r["scenario"]): r for r in new})
    order = {s: i for i, s in enumerate(SCENARIOS)}
    return sorted(keyed.values(), key=lambda r: (order.get(r["scenario"], 99), r["system"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="workerd", help=f"{', '.join(SYSTEMS)}, or a comma list")
    parser.add_argument("--scenario", default="kill-horses", help=f"{', '.join(SCENARIOS)}, or a comma list")
    parser.add_argument("--all", action="store_true", help="every system x every scenario")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--duration-limit", type=float, default=900.0, help="cap of the fault phase, s")
    parser.add_argument("--drain-s", type=float, default=120.0, help="cap of the drain wait, s")
    parser.add_argument("--settle-s", type=float, default=45.0, help="drain ends after no progress for S s")
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-faults", type=int, default=10000)
    parser.add_argument("--workerd-arg", action="append", default=None, help="extra workerd argument")
    parser.add_argument("--json", help="write results here; with --merge, merged into what is there")
    parser.add_argument("--merge", action="store_true", help="merge into --json instead of overwriting")
    parser.add_argument("--markdown", help="write the Markdown table here")
    parser.add_argument("--render", help="only render the Markdown table of this JSON results file")
    parser.add_argument("--keep-dir", action="store_true")
    args = parser.parse_args(argv)

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Started in the background by a non-interactive shell, SIGINT is ignored; make TERM and INT
    # both unwind through run_scenario's ``finally``, which stops every process it started.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)

    if args.render:
        text = markdown(_load(args.render))
        if args.markdown:
            Path(args.markdown).write_text(text)
        print(text)
        return 0
    systems = list(SYSTEMS) if args.all else args.system.split(",")
    scenarios = list(SCENARIOS) if args.all else args.scenario.split(",")
    results = []
    for scenario in scenarios:
        for system in systems:
            try:
                res = run_scenario(
                    system, scenario, args.jobs, seed=args.seed, duration_limit_s=args.duration_limit,
                    drain_s=args.drain_s, settle_s=args.settle_s, outage_s=args.outage_s,
                    max_faults=args.max_faults, workerd_args=args.workerd_arg, keep_dir=args.keep_dir,
                    log=lambda msg: print(msg, file=sys.stderr, flush=True),
                )  # fmt: skip
            except Exception as exc:  # one broken run must not stop the matrix
                res = {"system": system, "scenario": scenario, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(res), flush=True)
            results.append(res)
            if args.json:  # written after every run, so a long matrix can be stopped and resumed
                merged = _merge(_load(args.json) if args.merge else [], results)
                Path(args.json).write_text(json.dumps(merged, indent=1) + "\n")
    table_of = _merge(_load(args.json), results) if (args.json and args.merge) else results
    text = markdown(table_of)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.all or args.markdown:
        print(text)
    bad = [r for r in results if "error" in r or r.get("lost") or r.get("stuck")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
