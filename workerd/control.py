"""Commands to a running worker over RQ's pub/sub channel `rq:pubsub:<worker name>` (docs/PROTOCOL.md §5.14).

Messages are JSON objects with a `command` key: `shutdown`, `kill-horse`, or `stop-job` with a
`job_id`. RQ's `send_*_command` functions and these are interchangeable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workerd import schema
from workerd.errors import InvalidJobOperation
from workerd.utils import as_text

if TYPE_CHECKING:
    from redis import Redis

KNOWN_COMMANDS = ("shutdown", "kill-horse", "stop-job")


@dataclass(frozen=True)
class Command:
    name: str
    job_id: str | None = None


def parse_command(payload: bytes | str) -> Command:
    """Decode one message; ValueError says what is wrong with a malformed one."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise ValueError("expected a JSON object with a 'command' string")
    name = data["command"]
    if name not in KNOWN_COMMANDS:
        raise ValueError(f"unknown command {name!r} (known: {', '.join(KNOWN_COMMANDS)})")
    job_id = data.get("job_id")
    if name == "stop-job" and not isinstance(job_id, str):
        raise ValueError("stop-job needs a 'job_id' string")
    return Command(name, job_id if isinstance(job_id, str) else None)


def _send(connection: Redis, worker_name: str, payload: dict[str, str]) -> None:
    connection.publish(schema.pubsub_channel(worker_name), json.dumps(payload))


def send_shutdown_command(connection: Redis, worker_name: str) -> None:
    _send(connection, worker_name, {"command": "shutdown"})


def send_kill_horse_command(connection: Redis, worker_name: str) -> None:
    _send(connection, worker_name, {"command": "kill-horse"})


def send_stop_job_command(connection: Redis, job_id: str) -> None:
    """Stop a running job: its worker kills the horse and marks the job stopped."""
    worker_name = as_text(connection.hget(schema.job_key(job_id), "worker_name"))
    if not worker_name:
        raise InvalidJobOperation(f"job {job_id} is not being executed by any worker")
    _send(connection, worker_name, {"command": "stop-job", "job_id": job_id})
