"""Named replies for commands queued on a shared pipeline.

Several modules queue commands on one pipeline (the worker's heartbeat: its key, the lease of
the job in hand, the expired leases to recover), so that one round trip serves them all. Each
function that queues returns a `Queued`: it knows which replies are its own and how to read
them, so that no caller counts the commands another module queued.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from redis.client import Pipeline

T = TypeVar("T")


@dataclass(frozen=True)
class Queued(Generic[T]):
    """The replies `start` to `stop` (exclusive) of a pipeline's execute(), read by `reader`."""

    start: int
    stop: int
    reader: Callable[[list[Any]], T]

    def read(self, replies: Sequence[Any]) -> T:
        if len(replies) < self.stop:
            raise ValueError(f"{len(replies)} replies, but commands {self.start}..{self.stop - 1} were queued")
        return self.reader(list(replies[self.start : self.stop]))


def queue(pipe: Pipeline, add: Callable[[], None], reader: Callable[[list[Any]], T]) -> Queued[T]:
    """Run `add` (which queues commands on `pipe`) and remember which replies will be its own."""
    start = len(pipe)
    add()
    return Queued(start, len(pipe), reader)
