"""The module graph: which layers may load which (the direction of dependencies is a design rule)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        # The horse runs the user's code: it knows the shape of an Outcome, never the writer of job state.
        ("workerd.horse", "workerd.commit"),
        # A report is read by the master and the metrics process, which never write job state.
        ("workerd.reports", "workerd.commit"),
        ("workerd.pipelines", "workerd.commit"),
        # The library never depends on a CLI module: CLI -> library only.
        ("workerd.metrics", "workerd.info"),
        ("workerd.metrics", "workerd.cli"),
    ],
)
def test_a_module_does_not_load_a_layer_it_must_not_depend_on(importer: str, forbidden: str) -> None:
    code = f"import sys, {importer}; assert {forbidden!r} not in sys.modules, 'loaded'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = f"import sys; {code}; print('\\n'.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return set(run.stdout.split())


def test_enqueueing_loads_neither_the_worker_nor_its_settings() -> None:
    # A web process that only enqueues pays for the client and redis-py, not for the daemon (issue 15).
    # redis-py >= 6 imports asyncio itself (`redis/__init__` loads redis.asyncio), so asyncio counts
    # against workerd only where bare redis-py does not load it.
    loaded = loaded_after("import workerd; from workerd import Queue")
    unwanted = {"pydantic", "pydantic_settings", "workerd.settings", "workerd.worker", "workerd.supervisor",
                "workerd.execution", "workerd.commit"}  # fmt: skip
    if "asyncio" not in loaded_after("import redis"):
        unwanted.add("asyncio")
    assert loaded & unwanted == set()


def test_importing_the_package_loads_none_of_its_modules() -> None:
    assert {name for name in loaded_after("import workerd") if name.startswith("workerd.")} == set()


def test_every_public_name_resolves_to_its_home_module() -> None:
    import workerd

    for name in workerd.__all__:
        assert getattr(workerd, name) is not None, name
    assert set(workerd.__all__) == {"__version__", *workerd._HOMES}
    assert set(workerd.__all__) <= set(dir(workerd))


def test_workerd_job_is_the_decorator_even_after_the_submodule_of_that_name_loads() -> None:
    code = ("import workerd.job, workerd.queue; from workerd import job; "
            "assert job is workerd.queue.job and workerd.job is job, job")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
