#!/usr/bin/env bash
# RQ 2.12.0's own test suite against workerd (tests/rq_suite/run.py): fetches rq's sdist with pip
# into .cache/rq-suite/, starts its own redis-server, prints pass/fail counts.
#   MODE=workerd (default): the worker-side files, workerd.Worker in place of rq.Worker/SimpleWorker
#   MODE=client:            test_queue/test_job/test_registry with workerd.Queue/Job/registries
#   MODE=rq:                the same files with stock RQ (the baseline)
#   MODE=all:               rq, then workerd, then client
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import rq, pytest_timeout, psutil' 2>/dev/null; then
  bash scripts/setup.sh
fi
mode=${MODE:-workerd}
if [ "$mode" = "all" ]; then
  status=0
  for m in rq workerd client; do
    .venv/bin/python tests/rq_suite/run.py --mode "$m" "$@" || status=1
  done
  exit $status
fi
exec .venv/bin/python tests/rq_suite/run.py --mode "$mode" "$@"
