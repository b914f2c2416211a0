"""The rq-suite command (`make rq-suite`): RQ 2.12.0's own tests, run against workerd.

    .venv/bin/python tests/rq_suite/run.py [--mode workerd|client|rq] [pytest args...]

1. Fetches RQ 2.12.0's sdist with pip (it ships tests/) into .cache/rq-suite/ (git-ignored) and
   unpacks it, once; applies the one documented patch (see PATCHES).
2. Starts its own redis-server on a free port in a temporary directory (tests/redis_server.py);
   never the Redis at 127.0.0.1:6379. RQ's tests reach it through sitecustomize.py beside the plugin.
3. Runs the selected test files under pytest with tests/rq_suite/pythonpath/rq_suite_plugin.py:
   - `--mode workerd` (default): the worker-side files, workerd's Worker standing in for RQ's;
   - `--mode client`: test_queue/test_job/test_registry with workerd.Queue/Job/registries;
   - `--mode rq`: the worker-side and client-side files with stock RQ, the baseline.
   The tests listed in out_of_scope.txt (for the mode) are deselected; the failures listed in
   known_failures.txt are reported as known, with their cause.
4. Prints pass/fail counts per file and in total. Exit status 1 only on an unexpected failure (a
   failure or error not in known_failures.txt; in `rq` mode, any failure), 0 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer  # noqa: E402

RQ_VERSION = "2.12.0"
CACHE = ROOT / ".cache" / "rq-suite"
SDIST_DIR = CACHE / f"rq-{RQ_VERSION}"

WORKER_FILES = [
    "test_worker.py", "test_callbacks.py", "test_retry.py", "test_dependencies.py", "test_job_dependency.py",
    "test_registry.py", "test_repeat.py", "test_webhooks.py", "test_scheduler.py", "test_commands.py",
    "test_results.py", "test_job.py", "test_timeouts.py", "test_executions.py", "test_worker_registration.py",
    "test_intermediate_queue.py", "test_group.py",
]  # fmt: skip
CLIENT_FILES = ["test_queue.py", "test_job.py", "test_registry.py"]

# (file, old, new): the only edits made to RQ's files, at unpack time.
PATCHES = [
    # TestWorkerSubprocess hard-codes Redis's default port in the URL it gives `rqworker -u`.
    ("tests/test_worker.py", "redis://127.0.0.1:6379/{db_num}",
     # RQ writes this f-string in single quotes: the inner ones are double (nested alike needs 3.12).
     'redis://127.0.0.1:{os.environ.get("RQ_SUITE_REDIS_PORT", "6379")}/{db_num}'),
]  # fmt: skip


def fetch_sdist() -> Path:
    if (SDIST_DIR / "tests" / "__init__.py").is_file():
        return SDIST_DIR
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"rq-{RQ_VERSION}.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                        f"rq=={RQ_VERSION}", "-d", str(CACHE)], check=True)  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    for name, old, new in PATCHES:
        path = SDIST_DIR / name
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"rq-suite: cannot apply the patch to {name}: {old!r} not found")
        path.write_text(text.replace(old, new))
    return SDIST_DIR


def read_list(path: Path, mode: str) -> dict[str, str]:
    """`[mode]` sections of `<node id> | <reason>` lines; '#' starts a comment."""
    entries: dict[str, str] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("tests/") else raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != mode:
            continue
        node, _, reason = line.partition("|")
        entries[node.strip()] = reason.strip()
    return entries


def parse_junit(path: Path) -> list[tuple[str, str, str]]:
    """(node id, outcome, message) per test; outcome is passed, failed, error or skipped."""
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        parts = classname.split(".")
        # tests.test_worker.TestWorker -> tests/test_worker.py::TestWorker::name
        module_end = next(i for i, p in enumerate(parts) if p.startswith("test_")) + 1
        node = "/".join(parts[:module_end]) + ".py"
        node = "::".join([node, *parts[module_end:], name])
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "").splitlines()[0][:160] if child.get("message") else ""
                if outcome != "skipped":
                    break
        results.append((node, outcome, message))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["workerd", "client", "rq"], default="workerd")
    parser.add_argument("--timeout", type=int, default=60, help="per-test timeout in seconds (pytest-timeout)")
    parser.add_argument("--files", nargs="*", help="test files of RQ's tests/ (default: the mode's list)")
    parser.add_argument("--all", action="store_true", help="do not deselect the out-of-scope tests")
    parser.add_argument("--junitxml", type=Path, help="keep pytest's JUnit XML report at this path")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()

    started = time.monotonic()
    sdist = fetch_sdist()
    files = args.files or {"workerd": WORKER_FILES, "client": CLIENT_FILES,
                           "rq": sorted(set(WORKER_FILES + CLIENT_FILES))}[args.mode]  # fmt: skip
    out_of_scope = {} if args.mode == "rq" or args.all else read_list(HERE / "out_of_scope.txt", args.mode)
    known = {} if args.mode == "rq" else read_list(HERE / "known_failures.txt", args.mode)

    with tempfile.TemporaryDirectory(prefix="rq-suite-") as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            deselect_file = Path(tmp) / "deselect.txt"
            deselect_file.write_text("".join(f"{node}\n" for node in out_of_scope))
            junit = args.junitxml.resolve() if args.junitxml else Path(tmp) / "junit.xml"
            env = {
                **os.environ,
                # Not ROOT: workerd's own tests/ package would shadow RQ's in the processes RQ's tests start.
                "PYTHONPATH": os.pathsep.join([str(HERE / "pythonpath"), str(HERE.parent / "rq_oracle")]),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                "RQ_SUITE_MODE": args.mode,
                "RQ_SUITE_REDIS_PORT": str(server.port),
                "RQ_SUITE_DESELECT": str(deselect_file),
                "RQ_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
                "WORKERD_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            for name in ("RUN_SLOW_TESTS_TOO", "RUN_SSL_TESTS"):
                env.pop(name, None)
            command = [sys.executable, "-m", "pytest", "-p", "rq_suite_plugin", "-p", "no:cacheprovider",
                       "-q", "--no-header", "-rN", f"--timeout={args.timeout}", "--timeout-method=signal",
                       f"--junitxml={junit}", "-o", "junit_family=xunit1",
                       *[f"tests/{f}" for f in files], *args.pytest_args]  # fmt: skip
            print(f"rq-suite: RQ {RQ_VERSION}'s tests, mode {args.mode}, redis-server on port {server.port}",
                  flush=True)  # fmt: skip
            subprocess.run(command, cwd=sdist, env=env)
            results = parse_junit(junit) if junit.exists() else []
        finally:
            server.stop()

    return report(args.mode, results, known, out_of_scope, time.monotonic() - started)


def report(mode: str, results: list[tuple[str, str, str]], known: dict[str, str], out_of_scope: dict[str, str],
           wall_s: float) -> int:  # fmt: skip
    per_file: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    unexpected, known_hit = [], collections.defaultdict(list)
    seen = set()
    for node, outcome, message in results:
        seen.add(node)
        file = node.split("::", 1)[0].removeprefix("tests/")
        if outcome in ("failed", "error"):
            if node in known:
                per_file[file]["known"] += 1
                known_hit[known[node]].append(node)
            else:
                per_file[file]["unexpected"] += 1
                unexpected.append((node, outcome, message))
        else:
            per_file[file][outcome] += 1
    print(f"\nrq-suite ({mode}): results per file (out of scope, deselected: {len(out_of_scope)})")
    print(f"  {'file':32} {'passed':>7} {'known':>7} {'unexp.':>7} {'skipped':>8}")
    total: collections.Counter[str] = collections.Counter()
    for file in sorted(per_file):
        c = per_file[file]
        total.update(c)
        print(f"  {file:32} {c['passed']:7} {c['known']:7} {c['unexpected']:7} {c['skipped']:8}")
    print(f"  {'total':32} {total['passed']:7} {total['known']:7} {total['unexpected']:7} {total['skipped']:8}")
    if known_hit:
        print("\nknown failures, by cause:")
        for cause, nodes in sorted(known_hit.items()):
            print(f"  {len(nodes):3}  {cause}")
    stale = [node for node in known if node in seen and node not in {n for ns in known_hit.values() for n in ns}]
    if stale:
        print("\nlisted in known_failures.txt but passing now (remove them):")
        for node in stale:
            print(f"  {node}")
    if unexpected:
        print("\nUNEXPECTED failures:")
        for node, outcome, message in unexpected:
            print(f"  {outcome:6} {node}  {message}")
    print(f"\nrq-suite ({mode}): {total['passed']} passed, {total['known']} known failures, "
          f"{total['unexpected']} unexpected failures, {total['skipped']} skipped, "
          f"{len(out_of_scope)} out of scope; {wall_s:.0f} s")  # fmt: skip
    if not results:
        print("rq-suite: pytest produced no results", file=sys.stderr)
        return 2
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
