"""Untrusted-Redis mode: what a job read from Redis may make a worker do (docs/SECURITY.md).

With ALLOWED_FUNCTIONS set (patterns on dotted paths, see `pattern_regex`) and SERIALIZER = "json",
a job forged by anyone who can write to Redis cannot run a function outside the allowlist, and
cannot make the worker unpickle anything:

* the job's `data` is decoded with json, which builds only plain values;
* its function path and its callback paths are matched against the patterns in the worker, before
  anything is imported and before a horse is forked; a job that does not match fails with a reason;
* where the function is imported (the horse, or the worker in in-process mode), the import is
  checked again before anything is called (`resolve`): the walk from the module to the function may
  not pass through another module or a builtin, and the object reached must itself be defined at an
  allowed path (its own `__module__` and `__qualname__`). A matching path is not enough: an allowed
  module that does `import os` would otherwise export `os.system` as `myapp.tasks.os.system`;
* a job on a bound method or a callable instance (`instance` not null) is refused: with json the
  instance would be a plain value anyway, and the allowlist names functions, not objects.

With pickle, decoding a job's `data` already runs whatever the pickle says, before any check could
happen; ALLOWED_FUNCTIONS with pickle is therefore a configuration error (exit 78), not a weaker mode.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from workerd.utils import import_attribute, import_module_prefix, printable_id

if TYPE_CHECKING:
    from workerd.job import Job

SAFE_SERIALIZERS = ("json", "rq.serializers.JSONSerializer")
CALLBACK_KINDS = ("success", "failure", "stopped")
_SEGMENT = re.compile(r"[A-Za-z0-9_*?]+")
# Functions implemented in C: they have no Python module a path could be checked against
# (`print.__module__` is "builtins", a bound `{}.get` has none), and an allowed module can only hold
# one it imported from elsewhere.
_BUILTIN_TYPES = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)


class UntrustedJobRefused(Exception):
    """The allowlist does not let this job (or one of its callbacks) run; str() is the reason."""


@functools.lru_cache(maxsize=256)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A pattern as a regex on dotted paths: `*` is any run of characters within one segment, `?` one
    character within one segment, a whole segment `**` one or more segments; the rest is literal.
    Unlike fnmatch, no wildcard crosses a dot: `myapp.tasks.*` matches `myapp.tasks.send` only,
    not `myapp.tasks.os.system`."""
    segments = []
    for segment in pattern.split("."):
        if segment == "**":
            segments.append(r"[^.]+(?:\.[^.]+)*")
        else:
            segments.append("".join({"*": "[^.]*", "?": "[^.]"}.get(char, re.escape(char)) for char in segment))
    return re.compile(r"\.".join(segments))


def is_allowed(path: str, patterns: Sequence[str]) -> bool:
    """True if the dotted `path` matches one of the `patterns` (case-sensitive, see `pattern_regex`)."""
    return any(pattern_regex(pattern).fullmatch(path) for pattern in patterns)


def settings_problem(serializer: str, patterns: Sequence[str]) -> str | None:
    """Why these settings cannot run in untrusted-Redis mode, or None."""
    if patterns and serializer not in SAFE_SERIALIZERS:
        return (
            f"needs SERIALIZER = 'json' (it is {serializer!r}): decoding a pickled job runs code before any "
            "allowlist check, so the allowlist would protect nothing; switch producers and workers to json "
            "(see docs/SECURITY.md), or unset ALLOWED_FUNCTIONS to trust Redis"
        )
    for pattern in patterns:
        if not all(part == "**" or (_SEGMENT.fullmatch(part) and "**" not in part) for part in pattern.split(".")):
            return (
                f"{pattern!r} is not a pattern of dotted names: use letters, digits and _ in names separated "
                "by dots, with * (within a name), ? (one character) and ** (a whole name: any depth)"
            )
    return None


def refusal(job: Job, patterns: Sequence[str]) -> str | None:
    """The reason this job may not run under the allowlist, or None. Imports nothing.

    Decoding `data` here is safe only with json, which `settings_problem` guarantees."""
    reason = _path_refusal(job, patterns)
    return None if reason is None else f"{UntrustedJobRefused.__name__}: {reason}"


def _path_refusal(job: Job, patterns: Sequence[str]) -> str | None:
    if not patterns:
        return None
    func_name, shown = job.func_name, printable_id(job.id)
    if job.instance is not None:
        return (
            f"job {shown} calls {func_name!r} on an instance (a bound method or callable object); with "
            "ALLOWED_FUNCTIONS set only module-level functions may run"
        )
    for label, path in _paths(job):
        if not is_allowed(path, patterns) or _has_dunder(path):
            return (
                f"{label} {path!r} of job {shown} is not in ALLOWED_FUNCTIONS ({', '.join(patterns)}); "
                "nothing was imported or run"
            )
    return None


def _paths(job: Job) -> list[tuple[str, str]]:
    """What a job names for the worker to import: (label for a message, dotted path)."""
    paths = [("function", job.func_name)]
    for kind in CALLBACK_KINDS:
        name = getattr(job, f"{kind}_callback_name", "")
        if name:
            paths.append((f"the {kind} callback", name))
    return paths


def _has_dunder(path: str) -> bool:
    """A segment like `__builtins__` or `__globals__`: a job function is never a magic attribute, and
    those are the doors from an allowed module to everything else."""
    return any(part.startswith("__") and part.endswith("__") for part in path.split("."))


def job_function(job: Job, patterns: Sequence[str]) -> Callable[..., Any]:
    """The job's function, imported. With an allowlist, the job's paths are matched again here (the
    worker matched them before forking; this is where the import happens, in the horse or in-process)
    and the function and every callback are resolved and checked before anything is called: a job
    with a refused callback does not run either. Raises UntrustedJobRefused."""
    if not patterns:
        return job.func
    reason = _path_refusal(job, patterns)
    if reason is not None:
        raise UntrustedJobRefused(reason)
    shown = printable_id(job.id)
    resolved = [resolve(path, patterns, f"{label} {path!r} of job {shown}") for label, path in _paths(job)]
    return resolved[0]


def resolve(path: str, patterns: Sequence[str], label: str) -> Any:
    """Import `path` and return what it names. With an allowlist: refuse (UntrustedJobRefused, before
    anything reached is called) a walk from the module through another module or a builtin, and an
    object whose own `__module__`.`__qualname__` is not allowed (an allowed module that did
    `from os import system` holds `posix.system`)."""
    if not patterns:
        return import_attribute(path)
    value, attributes = import_module_prefix(path)
    walked = value.__name__
    for attribute in attributes:
        value = getattr(value, attribute)
        walked = f"{walked}.{attribute}"
        if isinstance(value, (types.ModuleType, *_BUILTIN_TYPES)):
            kind = "a module" if isinstance(value, types.ModuleType) else "a builtin function"
            raise UntrustedJobRefused(
                f"{label} reaches {walked!r}, which is {kind}; only functions defined in an allowed module may "
                "run, and only through classes: nothing was called"
            )
    own = _own_path(value)
    if own is None or not is_allowed(own, patterns):
        reached = repr(own) if own else f"a {type(value).__name__} with no path of its own"
        raise UntrustedJobRefused(
            f"{label} resolves to {reached}, which is not in ALLOWED_FUNCTIONS ({', '.join(patterns)}); "
            "it was not called"
        )
    if not callable(value):
        raise TypeError(f"{path} is not callable")
    return value


def _own_path(value: Any) -> str | None:
    """Where `value` was defined, as a dotted path, or None (an instance, a partial, a C function)."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if isinstance(value, _BUILTIN_TYPES) or not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return f"{module}.{qualname}"
