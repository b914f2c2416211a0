#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest against redis-servers the suite starts itself.
#
#   scripts/test.sh [PYTEST ARGS]                 everyday: on the default python3 (.venv)
#   scripts/test.sh --all-pythons [PYTEST ARGS]   on the oldest and the newest supported Python found
#                                                 (scripts/pythons.sh), each in .venv-X.Y, then RQ 2.12.0's
#                                                 own suite against workerd (scripts/rq_suite.sh); CI=true implies it
#
# pytest runs tests in parallel (pytest-xdist): TEST_PROCESSES=4 by default (most tests wait on
# subprocesses and timeouts, not the CPU); 0 runs them in this process, one after another. Tests go
# out one at a time, except a few files that one process runs whole (tests/conftest.py,
# ONE_PROCESS_FILES); each process has its own redis-server, shared by the tests it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
parallel=(-n "${TEST_PROCESSES:-4}" --dist load)
all_pythons=false
[ "${CI:-}" = "true" ] && all_pythons=true
if [ "${1:-}" = "--all-pythons" ]; then all_pythons=true; shift; fi

bash scripts/setup.sh
.venv/bin/ruff check workerd tests scripts benchmarks examples
.venv/bin/ruff format --check workerd tests
.venv/bin/mypy

if ! $all_pythons; then
  # The .deb and .rpm builds are the suite's longest set-up (about two minutes of one test process):
  # an everyday run reuses what an earlier run built from the same sources (.cache/packages/<hash>:
  # every file but the tests, benchmarks and scripts, and the build's Python). Only the newest is kept.
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    hash=$({ git ls-files -z --cached --others --exclude-standard -- . ':!tests' ':!benchmarks' ':!scripts' \
               | xargs -0 sha256sum 2>/dev/null; /usr/bin/python3 --version 2>&1 || true; } | sha256sum | cut -c1-16)
    find .cache/packages -mindepth 1 -maxdepth 1 ! -name "$hash" -exec rm -rf {} + 2>/dev/null || true
    export TEST_PACKAGE_CACHE="$PWD/.cache/packages/$hash"
    mkdir -p "$TEST_PACKAGE_CACHE"
  fi
  exec .venv/bin/python -m pytest -q "${parallel[@]}" "$@"
fi
mapfile -t pythons < <(bash scripts/pythons.sh)
versions=()
for python in "${pythons[@]}"; do versions+=("$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"); done
echo "test: the suite runs on Python ${versions[*]} (the oldest and the newest supported found)" >&2
# The .deb and .rpm do not depend on the Python running the tests: build them once per run.
# (Harness variables never start with WORKERD_: workerd warns about every unknown WORKERD_* name,
# and tests check that a clean run prints nothing.)
TEST_PACKAGE_CACHE=$(mktemp -d)
export TEST_PACKAGE_CACHE
trap 'rm -rf "$TEST_PACKAGE_CACHE"' EXIT
failed=()
for i in "${!pythons[@]}"; do
  venv=".venv-${versions[$i]}"
  PYTHON=${pythons[$i]} VENV=$venv bash scripts/setup.sh
  echo "test: Python ${versions[$i]} ($venv)" >&2
  "$venv/bin/python" -m pytest -q "${parallel[@]}" "$@" || failed+=("${versions[$i]}")
done
# The drop-in oracle (issue 13): RQ 2.12.0's own worker-side and client-side tests against workerd,
# on the default Python (~2 min). Every test not in tests/rq_suite/out_of_scope.txt must pass.
for mode in workerd client; do
  echo "test: RQ 2.12.0's own tests, $mode side (scripts/rq_suite.sh)" >&2
  MODE=$mode bash scripts/rq_suite.sh || failed+=("rq-suite:$mode")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "test: FAILED: ${failed[*]} (Python ${versions[*]} and the rq suite ran)" >&2
  exit 1
fi
echo "test: passed on Python ${versions[*]}, and RQ's own suite against workerd" >&2
