"""Sentry (SENTRY_DSN): one event per job that raises, tagged job_id, func, queue and worker.

The SDK is initialised in each worker process (after the master's fork, so no process shares a
transport thread with another) and the handler runs first in the job's exception-handler chain,
in the process that ran the job: the horse, or the worker in in-process mode. A horse leaves with
`os._exit`, which skips the SDK's atexit flush, so the handler flushes before returning.

Nothing but the explicit capture sends events: the default integrations are off, so the worker's
own error log line about the same failure is not a second event (and no log line becomes a
breadcrumb). Every string of an event is scrubbed of the Redis password and URL (the job's
arguments and exception messages may contain them) before it leaves the process.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from workerd.job import Job
from workerd.settings import Settings
from workerd.utils import printable_id

log = logging.getLogger("workerd.sentry")

# The longest a failed job waits for its event to be sent.
FLUSH_TIMEOUT_S = 5.0
FILTERED = "[Filtered]"
TRUNCATION_MARK = "..."  # what the SDK puts at the end of a string it cut
# scheme://user:password@ -> scheme://user:[Filtered]@ (any URL's password, not only Redis's)
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")

_initialised_pid: int | None = None


def secrets_of(settings: Settings) -> list[str]:
    """The strings no event may contain: Redis passwords and URLs with a password in them."""
    found: list[str] = []
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        password = urlsplit(url).password
        if password:
            found += [url, password]
    if settings.redis_password is not None:
        found.append(settings.redis_password.get_secret_value())
    for key, value in (settings.sentinel or {}).items():
        if "password" in str(key).lower() and value:
            found.append(str(value))
    return sorted({s for s in found if s}, key=len, reverse=True)  # a URL before the password inside it


def scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, FILTERED)
        value = _USERINFO.sub(rf"\1{FILTERED}@", value)
        return _scrub_cut_secret(value, secrets) if value.endswith(TRUNCATION_MARK) else value
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item, secrets) for item in value]
    return value


def _scrub_cut_secret(value: str, secrets: list[str]) -> str:
    """The SDK cuts strings longer than its max_value_length (1,024) before before_send sees them,
    so a secret that straddled the cut ends the string with its first characters: filter those.
    Any length counts, one character too (over-filtering the end of a cut string costs nothing)."""
    body = value[: -len(TRUNCATION_MARK)]
    for secret in secrets:
        for size in range(len(secret) - 1, 0, -1):
            if body.endswith(secret[:size]):
                return body[:-size] + FILTERED + TRUNCATION_MARK
    return value


def init(settings: Settings) -> None:
    """Initialise the SDK in this process (once; again in a process forked after it)."""
    global _initialised_pid
    if settings.sentry_dsn is None or _initialised_pid == os.getpid():
        return
    import sentry_sdk

    secrets = secrets_of(settings)

    def before_send(event: Any, hint: Any) -> Any:
        return scrub(event, secrets)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        default_integrations=False,
        auto_enabling_integrations=False,
        before_send=before_send,
        before_breadcrumb=lambda crumb, hint: scrub(crumb, secrets),
        send_default_pii=False,
    )
    _initialised_pid = os.getpid()


def exception_handler(settings: Settings, worker_name: str) -> Callable[..., Any]:
    """An RQ-style exception handler (job, type, value, traceback) that reports to Sentry; it
    returns None, so the rest of the chain runs."""
    init(settings)

    def report_to_sentry(job: Job, exc_type: type[BaseException], exc_value: BaseException,
                         tb: TracebackType | None) -> None:  # fmt: skip
        import sentry_sdk

        try:
            func = job.func_name
        except Exception:
            func = "<undecodable>"
        shown = printable_id(job.id)  # an id can be any bytes; an event carries text
        try:
            with sentry_sdk.new_scope() as scope:
                scope.set_tag("job_id", shown)
                scope.set_tag("func", func)
                scope.set_tag("queue", job.origin)
                scope.set_tag("worker", worker_name)
                scope.set_context("job", {"id": shown, "func": func, "queue": job.origin,
                                          "attempt": 1 + job.lost_count + (job.number_of_retries or 0)})  # fmt: skip
                sentry_sdk.capture_exception((exc_type, exc_value, tb))
            sentry_sdk.flush(timeout=FLUSH_TIMEOUT_S)
        except Exception as exc:  # reporting must never change the job's outcome
            log.warning("could not report job %s to Sentry: %s", shown, exc)

    return report_to_sentry
