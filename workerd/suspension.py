"""Suspending workers: RQ's `rq:suspended` key, which `rq suspend` / `rq resume` also set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workerd import schema

if TYPE_CHECKING:
    from redis import Redis


def suspend(connection: Redis, duration_s: int | None = None) -> None:
    """Workers take no new job until resume() (or until `duration_s` has passed)."""
    if duration_s is not None and duration_s < 1:
        raise ValueError("a suspension lasts at least 1 second")
    connection.set(schema.SUSPENDED, 1, ex=duration_s)


def resume(connection: Redis) -> None:
    connection.delete(schema.SUSPENDED)


def is_suspended(connection: Redis) -> bool:
    return bool(connection.exists(schema.SUSPENDED))
