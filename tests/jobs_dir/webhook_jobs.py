"""Jobs for tests/test_webhooks.py (imported by the workerd subprocesses from tests/jobs_dir)."""

from rq import Retry, get_current_job


def add(a, b):
    return a + b


def fail(message="boom"):
    raise ValueError(message)


def fail_on_first_attempt():
    """Fails while the job has retries left, then succeeds (rq's fail_while_retries_remain)."""
    job = get_current_job()
    if job.retries_left:
        raise ValueError("first attempt")
    return "second attempt"


def return_retry():
    return Retry(max=1)
