"""One example of each class of hostile input, run by a burst worker; a markdown table row each.

    .venv/bin/python scripts/hostile.py -u redis://127.0.0.1:6390/0              # workerd, fork
    .venv/bin/python scripts/hostile.py -u redis://127.0.0.1:6390/0 --execution inprocess
    .venv/bin/python scripts/hostile.py -u redis://127.0.0.1:6390/0 --worker rq  # rq worker --burst

For docs/RELIABILITY.md's hostile-input table. The inputs are tests/fuzz_inputs.REPRESENTATIVES (the
fuzzer's own). Use a throwaway Redis database: each class starts by deleting every key but the
workers'. Per class: write the entries, enqueue a well-formed sentinel behind them, run one burst
worker on the queue, then print what became of each hostile job (status, the lists that hold it, the
reason in its failed result), the fuzzer's invariants that fail for it (the same oracle for both
workers), and whether the worker came through (exit 0, sentinel finished).
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402 - after the path is set, as tests/ is imported below

from tests import fuzz_inputs  # noqa: E402
from tests.rq_oracle.rq_cli import COMMAND as RQ_CLI  # noqa: E402 - `rq`, with a fix for redis-py 8.2
from workerd import Queue, schema  # noqa: E402
from workerd.utils import printable_id  # noqa: E402

BURST_TIMEOUT_S = 60.0


def worker_command(args: argparse.Namespace) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if args.worker == "rq":
        return [*RQ_CLI, "worker", "-u", args.url, "--burst", fuzz_inputs.QUEUE]
    return [str(bin_dir / "workerd"), "-u", args.url, "--burst", "--execution", args.execution, fuzz_inputs.QUEUE]


def run_burst(command: list[str]) -> tuple[int | None, str]:
    """The burst worker's exit code (None: it hung and was killed) and its output."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'jobs_dir'}{os.pathsep}{ROOT}"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", env=env,
                              cwd=ROOT / "tests" / "jobs_dir", timeout=BURST_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        return None, str(exc.stdout or "") + str(exc.stderr or "")
    return done.returncode, done.stdout + done.stderr


def reason(exc_string: bytes | None) -> str:
    """The last line of a failed result's traceback (base64 of zlib text), cut for a table cell."""
    if not exc_string:
        return ""
    try:
        text = zlib.decompress(base64.b64decode(exc_string)).decode(errors="replace")
    except Exception:
        text = exc_string.decode(errors="replace")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:90].replace("|", "\\|")


def describe(r: redis.Redis, entry: fuzz_inputs.Entry, output: str) -> str:
    if entry.fields is None:
        logged = f"skipped job {printable_id(schema.decode_id(entry.job_id))}" in output
        return "(no hash) | none | " + ("skipped, one log line" if logged else "dropped silently")
    fate = fuzz_inputs.fate(r, entry.job_id)
    return f"{fate.row()} | {reason(fate.exc_string)}"


def run_class(r: redis.Redis, args: argparse.Namespace, name: str, example: fuzz_inputs.Example) -> list[str]:
    fuzz_inputs.clear(r)
    fuzz_inputs.write(r, example)
    sentinel = Queue(fuzz_inputs.QUEUE, connection=r).enqueue("reliability_jobs.add", 2, 3)
    code, output = run_burst(worker_command(args))
    sentinel_done = r.hget(schema.job_key(sentinel.id), "status") == b"finished"
    came_through = (
        "yes"
        if code == 0 and sentinel_done
        else f"no (exit {code}, sentinel {'ran' if sentinel_done else 'did not run'})"
    )
    problems = fuzz_inputs.violations(r, example, output)
    rows = []
    for entry in example.entries:
        verdict = "; ".join(p for p in problems if repr(entry.job_id[:40]) in p) or "ok"
        rows.append(f"| {name} | {describe(r, entry, output)} | {came_through} | {verdict[:120]} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-u", "--url", required=True, help="a throwaway Redis database: its keys are deleted")
    parser.add_argument("--worker", choices=["workerd", "rq"], default="workerd")
    parser.add_argument("--execution", choices=["fork", "inprocess"], default="fork")
    parser.add_argument("-k", dest="only", default="", help="only the classes whose name holds this text")
    args = parser.parse_args()
    r = redis.Redis.from_url(args.url)
    label = "rq worker" if args.worker == "rq" else f"workerd ({args.execution})"
    print(f"| input ({label}) | status | lists | reason | worker came through | invariants |")
    print("|---|---|---|---|---|---|")
    for name, example in fuzz_inputs.REPRESENTATIVES.items():
        if args.only in name:
            for row in run_class(r, args, name, example):
                print(row, flush=True)
    fuzz_inputs.clear(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
