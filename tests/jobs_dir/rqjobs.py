"""Jobs written against RQ's own API, as an RQ application's are (tests/test_rq_view.py)."""

import time

import redis
import rq
import rq.timeouts

import workerd.errors


def report_progress():
    job = rq.get_current_job()
    job.meta["progress"] = 50
    job.save_meta()
    return [f"{type(job).__module__}.{type(job).__name__}", job.id, job.dependencies_are_met()]


def clean_up_on_rq_timeout(redis_url, marker):
    try:
        time.sleep(30)
    except rq.timeouts.JobTimeoutException:
        redis.Redis.from_url(redis_url).rpush(marker, "caught as rq.timeouts.JobTimeoutException")
        raise


def clean_up_on_workerd_timeout(redis_url, marker):
    try:
        time.sleep(30)
    except workerd.errors.JobTimeoutException:
        redis.Redis.from_url(redis_url).rpush(marker, "caught as workerd.errors.JobTimeoutException")
        raise


def fail():
    raise ValueError("as planned")


def record_status_on_success(job, connection, result):
    connection.set(f"seen:{job.id}", job.get_status(refresh=False).value)


def record_status_on_failure(job, connection, exc_type, exc, tb):
    connection.set(f"seen:{job.id}", job.get_status(refresh=False).value)


class ProgressJob(rq.job.Job):
    """An application's own rq Job subclass, named as the worker's job_class (tests/test_rq_view.py)."""
