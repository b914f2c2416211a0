"""Shared fixtures: a redis-server of the suite's own, bounded waits, and the real `workerd` binary."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = Path(__file__).resolve().parent / "jobs_dir"
WORKERD = str(Path(sys.executable).with_name("workerd"))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:  # fmt: skip
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def wait_until_blocked(r: redis.Redis, timeout: float = 10.0) -> None:
    """Wait until some client of this Redis is blocked waiting for a job (CLIENT LIST flag b). A worker
    writes "state idle" before its next fetch, so a job enqueued on seeing that state may still be
    found by that fetch rather than by a wake-up; a blocked connection means the fetch came up empty."""
    wait_until(lambda: any("b" in c.get("flags", "") for c in r.client_list()), timeout=timeout,
               message="a worker to block waiting for a job")  # fmt: skip


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    if redis_server.process is None:  # a test stopped it
        redis_server.start()
    client = redis_server.client()
    # An earlier test's killed workers are gone from Redis only once Redis has read their sockets'
    # close: until then a wait of theirs still blocked would be handed this test's first job (a
    # workerd wait moves it into the dead worker's claim list, whose lease this flush forgets).
    for blocked in (c for c in client.client_list() if "b" in c.get("flags", "")):
        client.client_kill_filter(_id=blocked["id"])
    client.flushall()
    return client


@pytest.fixture
def redis_url(r: redis.Redis, redis_server: RedisServer) -> str:
    return redis_server.url


class WorkerdProcess:
    """The real `workerd` binary (or another `program`, such as `rq`), run as a subprocess in its own
    session, output captured to a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, program: Sequence[str] = (WORKERD,)) -> None:  # fmt: skip
        self.log_path = log_path
        environment = {**os.environ, "PYTHONPATH": f"{JOBS_DIR}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}
        environment.update(env or {})
        self._log = log_path.open("wb")
        self.process = subprocess.Popen([*program, *args], stdout=self._log, stderr=subprocess.STDOUT,
                                        env=environment, cwd=cwd or JOBS_DIR, start_new_session=True)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"workerd did not exit within {timeout} s; output:\n{self.output()}") from None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_for_output(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: text in self.output(), timeout, message=f"{text!r} in workerd output:\n{self.output()}")

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def workerd(tmp_path: Path) -> Iterator[Callable[..., WorkerdProcess]]:
    started: list[WorkerdProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> WorkerdProcess:
        proc = WorkerdProcess(list(args), tmp_path / f"workerd-{len(started)}.log", env=env, cwd=cwd)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill_all()


def run_workerd(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run `workerd` to completion (burst, --check, ...) and return its exit code and output."""
    environment = {**os.environ, "PYTHONPATH": f"{JOBS_DIR}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}
    environment.update(env or {})
    return subprocess.run([WORKERD, *args], capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=cwd or JOBS_DIR)  # fmt: skip


@pytest.fixture
def forked() -> Iterator[Callable[[Callable[[], int]], int]]:
    """Run a function in a forked child that os._exit()s with its return value (the worker forks horses)."""

    def run(body: Callable[[], int]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = body()
            finally:
                os._exit(code)
        status: list[int] = []

        def reaped() -> bool:
            done, raw = os.waitpid(pid, os.WNOHANG)
            status.extend([raw] if done else [])
            return bool(done)

        try:
            wait_until(reaped, 60, interval=0.05, message="the forked worker script to exit")
        finally:
            if not status:  # a hung script must not outlive the test
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status[0])

    yield run


# -- how pytest-xdist shares the tests out (scripts/test.sh: -n 4 --dist load) -----------------------
# Tests go out one at a time, except those of the files below, which one process runs whole: their
# module fixtures are expensive (the .deb and .rpm builds, the interop scenario run four ways, a
# Sentinel set-up, TLS certificates, 27 workerd runs at once), or, for the chaos runs, two at once
# would load both cores and starve each other's workers past their leases. (xdist's own loadgroup
# marks do nothing under pytest 9.2, which no longer reads the nodeid xdist rewrites.)
ONE_PROCESS_FILES = frozenset({"test_chaos.py", "test_fuzz.py", "test_interop.py", "test_packaging.py",
                               "test_packaging_rpm.py", "test_redis_auth.py", "test_scaling.py",
                               "test_security.py", "test_settings.py"})  # fmt: skip
# Those files go out first (largest first), then single tests in collection order: the slowest files'
# first, so that no long test starts last while the other processes sit idle (wall times measured
# on the 2-core machine).
LONGEST_FILES_FIRST = ("test_systemd.py", "test_parity.py", "test_outages.py", "test_observability.py",
                       "test_commit_faults.py", "test_supervisor.py", "test_worker.py", "test_job_ids.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for by name: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class OneProcessFilesScheduling(LoadScopeScheduling):
        """xdist's scope scheduling (as its own LoadFileScheduling, which makes every file a scope), a
        scope being a whole file for ONE_PROCESS_FILES, else one test. Scopes go out largest first."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in ONE_PROCESS_FILES else nodeid

    return OneProcessFilesScheduling(config, log)
