"""workerd: a supervised worker daemon for RQ-compatible Redis job queues, and its client library."""

__version__ = "0.1.0"

from workerd.execution import get_current_job  # noqa: E402
from workerd.job import Callback, Job, JobStatus, Result, Retry  # noqa: E402
from workerd.queue import Queue, job  # noqa: E402
from workerd.registration import WorkerInfo  # noqa: E402
from workerd.registry import (  # noqa: E402
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from workerd.worker import Worker  # noqa: E402

__all__ = [
    "Callback", "CanceledJobRegistry", "DeferredJobRegistry", "FailedJobRegistry", "FinishedJobRegistry",
    "Job", "JobStatus", "Queue", "Result", "Retry", "ScheduledJobRegistry", "StartedJobRegistry",
    "Worker", "WorkerInfo", "__version__", "get_current_job", "job",
]  # fmt: skip
