"""Running one job: resolve the function, call it under its timeout, turn what happened into an Outcome.

Shared by the horse (fork mode), the worker itself (in-process mode) and `Queue(is_async=False)`.
Nothing here writes to Redis; the caller hands the Outcome to `workerd.commit`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

from workerd import rqview, untrusted
from workerd.errors import JobTimeoutException
from workerd.job import CALLBACK_TIMEOUT_S, DEFAULT_TIMEOUT_S, Job, JobStatus, encode_return_value
from workerd.outcome import Outcome
from workerd.untrusted import UntrustedJobRefused
from workerd.utils import printable_id

log = logging.getLogger("workerd.job")

ExceptionHandler = Callable[[Job, type[BaseException], BaseException, TracebackType | None], Any]

_current_jobs: list[Job] = []


def get_current_job() -> Job | None:
    """The job being run by this process, inside a job function; None elsewhere."""
    return _current_jobs[-1] if _current_jobs else None


class BaseDeathPenalty:
    """Stops a job that runs past `timeout_s` by raising `exception` inside it.

    Subclass and name the class in DEATH_PENALTY_CLASS to change how. The worker also enforces the
    timeout from outside (SIGKILL of the horse shortly after), so a job that swallows the exception
    or blocks signals still ends.
    """

    def __init__(self, timeout_s: float, exception: type[BaseException] = JobTimeoutException, **kwargs: Any):
        self.timeout_s = timeout_s
        self.exception = exception

    def __enter__(self) -> BaseDeathPenalty:
        self.setup_death_penalty()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel_death_penalty()

    def setup_death_penalty(self) -> None:
        raise NotImplementedError

    def cancel_death_penalty(self) -> None:
        raise NotImplementedError


class UnixSignalDeathPenalty(BaseDeathPenalty):
    """SIGALRM-based, as RQ's default: the job gets JobTimeoutException and can clean up."""

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        raise self.exception(f"Task exceeded maximum timeout value ({self.timeout_s:g} seconds)")

    def setup_death_penalty(self) -> None:
        if self.timeout_s <= 0:
            return
        self._previous = signal.signal(signal.SIGALRM, self._raise)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)

    def cancel_death_penalty(self) -> None:
        if self.timeout_s <= 0:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)


def effective_timeout_s(job: Job) -> float:
    """The job's timeout in seconds; 0 means none (RQ's -1)."""
    timeout = job.timeout if job.timeout is not None else DEFAULT_TIMEOUT_S
    return 0.0 if timeout < 0 else float(timeout)


def format_exception(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # an exception whose __str__ or __repr__ raises
        return f"{type(exc).__module__}.{type(exc).__qualname__}: <the exception could not be printed>\n"


def _call(job: Job, allowed_functions: Sequence[str]) -> Any:
    value = untrusted.job_function(job, allowed_functions)(*job.args, **job.kwargs)
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    return value


def perform(
    job: Job,
    death_penalty_class: type[BaseDeathPenalty] = UnixSignalDeathPenalty,
    exception_handlers: Sequence[ExceptionHandler] = (),
    record_failure: bool = True,
    allowed_functions: Sequence[str] = (),
    view_class: type | None = None,
) -> Outcome:
    """Run `job` (and its success or failure callback) to an Outcome. Never raises: every failure,
    timeout included, is in the Outcome. With `allowed_functions`, the function and callbacks are
    checked where they are imported (workerd.untrusted.job_function). `view_class`: the class of
    what rq.get_current_job() returns (workerd.rqview)."""
    started = time.time()
    _current_jobs.append(job)
    try:
        with (
            rqview.current(job, view_class),
            death_penalty_class(effective_timeout_s(job), rqview.timeout_exception(), job_id=job.id),
        ):
            value = _call(job, allowed_functions)
        retry = _as_retry(value)
        encoded = None if value is None else encode_return_value(value, job.serializer)
        if job.success_callback_name and retry is None:
            run_callback(job, "success", death_penalty_class, allowed_functions, value)
        return Outcome(succeeded=True, started_at=started, ended_at=time.time(), return_value_b64=encoded, retry=retry)
    except UntrustedJobRefused as refused:  # as the worker's own refusal: no callback, no handler runs
        return Outcome(
            succeeded=False,
            started_at=started,
            ended_at=time.time(),
            exc_string=f"{_one_line(refused)}\n",
            reason=_one_line(refused),
        )
    except BaseException as exc:  # SystemExit from a job is a failure of that job, not of the worker
        ended = time.time()
        exc_string = format_exception(exc)
        if job.failure_callback_name:
            try:
                run_callback(job, "failure", death_penalty_class, allowed_functions, type(exc), exc, exc.__traceback__)
            except BaseException as callback_exc:  # as rq: the callback's traceback replaces the job's
                exc, exc_string = callback_exc, format_exception(callback_exc)
        run_exception_handlers(job, exc, exception_handlers)
        return Outcome(
            succeeded=False,
            started_at=started,
            ended_at=ended,
            exc_string=exc_string,
            record_failure=record_failure,
            reason=_one_line(exc),
        )
    finally:
        _current_jobs.pop()


_STATUS_SEEN_BY_CALLBACK = {"success": JobStatus.FINISHED, "failure": JobStatus.FAILED, "stopped": JobStatus.STOPPED}


def run_callback(
    job: Job, kind: str, death_penalty_class: type[BaseDeathPenalty], allowed_functions: Sequence[str], *args: Any
) -> None:
    """Call the job's on_success / on_failure / on_stopped as rq does: (job, connection, *args),
    under its own timeout (default 60 s). Raises what the callback raises, and UntrustedJobRefused
    for a callback the allowlist refuses (not called)."""
    name = getattr(job, f"{kind}_callback_name")
    timeout = getattr(job, f"{kind}_callback_timeout") or CALLBACK_TIMEOUT_S
    # RQ's view (rq #1631): the callback's job already has its final status, in memory. Redis gets it
    # from the worker's commit, after the callback: the one writer of job state stays the worker.
    job.status = _STATUS_SEEN_BY_CALLBACK[kind]
    shown = printable_id(job.id)
    try:
        callback = untrusted.resolve(name, allowed_functions, f"the {kind} callback {name!r} of job {shown}")
    except UntrustedJobRefused:
        raise
    except Exception as exc:
        raise ImportError(f"the {kind} callback {name!r} of job {shown} cannot be imported: {exc}") from exc
    with death_penalty_class(timeout, rqview.timeout_exception(), job_id=job.id):
        callback(job, job.connection, *args)


def _as_retry(value: Any) -> tuple[int, list[int]] | None:
    """A job may return rq's or workerd's Retry to ask to be run again: (max, intervals)."""
    if type(value).__name__ != "Retry":
        return None
    maximum, intervals = getattr(value, "max", None), getattr(value, "intervals", None)
    if isinstance(maximum, int) and isinstance(intervals, list):
        return maximum, [int(i) for i in intervals]
    return None


def _one_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_exception_handlers(job: Job, exc: BaseException, handlers: Sequence[ExceptionHandler]) -> None:
    """RQ's chain: each handler gets (job, type, value, tb); a falsy return other than None stops it."""
    for handler in handlers:
        try:
            fallthrough = handler(job, type(exc), exc, exc.__traceback__)
        except Exception:
            log.exception("exception handler %r raised; continuing with the next one", handler)
            continue
        if fallthrough is not None and not fallthrough:
            break
