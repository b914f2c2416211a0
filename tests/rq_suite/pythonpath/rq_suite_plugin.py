"""pytest plugin of the rq-suite command: runs RQ 2.12's own tests with workerd standing in for RQ.

Loaded with `-p rq_suite_plugin` (this directory is on PYTHONPATH). RQ_SUITE_MODE chooses:

- `rq`: nothing is replaced (the baseline: stock RQ).
- `workerd`: in RQ's test modules, the names `Worker`, `SimpleWorker` (and `HerokuWorker`,
  `SpawnWorker`) are rebound to thin subclasses of `workerd.Worker` that only translate RQ's
  constructor keywords and `work(...)` arguments. Enqueueing stays with RQ's client, as in a real
  deployment where the application keeps its code and only `rq worker` becomes `workerd`.
- `client`: in the client-side modules (test_queue, test_job, test_registry), `Queue`, `Job` and
  the registry classes are rebound to workerd's (`workerd.Queue`, `workerd.Job`, ...); the worker
  stays RQ's (a thin subclass hands it a workerd.Queue as the queue's name).

Only the test modules' namespaces are touched, never RQ's own modules: RQ's internals keep calling
RQ. Nothing here edits RQ's files.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
from typing import Any

MODE = os.environ.get("RQ_SUITE_MODE", "workerd")


def _dotted(obj: Any) -> str | None:
    """An import path for a module, a class (or the class of an object), if it can be imported back."""
    if isinstance(obj, types.ModuleType):  # rq takes a module with dumps/loads (serializer=json)
        return obj.__name__
    cls = obj if isinstance(obj, type) else type(obj)
    module, name = getattr(cls, "__module__", None), getattr(cls, "__qualname__", "")
    if not module or "<" in name:
        return None
    return f"{module}.{name}"


def _make_worker_classes() -> dict[str, type]:
    import workerd

    class Worker(workerd.Worker):
        """rq.Worker(queues, name=, connection=, ...) -> workerd.Worker; keywords translated, nothing else."""

        _execution = "fork"

        def __init__(
            self,
            queues: Any,
            name: str | None = None,
            default_result_ttl: int | None = None,
            connection: Any = None,
            exception_handlers: Any = None,
            maintenance_interval: int | None = None,
            default_worker_ttl: int | None = None,
            worker_ttl: int | None = None,
            job_class: Any = None,
            queue_class: Any = None,
            log_job_description: bool = True,
            job_monitoring_interval: int | None = None,
            disable_default_exception_handler: bool = False,
            prepare_for_work: bool = True,
            serializer: Any = None,
            work_horse_killed_handler: Any = None,
            **ignored: Any,
        ) -> None:
            if isinstance(queues, (str, bytes)) or not isinstance(queues, (list, tuple)):
                queues = [queues]
            if connection is None:  # RQ takes the connection of the first Queue object
                connection = next((q.connection for q in queues if hasattr(q, "connection")), None)
            overrides: dict[str, Any] = {"execution": self._execution}
            if default_result_ttl is not None:
                overrides["result_ttl"] = int(default_result_ttl)
            if worker_ttl or default_worker_ttl:
                overrides["worker_ttl"] = int(worker_ttl or default_worker_ttl)  # type: ignore[arg-type]
            if maintenance_interval is not None:
                overrides["maintenance_interval"] = int(maintenance_interval)
            if job_monitoring_interval is not None:
                overrides["job_monitoring_interval"] = int(job_monitoring_interval)
            if disable_default_exception_handler:
                overrides["disable_default_exception_handler"] = True
            if not log_job_description:
                overrides["disable_job_desc_logging"] = True
            if serializer is not None:
                overrides["serializer"] = serializer if isinstance(serializer, str) else _dotted(serializer)
            # job_class / queue_class: workerd's settings take dotted paths (a class defined in a test
            # function has none: that test sets them as class attributes, which workerd reads too).
            for setting, value in (("job_class", job_class), ("queue_class", queue_class)):
                dotted = value if isinstance(value, str) else _dotted(value) if value is not None else None
                if dotted is not None:
                    overrides[setting] = dotted
            # prepare_for_work, work_horse_killed_handler: no counterpart in workerd.
            super().__init__(queues, connection=connection, name=name, **overrides)
            if exception_handlers is not None:  # callables, as RQ takes them (workerd's setting takes paths)
                handlers = exception_handlers if isinstance(exception_handlers, (list, tuple)) else [exception_handlers]
                self.exception_handlers = list(handlers) + self.exception_handlers

        def work(  # type: ignore[override]
            self,
            burst: bool = False,
            logging_level: str | None = None,
            date_format: str | None = None,
            log_format: str | None = None,
            max_jobs: int | None = None,
            max_idle_time: int | None = None,
            with_scheduler: bool = False,
            dequeue_strategy: Any = None,
        ) -> bool:
            # workerd's work() takes rq's per-run keywords itself; the logging ones are the settings'.
            return super().work(burst=burst, max_jobs=max_jobs, max_idle_time=max_idle_time,
                                with_scheduler=with_scheduler, dequeue_strategy=dequeue_strategy)  # fmt: skip

        def send_webhooks(self, job: Any, status: str, ended_at: float, exc_string: str | None = None) -> None:
            """The one seam translated, not only the keywords: RQ's webhook tests mock `rq.webhook.Webhook.send`
            in this process, and workerd sends from a sender process, where no mock of the test's can see it.
            So the webhooks workerd decided to send (which ones, when, with what exc_string: what those tests
            check) go through RQ's Job.send_webhooks here. workerd's own delivery: tests/test_webhooks.py."""
            from rq.job import Job as RQJob

            if any(webhook.job_status == status for webhook in job.webhooks):  # else the hash may be gone (ttl 0)
                RQJob.fetch(job.id, connection=self.redis).send_webhooks(status, exc_string=exc_string)

    class SimpleWorker(Worker):
        _execution = "inprocess"

    return {"Worker": Worker, "SimpleWorker": SimpleWorker, "HerokuWorker": Worker, "SpawnWorker": Worker}


def _make_client_classes() -> dict[str, Any]:
    import workerd

    names = ["Queue", "Job", "Retry", "Callback", "Dependency", "JobStatus", "CanceledJobRegistry",
             "DeferredJobRegistry", "FailedJobRegistry", "FinishedJobRegistry", "ScheduledJobRegistry",
             "StartedJobRegistry"]  # fmt: skip
    classes: dict[str, Any] = {name: getattr(workerd, name) for name in names}
    classes.update(_make_rq_worker_classes())
    return classes


def _make_rq_worker_classes() -> dict[str, type]:
    """Client mode: the worker stays RQ's, which accepts queue names or rq.Queue objects only; a
    workerd.Queue is handed to it as its name (its connection and serializer alongside)."""
    import rq

    import workerd

    def translate(queues: Any, kwargs: dict[str, Any]) -> Any:
        listed = queues if isinstance(queues, (list, tuple)) else [queues]
        theirs = [q for q in listed if isinstance(q, workerd.Queue)]
        if not theirs:
            return queues
        kwargs.setdefault("connection", theirs[0].connection)
        if "serializer" not in kwargs and type(theirs[0].serializer).__name__ == "JSONSerializer":
            kwargs["serializer"] = "json"
        return [q.name if isinstance(q, workerd.Queue) else q for q in listed]

    class Worker(rq.Worker):
        def __init__(self, queues: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(translate(queues, kwargs), *args, **kwargs)

    class SimpleWorker(rq.SimpleWorker):
        def __init__(self, queues: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(translate(queues, kwargs), *args, **kwargs)

    return {"Worker": Worker, "SimpleWorker": SimpleWorker}


CLIENT_MODULES = ("tests.test_queue", "tests.test_job", "tests.test_registry")


def _rebind(module: Any, replacements: dict[str, Any]) -> None:
    for name, value in replacements.items():
        if name in vars(module):
            setattr(module, name, value)


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    """Deselect the out-of-scope tests; rebind the names (test modules are imported by now, and their
    functions read these globals when they run)."""
    deselect_file = os.environ.get("RQ_SUITE_DESELECT")
    if deselect_file:
        with open(deselect_file) as handle:
            wanted = set(handle.read().split())
        dropped = [item for item in items if item.nodeid in wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item.nodeid not in wanted]
    if MODE == "rq":
        return
    if MODE == "workerd":
        replacements = _make_worker_classes()
        modules = [m for n, m in list(sys.modules.items()) if n.startswith("tests.") and m is not None]
    elif MODE == "client":
        replacements = _make_client_classes()
        modules = [sys.modules[n] for n in CLIENT_MODULES if n in sys.modules]
    else:
        raise RuntimeError(f"RQ_SUITE_MODE={MODE!r}: expected rq, workerd or client")
    for module in modules:
        if inspect.ismodule(module):
            _rebind(module, replacements)


def pytest_configure(config: Any) -> None:
    """Refuse to run RQ's tests against any Redis but the one the command started (they flush databases)."""
    import redis

    port = os.environ.get("RQ_SUITE_REDIS_PORT")
    actual = redis.Redis().connection_pool.connection_kwargs.get("port")
    if port is None or str(actual) != port:
        raise RuntimeError(
            f"rq-suite: redis.Redis() points at port {actual}, not the suite's Redis ({port}); "
            "run RQ's tests through tests/rq_suite/run.py"
        )


def pytest_report_header(config: Any) -> str:
    return f"rq-suite mode: {MODE}"


def pytest_runtest_teardown(item: Any) -> None:
    """After each test too: a worker left running from one test would take the next test's jobs."""
    pytest_unconfigure(item.config)


def pytest_unconfigure(config: Any) -> None:
    """A worker a test started in a multiprocessing.Process and never stopped (with workerd, a shutdown
    command it did not act on) would keep pytest from exiting (multiprocessing joins its children at
    exit): kill what is left."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
