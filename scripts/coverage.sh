#!/usr/bin/env bash
# Line coverage of workerd/ over the whole test suite, subprocesses included: the `workerd` binaries the
# tests start, the workers and horses they fork, and the processes that leave through os._exit.
#
#   scripts/coverage.sh [PYTEST ARGS]     prints the report; the total is its last line
#
# coverage.py's own a1_coverage.pth starts measuring in every Python process that finds
# COVERAGE_PROCESS_START set (the tests hand their environment to the binaries they start);
# `patch = subprocess, fork, _exit` (coverage >= 7.10) covers the forked children and saves their
# data before os._exit. Each process writes its own .coverage.* file; `coverage combine` merges them.
set -euo pipefail
cd "$(dirname "$0")/.."
rcfile=$(mktemp --suffix=.coveragerc)
data_dir=$(mktemp -d)
trap 'rm -rf "$rcfile" "$data_dir"' EXIT
cat >"$rcfile" <<RC
[run]
source = workerd
parallel = true
patch = subprocess, fork, _exit
data_file = $data_dir/.coverage
[paths]
source = $PWD/workerd
[report]
skip_empty = true
RC
export COVERAGE_PROCESS_START=$rcfile
status=0
# Measured code runs about twice as slowly: the package builds need more than the usual 300 s timeout.
.venv/bin/python -m pytest -q -n "${TEST_PROCESSES:-3}" --dist load -p no:cacheprovider --timeout=900 "$@" || status=$?
.venv/bin/python -m coverage combine --quiet --rcfile="$rcfile" "$data_dir"
.venv/bin/python -m coverage report --rcfile="$rcfile" "--data-file=$data_dir/.coverage"
exit "$status"
