"""Exceptions that carry exit codes, and the exit codes themselves.

Only the edges (the CLI entry point and the supervisor's top level) turn an error into a process
exit; everything below raises. The codes follow sysexits.h where one fits, so systemd
(`RestartPreventExitStatus=78`) and cron wrappers can act on them.
"""

from __future__ import annotations

import enum


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


class NoSuchJobError(WorkerdError):
    pass


class InvalidJobOperation(WorkerdError):
    pass


class DeserializationError(WorkerdError):
    """A job's stored data could not be decoded (not zlib, not the agreed serializer, wrong shape)."""


class DuplicateJobError(WorkerdError):
    pass


class JobTimeoutException(Exception):
    """Raised inside a job that ran past its timeout. Same name and message as RQ's."""


class AbandonedJobError(Exception):
    pass


class ShutDownImminentException(Exception):
    pass
