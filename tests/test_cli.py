"""`workerd` as a drop-in for `rq worker`: every option of docs/PROTOCOL.md §9.1/§9.2, parsed and observed.

Behaviour is checked on the real binary against the suite's redis-server, mostly with `--burst`.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import WorkerdProcess, run_workerd, wait_until
from tests.redis_server import free_port
from workerd import Job, Queue, schema
from workerd.cli import _cli_values, build_parser
from workerd.config import build_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _settings_from(argv: list[str]) -> Any:
    args = build_parser().parse_args(argv)
    settings, _ = build_settings(_cli_values(args), args.config)
    return settings


def _ok(result: Any) -> str:
    output: str = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
    return output


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if isinstance(value, bytes) else value


# -- parsing a real-world rq command line --------------------------------------------------------


def test_a_long_rq_worker_command_line_means_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKERD_") or name in ("RQ_REDIS_URL", "RQ_CONFIG"):
            monkeypatch.delenv(name)
    settings_dir = tmp_path / "app"
    settings_dir.mkdir()
    module = f"rqsettings_{uuid.uuid4().hex[:8]}"
    (settings_dir / f"{module}.py").write_text('QUEUES = ["ignored"]\nDICT_CONFIG = {"version": 1}\n')
    pid_file = tmp_path / "worker.pid"
    # `rq worker` followed by these arguments, as found in supervisor configs (-c by dotted name, -P).
    argv = [
        "-u",
        "redis://:hunter2@redis.internal:6380/3",
        "-c",
        module,
        "-P",
        str(settings_dir),
        "-P",
        "/srv/lib",
        "--burst",
        "--name",
        "billing-1",
        "--results-ttl",
        "3600",
        "--worker-ttl",
        "600",
        "--job-monitoring-interval",
        "15",
        "--max-jobs",
        "1000",
        "--max-idle-time",
        "300",
        "-w",
        "workerd.Worker",
        "-j",
        "workerd.Job",
        "--queue-class",
        "workerd.Queue",
        "--connection-class",
        "redis.Redis",
        "-S",
        "json",
        "--logging_level",
        "debug",
        "--log-format",
        "%(asctime)s %(levelname)s %(message)s",
        "--date-format",
        "%Y-%m-%d %H:%M:%S",
        "--disable-job-desc-logging",
        "--exception-handler",
        "cli_handlers.record_first",
        "--exception-handler",
        "cli_handlers.stop_chain",
        "-d",
        "--sentry-dsn",
        "https://key@sentry.example/1",
        "--pid",
        str(pid_file),
        "-ds",
        "round_robin",
        "--with-scheduler",
        "--maintenance-interval",
        "120",
        "high",
        "default",
        "low",
    ]
    settings = _settings_from(argv)
    expected = {
        "name": "billing-1",
        "path": [str(settings_dir), "/srv/lib"],
        "burst": True,
        "result_ttl": 3600,
        "worker_ttl": 600,
        "job_monitoring_interval": 15,
        "max_jobs": 1000,
        "max_idle_time": 300,
        "worker_class": "workerd.Worker",
        "job_class": "workerd.Job",
        "queue_class": "workerd.Queue",
        "connection_class": "redis.Redis",
        "serializer": "json",
        "log_level": "DEBUG",
        "log_format": "%(asctime)s %(levelname)s %(message)s",
        "date_format": "%Y-%m-%d %H:%M:%S",
        "disable_job_desc_logging": True,
        "disable_default_exception_handler": True,
        "exception_handlers": ["cli_handlers.record_first", "cli_handlers.stop_chain"],
        "pid": str(pid_file),
        "dequeue_strategy": "round_robin",
        "with_scheduler": True,
        "maintenance_interval": 120,
        "queues": ["high", "default", "low"],
        "dict_config": {"version": 1},
    }
    assert {key: getattr(settings, key) for key in expected} == expected
    assert settings.redis_url.get_secret_value() == "redis://:hunter2@redis.internal:6380/3"
    assert settings.sentry_dsn.get_secret_value() == "https://key@sentry.example/1"
    # The binary reads the same line the same way.
    result = run_workerd(*argv, "--print-config")
    shown = tomllib.loads(_ok(result).split("workerd: error")[0])
    assert {key: shown[key] for key in expected} == expected
    assert "hunter2" not in result.stdout and shown["redis_url"] == "redis://:***@redis.internal:6380/3"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        ([], "INFO"),
        (["-v"], "DEBUG"),
        (["--verbose"], "DEBUG"),
        (["-q"], "WARNING"),
        (["--quiet"], "WARNING"),
        (["--logging_level", "error"], "ERROR"),
        (["-l", "critical"], "CRITICAL"),
        (["--logging_level", "warn"], "WARNING"),
    ],
)
def test_log_level_flags(argv: list[str], level: str) -> None:
    assert _settings_from(argv).log_level == level


def test_short_flags_and_defaults_are_rqs() -> None:
    defaults = _settings_from([])
    assert (defaults.result_ttl, defaults.worker_ttl, defaults.job_monitoring_interval) == (500, 420, 30)
    assert (defaults.maintenance_interval, defaults.dequeue_strategy, defaults.serializer) == (600, "default", "pickle")
    assert (defaults.log_format, defaults.date_format, defaults.queues) == (
        "%(asctime)s %(message)s",
        "%H:%M:%S",
        ["default"],
    )
    short = _settings_from(
        [
            "-b",
            "-n",
            "w",
            "-S",
            "json",
            "-d",
            "-s",
            "-ds",
            "random",
            "-w",
            "a.B",
            "-j",
            "c.D",
            "-P",
            "/x",
            "-u",
            "redis://h/1",
            "--results-ttl",
            "-1",
        ]
    )
    assert (short.burst, short.name, short.serializer, short.disable_default_exception_handler) == (
        True,
        "w",
        "json",
        True,
    )
    assert (short.with_scheduler, short.dequeue_strategy, short.worker_class, short.job_class) == (
        True,
        "random",
        "a.B",
        "c.D",
    )
    assert short.path == ["/x"] and short.result_ttl == -1


# -- behaviour, with a real --burst run ------------------------------------------------------------


def test_name_and_results_ttl(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.add", 2, 3)
    output = _ok(run_workerd("-u", redis_url, "--burst", "--name", "cli-named", "--results-ttl", "120"))
    assert "Worker cli-named: started" in output
    assert r.exists(schema.worker_key("cli-named"))
    assert r.hget(schema.job_key(job.id), "worker_name") == b"cli-named"
    assert _status(r, job.id) == "finished"
    assert 100 < r.ttl(schema.job_key(job.id)) <= 120
    assert "result is kept for 120 seconds" in output


def test_max_jobs_exits_after_n_jobs(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    jobs = [q.enqueue("testjobs.add", i, i) for i in range(3)]
    output = _ok(run_workerd("-u", redis_url, "--max-jobs", "2", timeout=30))  # not burst: max-jobs stops it
    assert [_status(r, job.id) for job in jobs] == ["finished", "finished", "queued"]
    assert "max jobs" in output


def test_max_idle_time_stops_a_worker_that_is_not_in_burst_mode(
    r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess]
) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.add", 1, 1)
    proc = workerd("-u", redis_url, "--max-idle-time", "1", "--heartbeat-interval", "0.5")
    assert proc.wait(timeout=20) == 0, proc.output()
    assert _status(r, job.id) == "finished"
    assert "max idle time" in proc.output()


def test_pid_file_is_written_while_running_and_removed_after(
    tmp_path: Path, r: redis.Redis, redis_url: str, workerd: Callable[..., WorkerdProcess]
) -> None:
    pid_file = tmp_path / "run" / "workerd.pid"
    pid_file.parent.mkdir()
    proc = workerd("-u", redis_url, "--pid", str(pid_file), "--worker-ttl", "100", "-n", "pid-worker")
    wait_until(pid_file.exists, timeout=15, message="the pid file")
    assert pid_file.read_text().strip() == str(proc.pid)
    wait_until(lambda: r.exists(schema.worker_key("pid-worker")), message="the worker's registration")
    assert 0 < r.ttl(schema.worker_key("pid-worker")) <= 160  # worker ttl + 60, as rq
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.output()
    assert not pid_file.exists()


def test_log_format_and_date_format_shape_every_line(r: redis.Redis, redis_url: str) -> None:
    Queue("default", connection=r).enqueue("testjobs.add", 2, 3)
    output = _ok(
        run_workerd(
            "-u",
            redis_url,
            "--burst",
            "--log-format",
            "[%(asctime)s] %(levelname)s: %(message)s",
            "--date-format",
            "%Y/%j",
        )
    )
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) >= 4
    for line in lines:
        assert re.match(r"\[\d{4}/\d{3}\] (INFO|WARNING): ", line), line
    assert any("Job OK" in line for line in lines)


def test_dict_config_replaces_the_format_settings_and_keeps_workerd_lines(
    tmp_path: Path, r: redis.Redis, redis_url: str
) -> None:
    # A typical DICT_CONFIG: one handler on the root logger. logging's own default would disable the
    # already-created workerd loggers and print nothing at all.
    module = tmp_path / "dictsettings.py"
    module.write_text(
        'DICT_CONFIG = {"version": 1, "formatters": {"f": {"format": "DC %(levelname)s %(message)s"}},\n'
        '    "handlers": {"h": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "f"}},\n'
        '    "root": {"handlers": ["h"], "level": "INFO"}}\n'
    )
    job = Queue("default", connection=r).enqueue("testjobs.add", 2, 3)
    output = _ok(run_workerd("-c", str(module), "-u", redis_url, "--burst", "--log-format", "IGNORED %(message)s"))
    assert _status(r, job.id) == "finished"
    assert "DC INFO Worker" in output and "Job OK" in output, output
    assert "IGNORED" not in output


def test_disable_job_desc_logging_keeps_arguments_out_of_the_output(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.echo", "card-4111-1111", token="tok-secret-77")
    output = _ok(run_workerd("-u", redis_url, "--burst", "--disable-job-desc-logging"))
    assert _status(r, job.id) == "finished"
    assert job.id in output
    assert "card-4111-1111" not in output and "tok-secret-77" not in output and "testjobs.echo(" not in output


def test_exception_handlers_are_called_in_order_and_one_returning_false_stops_the_chain(
    r: redis.Redis, redis_url: str
) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.fail", "handled")
    result = run_workerd(
        "-u",
        redis_url,
        "--burst",
        "--exception-handler",
        "cli_handlers.record_first",
        "--exception-handler",
        "cli_handlers.stop_chain",
        "--exception-handler",
        "cli_handlers.never_reached",
        env={"HANDLER_REDIS_URL": redis_url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [_text(value) for value in r.lrange("test:handlers", 0, -1)]
    assert calls == [f"first:ValueError:{job.id}", f"stop:{job.id}"]
    assert _status(r, job.id) == "failed"
    assert r.zscore(schema.failed_key("default"), job.id) is not None  # the default handler still records it


def test_disable_default_exception_handler_leaves_no_failed_registry_entry(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r).enqueue("testjobs.fail", "unrecorded")
    result = run_workerd("-u", redis_url, "--burst", "-d")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: _status(r, job.id) not in ("queued", "started"), message="the job to have run")
    assert r.zcard(schema.failed_key("default")) == 0


def test_json_serializer_runs_jobs_enqueued_with_json(r: redis.Redis, redis_url: str) -> None:
    job = Queue("default", connection=r, serializer="json").enqueue("testjobs.add", 2, 3)
    _ok(run_workerd("-u", redis_url, "--burst", "--serializer", "json"))
    assert _status(r, job.id) == "finished"
    assert Job.fetch(job.id, connection=r, serializer="json").return_value() == 5


def test_round_robin_dequeue_strategy_alternates_queues(r: redis.Redis, redis_url: str) -> None:
    for name in ("a", "b"):
        q = Queue(name, connection=r)
        for i in (1, 2):
            q.enqueue("testjobs.mark", redis_url, "order", f"{name}{i}")
    _ok(run_workerd("-u", redis_url, "--burst", "-ds", "round_robin", "a", "b"))
    assert [_text(value) for value in r.lrange("order", 0, -1)] == ["a1", "b1", "a2", "b2"]


def test_path_makes_job_modules_importable(tmp_path: Path, r: redis.Redis, redis_url: str) -> None:
    module = f"pathjobs_{uuid.uuid4().hex[:8]}"
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{module}.py").write_text("def hello(name):\n    return f'hello {name}'\n")
    job = Queue("default", connection=r).enqueue(f"{module}.hello", "path")
    _ok(run_workerd("-u", redis_url, "--burst", "--path", str(code_dir)))
    assert _status(r, job.id) == "finished"
    assert Job.fetch(job.id, connection=r).return_value() == "hello path"


def test_rq_environment_urls_reach_the_worker(r: redis.Redis, redis_url: str) -> None:
    q = Queue("default", connection=r)
    first = q.enqueue("testjobs.add", 1, 2)
    _ok(run_workerd("--burst", env={"RQ_REDIS_URL": redis_url}))
    second = q.enqueue("testjobs.add", 3, 4)
    _ok(run_workerd("--burst", env={"REDIS_URL": redis_url}))
    assert (_status(r, first.id), _status(r, second.id)) == ("finished", "finished")


# -- an unreachable Redis at start ------------------------------------------------------------------


def test_unreachable_redis_at_start_logs_clearly_and_stops_on_sigterm(workerd: Callable[..., WorkerdProcess]) -> None:
    port = free_port()  # nobody listens here
    proc = workerd("-u", f"redis://:pw-secret-9@127.0.0.1:{port}/0", "--burst")
    proc.wait_for_output("cannot reach Redis", timeout=10)
    line = next(line for line in proc.output().splitlines() if "cannot reach Redis" in line)
    assert f"127.0.0.1:{port}" in line and "retrying" in line
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.output()
    output = proc.output()
    assert "Traceback" not in output and "pw-secret-9" not in output, output
