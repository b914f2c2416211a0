"""Settings from a file (TOML or a Python module), the environment and the command line; their errors.

User-visible behaviour is tested through the real `workerd` binary; what is internal (the exact
validated values) through workerd.config.build_settings.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_workerd
from tests.redis_server import RedisServer
from workerd.cli import build_parser
from workerd.config import build_settings, render_settings
from workerd.errors import ConfigError
from workerd.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECRET = "S3cr3t-Pa55w0rd"


def _print_config(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, tuple[Any, str]]:
    """Run `workerd --print-config`; returns {key: (value, source)} (value None when unset)."""
    result = run_workerd(*args, "--print-config", env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    values = tomllib.loads(result.stdout)  # the output is TOML: the comments are the sources
    parsed: dict[str, tuple[Any, str]] = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(?:# )?(\w+)(?: = .*| is unset)  # (.+)", line)
        assert match, f"not a '<key> = <value>  # <source>' line: {line!r}"
        parsed[match[1]] = (values.get(match[1]), match[2])
    assert set(parsed) == set(Settings.model_fields)
    return parsed


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKERD_") or name in ("RQ_REDIS_URL", "RQ_CONFIG") or name.startswith("REDIS_"):
            monkeypatch.delenv(name)


# -- files --------------------------------------------------------------------------------------------

TOML_ALL = """
redis_url = "redis://:{secret}@db.example:6380/2"
redis_host = "db2.example"
redis_port = 6381
redis_db = 3
redis_password = "{secret}"
redis_ssl = true
queues = ["high", "default", "low"]
name = "toml-worker"
sentry_dsn = "https://{secret}@o1.ingest.sentry.io/5"
dict_config = {{ version = 1 }}
preload = ["json", "decimal"]
result_ttl = 60
worker_ttl = 100
job_monitoring_interval = 10
max_jobs = 7
burst = true
log_level = "warning"
log_format = "%(levelname)s %(message)s"
date_format = "%Y"
serializer = "json"
exception_handlers = ["cli_handlers.record_first"]
worker_class = "workerd.Worker"
job_class = "workerd.Job"
queue_class = "workerd.Queue"
path = ["/srv/app", "/srv/lib"]
"""

EXPECTED_ALL = {
    "redis_url": "redis://:***@db.example:6380/2", "redis_host": "db2.example", "redis_port": 6381, "redis_db": 3,
    "redis_password": "***", "redis_ssl": True, "queues": ["high", "default", "low"], "name": "toml-worker",
    "sentry_dsn": "https://***@o1.ingest.sentry.io/5", "dict_config": {"version": 1},
    "preload": ["json", "decimal"], "result_ttl": 60, "worker_ttl": 100, "job_monitoring_interval": 10,
    "max_jobs": 7, "burst": True, "log_level": "WARNING", "log_format": "%(levelname)s %(message)s",
    "date_format": "%Y", "serializer": "json", "exception_handlers": ["cli_handlers.record_first"],
    "worker_class": "workerd.Worker", "job_class": "workerd.Job", "queue_class": "workerd.Queue",
    "path": ["/srv/app", "/srv/lib"],
}  # fmt: skip

PY_ALL = """
import os  # modules and lowercase names in a settings module are not settings

REDIS_URL = "redis://:{secret}@db.example:6380/2"
REDIS_HOST = "db2.example"
REDIS_PORT = 6381
REDIS_DB = 3
REDIS_PASSWORD = "{secret}"
REDIS_SSL = True
QUEUES = ["high", "default", "low"]
NAME = "toml-worker"
SENTRY_DSN = "https://{secret}@o1.ingest.sentry.io/5"
DICT_CONFIG = {{"version": 1}}
PRELOAD = ["json", "decimal"]
RESULT_TTL = 60
WORKER_TTL = 100
JOB_MONITORING_INTERVAL = 10
MAX_JOBS = 7
BURST = True
LOG_LEVEL = "warning"
LOG_FORMAT = "%(levelname)s %(message)s"
DATE_FORMAT = "%Y"
SERIALIZER = "json"
EXCEPTION_HANDLERS = ["cli_handlers.record_first"]
WORKER_CLASS = "workerd.Worker"
JOB_CLASS = "workerd.Job"
QUEUE_CLASS = "workerd.Queue"
PATH = ["/srv/app", "/srv/lib"]
helper = "not a setting"
"""


def test_toml_file_sets_every_rq_name(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text(TOML_ALL.format(secret=SECRET))
    shown = _print_config("-c", str(config))
    for key, expected in EXPECTED_ALL.items():
        assert shown[key] == (expected, f"{config}: key '{key}'"), key
    assert shown["max_idle_time"] == (None, "the default")
    assert shown["dequeue_strategy"] == ("default", "the default")


def test_python_settings_module_by_path_sets_every_rq_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    module = tmp_path / f"rqsettings_{uuid.uuid4().hex[:8]}.py"
    module.write_text(PY_ALL.format(secret=SECRET))
    settings, layers = build_settings({}, str(module))
    assert settings.redis_url is not None and settings.redis_url.get_secret_value().endswith("@db.example:6380/2")
    assert settings.redis_password is not None and settings.redis_password.get_secret_value() == SECRET
    assert settings.sentry_dsn is not None and SECRET in settings.sentry_dsn.get_secret_value()
    assert (settings.redis_host, settings.redis_port, settings.redis_db, settings.redis_ssl) == (
        "db2.example",
        6381,
        3,
        True,
    )
    assert settings.queues == ["high", "default", "low"]
    assert settings.log_level == "WARNING"
    assert "helper" not in layers.file and "os" not in layers.file
    rendered = tomllib.loads(render_settings(settings, layers))
    assert {key: rendered[key] for key in EXPECTED_ALL} == EXPECTED_ALL
    # The same through the binary: the settings module given by path, values from it.
    shown = _print_config("-c", str(module))
    assert {key: shown[key][0] for key in EXPECTED_ALL} == EXPECTED_ALL
    assert shown["queues"][1] == f"{module}: key 'queues'"


def test_python_settings_module_by_dotted_name_with_path(tmp_path: Path) -> None:
    package = tmp_path / "conf" / "myapp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "workersettings.py").write_text('QUEUES = ["emails"]\nMAX_JOBS = 3\n')
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    shown = _print_config("-P", str(tmp_path / "conf"), "-c", "myapp.workersettings", cwd=elsewhere)
    assert shown["queues"] == (["emails"], "myapp.workersettings: key 'queues'")
    assert shown["max_jobs"] == (3, "myapp.workersettings: key 'max_jobs'")


def test_dotted_settings_module_is_found_in_the_current_directory_as_rq_does(tmp_path: Path) -> None:
    # rq's -P defaults to '.', so `rq worker -c settings` finds ./settings.py; the console script's
    # sys.path does not hold the current directory by itself.
    (tmp_path / "settings.py").write_text('QUEUES = ["from-cwd"]\n')
    shown = _print_config("-c", "settings", cwd=tmp_path)
    assert shown["queues"] == (["from-cwd"], "settings: key 'queues'")


# -- precedence ------------------------------------------------------------------------------------


def test_precedence_command_line_over_environment_over_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "p.toml"
    config.write_text('queues = ["file-q"]\nmax_jobs = 1\nresult_ttl = 10\nworker_ttl = 100\nname = "file"\n')
    env = {"WORKERD_RESULT_TTL": "20", "WORKERD_WORKER_TTL": "200", "WORKERD_NAME": "env"}
    shown = _print_config("-c", str(config), "--worker-ttl", "300", "cli-q", env=env)
    assert shown["worker_ttl"] == (300, "the command line")
    assert shown["queues"] == (["cli-q"], "the command line")
    assert shown["result_ttl"] == (20, "environment variable WORKERD_RESULT_TTL")
    assert shown["name"] == ("env", "environment variable WORKERD_NAME")
    assert shown["max_jobs"] == (1, f"{config}: key 'max_jobs'")
    assert shown["date_format"] == ("%H:%M:%S", "the default")


def test_precedence_internally_and_list_values_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    config = tmp_path / "p.toml"
    config.write_text('queues = ["a"]\nburst = true\nexception_handlers = ["x.y"]\n')
    monkeypatch.setenv("WORKERD_QUEUES", "high, low")
    monkeypatch.setenv("WORKERD_BURST", "false")
    settings, layers = build_settings({"exception_handlers": ["p.q", "r.s"]}, str(config))
    assert settings.queues == ["high", "low"]
    assert settings.burst is False
    assert settings.exception_handlers == ["p.q", "r.s"]
    assert layers.source_of("queues") == "environment variable WORKERD_QUEUES"
    assert layers.source_of("exception_handlers") == "the command line"
    assert layers.source_of("serializer") == "the default"


# -- errors ----------------------------------------------------------------------------------------


def _expect_config_error(result: subprocess.CompletedProcess[str], *needles: str, code: int = 78) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output}"
    return output


ERROR_CASES: dict[str, tuple[dict[str, str], list[str], list[str]]] = {
    # name: ({file name: content}, extra arguments, text the message must contain)
    "bad TOML value": ({"s.toml": 'max_jobs = "ten"\n'}, ["-c", "{dir}/s.toml"],
                       ["{dir}/s.toml", "max_jobs", "'ten'", "expected an integer, got a string"]),
    "bad module value": ({"mod_bad.py": "RESULT_TTL = -5\n"}, ["-c", "{dir}/mod_bad.py"],
                         ["{dir}/mod_bad.py", "result_ttl", "-5", "greater than or equal to -1"]),
    "bad choice": ({"s.toml": 'dequeue_strategy = "fifo"\n'}, ["-c", "{dir}/s.toml"],
                   ["dequeue_strategy", "'fifo'", "'round_robin'"]),
    "unknown TOML key": ({"s.toml": 'queus = ["a"]\n'}, ["-c", "{dir}/s.toml"],
                         ["{dir}/s.toml", "unknown key 'queus'", "did you mean 'queues'?"]),
    "TOML syntax": ({"s.toml": 'queues = ["a"]\nmax_jobs = = 3\n'}, ["-c", "{dir}/s.toml"],
                    ["{dir}/s.toml", "TOML syntax error", "line 2, column"]),
    "missing TOML": ({}, ["-c", "{dir}/nope.toml"], ["{dir}/nope.toml", "not found"]),
    "missing module path": ({}, ["-c", "{dir}/nope.py"], ["{dir}/nope.py", "not found"]),
    "missing dotted module": ({}, ["-c", "no_such_settings_mod"], ["no_such_settings_mod", "not found", "--path"]),
    "directory": ({"d.toml/x": ""}, ["-c", "{dir}/d.toml"], ["{dir}/d.toml", "is a directory"]),
    "not UTF-8": ({"s.toml": "queues = ['\udcff']\n"}, ["-c", "{dir}/s.toml"], ["{dir}/s.toml", "UTF-8"]),
    "module raises": ({"mod_raises.py": "raise RuntimeError('database is down')\n"},
                      ["-c", "{dir}/mod_raises.py"], ["mod_raises.py", "RuntimeError: database is down"]),
    "module syntax error": ({"mod_syntax.py": "QUEUES = [\n"}, ["-c", "{dir}/mod_syntax.py"],
                            ["mod_syntax.py", "SyntaxError"]),
    "preload": ({"s.toml": 'preload = ["no_such_preload_mod"]\n'}, ["-c", "{dir}/s.toml"],
                ["PRELOAD module 'no_such_preload_mod'", "No module named"]),
    "module calls sys.exit": ({"mod_exits.py": "import sys\nsys.exit(3)\n"}, ["-c", "{dir}/mod_exits.py"],
                              ["settings module", "mod_exits.py", "called sys.exit(3)"]),
    "preload calls sys.exit": ({"preload_exits.py": "import sys\nsys.exit(0)\n",
                                "s.toml": 'preload = ["preload_exits"]\n'},
                               ["-c", "{dir}/s.toml", "--path", "{dir}"],
                               ["PRELOAD module 'preload_exits'", "called sys.exit(0)"]),
    "TOML boolean for a number": ({"s.toml": "max_jobs = true\n"}, ["-c", "{dir}/s.toml"],
                                  ["{dir}/s.toml", "max_jobs", "True", "expected an integer, got a boolean"]),
    "TOML number for a string": ({"s.toml": "name = 5\n"}, ["-c", "{dir}/s.toml"],
                                 ["{dir}/s.toml", "name", "5", "expected a string, got an integer"]),
    "TOML string for a number": (
        {"s.toml": 'job_monitoring_interval = "30"\n'}, ["-c", "{dir}/s.toml"],
        ["{dir}/s.toml", "job_monitoring_interval", "'30'", "expected an integer, got a string"],
    ),
    "TOML number for a boolean": ({"s.toml": "with_scheduler = 1\n"}, ["-c", "{dir}/s.toml"],
                                  ["{dir}/s.toml", "with_scheduler", "1", "expected a boolean, got an integer"]),
    "queue with forbidden characters": ({}, ["bad:queue name"], ["queues", "bad:queue name", "forbidden characters"]),
    "queue of 10,000 characters": ({}, ["q" * 10_000], ["queues", "10000 characters", "limit is"]),
    "verbose and quiet": ({}, ["-v", "-q"], ["-v/--verbose and -q/--quiet cannot be used together"]),
    "URL without scheme": ({}, ["-u", SECRET], ["redis_url", "must start with redis://"]),  # and is not shown
    "pid file directory": ({}, ["--pid", "{dir}/no/such/dir/w.pid"], ["pid", "does not exist"]),
    "bad DICT_CONFIG": (
        {"mod_dc.py": 'DICT_CONFIG = {"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}\n'},
        ["-c", "{dir}/mod_dc.py"],
        ["DICT_CONFIG is not a valid", "handler 'h'"],
    ),
    "bad exception handler": ({}, ["--exception-handler", "cli_handlers.nope"],
                              ["cannot import 'cli_handlers.nope'"]),
    "bad serializer": ({}, ["-S", "yaml"], ["yaml"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> dict[str, Any]:
    """Every ERROR_CASES command, run at once (each is a separate process), against a Redis holding one
    queued job; returns the results and the state of Redis afterwards."""
    client = redis_server.client()
    client.flushall()
    client.lpush("rq:queue:default", "x")  # a worker that started would take this and register itself
    runs: dict[str, Any] = {}
    for case, (files, args, needles) in ERROR_CASES.items():
        directory = tmp_path_factory.mktemp("case")
        for name, content in files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode("utf-8", "surrogateescape"))
        pid_file = directory / "w.pid"
        args = [arg.replace("{dir}", str(directory)) for arg in args]
        base = ["--burst"] if "-u" in args or "--pid" in args else [
            "--burst", "-u", redis_server.url, "--pid", str(pid_file)]  # fmt: skip
        runs[case] = (base + args, [needle.replace("{dir}", str(directory)) for needle in needles], pid_file)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(runs, pool.map(lambda argv: run_workerd(*argv), [run[0] for run in runs.values()]), strict=True)
        )
    state = (client.keys("rq:worker*"), client.llen("rq:queue:default"))
    client.flushall()
    return {"runs": runs, "results": results, "state": state}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_78_before_anything_starts(case: str, error_runs: dict[str, Any]) -> None:
    _, needles, pid_file = error_runs["runs"][case]
    output = _expect_config_error(error_runs["results"][case], *needles)
    assert output.startswith("workerd: error:") or "\nworkerd: error:" in output
    assert len(output) < 2000, "the message should not echo huge values"
    assert SECRET not in output
    assert not pid_file.exists()
    assert error_runs["state"] == ([], 1), "a worker started"


def test_bad_environment_value_names_the_variable_and_its_value(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text("max_jobs = 3\n")
    result = run_workerd("-c", str(config), "--check", env={"WORKERD_MAX_JOBS": "lots"})
    _expect_config_error(result, "environment variable WORKERD_MAX_JOBS", "max_jobs = 'lots'", "valid integer")


def test_unreadable_settings_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    config = tmp_path / "s.toml"
    config.write_text("max_jobs = 3\n")
    config.chmod(0)
    _expect_config_error(run_workerd("-c", str(config), "--check"), str(config), "not readable")


@pytest.mark.parametrize("args", [["--no-such-flag"], ["--max-jobs"]])
def test_command_line_usage_errors_exit_2(args: list[str]) -> None:
    result = run_workerd(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: workerd" in result.stderr and "Traceback" not in result.stderr


def test_config_errors_internally_name_source_key_value_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    config = tmp_path / "s.toml"
    config.write_text('worker_ttl = 0\nqueues = ["ok", "not ok"]\n')
    with pytest.raises(ConfigError) as info:
        build_settings({"max_jobs": "0"}, str(config))
    message = str(info.value)
    assert info.value.exit_code == 78
    assert "the command line: max_jobs = '0': Input should be greater than or equal to 1" in message
    assert f"{config}: key 'worker_ttl': worker_ttl = 0: Input should be greater than or equal to 1" in message
    assert f"{config}: key 'queues'" in message and "'not ok' has forbidden characters" in message


# -- --check, --print-config, secrets ----------------------------------------------------------------


def test_check_validates_and_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text('queues = ["high", "low"]\npreload = ["testjobs"]\nexception_handlers = '
                      '["cli_handlers.record_first"]\nserializer = "json"\n')  # fmt: skip
    result = run_workerd("-c", str(config), "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and str(config) in result.stdout


def test_print_config_masks_every_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / f"secrets_{uuid.uuid4().hex[:8]}.py"
    module.write_text(
        f'REDIS_PASSWORD = "{SECRET}"\n'
        f'SENTRY_DSN = "https://{SECRET}@o1.ingest.sentry.io/5"\n'
        f'SENTINEL = {{"INSTANCES": [("s1", 26379)], "PASSWORD": "{SECRET}", '
        f'"SENTINEL_KWARGS": {{"password": "{SECRET}"}}, "CONNECTION_KWARGS": {{"Password": "{SECRET}"}}}}\n'
    )
    result = run_workerd("-c", str(module), "-u", f"redis://user:{SECRET}@h:1/0?password={SECRET}", "--print-config")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr, result.stdout
    shown = tomllib.loads(result.stdout)
    assert shown["redis_url"] == "redis://user:***@h:1/0?password=***"
    assert shown["redis_password"] == "***" and shown["sentry_dsn"] == "https://***@o1.ingest.sentry.io/5"
    assert shown["sentinel"]["PASSWORD"] == "***" and shown["sentinel"]["SENTINEL_KWARGS"] == {"password": "***"}
    _clean_env(monkeypatch)
    for url in (f"redis://:{SECRET}@h/0", f"rediss://someuser:{SECRET}@h:6380", f"unix://:{SECRET}@/run/r.sock?db=1",
                f"redis://h/0?db=1&PASSWORD={SECRET}"):  # fmt: skip
        rendered = render_settings(*build_settings({"redis_url": url}, None))
        assert SECRET not in rendered and "redis_url = " in rendered, rendered


# -- rq's environment conventions ----------------------------------------------------------------


def test_rq_redis_url_acts_as_url_and_loses_to_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _print_config(env={"RQ_REDIS_URL": f"redis://:{SECRET}@rq-host:6379/4"})
    assert shown["redis_url"] == ("redis://:***@rq-host:6379/4", "environment variable RQ_REDIS_URL (rq's name)")
    _clean_env(monkeypatch)
    monkeypatch.setenv("RQ_REDIS_URL", "redis://rq-host/0")
    settings, layers = build_settings({"redis_url": "redis://flag-host/0"}, None)
    assert settings.redis_url is not None and settings.redis_url.get_secret_value() == "redis://flag-host/0"
    assert layers.source_of("redis_url") == "the command line"


def test_redis_variables_of_the_environment_are_used_without_a_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"REDIS_URL": "redis://env-host:6390/1", "REDIS_PORT": "6391"}
    shown = _print_config(env=env)
    assert shown["redis_url"] == ("redis://env-host:6390/1", "environment variable REDIS_URL (rq's name)")
    assert shown["redis_port"] == (6391, "environment variable REDIS_PORT (rq's name)")
    # As in rq, a settings file replaces them.
    _clean_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "s.toml"
    config.write_text('queues = ["q"]\n')
    settings, layers = build_settings({}, str(config))
    assert settings.redis_url is None and settings.redis_port == 6379
    assert layers.source_of("redis_url") == "the default"


def test_rq_config_environment_variable_names_the_settings_module(tmp_path: Path) -> None:
    (tmp_path / "rqconf.py").write_text('QUEUES = ["from-rq-config"]\n')
    shown = _print_config(env={"RQ_CONFIG": "rqconf"}, cwd=tmp_path)
    assert shown["queues"] == (["from-rq-config"], "rqconf: key 'queues'")


# -- help and docs -------------------------------------------------------------------------------------


def test_help_lists_every_flag_with_default_and_environment_name_and_the_exit_codes() -> None:
    result = run_workerd("--help")
    assert result.returncode == 0, result.stderr
    text = re.sub(r"\s+", " ", result.stdout)
    flagged = 0
    for action in build_parser()._actions:
        if action.dest not in Settings.model_fields:
            continue
        flagged += 1
        name = action.dest.upper()
        assert action.help and re.search(rf"\[default: [^;]+; setting {name}; env WORKERD_{name}\]$", action.help)
        assert f"setting {name}; env WORKERD_{name}]" in text, name
        for flag in action.option_strings:
            assert re.search(rf"(^|[ ,\[]){re.escape(flag)}[ ,\]]", text), flag
    assert flagged >= 30
    for code in ("0 ", "1 ", "2 ", "3 ", "69 ", "70 ", "78 "):
        assert f" {code}" in text.split("exit codes:")[1]
    assert "%(asctime)s %(message)s" in text


def test_configuration_docs_are_generated_from_the_declarations(tmp_path: Path) -> None:
    committed = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    fresh = tmp_path / "CONFIGURATION.md"
    fresh.write_text(committed)
    script = ROOT / "scripts" / "gen_config_docs.py"
    result = subprocess.run([sys.executable, str(script), "--output", str(fresh)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert fresh.read_text() == committed, (
        "docs/CONFIGURATION.md is out of date: run `python scripts/gen_config_docs.py`"
    )
    for name in Settings.model_fields:
        assert f"`{name}`" in committed and f"`WORKERD_{name.upper()}`" in committed, name
