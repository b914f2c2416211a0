"""Logging set-up: rq's line shapes by default, DICT_CONFIG when given."""

from __future__ import annotations

import logging
import logging.config
import sys

from workerd.settings import Settings


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def setup_logging(settings: Settings) -> None:
    """As rq: records below ERROR to stdout, ERROR and above to stderr; or the user's dictConfig."""
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
    for handler in (out, err):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    root.propagate = False
