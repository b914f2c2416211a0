#!/usr/bin/env bash
# The main job, end to end: a throwaway Redis (unless REDIS_URL points at one), the example jobs
# enqueued, `workerd -c examples/settings/settings.toml --burst` processing them, the results shown.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cleanup() { [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true; rm -rf "${REDIS_DIR:-}"; }
trap cleanup EXIT
if [ -z "${REDIS_URL:-}" ]; then
  REDIS_DIR=$(mktemp -d)
  PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
    --logfile "$REDIS_DIR/redis.log" & REDIS_PID=$!
  export REDIS_URL="redis://127.0.0.1:$PORT/0"
  for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  echo "demo: started a throwaway redis-server at $REDIS_URL"
fi
export WORKERD_REDIS_URL="$REDIS_URL"

.venv/bin/python examples/enqueue.py enqueue
.venv/bin/workerd -c examples/settings/settings.toml --burst
.venv/bin/python examples/enqueue.py show
