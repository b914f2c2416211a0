"""Small helpers with no I/O: importing by dotted path, call strings, name checks."""

from __future__ import annotations

import builtins
import importlib
import re
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from workerd import schema

_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")
# Queue names become parts of Redis keys and log lines; RQ allows anything, but a name with
# whitespace, a colon (key separator) or a control character is almost always a mistake.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.@/+=-]+")
MAX_QUEUE_NAME_LENGTH = 256
MAX_PRINTED_ID_LENGTH = 200


def import_attribute(path: str) -> Any:
    """Import `pkg.module.attr` (or `module.Class.method`, or a builtin name) and return it."""
    if "." not in path:
        if hasattr(builtins, path):
            return getattr(builtins, path)
        raise ImportError(f"{path!r} is not a dotted path (expected module.function)")
    value, attributes = import_module_prefix(path)
    for attribute in attributes:
        value = getattr(value, attribute)
    return value


def import_module_prefix(path: str) -> tuple[ModuleType, list[str]]:
    """Import the longest module `path` starts with (never `path` itself, which names an attribute);
    return it and the attribute names that follow it."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            return importlib.import_module(module_name), parts[split:]
        except ModuleNotFoundError as exc:
            # Only swallow "this candidate module does not exist"; an import error raised from
            # inside an existing module is the user's bug and must surface.
            if exc.name is not None and module_name.startswith(exc.name):
                continue
            raise
    raise ImportError(f"cannot import {path!r}: no module found")


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} is invalid: use letters, digits, '_' and '-' only")
    return job_id


def printable_id(job_id: str) -> str:
    """A job id for a log line or a process title. An id can be any bytes (schema.decode_id): one
    that is not printable UTF-8 is shown escaped, as a bytes repr, so that it can neither break the
    line's encoding nor forge another line; an empty one as ''; a very long one cut."""
    raw = job_id.encode("utf-8", schema.ID_ENCODING_ERRORS)
    # Undecodable bytes (lone surrogates here) are not printable either.
    text = job_id if job_id.isprintable() else repr(raw)[2:-1]
    if not text:
        return "''"
    return text if len(text) <= MAX_PRINTED_ID_LENGTH else f"{text[:MAX_PRINTED_ID_LENGTH]}... ({len(raw)} bytes)"


def validate_queue_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("a queue name must be a non-empty string")
    if len(name) > MAX_QUEUE_NAME_LENGTH:
        raise ValueError(f"queue name is {len(name)} characters long; the limit is {MAX_QUEUE_NAME_LENGTH}")
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(f"queue name {name!r} has forbidden characters: use letters, digits and _ . @ / + = -")
    return name


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 75 else text[:75] + "..."


def call_string(func_name: str | None, args: Iterable[Any], kwargs: dict[str, Any]) -> str | None:
    """RQ's description of a call: `tasks.add(2, 3, x=1)`, each argument cut at 75 characters."""
    if func_name is None:
        return None
    arguments = [_short_repr(arg) for arg in args]
    arguments += [f"{key}={_short_repr(value)}" for key, value in sorted(kwargs.items())]
    return f"{func_name}({', '.join(arguments)})"


def as_text(value: str | bytes | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", errors="replace")
