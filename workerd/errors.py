"""Exceptions that carry exit codes, and the exit codes themselves.

Only the edges (the CLI entry point and the supervisor's top level) turn an error into a process
exit; everything below raises. The codes follow sysexits.h where one fits, so systemd
(`RestartPreventExitStatus=78`) and cron wrappers can act on them.
"""

from __future__ import annotations

import enum
import sys


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # a runtime error, or RQ's "suspended at start" (rq worker exits 1 too)
    USAGE = 2  # bad command line (argparse's own code)
    BOOT_FAILURE = 3  # the master gave up: workers could not boot N times in a row
    UNAVAILABLE = 69  # EX_UNAVAILABLE: Redis could not be reached at start (burst mode)
    SOFTWARE = 70  # EX_SOFTWARE: an internal error (a bug in workerd)
    OS_ERROR = 71  # EX_OSERR: the system refused a resource (the metrics port is in use); a restart may succeed
    NO_PERMISSION = 77  # EX_NOPERM: Redis refused our credentials or a command (ACL); restarting will not help
    CONFIG = 78  # EX_CONFIG: the settings are invalid; restarting will not help


class WorkerdError(Exception):
    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(WorkerdError):
    """Invalid settings. The message names the source (file, environment, flag), key and reason."""

    exit_code = ExitCode.CONFIG


class ListenError(WorkerdError):
    """A port could not be bound. Not a settings error: the port may be free at the next start."""

    exit_code = ExitCode.OS_ERROR


class RedisUnavailableError(WorkerdError):
    exit_code = ExitCode.UNAVAILABLE


class RedisAuthError(WorkerdError):
    """Redis refused the password or user, or an ACL forbids a command workerd needs: a settings
    problem, not an outage, so it is reported at once rather than retried."""

    exit_code = ExitCode.NO_PERMISSION


class BootFailureError(WorkerdError):
    exit_code = ExitCode.BOOT_FAILURE


class RQNamedError(WorkerdError):
    """An error of the client API that rq's has under the same name in `rq.exceptions`.

    Where the application uses rq (`rq.exceptions` is imported when the error is raised), the error
    raised is also an instance of rq's class, so `except rq.exceptions.NoSuchJobError` keeps working
    beside workerd's client, as `except workerd.errors.NoSuchJobError` does everywhere. rq is never
    imported for this: an application that catches rq's classes has imported them."""

    def __new__(cls, *args: object, **kwargs: object) -> RQNamedError:
        return super().__new__(_with_rqs_class(cls), *args)


_RQ_TWINS: dict[type[RQNamedError], type[RQNamedError]] = {}


def _with_rqs_class(cls: type[RQNamedError]) -> type[RQNamedError]:
    if cls in _RQ_TWINS.values():
        return cls
    twin = _RQ_TWINS.get(cls)
    if twin is None:
        rq_exceptions = sys.modules.get("rq.exceptions")
        rq_class = getattr(rq_exceptions, cls.__name__, None)
        if not (isinstance(rq_class, type) and issubclass(rq_class, Exception)):
            return cls
        # Pickled (a horse's exception, say) as workerd's class, which picks its twin again on load.
        namespace = {"__module__": cls.__module__, "__doc__": cls.__doc__, "__reduce__": _reduce_as(cls)}
        twin = _RQ_TWINS[cls] = type(cls.__name__, (cls, rq_class), namespace)
    return twin


def _reduce_as(cls: type[RQNamedError]) -> object:
    def reduce(self: RQNamedError) -> tuple[type[RQNamedError], tuple[object, ...]]:
        return cls, self.args

    return reduce


class NoSuchJobError(RQNamedError):
    pass


class InvalidJobOperation(RQNamedError):
    pass


class DeserializationError(RQNamedError):
    """A job's stored data could not be decoded (not zlib, not the agreed serializer, wrong shape)."""


class DuplicateJobError(RQNamedError):
    pass


class JobTimeoutException(Exception):
    """Raised inside a job that ran past its timeout. Same name and message as RQ's."""


class AbandonedJobError(Exception):
    pass


class ShutDownImminentException(Exception):
    pass
