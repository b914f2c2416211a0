"""Waiting for work on several queues at once, woken alone when a job arrives.

An idle worker must wake within milliseconds when a job arrives on any of its queues, but popping
the id with BLPOP would leave it only in this process's memory until it is recorded (RQ's loss
window, docs/PROTOCOL.md §8.1, W1). And a wait that leaves the queue unchanged (`BLMOVE q q`) is
served to every client blocked on q: each job would wake every idle worker (the herd).

Instead, each queue gets its own connection blocked on `BLMOVE q <claim list> LEFT RIGHT`, where
the claim list (schema.claim_list_key) is this worker's own: Redis hands each pushed id to exactly
one waiting client, and the id is in Redis all along. The worker then takes the job with the
atomic FETCH_START script, which reads its claim lists before the queues and puts whatever it does
not start back at the front of its queue, so priority across queues holds. The worker's other waits
are ended in the fetch's own round trip (CLIENT UNBLOCK, `end_waits`): a busy worker claims
nothing. If its claim lists outlive it, their ids are recovered as a dead worker's job is
(schema.RECOVER_CLAIMS, workerd.commit).
"""

from __future__ import annotations

import contextlib
import selectors
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis as redis_module

from workerd import schema

if TYPE_CHECKING:
    from redis import Redis


@dataclass(frozen=True)
class EndingWaits:
    """What a fetch must do about the worker's waits: CLIENT UNBLOCK `client_ids` first (in its own
    round trip), check the claim lists if `claims_may_hold` ids, and call `refused` if Redis
    refuses CLIENT UNBLOCK (an ACL without it)."""

    client_ids: tuple[int, ...] = ()
    claims_may_hold: bool = True
    refused: Callable[[], None] = lambda: None


# No waiter yet (the first fetch of a run, or the first after an outage): ids a previous life of
# this worker (same name) or a wait cut by the outage left in its claim lists are taken first.
NO_WAITS = EndingWaits()
# No waiter since a fetch that looked in the claim lists: nothing can have moved an id into them.
NOTHING_CLAIMED = EndingWaits(claims_may_hold=False)


class QueueWaiter:
    def __init__(self, redis: Redis, queues: list[str], worker_name: str, block_s: int) -> None:
        self._redis = redis
        self._pool = redis.connection_pool
        self._keys = {schema.queue_key(q): schema.claim_list_key(q, worker_name) for q in queues}
        self._worker_name = worker_name
        self._block_s = block_s
        self._connections: dict[str, Any] = {}
        self._client_ids: dict[str, int] = {}
        self._pending: set[str] = set()  # queue keys whose connection has a reply to come
        self._may_hold = False  # a wait may have moved ids into the claim lists since the last fetch
        self._can_unblock = True
        self.quiet = False  # the last wait ended without a job handed to us: a fetch would find none

    def _connection(self, key: str) -> Any:
        connection = self._connections.get(key)
        if connection is None:
            connection = self._pool.make_connection()
            # We only read after select() says a reply is there; a socket timeout shorter than the
            # BLMOVE would only break healthy waits.
            connection.socket_timeout = None  # type: ignore[attr-defined]
            connection.connect()
            # Named as the worker's own connection is (presence.register_birth): CLIENT LIST shows whose
            # wait it is. Its id is what CLIENT UNBLOCK takes. One round trip, once a connection.
            connection.send_command("CLIENT", "SETNAME", self._worker_name)
            connection.send_command("CLIENT", "ID")
            connection.read_response()
            self._client_ids[key] = int(connection.read_response())
            self._connections[key] = connection
        return connection

    def wait(self, timeout_s: float, wake_fds: Sequence[int] = ()) -> bool:
        """Block up to `timeout_s` until Redis hands us a job id, or one of `wake_fds` is readable
        (a signal or a command arrived). True if a job was handed to us (it is in a claim list)."""
        self._may_hold = True
        # Replies already there first: the nil of a wait the last fetch ended, or an id it raced.
        handed = self._read([key for key in self._pending if self._connections[key].can_read(timeout=0)])
        if not handed:
            for key, claim_list in self._keys.items():
                if key not in self._pending:
                    self._connection(key).send_command("BLMOVE", key, claim_list, "LEFT", "RIGHT", self._block_s)
                    self._pending.add(key)
            with selectors.DefaultSelector() as selector:
                for key in self._pending:
                    selector.register(self._connections[key]._get_socket(), selectors.EVENT_READ, key)
                for fd in wake_fds:
                    selector.register(fd, selectors.EVENT_READ, None)
                handed = self._read([event.data for event, _ in selector.select(timeout_s) if event.data is not None])
        self.quiet = not handed
        return handed

    def _read(self, keys: list[str]) -> bool:
        handed = False
        for key in keys:
            try:
                reply = self._connections[key].read_response()
            except Exception:
                self._drop(key)
                raise
            self._pending.discard(key)
            handed = handed or reply is not None
        return handed

    def end_waits(self) -> EndingWaits:
        """Before a fetch: the waits still blocked, to be ended in the fetch's round trip (their
        replies, nil, are read by the next wait). With CLIENT UNBLOCK refused, their connections
        are closed instead; Redis may hand one an id before it sees the close, so the next fetch
        looks in the claim lists again."""
        if not self._can_unblock:
            for key in list(self._pending):
                self._drop(key)
        ending = EndingWaits(tuple(self._client_ids[key] for key in self._pending), self._may_hold, self._refused)
        self._may_hold = not self._can_unblock
        self.quiet = False
        return ending

    def _refused(self) -> None:
        self._can_unblock = False
        self._may_hold = True
        for key in list(self._pending):
            self._drop(key)

    def _drop(self, key: str) -> None:
        self._pending.discard(key)
        self._client_ids.pop(key, None)
        connection = self._connections.pop(key, None)
        if connection is not None:
            connection.disconnect()

    def close(self) -> bool:
        """End the waits (CLIENT UNBLOCK first: Redis could hand a closing connection an id before it
        sees the close), then close their connections. True if no wait can be handed an id any more;
        False if one was only closed (Redis may still hand it one: the claim lists need a last look
        after a lease)."""
        ended = not self._pending
        if self._pending and self._can_unblock:
            with contextlib.suppress(redis_module.RedisError), self._redis.pipeline(transaction=False) as pipe:
                for key in self._pending:
                    pipe.execute_command("CLIENT", "UNBLOCK", self._client_ids[key])
                ended = not any(isinstance(reply, Exception) for reply in pipe.execute(raise_on_error=False))
        for key in list(self._connections):
            self._drop(key)
        return ended
