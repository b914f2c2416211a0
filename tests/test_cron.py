"""The shipped cron line (packaging/cron/workerd-burst.cron), run as cron runs it (/bin/sh -c, its
own flock), against the suite's Redis: silent when every job finished, so that cron mails nothing;
a failed job and an error still print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from tests.conftest import JOBS_DIR, ROOT
from tests.test_packaging import cron_entries
from workerd import Queue, schema


def _run_cron_line(tmp_path: Path, settings: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "app.toml"
    config.write_text(settings)
    (entry,) = cron_entries()
    command = " ".join(entry[6:])  # after the schedule and the user
    command = command.replace("/etc/workerd/app.toml", str(config))
    command = command.replace("/run/lock/workerd-burst.lock", str(tmp_path / "burst.lock"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
           "PYTHONPATH": f"{JOBS_DIR}{os.pathsep}{ROOT}"}  # fmt: skip
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60, env=env,
                          cwd=JOBS_DIR)  # fmt: skip


def _status(r: redis.Redis, job_id: str) -> str:
    return (r.hget(schema.job_key(job_id), "status") or b"").decode()


def test_the_cron_line_prints_nothing_when_every_job_finished(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    jobs = [Queue("default", connection=r).enqueue("testjobs.add", i, i) for i in range(3)]
    done = _run_cron_line(tmp_path, f'redis_url = "{redis_url}"\n')
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert [_status(r, job.id) for job in jobs] == ["finished"] * 3


def test_the_cron_line_still_prints_a_failed_job_and_an_error(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    failing = Queue("default", connection=r).enqueue("testjobs.fail", "kaput")
    done = _run_cron_line(tmp_path, f'redis_url = "{redis_url}"\n')
    assert done.returncode == 0 and _status(r, failing.id) == "failed"
    assert failing.id in done.stderr and "ValueError: kaput" in done.stderr, done.stderr

    broken = _run_cron_line(tmp_path, f'redis_url = "{redis_url}"\nmax_jobz = 3\n')
    assert broken.returncode == 78
    assert "workerd: error:" in broken.stderr and "max_jobz" in broken.stderr, broken.stderr
