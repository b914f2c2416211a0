#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest against redis-servers the suite starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check workerd tests scripts benchmarks examples
.venv/bin/ruff format --check workerd tests
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
