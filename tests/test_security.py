"""Untrusted-Redis mode (ALLOWED_FUNCTIONS with json) and passwords that never leak (issue 5)."""

from __future__ import annotations

import grp
import json
import logging
import os
import pickle
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import JOBS_DIR, WorkerdProcess, run_workerd, wait_until
from tests.redis_server import RedisServer, make_tls_files
from workerd import Job, Queue, schema
from workerd import config as workerd_config
from workerd.errors import ConfigError
from workerd.worker import Worker

ALLOW = ("--serializer", "json", "--allowed-function", "reliability_jobs.*", "--allowed-function", "testjobs.add")


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if value else None


def _exc(r: redis.Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=r, serializer="json").exc_info or ""


def _forge(r: redis.Redis, data: bytes, **fields: str) -> str:
    """A job written straight into Redis, as anyone with write access could."""
    job = Queue("default", connection=r, serializer="json").enqueue("reliability_jobs.add", 0, 0)
    r.hset(schema.job_key(job.id), mapping={"data": data, **fields})
    return job.id


class _PickleBomb:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


# -- untrusted-Redis mode ------------------------------------------------------------------------


@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_forged_jobs_cannot_run_outside_the_allowlist(r: redis.Redis, redis_url: str, tmp_path: Path,
                                                      execution: str) -> None:  # fmt: skip
    touched = tmp_path / "touched"
    system = _forge(r, zlib.compress(json.dumps(["os.system", None, [f"touch {touched}"], {}]).encode()))
    on_import = _forge(r, zlib.compress(json.dumps(["raises_on_import.run", None, [], {}]).encode()))
    method = _forge(r, zlib.compress(json.dumps(["add", {"start": 1}, [2], {}]).encode()))
    call = _forge(r, zlib.compress(json.dumps(["__call__", {"x": 1}, [], {}]).encode()))
    callback = _forge(r, zlib.compress(json.dumps(["reliability_jobs.add", None, [1, 2], {}]).encode()),
                      success_callback_name="os.system")  # fmt: skip
    bomb = _forge(r, zlib.compress(pickle.dumps(_PickleBomb(str(touched)))))
    allowed = Queue("default", connection=r, serializer="json").enqueue("reliability_jobs.add", 20, 22)
    also_allowed = Queue("default", connection=r, serializer="json").enqueue("testjobs.add", 1, 1)
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution, *ALLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    for job_id in (system, on_import, method, call, callback, bomb):
        assert _status(r, job_id) == "failed", job_id
    assert "function 'os.system' of job" in _exc(r, system) and "not in ALLOWED_FUNCTIONS" in _exc(r, system)
    assert "not in ALLOWED_FUNCTIONS" in _exc(r, on_import)
    assert "refuses to be imported" not in _exc(r, on_import)  # refused before importing
    assert "on an instance" in _exc(r, method) and "on an instance" in _exc(r, call)
    assert "the success callback 'os.system'" in _exc(r, callback)
    assert "could not be decoded with the json serializer" in _exc(r, bomb)
    assert not touched.exists()  # neither os.system ran nor the pickle was loaded
    assert Job.fetch(allowed.id, connection=r, serializer="json").return_value() == 42
    assert _status(r, also_allowed.id) == "finished"


def test_the_allowlist_with_pickle_refuses_to_start(redis_url: str) -> None:
    result = run_workerd("-u", redis_url, "--burst", "--allowed-function", "myapp.tasks.*")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "allowed_functions" in result.stderr and "needs SERIALIZER = 'json'" in result.stderr
    with pytest.raises(ConfigError, match="needs SERIALIZER = 'json'"):
        Worker(["default"], connection=redis.Redis.from_url(redis_url), allowed_functions=["myapp.*"])


def test_patterns_match_dotted_paths() -> None:
    from workerd.untrusted import is_allowed, settings_problem

    assert is_allowed("myapp.tasks.send", ["myapp.tasks.*"])
    assert not is_allowed("myapp.tasksx.send", ["myapp.tasks.*"])
    assert not is_allowed("os.system", ["myapp.tasks.*"])
    assert not is_allowed("MYAPP.tasks.send", ["myapp.tasks.*"])  # case-sensitive, as import paths are
    # No wildcard crosses a dot (fnmatch's * did: myapp.tasks.os.system matched myapp.tasks.*).
    assert not is_allowed("myapp.tasks.os.system", ["myapp.tasks.*"])
    assert not is_allowed("myapp.tasks.os.system", ["myapp.*.system"])
    assert not is_allowed("myapp.tasks.xy.z", ["myapp.tasks.?.z", "myapp.*"])
    assert is_allowed("myapp.tasks.a.y", ["myapp.tasks.?.y"])
    assert is_allowed("myapp.tasks.send_mail", ["myapp.tasks.send_*"])
    assert not is_allowed("myapp.tasks.send.mail", ["myapp.tasks.send*"])
    # ** is a whole segment for any depth (one or more names).
    assert is_allowed("myapp.tasks.a.b.send", ["myapp.**"]) and is_allowed("myapp.a.run", ["myapp.**.run"])
    assert not is_allowed("myapp", ["myapp.**"]) and not is_allowed("myappx.a", ["myapp.**"])
    assert is_allowed("myapp.reports.build", ["myapp.reports.build"])  # exact names match exactly
    assert not is_allowed("myapp.reports.builder", ["myapp.reports.build"])
    assert not is_allowed("myapp.reports.build", ["myapp.reports.buil[a-z]"])  # no fnmatch classes...
    for bad in ("myapp.tasks.[a-z]*", "myapp.**x", "myapp..x", "myapp tasks", "myapp.***"):
        assert "is not a pattern of dotted names" in (settings_problem("json", [bad]) or ""), bad  # ...refused
    assert settings_problem("json", ["myapp.tasks.*", "myapp.**.run", "a_b.c?"]) is None


def _call_data(func_name: str, *args: object) -> bytes:
    return zlib.compress(json.dumps([func_name, None, list(args), {}]).encode())


STAR = ("--allowed-function", "untrusted_pkg.*", "--allowed-function", "untrusted_pkg.tasks.*")
ANY_DEPTH = ("--allowed-function", "untrusted_pkg.tasks.**")


@pytest.mark.parametrize("patterns", [STAR, ANY_DEPTH], ids=["star", "any-depth"])
@pytest.mark.parametrize("execution", ["fork", "inprocess"])
def test_an_allowed_module_exports_nothing_it_imports(r: redis.Redis, redis_url: str, tmp_path: Path, execution: str,
                                                     patterns: tuple[str, ...]) -> None:  # fmt: skip
    """untrusted_pkg.tasks does `import os`, `import subprocess`, `from os import system`, keeps the
    builtin `open` and re-exports untrusted_pkg.admin.wipe: none of it runs through an allowed path,
    whether the pattern stops the path (star) or the check of what the import resolved to does
    (any-depth). Each forged call would leave a file in tmp_path."""
    forged = {
        "import os": _forge(r, _call_data("untrusted_pkg.tasks.os.system", f"touch {tmp_path / 'system'}")),
        "import subprocess": _forge(r, _call_data("untrusted_pkg.tasks.subprocess.run",
                                                  ["touch", str(tmp_path / "run")])),
        "from os import system": _forge(r, _call_data("untrusted_pkg.tasks.system", f"touch {tmp_path / 'system2'}")),
        "a builtin": _forge(r, _call_data("untrusted_pkg.tasks.open_file", str(tmp_path / "open"), "w")),
        "__builtins__": _forge(r, _call_data("untrusted_pkg.tasks.__builtins__.get", "open")),
        "* across a dot": _forge(r, _call_data("untrusted_pkg.admin.wipe")),
        "re-exported": _forge(r, _call_data("untrusted_pkg.tasks.wipe")),
        "success callback": _forge(r, _call_data("untrusted_pkg.tasks.echo", 1),
                                   success_callback_name="untrusted_pkg.tasks.wipe"),
        "failure callback": _forge(r, _call_data("untrusted_pkg.tasks.echo"),  # a TypeError: it fails
                                   failure_callback_name="untrusted_pkg.tasks.os.system"),
    }  # fmt: skip
    legit = Queue("default", connection=r, serializer="json").enqueue("untrusted_pkg.tasks.echo", 42)
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution, "--serializer", "json", *patterns,
                         env={"UNTRUSTED_MARKERS": str(tmp_path)})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for shape, job_id in forged.items():
        assert _status(r, job_id) == "failed", shape
        assert _exc(r, job_id).startswith("UntrustedJobRefused: "), (shape, _exc(r, job_id))
    assert list(tmp_path.iterdir()) == []  # nothing forged ran
    assert Job.fetch(legit.id, connection=r, serializer="json").return_value() == 42
    if patterns == ANY_DEPTH:  # the path matched: what refused it is the check after the import
        assert "reaches 'untrusted_pkg.tasks.os', which is a module" in _exc(r, forged["import os"])
        assert "reaches 'untrusted_pkg.tasks.system', which is a builtin function" in _exc(
            r, forged["from os import system"]
        )
        assert "resolves to 'untrusted_pkg.admin.wipe'" in _exc(r, forged["success callback"])
        assert "reaches 'untrusted_pkg.tasks.open_file', which is a builtin" in _exc(r, forged["a builtin"])
        assert "resolves to 'untrusted_pkg.admin.wipe'" in _exc(r, forged["re-exported"])


def test_the_stopped_callback_is_checked_where_it_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker runs on_stopped itself (and on_failure of an abandoned job): the same check."""
    monkeypatch.syspath_prepend(str(JOBS_DIR))
    monkeypatch.setenv("UNTRUSTED_MARKERS", str(tmp_path))
    from workerd.execution import UnixSignalDeathPenalty, run_callback
    from workerd.untrusted import UntrustedJobRefused

    job = Job(id="stop-me", stopped_callback_name="untrusted_pkg.tasks.wipe")
    with pytest.raises(UntrustedJobRefused, match=r"resolves to 'untrusted_pkg\.admin\.wipe'"):
        run_callback(job, "stopped", UnixSignalDeathPenalty, ["untrusted_pkg.tasks.*"])
    assert list(tmp_path.iterdir()) == []


# -- passwords ------------------------------------------------------------------------------------

PASSWORD = "pw-Zq81-never-print"


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=PASSWORD, appendonly=True)
    server.start()
    yield server
    server.stop(kill=True)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def test_the_password_never_appears(locked_server: RedisServer, workerd: Callable[..., WorkerdProcess],
                                    tmp_path: Path) -> None:  # fmt: skip
    r = locked_server.client()
    url = locked_server.url
    assert PASSWORD in url
    log_file = tmp_path / "workerd.log"
    job = Queue("default", connection=r).enqueue("reliability_jobs.record", str(tmp_path / "runs"), "slow", 3.0)
    proc = workerd("-u", url, "--workers", "2", "--heartbeat-interval", "0.5", "--log-file", str(log_file))
    wait_until(lambda: (tmp_path / "runs").exists(), message="the job to start")
    master = psutil.Process(proc.pid)
    processes = [master, *master.children(recursive=True)]
    assert len(processes) >= 4  # master, 2 workers, 1 horse
    for process in processes:
        assert PASSWORD not in _cmdline(process.pid), _cmdline(process.pid)
    for key in r.keys("rq:worker:*"):
        assert PASSWORD.encode() not in b" ".join(k + b"=" + v for k, v in r.hgetall(key).items())
    clients = r.execute_command("CLIENT", "LIST")
    assert PASSWORD not in (clients if isinstance(clients, str) else clients.decode())
    # An outage: the logged URL is masked too.
    locked_server.stop()
    proc.wait_for_output("cannot reach Redis", timeout=15)
    locked_server.start()
    wait_until(lambda: _status(locked_server.client(), job.id) == "finished", timeout=30, message="the job")
    proc.wait_for_output("reachable again", timeout=15)
    proc.signal(signal.SIGTERM)
    proc.wait(timeout=30)
    for text in (proc.output(), log_file.read_text()):
        assert "cannot reach Redis at redis://:***@127.0.0.1" in text
        assert PASSWORD not in text
    printed = run_workerd("-u", url, "--print-config")
    assert printed.returncode == 0 and "redis_url" in printed.stdout
    assert PASSWORD not in printed.stdout + printed.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
@pytest.mark.parametrize("kind", ["toml", "py"])
def test_a_settings_file_with_a_password_readable_by_others_gets_a_warning(tmp_path: Path, mode: int,
                                                                            kind: str) -> None:  # fmt: skip
    path = tmp_path / f"settings.{kind}"
    if kind == "toml":
        path.write_text(f'redis_url = "redis://:{PASSWORD}@127.0.0.1:6379/0"\n')
    else:
        path.write_text(f'REDIS_PASSWORD = "{PASSWORD}"\n')
    os.chmod(path, mode)
    result = run_workerd("-c", str(path), "--print-config")
    assert result.returncode == 0, result.stderr
    # The file's group is this process's own: only the world bit exposes it.
    warned = f"{path} holds a password and is readable by every user" in result.stderr
    assert warned == bool(mode & 0o004), result.stderr
    if warned:
        assert f"chmod 640 {path}" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def _foreign_group() -> grp.struct_group:
    """A group that is neither root's, nor this process's, nor the service's."""
    for group in grp.getgrall():
        if group.gr_gid not in {0, os.getegid()} and group.gr_name != workerd_config.SERVICE_GROUP:
            return group
    pytest.skip("no group other than root's and this process's on this machine")


@pytest.mark.parametrize("service_group", [False, True])
def test_a_group_readable_password_warns_unless_the_group_is_the_services(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, service_group: bool
) -> None:
    group = _foreign_group()
    path = tmp_path / "app.toml"
    path.write_text(f'redis_url = "redis://:{PASSWORD}@127.0.0.1:6379/0"\n')
    try:
        os.chown(path, -1, group.gr_gid)
    except PermissionError:
        pytest.skip("giving a file another group needs root")
    os.chmod(path, 0o640)
    if service_group:
        # As the package's units name it: root checking the file the service will read.
        monkeypatch.setattr(workerd_config, "SERVICE_GROUP", group.gr_name)
    with caplog.at_level(logging.WARNING, logger="workerd"):
        workerd_config.read_settings_file(str(path))
    warnings = [r.getMessage() for r in caplog.records if "holds a password" in r.getMessage()]
    if service_group:
        assert warnings == []
    else:
        assert warnings == [
            f"{path} holds a password and is readable by the members of group {group.gr_name} (mode 0640); "
            f"restrict it: chmod 640 {path} and chgrp it to the service's group (or chmod 600 and chown it "
            "to the user workerd runs as)"
        ]


def test_a_settings_file_without_a_password_gets_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('redis_url = "redis://127.0.0.1:6379/0"\n')
    os.chmod(path, 0o644)
    result = run_workerd("-c", str(path), "--print-config")
    assert result.returncode == 0 and "holds a password" not in result.stderr


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", tls_dir=make_tls_files(tmp_path / "tls"))
    server.start()
    yield server
    server.stop(kill=True)


def test_rqs_tls_settings_reach_redis(tls_server: RedisServer, tmp_path: Path,
                                      workerd: Callable[..., WorkerdProcess]) -> None:  # fmt: skip
    """rq's REDIS_SSL_* names in a settings module, and the same options with a rediss:// URL in TOML:
    the job runs over TLS, verified against the CA given."""
    assert tls_server.tls_dir is not None
    ca = tls_server.tls_dir / "ca.crt"
    rq_module = tmp_path / "rq_settings.py"
    rq_module.write_text(f"REDIS_HOST = '127.0.0.1'\nREDIS_PORT = {tls_server.tls_port}\nREDIS_SSL = True\n"
                         f"REDIS_SSL_CA_CERTS = '{ca}'\nREDIS_SSL_CERT_REQS = 'required'\n")  # fmt: skip
    toml = tmp_path / "settings.toml"
    toml.write_text(f'redis_url = "rediss://127.0.0.1:{tls_server.tls_port}/0"\nredis_ssl_ca_certs = "{ca}"\n')
    r = tls_server.client()  # the plain port, to look at what the TLS clients wrote
    for config in (rq_module, toml):
        job = Queue("default", connection=r).enqueue("testjobs.add", 2, 3)
        result = run_workerd("-c", str(config), "--burst")
        assert result.returncode == 0, result.stderr
        assert _status(r, job.id) == "finished", config


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls_files(tmp_path_factory.mktemp("other-tls")) / "ca.crt"


@pytest.mark.parametrize("command", [["--burst"], [], ["--workers", "1"], ["health"], ["info"]],
                         ids=["burst", "single-worker", "pool", "health", "info"])  # fmt: skip
@pytest.mark.parametrize("failure", ["no-ca", "wrong-ca", "hostname-mismatch"])
def test_a_certificate_that_fails_verification_is_a_settings_error_at_once(
    tls_server: RedisServer, other_ca: Path, tmp_path: Path, command: list[str], failure: str
) -> None:
    """Like a refused password: every retry and restart meets the same certificate, so exit 78 at once
    (systemd does not restart into a loop), saying what to fix, instead of 25 s of outage retries and 69."""
    assert tls_server.tls_dir is not None
    host, ca = "127.0.0.1", tls_server.tls_dir / "ca.crt"
    if failure == "wrong-ca":
        ca = other_ca
    elif failure == "hostname-mismatch":
        host = "localhost"  # the certificate is for IP 127.0.0.1 only
    lines = f'redis_url = "rediss://{host}:{tls_server.tls_port}/0"\n'
    if failure != "no-ca":
        lines += f'redis_ssl_ca_certs = "{ca}"\n'
    toml = tmp_path / "settings.toml"
    toml.write_text(lines)
    subcommand = command[:1] if command[:1] in (["health"], ["info"]) else []
    args = [*subcommand, "-c", str(toml)] if subcommand else ["-c", str(toml), *command]
    started = time.monotonic()
    result = run_workerd(*args, timeout=60)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    assert elapsed < 10, f"took {elapsed:.1f} s: retried as if Redis were down\n{output}"
    assert "failed verification" in output and "REDIS_SSL_CA_CERTS" in output, output
    assert "retrying" not in output and "unreachable" not in output and "unhealthy" not in output, output


def test_tls_options_without_tls_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "settings.toml"
    toml.write_text(f'redis_url = "redis://127.0.0.1:1/0"\nredis_ssl_ca_certs = "{toml}"\n')
    result = run_workerd("-c", str(toml), "--check")
    assert result.returncode == 78
    assert "redis_ssl_ca_certs" in result.stderr and "does not use TLS" in result.stderr


@pytest.mark.parametrize("credentials", ["wrong", "missing"])
def test_a_refused_password_is_a_settings_error_at_once(locked_server: RedisServer, credentials: str) -> None:
    wrong = "not-the-Pa55word-xyz"
    netloc = f":{wrong}@" if credentials == "wrong" else ""
    url = f"redis://{netloc}127.0.0.1:{locked_server.port}/0"
    started = time.monotonic()
    result = run_workerd("--burst", "-u", url, timeout=30)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 77, output
    assert elapsed < 10, f"took {elapsed:.1f} s: retried as if Redis were down"
    assert "refused workerd's credentials" in output and "not an outage" in output, output
    assert "check that Redis is running" not in output and "unreachable" not in output, output
    assert wrong not in output and PASSWORD not in output
