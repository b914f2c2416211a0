"""Jobs: the value stored in `rq:job:<id>`, its encoding (RQ 2.12's fields), and the client API.

A `Job` is plain data plus an optional connection for the client methods RQ users call
(`job.get_status()`, `job.save_meta()`). The worker never writes a job through these methods; its
writes go through `workerd.commit`, the one writer of job state.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import inspect
import json
import math
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from workerd import schema
from workerd import webhooks as webhooks_module
from workerd.errors import DeserializationError, InvalidJobOperation, NoSuchJobError
from workerd.schema import JobStatus
from workerd.serializers import Serializer, resolve_serializer
from workerd.timeutil import utcformat, utcnow, utcparse
from workerd.utils import as_text, call_string, import_attribute, printable_id, validate_job_id
from workerd.webhooks import Webhook

if TYPE_CHECKING:
    from redis import Redis
    from typing_extensions import Unpack

DEFAULT_FAILURE_TTL_S = 31536000  # one year, RQ's default
DEFAULT_RESULT_TTL_S = 500
DEFAULT_TIMEOUT_S = 180
CALLBACK_TIMEOUT_S = 60
# The largest numbers a job may carry. Every value workerd derives from them must stay within what
# Redis and the OS accept, or a commit script would fail half-way (Redis keeps the writes a script
# made before an error): EXPIRE takes at most ~9.2e15 s, setitimer ~9.2e9 s, and an epoch plus a
# ttl must stay an exact integer in a double (2**53) for registry scores.
MAX_TTL_S = 10**12  # ~31,700 years: ttl, result_ttl, failure_ttl, retry intervals
MAX_TIMEOUT_S = 10**9  # ~31 years: job and callback timeouts
MAX_RETRIES = 10**9


class ResultType(enum.IntEnum):
    SUCCESSFUL = 1
    FAILED = 2
    STOPPED = 3
    RETRIED = 4
    MAX_RETRIES_EXCEEDED = 5


@dataclass
class Retry:
    """Retry a failing job up to `max` times, waiting `interval` seconds (an int or a list)."""

    max: int
    interval: int | list[int] = 0
    enqueue_at_front: bool = False

    def __post_init__(self) -> None:
        intervals = self.interval if isinstance(self.interval, list) else [self.interval]
        if not intervals:
            raise ValueError("Retry(interval=...) must be whole seconds or a non-empty list of them")
        check_retry(self.max, intervals)
        self.intervals = intervals


def check_retry(maximum: Any, intervals: Iterable[Any]) -> None:
    """Refuse a retry a worker could not schedule; also for an rq.Retry, which checks no bound."""
    check_whole_number("Retry(max=...)", maximum, 1, MAX_RETRIES)
    for interval in intervals:
        check_whole_number("Retry(interval=...)", interval, 0, MAX_TTL_S)


class Repeat:
    """Run a job that succeeded `times` more times (RQ 2.12's Repeat): each repeat `interval` seconds
    after the run before (0: at once), an int or a list; as RQ, the list is read from the end."""

    def __init__(self, times: int, interval: int | Iterable[int] = 0) -> None:
        intervals = [interval] if isinstance(interval, int) else list(interval)
        check_whole_number("Repeat(times=...)", times, 1, MAX_RETRIES)
        for value in intervals:
            check_whole_number("Repeat(interval=...)", value, 0, MAX_TTL_S)
        self.times = times
        self.intervals = intervals


@dataclass
class Dependency:
    """What a job waits for: `depends_on=Dependency([a, b], allow_failure=True)` (RQ's class)."""

    jobs: Any
    allow_failure: bool = False
    enqueue_at_front: bool = False

    def __post_init__(self) -> None:
        items = self.jobs if isinstance(self.jobs, (list, tuple)) else [self.jobs]
        if not items:
            raise ValueError("Dependency(jobs=...) needs at least one job or job id")
        self.jobs = list(items)


@dataclass
class Callback:
    func: str | Callable[..., Any]
    timeout: int = CALLBACK_TIMEOUT_S

    def __post_init__(self) -> None:
        check_whole_number("Callback(timeout=...)", self.timeout, 1, MAX_TIMEOUT_S, never=-1)

    @property
    def name(self) -> str:
        return self.func if isinstance(self.func, str) else f"{self.func.__module__}.{self.func.__qualname__}"


def _dependency_id(item: Any) -> str:
    if isinstance(item, Job):
        return item.id
    if isinstance(item, str):
        return item
    raise ValueError(f"depends_on items must be Job objects or string job IDs, got {type(item).__name__}")


def _import_callable(name: str) -> Callable[..., Any]:
    """A function by its dotted name. As rq's import_attribute: a name that does not resolve (the
    worker runs older code than the producer) raises ValueError, when the function is asked for."""
    try:
        func = import_attribute(name)
    except AttributeError as exc:
        raise ValueError(f"Invalid attribute name: {name} ({exc})") from exc
    if not callable(func):
        raise TypeError(f"{name} is not callable")
    return func


def _func_reference(func: Any) -> tuple[str, Any]:
    """(func_name, instance) as RQ stores them (docs/PROTOCOL.md §3.2)."""
    if isinstance(func, str):
        return func, None
    if inspect.ismethod(func):
        _refuse_unimportable(func.__self__ if isinstance(func.__self__, type) else type(func.__self__))
        return func.__name__, func.__self__
    if inspect.isfunction(func) or inspect.isbuiltin(func):
        _refuse_unimportable(func)
        return f"{func.__module__}.{func.__qualname__}", None
    if callable(func):
        _refuse_unimportable(type(func))
        return "__call__", func
    raise TypeError(f"expected a function, a method, a callable or a dotted path, got {func!r}")


def _refuse_unimportable(obj: Any) -> None:
    """A worker finds a job's function (or the class of its instance) by importing it by name; refuse
    at enqueue what no worker can import, instead of failing every run."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", repr(obj))
    if module == "__main__":
        raise ValueError(
            f"{qualname} is defined in __main__, which a worker cannot import: move it into a module "
            "the worker can import (for example tasks.py) and enqueue it from there"
        )
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"{module}.{qualname} is a lambda or is defined inside a function, so a worker cannot import "
            "it by name: define it at the top level of a module the worker can import"
        )


def check_whole_number(
    option: str, value: Any, low: int, high: int, never: int | None = None, never_means: str = "no limit"
) -> None:
    """Refuse, at enqueue, a number a worker could not commit (see MAX_TTL_S): `value` must be a whole
    number from `low` to `high`, or `never` (RQ's -1: no limit, never expire)."""
    if isinstance(value, int) and not isinstance(value, bool) and (low <= value <= high or value == never):
        return
    allowed = f"a whole number from {low} to {high}" + (f", or {never} for {never_means}" if never is not None else "")
    raise ValueError(f"{option}: {value!r} is out of range: expected {allowed}")


def retry_intervals_within_limits(
    values: Iterable[Any], problems: list[str], name: str = "retry_intervals"
) -> list[int]:
    """Retry (or repeat) intervals as a worker can use them: a non-number, NaN or infinity reads as 0
    (at once), a negative one as 0, one past MAX_TTL_S as MAX_TTL_S; each change is noted in `problems`."""
    intervals = []
    for value in values:
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number):
            problems.append(f"{name}: {_clip(value)} is not a number of seconds; read as 0")
            intervals.append(0)
        elif not 0 <= number <= MAX_TTL_S:
            bounded = 0 if number < 0 else MAX_TTL_S
            problems.append(f"{name}: {_clip(value)} is outside 0..{MAX_TTL_S}; read as {bounded}")
            intervals.append(bounded)
        else:
            intervals.append(int(number))
    return intervals


def _clip(value: Any) -> str:
    """A value from a hash, short enough for a log line or an exc_info."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _encode_ttl(value: int | None) -> str | None:
    return None if value is None else str(int(value))


def _stamp(moment: dt.datetime | None) -> str:
    return utcformat(moment) if moment else ""


def _parse_stamp(value: str | None) -> dt.datetime | None:
    return utcparse(value) if value else None


def _int_or_none(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):  # "abc", "1e999", "inf", "nan"
        return None


class _CallbackTimeout:
    """A callback's timeout on a Job: reads the stored `_<name>` field, or CALLBACK_TIMEOUT_S when
    none was given; writes the field (None again means the default)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = f"_{name}"

    def __get__(self, job: Job | None, owner: type | None = None) -> Any:
        if job is None:
            return self
        value: int | None = getattr(job, self.field)
        return CALLBACK_TIMEOUT_S if value is None else value

    def __set__(self, job: Job, value: int | None) -> None:
        setattr(job, self.field, value)


class JobOptions(TypedDict, total=False):
    """The options that describe a job, declared here once. `Job.create` takes them as keywords and
    `Queue.create_job`, `enqueue_call`, `enqueue` and `enqueue_at` forward them unchanged, so an
    option added here reaches every one of them (tests/test_client.py checks the sets agree).
    A missing key means None, as each of RQ 2.12's parameters defaults to None."""

    description: str | None
    result_ttl: int | None
    ttl: int | None
    failure_ttl: int | None
    meta: Mapping[str, Any] | None
    retry: Retry | None
    repeat: Repeat | None
    on_success: Callback | Callable[..., Any] | None
    on_failure: Callback | Callable[..., Any] | None
    on_stopped: Callback | Callable[..., Any] | None
    webhooks: Iterable[Webhook | Mapping[str, Any]] | None  # workerd's or rq's Webhook, or their dict


JOB_OPTIONS: tuple[str, ...] = tuple(JobOptions.__annotations__)


@dataclass(eq=False)
class Job:
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    origin: str = ""
    description: str | None = None
    timeout: int | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    ttl: int | None = None
    status: JobStatus | None = None
    created_at: dt.datetime = field(default_factory=utcnow)
    enqueued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    last_heartbeat: dt.datetime | None = None
    worker_name: str = ""
    group_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    dependency_ids: list[str] = field(default_factory=list)
    allow_dependency_failures: bool = False
    enqueue_at_front: bool = False
    retries_left: int | None = None
    retry_intervals: list[int] | None = None
    enqueue_at_front_on_retry: bool = False
    number_of_retries: int | None = None
    repeats_left: int | None = None
    repeat_intervals: list[int] | None = None
    success_callback_name: str = ""
    failure_callback_name: str = ""
    stopped_callback_name: str = ""
    # As given (None: not given, and not stored); read through the *_callback_timeout properties,
    # which report RQ's CALLBACK_TIMEOUT for None, as rq's do.
    _success_callback_timeout: int | None = None
    _failure_callback_timeout: int | None = None
    _stopped_callback_timeout: int | None = None
    lost_count: int = 0
    webhooks: list[Webhook] = field(default_factory=list)  # RQ 2.12's; sent by the worker (workerd.webhooks)
    # What from_mapping had to change to read the hash (a field out of range or unreadable): logged by
    # the worker, and added to the exc_info if the job fails. Not stored.
    problems: list[str] = field(default_factory=list, repr=False)
    # The hash's 'data' field as stored (zlib-compressed by RQ and workerd), kept so a fetched job is
    # decoded once and saved again byte for byte; b"" once the call is changed. `data` (the property)
    # is rq's: the uncompressed serialized (func_name, instance, args, kwargs).
    stored_data: bytes = b""
    connection: Redis | None = field(default=None, repr=False)
    serializer: Serializer = field(default_factory=lambda: resolve_serializer(None), repr=False)
    _decoded: tuple[str, Any, Any, dict[str, Any]] | None = field(default=None, repr=False)
    _payload: bytes | None = field(default=None, repr=False)  # `data`, once set or built

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        func: Any,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        connection: Redis | None = None,
        serializer: Serializer | str | None = None,
        id: str | None = None,
        origin: str = "",
        timeout: int | None = None,
        status: JobStatus = JobStatus.CREATED,
        depends_on: Any = None,
        **options: Unpack[JobOptions],
    ) -> Job:
        result_ttl, failure_ttl, ttl = options.get("result_ttl"), options.get("failure_ttl"), options.get("ttl")
        for option, value, low, high, never, never_means in (
            ("timeout", timeout, 1, MAX_TIMEOUT_S, -1, "no limit"),
            ("result_ttl", result_ttl, 0, MAX_TTL_S, -1, "never expire"),
            ("failure_ttl", failure_ttl, 0, MAX_TTL_S, -1, "never expire"),
            ("ttl", ttl, 1, MAX_TTL_S, None, ""),
        ):
            if value is not None:
                check_whole_number(option, value, low, high, never, never_means)
        func_name, instance = _func_reference(func)
        # As rq: a string is not a list of arguments (tuple("abc") would silently be three of them).
        if args is not None and (isinstance(args, (str, bytes)) or not isinstance(args, Iterable)):
            raise TypeError(f"{args!r} is not a valid args list")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"{kwargs!r} is not a valid kwargs dict")
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        chosen_serializer = resolve_serializer(serializer)
        job = cls(
            id=validate_job_id(id) if id is not None else str(uuid.uuid4()),
            origin=origin,
            timeout=timeout,
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
            ttl=ttl,
            status=status,
            meta=dict(options.get("meta") or {}),
            connection=connection,
            serializer=chosen_serializer,
        )
        if depends_on is not None:
            job._set_dependencies(depends_on)
        job._decoded = (func_name, instance, args, kwargs)  # encoded lazily, on save or `job.data`, as rq
        job.description = options.get("description") or call_string(func_name, args, kwargs)
        if (retry := options.get("retry")) is not None:
            check_retry(retry.max, retry.intervals)
            job.retries_left = retry.max
            job.retry_intervals = retry.intervals
            job.enqueue_at_front_on_retry = retry.enqueue_at_front
        if (
            repeat := options.get("repeat")
        ) is not None:  # an rq.Repeat as well: same attribute names, checked here for both
            Repeat(repeat.times, repeat.intervals)
            job.repeats_left = repeat.times
            job.repeat_intervals = list(repeat.intervals)
        if (hooks := options.get("webhooks")) is not None:
            job.webhooks = [webhooks_module.as_webhook(hook) for hook in hooks]
        for kind, callback in (
            ("success", options.get("on_success")),
            ("failure", options.get("on_failure")),
            ("stopped", options.get("on_stopped")),
        ):
            if callback is not None:
                cb = callback if isinstance(callback, Callback) else Callback(callback)
                setattr(job, f"{kind}_callback_name", cb.name)
                setattr(job, f"_{kind}_callback_timeout", cb.timeout)
        return job

    def _set_dependencies(self, depends_on: Any) -> None:
        """depends_on: a job, an id, a Dependency, or a list of these (RQ's process_dependencies);
        anything else raises ValueError, as rq."""
        ids: list[str] = []
        for item in depends_on if isinstance(depends_on, (list, tuple)) else [depends_on]:
            if isinstance(item, Dependency):
                self.allow_dependency_failures = self.allow_dependency_failures or item.allow_failure
                self.enqueue_at_front = self.enqueue_at_front or item.enqueue_at_front
                ids += [_dependency_id(dep) for dep in item.jobs]
            else:
                ids.append(_dependency_id(item))
        self.dependency_ids = ids

    @property
    def dependency(self) -> Job | None:
        """rq's: the first job this one depends on, fetched (None if it depends on none)."""
        if not self.dependency_ids:
            return None
        return type(self).fetch(self.dependency_ids[0], self._redis(), self.serializer)

    # -- the call ------------------------------------------------------------------------------

    def _decode(self) -> tuple[str, Any, Any, dict[str, Any]]:
        if self._decoded is None:
            raw = self._payload if self._payload is not None else self._decompressed()
            try:
                decoded = self.serializer.loads(raw)
            except Exception as exc:  # any serializer may raise anything on garbage
                raise DeserializationError(
                    f"job {printable_id(self.id)}: 'data' could not be decoded with the "
                    f"{getattr(self.serializer, 'name', type(self.serializer).__name__)} serializer "
                    f"({type(exc).__name__}: {exc}); producer and worker must use the same --serializer"
                ) from exc
            if not (isinstance(decoded, (list, tuple)) and len(decoded) == 4):
                raise DeserializationError(
                    f"job {printable_id(self.id)}: 'data' must hold (func_name, instance, args, kwargs), "
                    f"got {type(decoded)}"
                )
            func_name, instance, args, kwargs = decoded
            if not isinstance(func_name, str) or not isinstance(kwargs, dict):
                raise DeserializationError(
                    f"job {printable_id(self.id)}: 'data' has a malformed function name or kwargs"
                )
            self._decoded = (func_name, instance, tuple(args or ()), kwargs)
        return self._decoded

    def _decompressed(self) -> bytes:
        if not self.stored_data:
            raise DeserializationError(f"job {printable_id(self.id)} has no 'data' field")
        try:
            return zlib.decompress(self.stored_data)
        except zlib.error:
            return self.stored_data  # RQ also accepts uncompressed data

    @property
    def data(self) -> bytes:
        """rq's `job.data`: the serialized (func_name, instance, args, kwargs), uncompressed; built on
        first access from the call (rq encodes lazily), or read from the stored field."""
        if self._payload is None:
            if self._decoded is not None:
                self._payload = self.serializer.dumps(self._decoded)
            else:
                self._payload = self._decompressed()
        return self._payload

    @data.setter
    def data(self, value: bytes) -> None:
        self._payload, self._decoded, self.stored_data = value, None, b""

    def _set_call(self, index: int, value: Any) -> None:
        """Change one part of the call (rq's func_name/instance/args/kwargs setters): `data` is encoded
        again when next read or saved. A job with no call yet starts from rq's (None, None, (), {})."""
        has_call = self._decoded is not None or self._payload is not None or self.stored_data
        call = list(self._decode() if has_call else ("", None, (), {}))
        call[index] = value
        self._decoded = (call[0], call[1], tuple(call[2] or ()), dict(call[3] or {}))
        self._payload, self.stored_data = None, b""

    @property
    def func_name(self) -> str:
        return self._decode()[0]

    @func_name.setter
    def func_name(self, value: str) -> None:
        self._set_call(0, value)

    @property
    def instance(self) -> Any:
        return self._decode()[1]

    @instance.setter
    def instance(self, value: Any) -> None:
        self._set_call(1, value)

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self._decode()[2])

    @args.setter
    def args(self, value: Iterable[Any]) -> None:
        self._set_call(2, value)

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._decode()[3]

    @kwargs.setter
    def kwargs(self, value: Mapping[str, Any]) -> None:
        self._set_call(3, value)

    @property
    def func(self) -> Callable[..., Any]:
        name = self.func_name
        if self.instance is not None:
            return getattr(self.instance, name)
        return _import_callable(name)

    # rq's success_callback/failure_callback/stopped_callback: the stored name, imported; None if unset.
    success_callback = property(lambda self: self._callback("success"))
    failure_callback = property(lambda self: self._callback("failure"))
    stopped_callback = property(lambda self: self._callback("stopped"))

    def _callback(self, kind: str) -> Callable[..., Any] | None:
        name = getattr(self, f"{kind}_callback_name")
        return _import_callable(name) if name else None

    # rq's *_callback_timeout: the timeout given, or CALLBACK_TIMEOUT_S (what rq's worker uses).
    success_callback_timeout = _CallbackTimeout()
    failure_callback_timeout = _CallbackTimeout()
    stopped_callback_timeout = _CallbackTimeout()

    # -- encoding ------------------------------------------------------------------------------

    def _stored_or_encoded(self) -> bytes:
        """The `data` field: as stored, or the call encoded; empty for a hash that never had one (a
        forged or half-written job, written back as it was rather than raising)."""
        if self.stored_data or (self._payload is None and self._decoded is None):
            return self.stored_data
        return zlib.compress(self.data)

    def to_mapping(self, include_meta: bool = True) -> dict[str, str | bytes]:
        """The hash fields RQ's `Job.to_dict` writes (docs/PROTOCOL.md §3.1)."""
        mapping: dict[str, str | bytes] = {
            "created_at": _stamp(self.created_at),
            "data": self._stored_or_encoded(),
            "success_callback_name": self.success_callback_name,
            "failure_callback_name": self.failure_callback_name,
            "stopped_callback_name": self.stopped_callback_name,
            "started_at": _stamp(self.started_at),
            "ended_at": _stamp(self.ended_at),
            "last_heartbeat": _stamp(self.last_heartbeat),
            "worker_name": self.worker_name,
            "group_id": self.group_id,
            "status": (self.status or JobStatus.CREATED).value,
        }
        optional: dict[str, str | None] = {
            "origin": self.origin or None,
            "description": self.description,
            "enqueued_at": _stamp(self.enqueued_at) or None,
            "timeout": _encode_ttl(self.timeout),
            "result_ttl": _encode_ttl(self.result_ttl),
            "failure_ttl": _encode_ttl(self.failure_ttl),
            "ttl": _encode_ttl(self.ttl) if self.ttl else None,
            "dependency_id": self.dependency_ids[0] if self.dependency_ids else None,
            "dependency_ids": json.dumps(self.dependency_ids) if self.dependency_ids else None,
            "allow_dependency_failures": "1" if self.allow_dependency_failures else None,
            "enqueue_at_front": "1" if self.enqueue_at_front else None,
            "retries_left": _encode_ttl(self.retries_left),
            "retry_intervals": json.dumps(self.retry_intervals) if self.retry_intervals is not None else None,
            "enqueue_at_front_on_retry": "1" if self.enqueue_at_front_on_retry else None,
            "number_of_retries": _encode_ttl(self.number_of_retries),
            "repeats_left": _encode_ttl(self.repeats_left),
            "repeat_intervals": json.dumps(self.repeat_intervals) if self.repeat_intervals is not None else None,
            "success_callback_timeout": _encode_ttl(self._success_callback_timeout),
            "failure_callback_timeout": _encode_ttl(self._failure_callback_timeout),
            "stopped_callback_timeout": _encode_ttl(self._stopped_callback_timeout),
            "webhooks": webhooks_module.encode_field(self.webhooks),
        }
        mapping.update({key: value for key, value in optional.items() if value is not None})
        if include_meta and self.meta:
            mapping["meta"] = self.serializer.dumps(self.meta)
        return mapping

    @classmethod
    def from_mapping(
        cls,
        job_id: str,
        raw: Mapping[bytes | str, bytes | str],
        *,
        connection: Redis | None = None,
        serializer: Serializer | str | None = None,
    ) -> Job:
        """Decode a job hash. Tolerates what RQ tolerates; a field of the wrong type reads as unset."""
        chosen_serializer = resolve_serializer(serializer)
        fields: dict[str, bytes] = {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): (v if isinstance(v, bytes) else v.encode())
            for k, v in raw.items()
        }

        def text(name: str) -> str | None:
            value = fields.get(name)
            return None if value is None else value.decode("utf-8", errors="replace")

        def stamp(name: str) -> dt.datetime | None:
            try:
                return _parse_stamp(text(name))
            except ValueError:
                return None

        def json_list(name: str) -> list[Any] | None:
            try:
                value = json.loads(text(name) or "null")
            except ValueError:
                return None
            return value if isinstance(value, list) else None

        problems: list[str] = []

        def number(name: str, low: int, high: int, out_of_range: str = "") -> int | None:
            """A numeric field: unreadable reads as unset; out of range as the nearest bound, or as unset
            when `out_of_range` says what unset means. Each change is noted in `problems`."""
            raw = text(name)
            value = _int_or_none(raw)
            if value is None and raw not in (None, ""):
                problems.append(f"{name}: {_clip(raw)} is not a number; read as {out_of_range or 'unset'}")
            if value is None or low <= value <= high:
                return value
            bounded = None if out_of_range else max(low, min(high, value))
            problems.append(f"{name}: {_clip(raw)} is outside {low}..{high}; read as {out_of_range or bounded}")
            return bounded

        def intervals(name: str) -> list[int] | None:
            values = json_list(name)
            if values is None:
                if text(name) is not None:
                    problems.append(f"{name}: {_clip(text(name))} is not a JSON list; read as unset")
                return None
            return retry_intervals_within_limits(values, problems, name)

        status_text = text("status")
        try:
            status = JobStatus(status_text) if status_text else JobStatus.CREATED
        except ValueError:
            status = JobStatus.CREATED
        meta: dict[str, Any] = {}
        if "meta" in fields:
            try:
                meta = chosen_serializer.loads(fields["meta"])
            except Exception:  # RQ keeps undecodable meta visible rather than failing the job
                meta = {"unserialized": fields["meta"]}
        job = cls(
            id=job_id,
            origin=text("origin") or "",
            description=text("description"),
            timeout=number("timeout", -1, MAX_TIMEOUT_S),
            result_ttl=number("result_ttl", -MAX_TTL_S, MAX_TTL_S),
            failure_ttl=number("failure_ttl", -MAX_TTL_S, MAX_TTL_S),
            ttl=number("ttl", -MAX_TTL_S, MAX_TTL_S),
            status=status,
            created_at=stamp("created_at") or utcnow(),
            enqueued_at=stamp("enqueued_at"),
            started_at=stamp("started_at"),
            ended_at=stamp("ended_at"),
            last_heartbeat=stamp("last_heartbeat"),
            worker_name=text("worker_name") or "",
            group_id=text("group_id") or "",
            meta=meta if isinstance(meta, dict) else {"unserialized": meta},
            dependency_ids=[str(x) for x in (json_list("dependency_ids") or [])]
            or ([text("dependency_id")] if text("dependency_id") else []),  # type: ignore[list-item]
            allow_dependency_failures=text("allow_dependency_failures") == "1",
            enqueue_at_front=text("enqueue_at_front") == "1",
            retries_left=number("retries_left", 0, MAX_RETRIES, out_of_range="no retries"),
            retry_intervals=intervals("retry_intervals"),
            enqueue_at_front_on_retry=text("enqueue_at_front_on_retry") == "1",
            number_of_retries=number("number_of_retries", 0, MAX_RETRIES),
            repeats_left=number("repeats_left", 0, MAX_RETRIES, out_of_range="no repeats"),
            repeat_intervals=intervals("repeat_intervals"),
            success_callback_name=text("success_callback_name") or "",
            failure_callback_name=text("failure_callback_name") or "",
            stopped_callback_name=text("stopped_callback_name") or "",
            _success_callback_timeout=number("success_callback_timeout", -1, MAX_TIMEOUT_S),
            _failure_callback_timeout=number("failure_callback_timeout", -1, MAX_TIMEOUT_S),
            _stopped_callback_timeout=number("stopped_callback_timeout", -1, MAX_TIMEOUT_S),
            lost_count=number(schema.LOST_COUNT_FIELD, 0, MAX_RETRIES) or 0,
            webhooks=webhooks_module.parse_field(fields.get("webhooks"), problems),
            problems=problems,
            stored_data=fields.get("data", b""),
            connection=connection,
            serializer=chosen_serializer,
        )
        return job

    # -- client API ----------------------------------------------------------------------------

    @property
    def key(self) -> bytes:
        return schema.job_key(self.id)

    def _redis(self) -> Redis:
        if self.connection is None:
            raise InvalidJobOperation(f"job {self.id} has no Redis connection; pass connection=...")
        return self.connection

    @classmethod
    def fetch(cls, job_id: str, connection: Redis, serializer: Serializer | str | None = None) -> Job:
        raw = connection.hgetall(schema.job_key(job_id))
        if not raw:
            raise NoSuchJobError(f"no such job: {printable_id(job_id)}")
        return cls.from_mapping(job_id, raw, connection=connection, serializer=serializer)

    @classmethod
    def fetch_many(
        cls, job_ids: Iterable[str], connection: Redis, serializer: Serializer | str | None = None
    ) -> list[Job | None]:
        ids = list(job_ids)
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(schema.job_key(job_id))
            hashes = pipe.execute()
        return [
            cls.from_mapping(job_id, raw, connection=connection, serializer=serializer) if raw else None
            for job_id, raw in zip(ids, hashes, strict=True)
        ]

    @classmethod
    def exists(cls, job_id: str, connection: Redis) -> bool:
        return bool(connection.exists(schema.job_key(job_id)))

    def refresh(self) -> None:
        fresh = Job.fetch(self.id, self._redis(), self.serializer)
        for name in self.__dataclass_fields__:
            if name not in ("connection", "serializer"):
                setattr(self, name, getattr(fresh, name))

    def get_status(self, refresh: bool = True) -> JobStatus:
        if refresh:
            value = self._redis().hget(self.key, "status")
            if value is None:
                raise InvalidJobOperation(f"job {self.id} does not exist")
            self.status = JobStatus(as_text(value))
        return self.status or JobStatus.CREATED

    def get_meta(self, refresh: bool = True) -> dict[str, Any]:
        if refresh:
            raw: Any = self._redis().hget(self.key, "meta")
            self.meta = self.serializer.loads(raw) if raw else {}
        return self.meta

    def save_meta(self) -> None:
        self._redis().hset(self.key, "meta", self.serializer.dumps(self.meta))

    def save(self) -> None:
        # as rq: a job without a function is not a job any worker could run
        if not (self.stored_data or self._payload or self._decoded):
            raise ValueError(f"job {printable_id(self.id)} has no function (empty data): nothing to save")
        self._redis().hset(self.key, mapping=self.to_mapping())  # type: ignore[arg-type]

    is_queued = property(lambda self: self.get_status() == JobStatus.QUEUED)
    is_started = property(lambda self: self.get_status() == JobStatus.STARTED)
    is_finished = property(lambda self: self.get_status() == JobStatus.FINISHED)
    is_failed = property(lambda self: self.get_status() == JobStatus.FAILED)
    is_deferred = property(lambda self: self.get_status() == JobStatus.DEFERRED)
    is_scheduled = property(lambda self: self.get_status() == JobStatus.SCHEDULED)
    is_stopped = property(lambda self: self.get_status() == JobStatus.STOPPED)
    is_canceled = property(lambda self: self.get_status() == JobStatus.CANCELED)

    def results(self) -> list[Result]:
        entries: Any = self._redis().xrevrange(schema.results_key(self.id), "+", "-")
        return [Result.from_entry(self.id, entry_id, fields, self.serializer) for entry_id, fields in entries]

    def latest_result(self, timeout: float = 0) -> Result | None:
        redis: Any = self._redis()  # redis-py's stream replies are loosely typed
        key = schema.results_key(self.id)
        if timeout:
            response = redis.xread({key: "0-0"}, block=int(timeout * 1000))
            entries = response[0][1] if response else []
            if entries:
                entry_id, fields = entries[-1]
                return Result.from_entry(self.id, entry_id, fields, self.serializer)
            return None
        entries = redis.xrevrange(key, "+", "-", count=1)
        if not entries:
            return None
        entry_id, fields = entries[0]
        return Result.from_entry(self.id, entry_id, fields, self.serializer)

    def return_value(self, refresh: bool = False) -> Any:
        result = self.latest_result()
        return result.return_value if result and result.type == ResultType.SUCCESSFUL else None

    @property
    def result(self) -> Any:
        return self.return_value()

    @property
    def exc_info(self) -> str | None:
        for result in self.results():
            if result.type == ResultType.FAILED:
                return result.exc_string
        return None

    def get_position(self) -> int | None:
        position = self._redis().lpos(schema.queue_key(self.origin), self.id)
        return None if position is None else int(position)  # type: ignore[arg-type]

    def cancel(self) -> None:
        """Cancel a job that has not finished: out of its queue or registry, into the canceled one."""
        redis = self._redis()
        status = self.get_status()
        if status == JobStatus.CANCELED:
            raise InvalidJobOperation(f"job {self.id} is already canceled")
        with redis.pipeline() as pipe:
            pipe.hset(self.key, "status", JobStatus.CANCELED.value)
            pipe.lrem(schema.queue_key(self.origin), 0, self.id)
            registry_key = {
                JobStatus.DEFERRED: schema.deferred_key,
                JobStatus.SCHEDULED: schema.scheduled_key,
                JobStatus.FINISHED: schema.finished_key,
                JobStatus.FAILED: schema.failed_key,
            }.get(status)
            if registry_key is not None:
                pipe.zrem(registry_key(self.origin), self.id)
            if status == JobStatus.STARTED:  # rq's remove_executions: the job runs on, its worker commits it
                executions: list[bytes] = redis.zrange(schema.executions_key(self.id), 0, -1)  # type: ignore[assignment]
                members = [schema.wip_member(self.id, schema.decode_id(e)) for e in executions]
                if members:
                    pipe.zrem(schema.started_key(self.origin), *members)
            # whole seconds, as rq's registries score (docs/PROTOCOL.md §1.1)
            pipe.zadd(schema.canceled_key(self.origin), {self.id: int(utcnow().timestamp())})
            pipe.execute()
        self.status = JobStatus.CANCELED

    def delete(self, remove_from_queue: bool = True) -> None:
        redis = self._redis()
        with redis.pipeline() as pipe:
            if remove_from_queue:
                pipe.lrem(schema.queue_key(self.origin), 0, self.id)
            for registry_key in (
                schema.finished_key,
                schema.failed_key,
                schema.deferred_key,
                schema.scheduled_key,
                schema.canceled_key,
            ):
                pipe.zrem(registry_key(self.origin), self.id)
            pipe.delete(self.key, schema.dependents_key(self.id), schema.dependencies_key(self.id))
            pipe.execute()

    def requeue(self, at_front: bool = False) -> Job:
        """Put a failed job back on its queue (RQ's FailedJobRegistry.requeue)."""
        redis = self._redis()
        if not redis.zrem(schema.failed_key(self.origin), self.id):
            raise InvalidJobOperation(f"job {self.id} is not in the failed job registry of {self.origin}")
        with redis.pipeline() as pipe:
            pipe.hset(
                self.key,
                mapping={
                    "status": JobStatus.QUEUED.value,
                    "started_at": "",
                    "ended_at": "",
                    "enqueued_at": utcformat(utcnow()),
                },
            )
            pipe.sadd(schema.QUEUES, schema.queue_key(self.origin))
            queue = schema.queue_key(self.origin)
            pipe.lpush(queue, self.id) if at_front else pipe.rpush(queue, self.id)
            pipe.execute()
        self.status = JobStatus.QUEUED
        return self

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.description!r}, status={self.status.value if self.status else None})"

    # rq's small accessors (docs/jobs.md): the job's own value, else the caller's default.
    def get_ttl(self, default_ttl: int | None = None) -> int | None:
        return default_ttl if self.ttl is None else self.ttl

    def get_result_ttl(self, default_ttl: int | None = None) -> int | None:
        return default_ttl if self.result_ttl is None else self.result_ttl

    def get_call_string(self) -> str | None:
        """The call as Python source, `tasks.add(2, 3)`, each argument cut at 75 characters, as rq's."""
        return call_string(self.func_name, self.args, self.kwargs)

    def __str__(self) -> str:  # rq's
        return f"<Job {self.id}: {self.description}>"

    # As rq's: a job is its id (two fetches of one job are equal); the dataclass fields are not compared.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


@dataclass
class Result:
    job_id: str
    id: str
    type: ResultType
    created_at: dt.datetime
    worker_name: str = ""
    execution_id: str = ""
    return_value: Any = None
    exc_string: str | None = None

    @classmethod
    def from_entry(
        cls, job_id: str, entry_id: bytes | str, fields: Mapping[bytes, bytes], serializer: Serializer
    ) -> Result:
        values = {k.decode(): v for k, v in fields.items()}
        entry = as_text(entry_id) or "0-0"
        created = dt.datetime.fromtimestamp(int(entry.split("-")[0]) / 1000, tz=dt.timezone.utc)
        return_value = None
        if values.get("return_value"):
            return_value = serializer.loads(base64.b64decode(values["return_value"]))
        exc_string = None
        if values.get("exc_string"):
            exc_string = zlib.decompress(base64.b64decode(values["exc_string"])).decode("utf-8", "replace")
        return cls(
            job_id=job_id,
            id=entry,
            type=ResultType(int(values.get("type", b"1"))),
            created_at=created,
            worker_name=as_text(values.get("worker_name")) or "",
            execution_id=as_text(values.get("execution_id")) or "",
            return_value=return_value,
            exc_string=exc_string,
        )


def encode_return_value(value: Any, serializer: Serializer) -> str:
    """base64(serializer.dumps(value)); an unserializable value becomes RQ's placeholder string."""
    try:
        payload = serializer.dumps(value)
    except Exception:  # the value's own __reduce__ or a json TypeError: anything can be raised
        payload = serializer.dumps("Unserializable return value")
    return base64.b64encode(payload).decode()


def encode_exc_string(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode("utf-8", errors="replace"))).decode()
