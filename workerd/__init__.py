"""workerd: a supervised worker daemon for RQ-compatible Redis job queues, and its client library."""

__version__ = "0.1.0"

import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from workerd.worker import Worker

# Every public name is loaded on first use (PEP 562), from the module that defines it: a web process
# that only enqueues (`from workerd import Queue`) must not pay for the worker, asyncio (the executor's)
# or pydantic-settings (issue 15: `import workerd` cost 296 ms and ~44 MiB), and the horse, which
# imports this package for workerd.horse, must not load workerd.commit, the module that writes job state.
_HOMES = {
    "Callback": "workerd.job",
    "CanceledJobRegistry": "workerd.registry",
    "DeferredJobRegistry": "workerd.registry",
    "Dependency": "workerd.job",
    "FailedJobRegistry": "workerd.registry",
    "FinishedJobRegistry": "workerd.registry",
    "Job": "workerd.job",
    "JobStatus": "workerd.job",
    "Queue": "workerd.queue",
    "Repeat": "workerd.job",
    "Result": "workerd.job",
    "Retry": "workerd.job",
    "ScheduledJobRegistry": "workerd.registry",
    "StartedJobRegistry": "workerd.registry",
    "Worker": "workerd.worker",
    "WorkerInfo": "workerd.presence",
    "get_current_job": "workerd.execution",
    "job": "workerd.queue",
    "send_kill_horse_command": "workerd.control",
    "send_shutdown_command": "workerd.control",
    "send_stop_job_command": "workerd.control",
}

__all__ = [  # the names above, spelled out for static tools (tests/test_structure.py checks they agree)
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
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'workerd' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


class _Package(types.ModuleType):
    """`workerd.job` is the @job decorator, as in rq, though the submodule workerd.job has the same name.
    Importing a submodule sets the package's attribute of its name to it, which, without eager imports to
    overwrite it, would leave `from workerd import job` giving the module: the attribute is a property,
    and the import system's assignment of the submodule is dropped (it stays in sys.modules)."""

    @property
    def job(self) -> Callable[..., Any]:
        from workerd.queue import job

        return job

    @job.setter
    def job(self, submodule: types.ModuleType) -> None:
        pass


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
