"""What running a job produced: plain data that crosses from the horse to the worker.

Its own module so that the horse (and the in-process executor) depend on the shape of a result
only, never on workerd.commit, the module that writes job state to Redis.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outcome:
    """What running a job produced; plain data, sent from the horse to the worker over a pipe."""

    succeeded: bool
    started_at: float  # epoch seconds
    ended_at: float
    return_value_b64: str | None = None  # base64(serializer.dumps(value)); None for a None result
    exc_string: str | None = None  # traceback text, on failure
    record_failure: bool = True  # False with --disable-default-exception-handler
    reason: str = ""  # one line for the log
    retry: tuple[int, list[int]] | None = None  # the job returned Retry(max, intervals)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended_at - self.started_at)
