"""Untrusted-Redis mode: what a job read from Redis may make a worker do (docs/SECURITY.md).

With ALLOWED_FUNCTIONS set (fnmatch patterns on dotted paths) and SERIALIZER = "json", a job forged
by anyone who can write to Redis cannot run a function outside the allowlist, and cannot make the
worker unpickle anything:

* the job's `data` is decoded with json, which builds only plain values;
* its function path and its callback paths are matched against the patterns in the worker, before
  anything is imported and before a horse is forked; a job that does not match fails with a reason;
* a job on a bound method or a callable instance (`instance` not null) is refused: with json the
  instance would be a plain value anyway, and the allowlist names functions, not objects.

With pickle, decoding a job's `data` already runs whatever the pickle says, before any check could
happen; ALLOWED_FUNCTIONS with pickle is therefore a configuration error (exit 78), not a weaker mode.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workerd.job import Job

SAFE_SERIALIZERS = ("json", "rq.serializers.JSONSerializer")
CALLBACK_KINDS = ("success", "failure", "stopped")


def is_allowed(path: str, patterns: Sequence[str]) -> bool:
    """True if the dotted `path` matches one of the fnmatch `patterns` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def settings_problem(serializer: str, patterns: Sequence[str]) -> str | None:
    """Why these settings cannot run in untrusted-Redis mode, or None."""
    if patterns and serializer not in SAFE_SERIALIZERS:
        return (
            f"needs SERIALIZER = 'json' (it is {serializer!r}): decoding a pickled job runs code before any "
            "allowlist check, so the allowlist would protect nothing; switch producers and workers to json "
            "(see docs/SECURITY.md), or unset ALLOWED_FUNCTIONS to trust Redis"
        )
    return None


def refusal(job: Job, patterns: Sequence[str]) -> str | None:
    """The reason this job may not run under the allowlist, or None. Imports nothing.

    Decoding `data` here is safe only with json, which `settings_problem` guarantees."""
    if not patterns:
        return None
    func_name = job.func_name
    if job.instance is not None:
        return (
            f"UntrustedJobRefused: job {job.id} calls {func_name!r} on an instance (a bound method or callable "
            "object); with ALLOWED_FUNCTIONS set only module-level functions may run"
        )
    if not is_allowed(func_name, patterns):
        return (
            f"UntrustedJobRefused: function {func_name!r} of job {job.id} is not in ALLOWED_FUNCTIONS "
            f"({', '.join(patterns)}); it was not imported"
        )
    for kind in CALLBACK_KINDS:
        name = getattr(job, f"{kind}_callback_name", "")
        if name and not is_allowed(name, patterns):
            return (
                f"UntrustedJobRefused: the {kind} callback {name!r} of job {job.id} is not in ALLOWED_FUNCTIONS "
                f"({', '.join(patterns)}); nothing was imported or run"
            )
    return None
