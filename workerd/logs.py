"""Logging set-up: rq's line shapes by default, DICT_CONFIG when given."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import logging.config
import logging.handlers
import os
import sys
from typing import TYPE_CHECKING, Any

from workerd.errors import ConfigError
from workerd.settings import Settings
from workerd.utils import printable_id

if TYPE_CHECKING:
    from workerd.job import Job

# The worker this process is (set by the worker; None in a master): the `worker` of JSON lines.
WORKER_NAME: str | None = None
JOB_FIELDS = ("job_id", "queue", "worker", "attempt")
# The settings setup_logging reads: a reload that changes one of them sets logging up again.
LOGGING_SETTINGS = frozenset({"log_level", "log_format", "date_format", "log_file", "dict_config"})


def job_fields(job: Job, queue: str, worker: str) -> dict[str, Any]:
    """The `extra=` of a log call about a job: what a JSON line carries to find every line of a job.

    attempt: 1 + the times a dead worker lost the job + the retries it asked for (a returned
    Retry); retries after an exception show as retries_left going down.
    """
    attempt = 1 + job.lost_count + (job.number_of_retries or 0)
    return {"job_id": printable_id(job.id), "queue": queue, "worker": worker, "attempt": attempt}


class JsonFormatter(logging.Formatter):
    """LOG_FORMAT = "json": one object a line: ts, level, logger, message, worker, pid, and for a
    line about a job, job_id, queue and attempt (from `extra=job_fields(...)`); exc for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        line: dict[str, Any] = {
            "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "worker": getattr(record, "worker", None) or WORKER_NAME,
            "pid": record.process,
        }
        for name in ("job_id", "queue", "attempt"):
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def setup_logging(settings: Settings) -> None:
    """As rq: records below ERROR to stdout, ERROR and above to stderr; or the user's dictConfig.

    With LOG_FILE, records also go to that file. Every process of a pool appends to it (O_APPEND
    keeps lines whole) through a WatchedFileHandler, which reopens the file when it is moved; the
    size-based rotation itself is done by one process only (rotate_log_file_if_needed), so that
    two processes never rotate at once.

    Called again (a reload), it replaces this process's handlers, closing the old ones: one
    handler per stream, never two, and no file left open. Processes forked later inherit them.
    """
    if settings.dict_config:
        _apply_dict_config(settings.dict_config)
        return
    formatter: logging.Formatter
    if settings.log_format.strip().lower() == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter(settings.log_format, settings.date_format)
    # A line must never fail to print: text from a forged job (an id, an exception message) can hold
    # bytes that are not UTF-8 (lone surrogates, see schema.decode_id); they come out escaped.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_BelowError())
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    root = logging.getLogger("workerd")
    _remove_handlers(root)
    handlers: list[logging.Handler] = [out, err]
    if settings.log_file:
        handlers.append(logging.handlers.WatchedFileHandler(settings.log_file, errors="backslashreplace"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    root.propagate = False


def _remove_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()  # a file handler's file; a StreamHandler leaves sys.stdout/stderr open


def _apply_dict_config(config: dict[str, Any]) -> None:
    """The user's DICT_CONFIG, as rq applies it. Two differences from a bare dictConfig call: the
    workerd loggers, created at import, stay enabled unless the config says otherwise (logging's
    default disable_existing_loggers=True would silence every worker line), and they propagate to
    whatever handlers the config gives the root logger. A config logging rejects is a config error."""
    workerd_logger = logging.getLogger("workerd")
    _remove_handlers(workerd_logger)
    workerd_logger.setLevel(logging.NOTSET)
    workerd_logger.propagate = True
    try:
        logging.config.dictConfig({"disable_existing_loggers": False, **config})
    except (ValueError, TypeError, AttributeError, ImportError, KeyError) as exc:
        raise ConfigError(f"DICT_CONFIG is not a valid logging.config.dictConfig dictionary: {exc}") from exc


def backup_path(path: str, index: int) -> str:
    """The name of the index-th backup of the built-in rotation: app.log.size-1 (the newest) ...

    Not logrotate's names (app.log.1, or app.log-20260102 with dateext), so the two never overwrite
    each other's files, and not ending in .log, so that a logrotate rule for *.log leaves them alone."""
    return f"{path}.size-{index}"


def rotate_log_file_if_needed(settings: Settings) -> None:
    """Rotate LOG_FILE past LOG_FILE_MAX_MIB: file -> file.size-1 -> ... -> file.size-N (the oldest
    dropped). LOG_FILE_MAX_MIB = 0: never (logrotate, or another tool, rotates the file)."""
    path = settings.log_file
    if not path or not settings.log_file_max_mib:
        return
    try:
        if os.path.getsize(path) < settings.log_file_max_mib * 1024 * 1024:
            return
    except OSError:
        return
    for index in range(settings.log_file_backups - 1, 0, -1):
        if os.path.exists(backup_path(path, index)):
            os.replace(backup_path(path, index), backup_path(path, index + 1))
    if settings.log_file_backups:
        os.replace(path, backup_path(path, 1))
    else:
        os.truncate(path, 0)
    reopen_log_files()


def reopen_log_files() -> None:
    for handler in logging.getLogger("workerd").handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.reopenIfNeeded()


def set_worker_name(name: str | None) -> None:
    """Name the worker this process is, for the `worker` field of JSON lines."""
    global WORKER_NAME
    WORKER_NAME = name
