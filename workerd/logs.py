"""Logging set-up: rq's line shapes by default, DICT_CONFIG when given."""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import os
import sys

from workerd.settings import Settings


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def setup_logging(settings: Settings) -> None:
    """As rq: records below ERROR to stdout, ERROR and above to stderr; or the user's dictConfig.

    With LOG_FILE, records also go to that file. Every process of a pool appends to it (O_APPEND
    keeps lines whole) through a WatchedFileHandler, which reopens the file when it is moved; the
    size-based rotation itself is done by one process only (rotate_log_file_if_needed), so that
    two processes never rotate at once.
    """
    if settings.dict_config:
        logging.config.dictConfig(settings.dict_config)
        return
    formatter = logging.Formatter(settings.log_format, settings.date_format)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_BelowError())
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    root = logging.getLogger("workerd")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers: list[logging.Handler] = [out, err]
    if settings.log_file:
        handlers.append(logging.handlers.WatchedFileHandler(settings.log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    root.propagate = False


def rotate_log_file_if_needed(settings: Settings) -> None:
    """Rotate LOG_FILE past LOG_FILE_MAX_MIB: file -> file.1 -> ... -> file.N (the oldest dropped)."""
    path = settings.log_file
    if not path:
        return
    try:
        if os.path.getsize(path) < settings.log_file_max_mib * 1024 * 1024:
            return
    except OSError:
        return
    for index in range(settings.log_file_backups - 1, 0, -1):
        if os.path.exists(f"{path}.{index}"):
            os.replace(f"{path}.{index}", f"{path}.{index + 1}")
    if settings.log_file_backups:
        os.replace(path, f"{path}.1")
    else:
        os.truncate(path, 0)
    reopen_log_files()


def reopen_log_files() -> None:
    for handler in logging.getLogger("workerd").handlers:
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.reopenIfNeeded()
