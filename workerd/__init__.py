"""workerd: a supervised worker daemon for RQ-compatible Redis job queues, and its client library."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from workerd.control import send_kill_horse_command, send_shutdown_command, send_stop_job_command
from workerd.execution import get_current_job
from workerd.job import Callback, Dependency, Job, JobStatus, Repeat, Result, Retry
from workerd.presence import WorkerInfo
from workerd.queue import Queue, job
from workerd.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

if TYPE_CHECKING:
    from workerd.worker import Worker

__all__ = [
    "Callback",
    "CanceledJobRegistry",
    "DeferredJobRegistry",
    "Dependency",
    "FailedJobRegistry",
    "FinishedJobRegistry",
    "Job",
    "JobStatus",
    "Queue",
    "Repeat",
    "Result",
    "Retry",
    "ScheduledJobRegistry",
    "StartedJobRegistry",
    "Worker",
    "WorkerInfo",
    "__version__",
    "get_current_job",
    "job",
    "send_kill_horse_command",
    "send_shutdown_command",
    "send_stop_job_command",
]


def __getattr__(name: str) -> Any:
    # Worker is loaded on first use: the horse imports this package (for workerd.horse) and must
    # not load the worker and, with it, workerd.commit, the module that writes job state to Redis.
    if name == "Worker":
        from workerd.worker import Worker

        return Worker
    raise AttributeError(f"module 'workerd' has no attribute {name!r}")
