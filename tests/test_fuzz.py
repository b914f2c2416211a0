"""Fuzz the worker with hostile job hashes and queue entries (issue 12), so the next defect is found here.

One long-lived `workerd` per execution mode serves every example (a worker per example would be far
too slow); each example is: clear Redis (but the worker's keys) → write hostile entries → enqueue a
sentinel behind them and wait for it (tests/fuzz_inputs.settle) → check the invariants:

1. the worker is alive, with the same pid, and took the sentinel;
2. every hostile job with a hash ends in a final state with a reason, an id without one is skipped
   with a log line;
3. no wip entry (lease) is left while the worker is idle;
4. finished is in the finished registry, failed in the failed registry with exc_info;
5. no id is in no list at all (queued means in a queue).

The CI run is seeded, small and does not shrink; a longer run (shrinking failures): `make fuzz`, or
`WORKERD_FUZZ_EXAMPLES=2000 WORKERD_FUZZ_SHRINK=1 .venv/bin/python -m pytest tests/test_fuzz.py`.
A worker that died or hung in one example is replaced before the next, so that shrinking goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests import fuzz_inputs
from tests.conftest import WorkerdProcess
from tests.redis_server import RedisServer
from workerd import schema

EXAMPLES = int(os.environ.get("WORKERD_FUZZ_EXAMPLES", "150"))
# Another seed, for a long run that explores beyond CI's examples; unset: derandomized, as in CI.
SEED = os.environ.get("WORKERD_FUZZ_SEED")
# Shrinking a failure restarts the worker for every failing try (minutes on a loaded machine): off
# in CI, which must stay within a few minutes even while a defect is open; on in `make fuzz`.
PHASES = tuple(Phase) if os.environ.get("WORKERD_FUZZ_SHRINK") else tuple(p for p in Phase if p != Phase.shrink)
EXCLUDE = frozenset(name.encode() for name in os.environ.get("WORKERD_FUZZ_EXCLUDE", "").split(",") if name)


class FuzzedWorker:
    """The worker under test, restarted only when an example killed or hung it."""

    def __init__(self, redis_url: str, execution: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.execution = execution
        self.log_dir = log_dir
        self.starts = 0
        self.process: WorkerdProcess | None = None

    def ensure_running(self) -> WorkerdProcess:
        if self.process is not None and self.process.process.poll() is None:
            return self.process
        self.stop()
        self.starts += 1
        # A short heartbeat: leases of a worker that died are judged within a second or two.
        self.process = WorkerdProcess(["-u", self.redis_url, "--execution", self.execution,
                                       "--heartbeat-interval", "0.5", fuzz_inputs.QUEUE],
                                      self.log_dir / f"workerd-{self.execution}-{self.starts}.log")  # fmt: skip
        self.process.wait_for_output("Listening on")
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill_all()
            self.process = None


@pytest.fixture(scope="module", params=["fork", "inprocess"])
def fuzzed(request: pytest.FixtureRequest, redis_server: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FuzzedWorker, redis.Redis]]:  # fmt: skip
    client = redis_server.client()
    client.flushall()
    worker = FuzzedWorker(redis_server.url, request.param, tmp_path_factory.mktemp("fuzz"))
    yield worker, client
    worker.stop()


def run_example(worker: FuzzedWorker, r: redis.Redis, example: fuzz_inputs.Example) -> list[str]:
    """One example against the long-lived worker; the invariants that failed, as sentences."""
    proc = worker.ensure_running()
    fuzz_inputs.clear(r)
    log_start = len(proc.output())
    fuzz_inputs.write(r, example)

    def alive() -> bool:
        return proc.process.poll() is None

    settled = fuzz_inputs.settle(r, alive)
    output = proc.output()[log_start:]
    if settled.problem is not None:
        worker.stop()  # dead or hung: the next example gets a fresh worker
        return [f"{settled.problem} (worker pid {proc.pid}, exit {proc.process.poll()}); its log:\n{output[-3000:]}"]
    problems = fuzz_inputs.violations(r, example, output)
    # Drain what is still queued (a job retried for ever) and let the worker commit the job in hand:
    # a crash there belongs to this example, not to the next one.
    r.delete(schema.queue_key(fuzz_inputs.QUEUE))
    idle = fuzz_inputs.wait_for(lambda: r.zcard(schema.started_key(fuzz_inputs.QUEUE)) == 0 or not alive(), 20)
    if not alive() or not idle:
        worker.stop()
        problems.append(
            f"the worker {'died' if not alive() else 'hung'} on a job left after the sentinel; "
            f"its log:\n{proc.output()[log_start:][-3000:]}"
        )
    return problems


@settings(max_examples=EXAMPLES, derandomize=SEED is None, database=None, phases=PHASES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])  # fmt: skip
@seed(int(SEED or 0))
@given(example=fuzz_inputs.examples(EXCLUDE))
def test_hostile_entries_keep_the_invariants(fuzzed: tuple[FuzzedWorker, redis.Redis],
                                             example: fuzz_inputs.Example) -> None:  # fmt: skip
    worker, r = fuzzed
    problems = run_example(worker, r, example)
    assert not problems, "\n".join(problems)
