"""RQ's own view of the running job, for job code written against RQ's API.

Job code written for RQ asks `rq.get_current_job()` for its job (to update `meta`, read its id, check
`dependencies_are_met()`), and catches `rq.timeouts.JobTimeoutException` to clean up before a
timeout. workerd does not depend on rq, but where rq is installed next to it, a job run by workerd
sees what it would see under `rq worker`:

* `rq.get_current_job()` returns an `rq.job.Job` of the same id, connection and serializer, built
  from the job hash the worker already read (no extra round trip), when job code first asks for it:
  building it costs about 0.1 ms, and most jobs never ask;
* a timeout raises an exception that is both `rq.timeouts.JobTimeoutException` and
  `workerd.JobTimeoutException`, and `exc_info` names it `rq.timeouts.JobTimeoutException`, as RQ
  writes it.

`load()` imports rq's job module once per worker, before any horse is forked, so horses share it
(measured: 42 ms and 2 MiB, once). Without rq installed everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from workerd import errors

if TYPE_CHECKING:
    from workerd.job import Job

_rq_job: ModuleType | None = None
_timeout_exception: type[errors.JobTimeoutException] = errors.JobTimeoutException
_loaded = False


def load() -> None:
    """Import rq's job and timeout modules if rq is installed. Idempotent and cheap after the first call."""
    global _rq_job, _timeout_exception, _loaded
    if _loaded:
        return
    _loaded = True
    if importlib.util.find_spec("rq") is None:
        return
    import rq.job
    import rq.local
    import rq.timeouts

    _rq_job = rq.job
    # rq.get_current_job() returns rq.job._job_stack.top: rq's stack, with workerd's entries built when
    # first looked at. rq's own pushes (its Job.perform) go through unchanged.
    rq.job._job_stack = _lazy_stack(rq.local.LocalStack)()
    _timeout_exception = type(
        "JobTimeoutException",
        (errors.JobTimeoutException, rq.timeouts.JobTimeoutException),
        # Named as RQ's class in tracebacks (exc_info), which is what RQ users grep for and dashboards show;
        # unpickled, the name resolves to RQ's class, a base of this one.
        {"__module__": "rq.timeouts", "__doc__": errors.JobTimeoutException.__doc__},
    )


def timeout_exception() -> type[errors.JobTimeoutException]:
    """The exception a job gets when it runs past its timeout."""
    load()
    return _timeout_exception


@contextlib.contextmanager
def current(job: Job, view_class: type | None = None) -> Iterator[None]:
    """While the block runs, `rq.get_current_job()` returns RQ's view of `job` (if rq is installed),
    an instance of `view_class` if that is a subclass of rq's Job (the worker's job_class)."""
    load()
    if _rq_job is None or job.connection is None:
        yield
        return
    _rq_job._job_stack.push(_Pending(job, view_class))
    try:
        yield
    finally:
        _rq_job._job_stack.pop()


@dataclass(frozen=True)
class _Pending:
    """A job on rq's stack whose view is not built yet."""

    job: Job
    view_class: type | None


def _lazy_stack(base: type) -> type:
    class LazyViews(base):  # rq.local.LocalStack, imported with rq
        @property
        def top(self) -> Any:
            top = super().top
            if isinstance(top, _Pending):
                top = self._local.stack[-1] = _view_of(top.job, top.view_class)
            return top

    return LazyViews


def _view_of(job: Job, view_class: type | None) -> Any:
    """An rq.job.Job of `job` (rq is loaded: see current), or None for an id RQ refuses (only letters,
    digits, _ and -), which no RQ client could have enqueued."""
    assert _rq_job is not None
    cls = view_class if isinstance(view_class, type) and issubclass(view_class, _rq_job.Job) else _rq_job.Job
    try:
        # RQ's restore() reads the hash as Redis returns it: bytes values.
        raw = {key: value.encode() if isinstance(value, str) else value for key, value in job.to_mapping().items()}
        view = cls(job.id, connection=job.connection, serializer=job.serializer)
        view.restore(raw)
    except Exception:
        return None
    return view
