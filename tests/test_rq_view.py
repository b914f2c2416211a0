"""Job code written against RQ's API keeps working under workerd (issue 13): `rq.get_current_job()`,
`rq.timeouts.JobTimeoutException`, and `Worker.work()` called more than once on one object.

RQ is the client here, as in a deployment that swapped `rq worker` for workerd; the checks read Redis.
"""

from __future__ import annotations

import sys

import pytest
import redis
import rq

import workerd
from tests.conftest import JOBS_DIR, run_workerd
from workerd import Worker, presence

if str(JOBS_DIR) not in sys.path:
    sys.path.insert(0, str(JOBS_DIR))

EXECUTIONS = ["fork", "inprocess"]


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_rq_get_current_job_is_the_running_job_as_rq_sees_it(r: redis.Redis, redis_url: str, execution: str) -> None:
    parent = rq.Queue("default", connection=r).enqueue("testjobs.add", 1, 2)
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution)
    assert result.returncode == 0, result.stdout + result.stderr
    job = rq.Queue("default", connection=r).enqueue("rqjobs.report_progress", depends_on=parent)
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution)
    assert result.returncode == 0, result.stdout + result.stderr
    job = rq.job.Job.fetch(job.id, connection=r)
    assert job.get_status() == "finished", job.exc_info
    assert job.return_value() == ["rq.job.Job", job.id, True]
    assert job.meta == {"progress": 50}  # saved by the job, kept by the commit


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("job", ["clean_up_on_rq_timeout", "clean_up_on_workerd_timeout"])
def test_a_timeout_is_rqs_exception_and_workerds(r: redis.Redis, redis_url: str, execution: str, job: str) -> None:
    enqueued = rq.Queue("default", connection=r).enqueue(f"rqjobs.{job}", redis_url, "cleaned", job_timeout=1)
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    fetched = rq.job.Job.fetch(enqueued.id, connection=r)
    assert fetched.get_status() == "failed"
    exc_string = fetched.latest_result().exc_string
    assert "rq.timeouts.JobTimeoutException: Task exceeded maximum timeout value (1 seconds)" in exc_string
    assert r.lrange("cleaned", 0, -1) != []  # the job's except clause ran


def test_work_can_be_called_again_on_the_same_worker(r: redis.Redis, redis_url: str, forked) -> None:
    """A custom worker script calls work() in a loop; each call is a run of its own."""

    def script() -> int:
        connection = redis.Redis.from_url(redis_url)
        queue = rq.Queue("default", connection=connection)
        worker = Worker(["default"], connection=connection, name="again")
        runs = []
        for batch in (1, 2, 0):
            for i in range(batch):
                queue.enqueue("testjobs.add", i, i)
            runs.append(worker.work(burst=True))
        for _ in range(2):
            queue.enqueue("testjobs.add", 1, 1)
        runs += [worker.work(burst=True, max_jobs=1), connection.llen("rq:queue:default") == 1]
        runs += [worker.work(burst=True, max_jobs=1), connection.llen("rq:queue:default") == 0]
        return 0 if runs == [True, True, False, True, True, True, True] else 1

    assert forked(script) == 0
    info = Worker.find_by_key("rq:worker:again", connection=r)
    # Each run registers the worker afresh, as rq's register_birth does: the hash counts the last run's job.
    assert info is not None and info.successful_job_count == 1


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_callbacks_see_the_final_status_as_under_rq(r: redis.Redis, redis_url: str, execution: str) -> None:
    """RQ sets the job's final status (in memory) before on_success / on_failure run (rq #1631)."""
    queue = rq.Queue("default", connection=r)
    ok = queue.enqueue("testjobs.add", 1, 2, on_success=rq.Callback("rqjobs.record_status_on_success"))
    bad = queue.enqueue("rqjobs.fail", on_failure=rq.Callback("rqjobs.record_status_on_failure"))
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (r.get(f"seen:{ok.id}"), r.get(f"seen:{bad.id}")) == (b"finished", b"failed")
    assert (ok.get_status(), bad.get_status()) == ("finished", "failed")


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_an_rq_job_class_is_what_rq_get_current_job_returns(r: redis.Redis, redis_url: str, execution: str) -> None:
    job = rq.Queue("default", connection=r).enqueue("rqjobs.report_progress")
    result = run_workerd("-u", redis_url, "--burst", "--execution", execution, "--job-class", "rqjobs.ProgressJob")
    assert result.returncode == 0, result.stdout + result.stderr
    job = rq.job.Job.fetch(job.id, connection=r)
    assert job.return_value() == ["rqjobs.ProgressJob", job.id, True]


def test_rqs_documented_worker_attributes(r: redis.Redis, redis_url: str) -> None:
    """docs/workers.md and connections.md: connection, key, worker_ttl and the timeouts it implies,
    job_class / queue_class (class attributes of a custom worker, or settings), equality by name."""
    import rqjobs

    class CustomWorker(Worker):
        job_class = rqjobs.ProgressJob

    worker = CustomWorker(["default"], connection=r, name="attrs", worker_ttl=500)
    assert worker.connection is r
    assert worker.key == "rq:worker:attrs"
    assert (worker.worker_ttl, worker.dequeue_timeout, worker.connection_timeout) == (500, 485, 495)
    worker.worker_ttl = 20  # kept by the next work() call, which starts from the constructed settings
    assert worker._constructed_settings.worker_ttl == 20 and worker.dequeue_timeout == 5
    assert worker.job_class is rqjobs.ProgressJob
    assert Worker(["default"], connection=r, job_class="rqjobs.ProgressJob").job_class is rqjobs.ProgressJob
    assert Worker(["default"], connection=r, queue_class="rq.Queue").queue_class is rq.Queue
    assert Worker.job_class is workerd.Job and Worker.queue_class is workerd.Queue
    assert worker == CustomWorker(["other"], connection=r, name="attrs") and len({worker, worker}) == 1
    assert worker.get_current_job_id() is None
    presence.register_birth(r, "attrs", ["default"], 420)
    r.hset(worker.key, "current_job", "some-job")
    assert worker.get_current_job_id() == "some-job"
    # Worker.all() of rq returns Worker objects, equal by name and hashable: set(...), `in` work alike.
    listed = Worker.all(r)
    assert worker in listed and set(listed) == {Worker.find_by_key(worker.key, r)} == {worker}
    with pytest.raises(ValueError):
        Worker.find_by_key("attrs", r)  # a name is not a key


def test_queue_and_job_equality_and_registries_of_a_queue(r: redis.Redis) -> None:
    """As rq's: a queue is its name, a job its id; Registry(queue=queue) takes the queue's connection."""
    queue = workerd.Queue("foo", connection=r, serializer="json")
    assert queue == workerd.Queue("foo", connection=r) and queue != workerd.Queue("bar", connection=r)
    assert str(queue) == "<Queue foo>"
    with pytest.raises(TypeError):
        _ = queue == "foo"
    job = queue.enqueue("testjobs.add", 1, 2)
    assert workerd.Job.fetch(job.id, connection=r) == job and str(job) == f"<Job {job.id}: {job.description}>"
    registry = workerd.FailedJobRegistry(queue=queue)
    assert (registry.connection, registry.name, type(registry.serializer)) == (r, "foo", type(queue.serializer))
    assert registry == workerd.FailedJobRegistry("foo", connection=r)


def test_rqs_worker_queues_are_queue_objects_in_fetch_order(r: redis.Redis) -> None:
    """rq's Worker.queues holds Queue objects (of queue_class), with queue_names() and queue_keys()."""
    worker = Worker(["high", workerd.Queue("low", connection=r)], connection=r, queue_class="rq.Queue")
    assert [type(q) for q in worker.queues] == [rq.Queue, rq.Queue]
    assert [q.name for q in worker.queues] == worker.queue_names() == ["high", "low"]
    assert worker.queue_keys() == [q.key for q in worker.queues] == ["rq:queue:high", "rq:queue:low"]
    assert all(q.connection is r for q in worker.queues)
    plain = Worker("one", connection=r)
    assert [(type(q), q.name) for q in plain.queues] == [(workerd.Queue, "one")]
