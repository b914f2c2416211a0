"""The same settings as settings.toml, as an rq-style Python settings module (UPPERCASE names).

Use it with `workerd -c examples/settings/settings.py` (or `-c settings.settings -P examples`).
"""

import os

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
QUEUES = ["high", "default", "low"]
PATH = ["examples"]
PRELOAD = ["settings.jobs"]
RESULT_TTL = 500
LOG_LEVEL = "INFO"
