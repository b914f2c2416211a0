"""The log file: built-in rotation (or none, for logrotate), USR1 reopening it in every process kind,
and a reload (HUP) applying LOG_FILE, LOG_FORMAT and LOG_LEVEL to the master and its new workers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import redis

from tests.conftest import wait_until
from workerd import Queue, schema
from workerd.logs import rotate_log_file_if_needed
from workerd.settings import Settings

MIB = 1024 * 1024


def _status(r: redis.Redis, job_id: str) -> str | None:
    value = r.hget(schema.job_key(job_id), "status")
    return value.decode() if value else None


def _open_logs(pid: int, directory: Path) -> list[str]:
    """The files of `directory` that process `pid` has open (by the names they have now)."""
    return sorted(f.path for f in psutil.Process(pid).open_files() if Path(f.path).parent == directory)


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_built_in_rotation_uses_its_own_names_and_leaves_logrotates_alone(tmp_path: Path) -> None:
    log_file = tmp_path / "workerd.log"
    (tmp_path / "workerd.log.1").write_text("logrotate's\n")
    settings = Settings.model_validate({"log_file": str(log_file), "log_file_max_mib": 1, "log_file_backups": 2})
    for size in (1, 2, 3):  # three rotations, two backups kept
        log_file.write_bytes(b"x" * (size * MIB))
        rotate_log_file_if_needed(settings)
        assert not log_file.exists()
    assert (tmp_path / "workerd.log.size-1").stat().st_size == 3 * MIB
    assert (tmp_path / "workerd.log.size-2").stat().st_size == 2 * MIB
    assert not (tmp_path / "workerd.log.size-3").exists()
    assert (tmp_path / "workerd.log.1").read_text() == "logrotate's\n"


def test_log_file_max_mib_0_turns_built_in_rotation_off(tmp_path: Path) -> None:
    log_file = tmp_path / "workerd.log"
    log_file.write_bytes(b"x" * (2 * MIB))
    settings = Settings.model_validate({"log_file": str(log_file), "log_file_max_mib": 0})
    rotate_log_file_if_needed(settings)
    assert log_file.stat().st_size == 2 * MIB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["workerd.log"]


def test_hup_applies_log_file_format_and_level_and_names_what_needs_a_restart(r, redis_url, workerd,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    logs = tmp_path / "logs"  # not tmp_path, which holds the captured output too
    logs.mkdir()
    text_log, json_log = logs / "text.log", logs / "json.log"
    config = tmp_path / "settings.toml"
    config.write_text(f'workers = 1\nlog_file = "{text_log}"\nlog_level = "INFO"\n')
    master = workerd("-u", redis_url, "-c", str(config))
    wait_until(lambda: text_log.exists() and "workers ready" in text_log.read_text(), message="the pool ready")
    [old_worker] = psutil.Process(master.pid).children()
    config.write_text(f'workers = 1\nlog_file = "{json_log}"\nlog_format = "json"\nlog_level = "WARNING"\n'
                      'name = "renamed"\n')  # fmt: skip
    master.signal(signal.SIGHUP)
    worker = wait_until(lambda: [c for c in psutil.Process(master.pid).children() if c.pid != old_worker.pid]
                        and not psutil.pid_exists(old_worker.pid) and psutil.Process(master.pid).children()[0],
                        timeout=20, message="the worker replaced")  # fmt: skip

    q = Queue("default", connection=r)
    said, failed = q.enqueue("testjobs.log_warning", "from-the-horse"), q.enqueue("testjobs.fail", "kaput")
    wait_until(lambda: _status(r, said.id) == "finished" and _status(r, failed.id) == "failed", message="jobs done")
    wait_until(lambda: failed.id in json_log.read_text(), message="the failure logged")
    lines = _json_lines(json_log)  # every line is JSON: the new format
    assert {line["level"] for line in lines} <= {"WARNING", "ERROR"}, lines  # the new level: no INFO
    restart = [line for line in lines if "need a restart" in line["message"]]
    assert len(restart) == 1 and restart[0]["pid"] == master.pid and restart[0]["message"].endswith(": name")
    assert any(line["message"] == "from-the-horse" and line["pid"] not in (master.pid, worker.pid) for line in lines)
    assert any(line.get("job_id") == failed.id and line["pid"] == worker.pid for line in lines)
    assert not any(line.startswith("{") for line in text_log.read_text().splitlines())
    for pid in (master.pid, worker.pid):  # the old file closed, the new one open once
        assert _open_logs(pid, logs) == [str(json_log)]
    names = [key.decode() for key in r.smembers(schema.WORKERS)]  # NAME kept as it was, as the line says
    assert len(names) == 1 and "renamed" not in names[0], names

    # Rotated as logrotate does (move, then USR1 to every process, as `systemctl kill` sends it):
    # each process kind writes to the new file, through one handler.
    json_log.rename(logs / "json.log.1")
    os.killpg(master.pid, signal.SIGUSR1)
    wait_until(lambda: _open_logs(master.pid, logs) == [str(json_log)], message="the master's file reopened")
    said, failed = q.enqueue("testjobs.log_warning", "from-the-horse-2"), q.enqueue("testjobs.fail", "kaput-2")
    wait_until(lambda: _status(r, said.id) == "finished" and _status(r, failed.id) == "failed", message="jobs done")
    wait_until(lambda: failed.id in json_log.read_text(), message="the worker's lines in the new file")
    lines = _json_lines(json_log)
    assert [line["message"] for line in lines].count("from-the-horse-2") == 1, lines
    assert _open_logs(worker.pid, logs) == [str(json_log)]
    assert master.process.poll() is None and worker.is_running()


def test_a_single_worker_writes_to_the_new_file_after_usr1(r, redis_url, workerd, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log_file = logs / "workerd.log"
    single = workerd("-u", redis_url, "--log-file", str(log_file))
    wait_until(lambda: log_file.exists() and "Listening on" in log_file.read_text(), message="the worker ready")
    log_file.rename(logs / "workerd.log.1")
    os.killpg(single.pid, signal.SIGUSR1)
    job = Queue("default", connection=r).enqueue("testjobs.log_warning", "after-the-rotation")
    wait_until(lambda: _status(r, job.id) == "finished", message="the job done")
    wait_until(lambda: log_file.exists() and job.id in log_file.read_text(), message="the worker's lines")
    horse_lines = [line for line in log_file.read_text().splitlines() if line.endswith(" after-the-rotation")]
    assert len(horse_lines) == 1, log_file.read_text()  # the horse's line, once
    assert _open_logs(single.pid, logs) == [str(log_file)]
    assert single.process.poll() is None


def test_after_usr1_a_daemon_and_a_worker_write_their_last_lines_to_the_new_file(r, redis_url, workerd,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    log_file = logs / "workerd.log"
    config = tmp_path / "settings.toml"
    config.write_text(f'log_file = "{log_file}"\n\n[[groups]]\nname = "jobs"\nworkers = 1\n\n'
                      '[[groups]]\nname = "scanner"\nworkers = 1\ndaemon = "testjobs.Scanner"\n')  # fmt: skip
    master = workerd("-u", redis_url, "-c", str(config), env={"SCANNER_URL": redis_url})
    wait_until(lambda: log_file.exists() and "workers ready" in log_file.read_text(), message="the pool ready")
    log_file.rename(logs / "workerd.log.1")
    os.killpg(master.pid, signal.SIGUSR1)
    wait_until(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), message="the reopen")
    master.signal(signal.SIGTERM)  # every process logs that it stops: the lines show where each writes
    assert master.wait() == 0
    lines = log_file.read_text().splitlines()
    assert any(" Daemon " in line and ".scanner." in line and line.endswith(": stopping") for line in lines), lines
    assert any(" Worker " in line and ".jobs." in line and line.endswith(": warm shut down") for line in lines), lines
    assert sum("all workers stopped" in line for line in lines) == 1, lines
    assert len(lines) == len(set(lines)), lines  # one handler each: no line twice
