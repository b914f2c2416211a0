"""Sentry: no URL password in a job's arguments reaches the ingest, wherever the SDK cuts the string.

The SDK cuts strings at its max_value_length (1,024 in sentry-sdk 2.0, unlimited by default in
recent releases, settable by anyone) and a password cut before its `@` no longer looks like one.
Here a real worker (in a process of its own, so the SDK is set up there only) fails jobs whose argument
ends in such a URL, with the cut placed on every character from the user's `:` to past the `@`,
and reports them to a local ingest; the envelopes it receives are decoded and searched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from tests.conftest import JOBS_DIR, ROOT, wait_until
from tests.test_observability import _events, ingest  # noqa: F401  (a fixture)
from workerd import Queue

if str(JOBS_DIR) not in sys.path:
    sys.path.insert(0, str(JOBS_DIR))

PASSWORD = "QZhunter2PW"
URL = f"postgres://app:{PASSWORD}@db.internal:5432/orders"
MAX_LENGTH = 120  # the SDK keeps MAX_LENGTH - 3 characters, then "..."


def test_a_url_password_cut_anywhere_never_reaches_sentry(r: redis.Redis, redis_url: str, ingest) -> None:  # noqa: F811
    port, bodies = ingest
    q = Queue("default", connection=r)
    cuts = range(URL.index(":", len("postgres://")), URL.index("@") + 2)
    jobs = [q.enqueue("testjobs.fail", "x" * (MAX_LENGTH - 3 - cut) + URL) for cut in cuts]
    jobs.append(q.enqueue("testjobs.fail", f"whole, not cut: {URL}"))

    # A worker of its own process (the SDK is set up there only); not a fork of this one, which runs
    # the ingest's thread.
    script = f"""
import sentry_sdk
from workerd.settings import Settings
from workerd.worker import Worker
settings = Settings(redis_url={redis_url!r}, sentry_dsn="http://public@127.0.0.1:{port}/1",
                    execution="inprocess", burst=True)
worker = Worker(["default"], settings=settings, name="scrub-w")  # sets the SDK up
sentry_sdk.get_client().options["max_value_length"] = {MAX_LENGTH}  # as sentry-sdk 2.0's default did
raise SystemExit(int(worker.run()))
"""
    environment = {**os.environ, "PYTHONPATH": f"{JOBS_DIR}{os.pathsep}{ROOT}"}
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = wait_until(lambda: len(_events(bodies)) >= len(jobs) and _events(bodies), message="an event per job")
    assert len(events) == len(jobs)
    values = sorted(e["exception"]["values"][-1]["value"] for e in events)
    assert sum(value.endswith("...") for value in values) == len(cuts), values  # the SDK did cut them
    everything = b"".join(bodies).decode()
    leaked = [PASSWORD[:size] for size in range(2, len(PASSWORD) + 1) if PASSWORD[:size] in everything]
    assert not leaked, [v for v in values if any(part in v for part in leaked)]
    assert "postgres://app:[Filtered]@db.internal:5432/orders" in everything  # the rest of the URL stays


def _leaks(text: str) -> list[str]:
    return [PASSWORD[:size] for size in range(2, len(PASSWORD) + 1) if PASSWORD[:size] in text]


def test_a_string_cut_before_the_scrubber_saw_it_whole_is_scrubbed_after_the_cut() -> None:
    """Older SDKs cut frame variables before any scrubber runs: before_send's rule for cut strings
    holds alone, for every cut from inside the scheme to past the @."""
    from sentry_sdk.utils import strip_string

    from workerd.sentry import FILTERED, scrub

    for cut in range(1, len(URL) - 3):  # longer than MAX_LENGTH: cut
        cut_value = strip_string("x" * (MAX_LENGTH - 3 - cut) + URL, max_length=MAX_LENGTH).value
        assert cut_value.endswith(URL[:cut] + "...")  # the cut is where this test means it to be
        scrubbed = scrub(cut_value, [])
        assert not _leaks(scrubbed), (cut, scrubbed)
        if cut > URL.index("@"):
            assert scrubbed.endswith(URL[: URL.index(PASSWORD)] + FILTERED + URL[URL.index("@") : cut] + "...")


def test_the_event_scrubber_sees_values_whole_and_removes_a_found_password_everywhere() -> None:
    from workerd.sentry import FILTERED, EventScrubber

    frame_vars = {"url": repr(URL), "netloc": repr(f"app:{PASSWORD}@db.internal:5432"), "token": "'abc'",
                  "kwargs": {"password": "'also-secret'"}}  # fmt: skip
    event = {"exception": {"values": [{"value": f"cannot connect to {URL}",
                                       "stacktrace": {"frames": [{"vars": frame_vars}]}}]}}  # fmt: skip
    EventScrubber(secrets=[]).scrub_event(event)
    [exception] = event["exception"]["values"]
    assert exception["value"] == f"cannot connect to postgres://app:{FILTERED}@db.internal:5432/orders"
    scrubbed = exception["stacktrace"]["frames"][0]["vars"]
    assert scrubbed["netloc"] == f"'app:{FILTERED}@db.internal:5432'"  # no URL there: found in another string
    assert "abc" not in str(scrubbed["token"]) and "also-secret" not in str(scrubbed["kwargs"])  # by key
