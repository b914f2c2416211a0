"""What a worker tells its master: one report type, encoded and decoded here only.

A worker (or a custom daemon) sends a `Report` over its pipe to the master, one JSON object a
line, at least once per heartbeat interval; a single worker's metrics process and its systemd
notifier read the same reports. Every field is always encoded, and `Report.decode` refuses a line
with a field missing, unknown or of the wrong type, so that a sender and a reader cannot drift
apart silently.

The enums name the reasons a dashboard groups by; each one's value is its metric label, so that a
log line can be reworded without changing a metric. This module imports nothing of Redis: the
horse, the master and the metrics process read it without the code that writes job state.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any


class ReportError(ValueError):
    """A report line that is not a Report (a bug: sender and reader are the same code)."""


class WorkerState(str, enum.Enum):
    """What a worker is doing, as the master and the metrics show it (workerd_workers{state})."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    SUSPENDED = "suspended"


class JobOutcome(str, enum.Enum):
    """How a job's run ended, as committed (workerd_jobs{outcome})."""

    FINISHED = "finished"
    FAILED = "failed"
    RETRIED = "retried"
    REQUEUED = "requeued"


class RecycleReason(str, enum.Enum):
    """Why a worker was replaced by design (workerd_worker_recycles{reason})."""

    MAX_JOBS = "max_jobs"
    MAX_AGE = "max_age"
    MAX_IDLE = "max_idle"
    SOFT_MEMORY = "soft_memory"
    HARD_MEMORY = "hard_memory"
    RELOAD = "reload"
    SCALE_DOWN = "scale_down"


class StopReason(str, enum.Enum):
    """Why a worker stops, as the worker or the master decided; a recycle's value is its label."""

    WARM_SHUTDOWN = "warm_shutdown"  # a signal to the worker, or the master stopping warm
    COLD_SHUTDOWN = "cold_shutdown"
    SUSPENDED = "suspended"  # burst mode, with the queues suspended
    BURST_FINISHED = "burst_finished"
    KILLED = "killed"  # by the master, over a limit (see KillReason)
    MAX_JOBS = "max_jobs"
    MAX_AGE = "max_age"
    MAX_IDLE = "max_idle"
    SOFT_MEMORY = "soft_memory"
    HARD_MEMORY = "hard_memory"  # its horse hit the hard limit: the worker is replaced
    RELOAD = "reload"  # replaced after a reload, or its group was removed
    SCALE_DOWN = "scale_down"

    @property
    def recycle(self) -> RecycleReason | None:
        """The recycle this stop is, or None (a shutdown, a burst's end, a kill)."""
        return RecycleReason(self.value) if self.value in _RECYCLE_LABELS else None


class KillReason(str, enum.Enum):
    """Why a horse or a worker was killed (workerd_kills{reason})."""

    TIMEOUT = "timeout"
    HARD_MEMORY = "hard_memory"
    SOFT_MEMORY = "soft_memory"
    OTHER = "other"
    SHUTDOWN_TIMEOUT = "shutdown_timeout"  # a worker only: it outlived the master's stop timeout


class ExitKind(str, enum.Enum):
    """How a worker of the master ended, as the metrics count it."""

    KILLED = "killed"  # by the master, over a limit (workerd_kills{process="worker"})
    RECYCLED = "recycled"  # replaced by design (workerd_worker_recycles)
    STOPPED = "stopped"  # asked to stop (shutdown), or stopped cleanly by itself (burst): not counted
    DIED = "died"  # by itself or from outside, unasked (workerd_worker_deaths)


_RECYCLE_LABELS = frozenset(reason.value for reason in RecycleReason)
# The kill reasons each kind of process can carry (the series created at 0 from the start).
HORSE_KILLS = (KillReason.TIMEOUT, KillReason.HARD_MEMORY, KillReason.SOFT_MEMORY, KillReason.OTHER)
WORKER_KILLS = (*HORSE_KILLS, KillReason.SHUTDOWN_TIMEOUT)


@dataclass(frozen=True, kw_only=True)
class Report:
    """One report; a field left at its default says nothing about that field.

    state (with job and kill_at) comes when the worker is registered and takes or ends a job; jobs
    and failed count its jobs since it started; heartbeat says it reached Redis, outage that it
    could not; stopping (with stop_reason) says it stops and why; outcome
    (with queue and duration_s) counts one committed job; kill names a horse it killed."""

    state: WorkerState | None = None
    job: str | None = None  # the job in hand (printable id), with state
    kill_at: float | None = None  # epoch time past which the master kills an in-process job, with state
    jobs: int | None = None
    failed: int | None = None
    heartbeat: bool = False
    outage: bool = False
    stopping: str | None = None  # as logged
    stop_reason: StopReason | None = None  # with stopping
    outcome: JobOutcome | None = None
    queue: str | None = None
    duration_s: float | None = None
    kill: KillReason | None = None

    def encode(self) -> bytes:
        """One line of the pipe: every field, enums as their values."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps({k: v.value if isinstance(v, enum.Enum) else v for k, v in fields.items()}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Report:
        """The Report of one line (without or with its newline); ReportError if it is not one."""
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise ReportError(f"a report is not JSON: {exc}: {line[:200]!r}") from None
        if not isinstance(raw, dict):
            raise ReportError(f"a report is not a JSON object: {line[:200]!r}")
        names = set(_DECODERS)
        missing, unknown = sorted(names - raw.keys()), sorted(raw.keys() - names)
        if missing or unknown:
            raise ReportError(f"a report has missing fields {missing} and unknown fields {unknown}: {line[:200]!r}")
        values: dict[str, Any] = {}
        for name, decode in _DECODERS.items():
            value = raw[name]
            try:
                values[name] = None if value is None and name not in _BOOLS else decode(value)
            except (TypeError, ValueError):
                raise ReportError(f"a report's field {name} has an invalid value {value!r}") from None
        return cls(**values)


def _exact(kind: type) -> Any:
    def check(value: Any) -> Any:
        # bool is an int to Python, and an int is a fine float: neither check lets the other through.
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise TypeError(value)
        return float(value) if kind is float else value

    return check


_BOOLS = ("heartbeat", "outage")
_DECODERS: dict[str, Any] = {
    "state": WorkerState,
    "job": _exact(str),
    "kill_at": _exact(float),
    "jobs": _exact(int),
    "failed": _exact(int),
    "heartbeat": _exact(bool),
    "outage": _exact(bool),
    "stopping": _exact(str),
    "stop_reason": StopReason,
    "outcome": JobOutcome,
    "queue": _exact(str),
    "duration_s": _exact(float),
    "kill": KillReason,
}
