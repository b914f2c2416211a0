"""Sentry (SENTRY_DSN): one event per job that raises, tagged job_id, func, queue and worker.

The SDK is initialised in each worker process (after the master's fork), with a transport that
sends in the capturing thread: a worker forks horses, so it runs no thread of the SDK's (see
_inline_transport_class). The handler runs first in the job's exception-handler chain,
in the process that ran the job: the horse, or the worker in in-process mode. A horse leaves with
`os._exit`, which skips the SDK's atexit flush, so the handler flushes before returning.

Nothing but the explicit capture sends events: the default integrations are off, so the worker's
own error log line about the same failure is not a second event (and no log line becomes a
breadcrumb).

Secrets are scrubbed twice, because the SDK may cut a long string (max_value_length) anywhere, the
middle of a password included, and a cut password no longer looks like one:

1. `EventScrubber.scrub_event`, which the SDK calls before it cuts: its key-based scrub (frame
   variables, extra, ... named password, token, redis_url, ...), then every string of the event,
   whole, loses the Redis password and URL and every URL's password (`scheme://user:password@`);
   a URL password found anywhere is also removed wherever else it appears (a parsed netloc).
2. `before_send`, after the cut: the same, plus for a string that ends with the SDK's cut mark, a
   `scheme://user:` left open at the end (its `@` cut off) and any start of a known secret there.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

# Imported here: this module is imported only when SENTRY_DSN is set (workerd.worker).
from sentry_sdk import scrubber as sentry_scrubber

from workerd.job import Job
from workerd.settings import Settings
from workerd.utils import printable_id

if TYPE_CHECKING:
    from sentry_sdk._types import Event

log = logging.getLogger("workerd.sentry")

# The longest a failed job waits for its event to be sent.
FLUSH_TIMEOUT_S = 5.0
FILTERED = "[Filtered]"
TRUNCATION_MARK = "..."  # what the SDK puts at the end of a string it cut
_URL_USER = r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:"  # scheme://user: (the user may be empty)
_PASSWORD_CHARS = r"[^@\s'\"]"  # up to the @; quotes end a repr'd string, so they end a password too
# scheme://user:password@ -> scheme://user:[Filtered]@ (any URL's password, not only Redis's)
_USERINFO = re.compile(rf"({_URL_USER})({_PASSWORD_CHARS}+)@")
# scheme://user:passw at the very end of a cut string: the start of a password whose @ was cut off.
_CUT_USERINFO = re.compile(rf"({_URL_USER}){_PASSWORD_CHARS}*$")
# A URL password found in an event is removed from the whole event, unless it is this short (a
# one-character "password" removed from every string would leave nothing readable).
MIN_FOUND_PASSWORD_CHARS = 4
# Keys whose values the SDK's EventScrubber replaces, besides its own DEFAULT_DENYLIST.
SECRET_KEYS = ("redis_url", "redis_password", "sentry_dsn", "dsn", "sentinel")

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
    """`value` (an event, or any part of one) with every secret and URL password in its strings
    replaced by [Filtered], also where the SDK cut a string in the middle of one."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, FILTERED)
        value = _USERINFO.sub(rf"\1{FILTERED}@", value)
        return _scrub_cut(value, secrets) if value.endswith(TRUNCATION_MARK) else value
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item, secrets) for item in value]
    return value


def _scrub_cut(value: str, secrets: list[str]) -> str:
    """The SDK cuts strings longer than its max_value_length (1,024 in sentry-sdk 2.0; unlimited by
    default in recent ones, but settable) and ends them with "...": a secret that straddled the cut
    ends the string with its first characters, and a URL cut before its @ ends with the start of its
    password. Filter both. Any length counts, one character too (over-filtering the end of a cut
    string costs nothing)."""
    body = value[: -len(TRUNCATION_MARK)]
    body = next(
        (
            body[:-size] + FILTERED
            for secret in secrets
            for size in range(len(secret) - 1, 0, -1)
            if body.endswith(secret[:size])
        ),
        body,
    )
    opened = _CUT_USERINFO.search(body)
    if opened is not None:
        body = body[: opened.end(1)] + FILTERED
    return body + TRUNCATION_MARK


def url_passwords(value: Any) -> set[str]:
    """The passwords of the URLs (scheme://user:password@) in the strings of `value`."""
    if isinstance(value, str):
        return {match.group(2) for match in _USERINFO.finditer(value)}
    if isinstance(value, dict):
        return set().union(*(url_passwords(k) | url_passwords(v) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return set().union(*(url_passwords(item) for item in value))
    return set()


class EventScrubber(sentry_scrubber.EventScrubber):
    """The SDK's EventScrubber, which it calls before it cuts any string: its scrub by key
    (recursive, with SECRET_KEYS added), then every string of the event, whole (see the module doc)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(denylist=[*sentry_scrubber.DEFAULT_DENYLIST, *SECRET_KEYS], recursive=True)
        self.secrets = secrets

    def scrub_event(self, event: Event) -> None:
        super().scrub_event(event)
        found = {p for p in url_passwords(event) if len(p) >= MIN_FOUND_PASSWORD_CHARS}
        scrubbed = scrub(event, sorted({*self.secrets, *found}, key=len, reverse=True))
        event.clear()  # type: ignore[attr-defined]  # the SDK goes on with this very object
        event.update(scrubbed)


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
        transport=_inline_transport_class(),
        enable_backpressure_handling=False,  # its monitor is a thread too (started by tracing, which is off)
        default_integrations=False,
        auto_enabling_integrations=False,
        event_scrubber=EventScrubber(secrets),
        before_send=before_send,
        before_breadcrumb=lambda crumb, hint: scrub(crumb, secrets),
        send_default_pii=False,
    )
    _initialised_pid = os.getpid()


def _inline_transport_class() -> type:
    """The SDK's HTTP transport, sending each envelope in the calling thread instead of its
    BackgroundWorker thread.

    A worker forks horses; a thread alive at fork() may hold a lock (the transport queue's, the
    logging module's, the allocator's) that then stays held forever in the child (Python 3.12+
    warns: "This process is multi-threaded, use of fork() may lead to deadlocks"). The worker
    itself captures too (the exception handlers of jobs it recovers as abandoned), and the SDK starts
    its thread on the first capture and keeps it: after that every horse would fork beside it. A
    capture is followed by a flush anyway (a horse leaves with os._exit), so sending inline costs
    nothing but the thread; TIMEOUT bounds the send as FLUSH_TIMEOUT_S bounded the flush."""
    from sentry_sdk.transport import HttpTransport
    from sentry_sdk.worker import BackgroundWorker

    class InlineWorker(BackgroundWorker):
        """Runs each submitted callback at once; never starts a thread."""

        def submit(self, callback: Callable[[], Any]) -> bool:
            callback()
            return True

        def flush(self, timeout: float, callback: Any = None) -> None:
            pass  # nothing is ever pending

        def kill(self) -> None:
            pass

    class InlineHttpTransport(HttpTransport):
        TIMEOUT = int(FLUSH_TIMEOUT_S)

        def __init__(self, options: dict[str, Any]) -> None:
            super().__init__(options)
            self._worker = InlineWorker()

    return InlineHttpTransport


def exception_handler(settings: Settings, worker_name: str) -> Callable[..., Any]:
    """An RQ-style exception handler (job, type, value, traceback) that reports to Sentry; it
    returns None, so the rest of the chain runs."""
    init(settings)

    def report_to_sentry(
        job: Job, exc_type: type[BaseException], exc_value: BaseException, tb: TracebackType | None
    ) -> None:
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
                scope.set_context(
                    "job",
                    {
                        "id": shown,
                        "func": func,
                        "queue": job.origin,
                        "attempt": 1 + job.lost_count + (job.number_of_retries or 0),
                    },
                )
                sentry_sdk.capture_exception((exc_type, exc_value, tb))
            sentry_sdk.flush(timeout=FLUSH_TIMEOUT_S)
        except Exception as exc:  # reporting must never change the job's outcome
            log.warning("could not report job %s to Sentry: %s", shown, exc)

    return report_to_sentry
