"""Waiting for work on several queues at once without taking a job off any of them.

An idle worker must wake within milliseconds when a job arrives on any of its queues, but popping
the id with BLPOP would leave it only in this process's memory until it is recorded (RQ's loss
window, docs/PROTOCOL.md §8.1, W1). Instead, each queue gets its own connection blocked on
`BLMOVE q q LEFT LEFT`: when q becomes non-empty Redis moves its head to its head - the list is
unchanged - and the reply wakes us. The worker then takes the job with the atomic FETCH_START
script, which honours priority across all queues.
"""

from __future__ import annotations

import selectors
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workerd import schema

if TYPE_CHECKING:
    from redis import Redis


class QueueWaiter:
    def __init__(self, redis: Redis, queues: list[str], block_s: int) -> None:
        self._pool = redis.connection_pool
        self._queue_keys = [schema.queue_key(q) for q in queues]
        self._block_s = block_s
        self._connections: dict[str, Any] = {}
        self._pending: set[str] = set()

    def _connection(self, key: str) -> Any:
        connection = self._connections.get(key)
        if connection is None:
            connection = self._pool.make_connection()
            # We only read after select() says a reply is there; a socket timeout shorter than the
            # BLMOVE would only break healthy waits.
            connection.socket_timeout = None  # type: ignore[attr-defined]
            connection.connect()
            self._connections[key] = connection
        return connection

    def wait(self, timeout_s: float, wake_fds: Sequence[int] = ()) -> bool:
        """Block up to `timeout_s` until some queue may hold a job, or one of `wake_fds` is readable
        (a signal or a command arrived). True if woken by a queue."""
        for key in self._queue_keys:
            if key not in self._pending:
                self._connection(key).send_command("BLMOVE", key, key, "LEFT", "LEFT", self._block_s)
                self._pending.add(key)
        ready = [key for key in self._pending if self._connections[key].can_read(timeout=0)]
        if not ready:
            with selectors.DefaultSelector() as selector:
                for key in self._pending:
                    selector.register(self._connections[key]._get_socket(), selectors.EVENT_READ, key)
                for fd in wake_fds:
                    selector.register(fd, selectors.EVENT_READ, None)
                ready = [event.data for event, _ in selector.select(timeout_s) if event.data is not None]
        woken = False
        for key in ready:
            try:
                reply = self._connections[key].read_response()
            except Exception:
                self._drop(key)
                raise
            self._pending.discard(key)
            woken = woken or reply is not None
        return woken

    def _drop(self, key: str) -> None:
        self._pending.discard(key)
        connection = self._connections.pop(key, None)
        if connection is not None:
            connection.disconnect()

    def close(self) -> None:
        for key in list(self._connections):
            self._drop(key)
