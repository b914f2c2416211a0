"""Hostile job hashes and queue entries, and the oracle that judges what a worker made of them.

Shared by tests/test_fuzz.py (Hypothesis strategies), tests/test_fuzz_regressions.py (shrunk examples)
and scripts/hostile.py (one representative per input class, for docs/RELIABILITY.md). Everything is
raw bytes written with plain Redis commands, as a hostile producer would: nothing here goes through
workerd's client, which refuses much of it.

One example is: `write` the entries (job hashes, queue pushes, dependency links) → `settle` (enqueue a
well-formed sentinel job behind them and wait, bounded, until it finished and nothing is left to run)
→ `violations` (the invariants of issue 12, as a list of plain sentences; empty when they hold).
"""

from __future__ import annotations

import json
import pickle
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from hypothesis import strategies as st

from workerd import schema
from workerd.utils import printable_id

QUEUE = "fuzz"
# Statuses a settled job may have, and the registry each must be in (queued: in some queue list).
_REGISTRY_OF_STATUS = {b"finished": "finished", b"failed": "failed", b"scheduled": "scheduled",
                       b"deferred": "deferred", b"canceled": "canceled", b"stopped": "failed"}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One hostile job: its id, its hash (None: an id without a hash), how often it is pushed."""

    job_id: bytes
    fields: dict[bytes, bytes] | None
    pushes: int = 1
    at_front: bool = False

    def __repr__(self) -> str:  # short enough to read in a shrunk example
        return f"Entry({self.job_id[:40]!r}, {self.fields!r}, pushes={self.pushes}, at_front={self.at_front})"


@dataclass(frozen=True)
class Example:
    entries: list[Entry]
    # (dependency index, dependent index): the dependent waits for the dependency (cycles allowed).
    links: list[tuple[int, int]] = field(default_factory=list)


# -- values ----------------------------------------------------------------------------------------


def _pickled_call(func: str, *args: object) -> bytes:
    return zlib.compress(pickle.dumps((func, None, args, {}), protocol=5))


# A pickle whose first opcode loads a class from a module that does not exist.
MISSING_CLASS_PICKLE = b"\x80\x04cno_such_fuzz_module\nMissing\n)\x81."
GOOD_DATA = _pickled_call("reliability_jobs.add", 2, 3)
FAILING_DATA = _pickled_call("testjobs.fail", "fuzzed")
DATA_VALUES: dict[str, bytes] = {
    "runs": GOOD_DATA,
    "raises": FAILING_DATA,
    "missing function": _pickled_call("reliability_jobs.no_such_function"),
    "builtin, wrong args": _pickled_call("builtins.len"),
    "empty func name": _pickled_call(""),
    "missing class pickle": zlib.compress(MISSING_CLASS_PICKLE),
    "missing class, uncompressed": MISSING_CLASS_PICKLE,
    "json where pickle is expected": zlib.compress(json.dumps(["reliability_jobs.add", None, [2, 3], {}]).encode()),
    "pickle of a non-tuple": zlib.compress(pickle.dumps(42)),
    "pickle of a short tuple": zlib.compress(pickle.dumps(("reliability_jobs.add",))),
    "zlib garbage": zlib.compress(b"\x00\xff garbage \x80"),
    "truncated zlib": GOOD_DATA[:-5],
    "raw bytes": b"\xff\xfe\x00not data",
    "empty": b"",
}
NUMBERS = [b"0", b"-1", b"1", b"-5", b"1.5", b"nan", b"NaN", b"inf", b"-inf", b"1e300", b"1e400", b"-1e400",
           b"10000000000000000", b"-10000000000000000", b"99999999999999999999999", b"0x10", b" 5", b"5 "]  # fmt: skip
ODD_VALUES = [b"", b"\xff\xfe", b"\x00", b"true", b"null", b"[]", b"{}", b'["x"]', b"[null]", b"[1e400]",
              b"[-1]", b"[1, 2]", b'{"a": 1}', b"x" * 10_000]  # fmt: skip
STATUSES = [b"queued", b"started", b"finished", b"failed", b"deferred", b"scheduled", b"stopped", b"canceled",
            b"created", b"bogus"]  # fmt: skip
STAMPS = [b"2024-01-01T00:00:00.000000Z", b"2024-13-45", b"garbage", b"9999-12-31T23:59:59Z"]
NUMERIC_FIELDS = [b"timeout", b"result_ttl", b"failure_ttl", b"ttl", b"retries_left", b"number_of_retries",
                  b"repeats_left", b"success_callback_timeout", b"failure_callback_timeout",
                  b"stopped_callback_timeout", b"allow_dependency_failures", b"enqueue_at_front",
                  b"enqueue_at_front_on_retry"]  # fmt: skip
LIST_FIELDS = [b"retry_intervals", b"repeat_intervals", b"dependency_ids", b"webhooks"]
STAMP_FIELDS = [b"created_at", b"enqueued_at", b"started_at", b"ended_at", b"last_heartbeat"]
TEXT_FIELDS = [b"origin", b"description", b"worker_name", b"group_id", b"dependency_id", b"success_callback_name",
               b"failure_callback_name", b"stopped_callback_name", b"meta", b"exc_info", b"result"]  # fmt: skip
CALLBACKS = [b"reliability_jobs.add", b"testjobs.fail", b"no.such.callback", b"\xfe\xff", b""]

# -- strategies ---------------------------------------------------------------------------------------

raw_values = st.one_of(st.sampled_from(NUMBERS + ODD_VALUES), st.binary(max_size=16),
                       st.integers(-(10**20), 10**20).map(lambda n: str(n).encode()),
                       st.floats().map(lambda x: repr(x).encode()))  # fmt: skip
list_values = st.one_of(st.sampled_from(ODD_VALUES),
                        st.lists(st.one_of(st.integers(-(10**18), 10**18), st.floats(), st.none(), st.text(max_size=3)),
                                 max_size=3).map(lambda xs: json.dumps(xs).encode()))  # fmt: skip


def _field_values(name: bytes) -> st.SearchStrategy[bytes]:
    """Mostly values of the right kind (so the job gets far), sometimes anything at all."""
    if name == b"data":
        kind: st.SearchStrategy[bytes] = st.sampled_from(list(DATA_VALUES.values()))
    elif name == b"status":
        kind = st.sampled_from(STATUSES)
    elif name in NUMERIC_FIELDS:
        kind = st.sampled_from(NUMBERS)
    elif name in LIST_FIELDS:
        kind = list_values
    elif name in STAMP_FIELDS:
        kind = st.sampled_from(STAMPS)
    elif name.endswith(b"callback_name"):
        kind = st.sampled_from(CALLBACKS)
    elif name == b"origin":
        kind = st.sampled_from([QUEUE.encode(), b"other", b"", b"\xff"])
    else:
        kind = st.binary(max_size=12)
    return st.one_of(kind, raw_values) if name != b"data" else kind


FIELD_NAMES = [b"status", b"data", *NUMERIC_FIELDS, *LIST_FIELDS, *STAMP_FIELDS, *TEXT_FIELDS]
job_hashes = st.fixed_dictionaries(
    {b"data": _field_values(b"data")}, optional={name: _field_values(name) for name in FIELD_NAMES if name != b"data"}
)
hashes_without_data = st.dictionaries(st.sampled_from(FIELD_NAMES[2:]), st.binary(max_size=8), min_size=1, max_size=3)
job_ids = st.one_of(st.sampled_from([b"", b":", b"a:b", b"::", b"\xff\xfe", b"\xff:\xfe", b"x" * 10_000, b" ",
                                     b"\x00", b"rq:job:x", b"id\nwith newline"]),
                    st.binary(min_size=1, max_size=10), st.text(min_size=1, max_size=10).map(str.encode))  # fmt: skip
entries = st.builds(Entry, job_id=st.just(b""),  # the id is drawn by `examples`, unique per example
                    fields=st.one_of(job_hashes, job_hashes, hashes_without_data, st.none()),
                    pushes=st.integers(0, 3), at_front=st.booleans())  # fmt: skip


@st.composite
def examples(draw: st.DrawFn, exclude: frozenset[bytes] = frozenset()) -> Example:
    """Up to 4 entries with distinct ids. `exclude`: field names never written (to look past a
    defect already known, e.g. WORKERD_FUZZ_EXCLUDE=retries_left)."""
    ids = draw(st.lists(job_ids, min_size=1, max_size=4, unique=True))
    drawn = [Entry(job_id, _without(e.fields, exclude), e.pushes, e.at_front) for job_id, e in zip(ids, draw(
        st.lists(entries, min_size=len(ids), max_size=len(ids))), strict=True)]  # fmt: skip
    index = st.integers(0, len(ids) - 1)
    links = draw(st.lists(st.tuples(index, index), max_size=3))
    return Example(drawn, links)


def _without(fields: dict[bytes, bytes] | None, exclude: frozenset[bytes]) -> dict[bytes, bytes] | None:
    kept = {name: value for name, value in (fields or {}).items() if name not in exclude}
    return kept or None  # nothing left to write: an id without a hash


# -- writing ------------------------------------------------------------------------------------------


def write(r: redis.Redis, example: Example) -> None:
    """Put the example in Redis as a producer (any producer) could: hashes, then links, then pushes."""
    queue_key = schema.queue_key(QUEUE)
    r.sadd(schema.QUEUES, queue_key)
    for entry in example.entries:
        if entry.fields is not None:
            r.hset(_key(b"rq:job:", entry.job_id), mapping=entry.fields)  # type: ignore[arg-type]
    for parent, child in example.links:
        parent_id, child_id = example.entries[parent].job_id, example.entries[child].job_id
        r.sadd(_key(b"rq:job:", parent_id, b":dependents"), child_id)
        r.sadd(_key(b"rq:job::", child_id, b":dependencies"), parent_id)
    for entry in example.entries:
        for _ in range(entry.pushes):
            (r.lpush if entry.at_front else r.rpush)(queue_key, entry.job_id)


def _key(prefix: bytes, job_id: bytes, suffix: bytes = b"") -> bytes:
    return prefix + job_id + suffix


def clear(r: redis.Redis) -> None:
    """Delete everything but the workers' own keys, so the next example starts from nothing."""
    keys = [key for key in r.scan_iter(count=1000) if not key.startswith((b"rq:worker", b"rq:pubsub"))]
    for start in range(0, len(keys), 500):
        r.delete(*keys[start : start + 500])


# -- settling -------------------------------------------------------------------------------------------


@dataclass
class Settled:
    sentinels: list[str]  # ids of the sentinel jobs, each finished
    problem: str | None  # why it did not settle (worker dead, sentinel not run), else None


def settle(r: redis.Redis, alive: Callable[[], bool], rounds: int = 5, timeout_s: float = 20.0) -> Settled:
    """Enqueue a sentinel behind the hostile entries and wait for it; again while the queue still holds
    work (retries, released dependents) - at most `rounds` times. A single worker takes the queue in
    order, so a finished sentinel means everything before it was taken and committed."""
    from workerd import Queue  # here: scripts/hostile.py imports this module before it sets up its path

    sentinels: list[str] = []
    for _ in range(rounds):
        sentinel = Queue(QUEUE, connection=r).enqueue("reliability_jobs.add", 2, 3).id
        sentinels.append(sentinel)
        if not wait_for(_finished_or_dead(r, sentinel.encode(), alive), timeout_s):
            return Settled(sentinels, f"the sentinel job did not finish within {timeout_s:g} s")
        if not alive():
            return Settled(sentinels, "the worker died")
        if _nothing_left(r):
            return Settled(sentinels, None)
    # Still work left (a job that retries at once, thousands of times): suspend the worker (its fetch
    # checks the suspension atomically) and let the job in hand end, so that the oracle reads a still
    # picture, with that job back in its queue, not one taken while it moves. clear() lifts it.
    r.set(schema.SUSPENDED, "1")
    if not wait_for(lambda: r.zcard(schema.started_key(QUEUE)) == 0 or not alive(), timeout_s):
        return Settled(sentinels, f"the job in hand did not end within {timeout_s:g} s of a suspension")
    return Settled(sentinels, None)


def _nothing_left(r: redis.Redis) -> bool:
    """Queue and wip registry both empty, read in one transaction: two separate reads can see the
    queue empty while a job retried at once is in hand, then the wip registry empty once it is back
    in the queue, and call a still-moving job settled."""
    with r.pipeline(transaction=True) as pipe:
        queued, in_hand = pipe.llen(schema.queue_key(QUEUE)).zcard(schema.started_key(QUEUE)).execute()
    return queued == 0 and in_hand == 0


def _finished_or_dead(r: redis.Redis, job_id: bytes, alive: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: _status(r, job_id) == b"finished" or not alive()


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _status(r: redis.Redis, job_id: bytes) -> bytes | None:
    return r.hget(_key(b"rq:job:", job_id), "status")  # type: ignore[return-value]


# -- the oracle -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fate:
    """What became of one job id, read back raw."""

    status: bytes | None  # None: no hash (any more)
    lists: list[str]  # the queues and registries that hold the id
    exc_string: bytes | None  # of its latest result entry, if a failure

    def row(self) -> str:
        status = self.status.decode(errors="replace") if self.status is not None else "(no hash)"
        return f"{status} | {', '.join(self.lists) or 'none'}"


def fate(r: redis.Redis, job_id: bytes) -> Fate:
    where = []
    for key in r.scan_iter(match="rq:*", count=1000):
        if _holds(r, key, job_id):
            where.append(key.decode(errors="replace"))
    latest = r.xrevrange(_key(b"rq:results:", job_id), count=1)
    exc = latest[0][1].get(b"exc_string") if latest and latest[0][1].get(b"type") == b"2" else None
    return Fate(_status(r, job_id), sorted(where), exc)


def _holds(r: redis.Redis, key: bytes, job_id: bytes) -> bool:
    """Whether a queue list or a registry (not a job's own executions set) holds the id."""
    kind = r.type(key)
    if kind == b"list":
        return key.startswith(b"rq:queue:") and r.lpos(key, job_id) is not None
    return kind == b"zset" and not key.startswith(b"rq:executions:") and _in_zset(r, key, job_id)


def _in_zset(r: redis.Redis, key: bytes, job_id: bytes) -> bool:
    if key.startswith(b"rq:wip:"):  # members are <id>:<execution>
        return any(schema.split_wip_member(m)[0] == schema.decode_id(job_id) for m in r.zrange(key, 0, -1))
    return r.zscore(key, job_id) is not None


def violations(r: redis.Redis, example: Example, log_text: str) -> list[str]:
    """The invariants of issue 12 for a settled example, as sentences naming the job; [] if they hold."""
    found: list[str] = []
    for member in r.zrange(schema.started_key(QUEUE), 0, -1):  # the worker is idle: it holds no lease
        found.append(f"wip entry {member[:60]!r} is left with no job running")
    for entry in example.entries:
        if entry.pushes == 0:
            continue
        shown = printable_id(schema.decode_id(entry.job_id))
        if entry.fields is None:
            if f"skipped job {shown}" not in log_text:
                found.append(f"id {entry.job_id[:40]!r} without a hash was not skipped with a log line")
            continue
        found += [f"job {entry.job_id[:40]!r}: {problem}" for problem in _judge(fate(r, entry.job_id))]
    return found


def _judge(f: Fate) -> Iterator[str]:
    if f.status is None:
        return  # deleted by its own TTL (result_ttl 0, a negative ttl): nothing left to be wrong
    if f.status == b"queued":
        if not any(where.startswith("rq:queue:") for where in f.lists):
            yield f"queued but in no queue (lists: {f.lists})"
        return
    registry = _REGISTRY_OF_STATUS.get(f.status)
    if registry is None:
        yield f"ends with status {f.status!r}, not a final state (lists: {f.lists})"
        return
    if f"rq:{registry}:{QUEUE}" not in f.lists:
        yield f"is {f.status.decode()} but not in rq:{registry}:{QUEUE} (lists: {f.lists})"
    if f.status == b"failed" and not f.exc_string:
        yield "is failed without exc_info (no failed result entry with an exc_string)"


# -- one example per class of input (scripts/hostile.py, docs/RELIABILITY.md) ---------------------------


def _job(job_id: bytes, data: bytes = GOOD_DATA, pushes: int = 1, **fields: bytes) -> Entry:
    base = {b"status": b"queued", b"origin": QUEUE.encode(), b"data": data}
    return Entry(job_id, {**base, **{name.encode(): value for name, value in fields.items()}}, pushes)


def _one(entry: Entry) -> Example:
    return Example([entry])


REPRESENTATIVES: dict[str, Example] = {
    "well-formed job": _one(_job(b"fz-good")),
    "non-UTF-8 id": _one(_job(b"fz-\xff\xfe")),
    "id with ':'": _one(_job(b"fz:a:b")),
    "empty id": _one(_job(b"")),
    "10,000-character id": _one(_job(b"x" * 10_000)),
    "id pushed twice": _one(_job(b"fz-twice", pushes=2)),
    "id without a hash": _one(Entry(b"fz-ghost", None)),
    "hash without data": _one(Entry(b"fz-nodata", {b"status": b"queued", b"origin": QUEUE.encode()})),
    "dependency cycle": Example([_job(b"fz-cycle-a"), _job(b"fz-cycle-b")], links=[(0, 1), (1, 0)]),
    "pickle of a missing class": _one(_job(b"fz-missing-class", DATA_VALUES["missing class pickle"])),
    "json where pickle is expected": _one(_job(b"fz-json", DATA_VALUES["json where pickle is expected"])),
    "zlib garbage in data": _one(_job(b"fz-zlib", DATA_VALUES["zlib garbage"])),
    "function that does not exist": _one(_job(b"fz-nofunc", DATA_VALUES["missing function"])),
    "fields of the wrong type": _one(
        _job(
            b"fz-types",
            timeout=b"abc",
            result_ttl=b"[]",
            status=b"bogus",
            created_at=b"garbage",
            dependency_ids=b"{",
            meta=b"\x80",
        )
    ),
    "non-UTF-8 field values": _one(_job(b"fz-bytes", description=b"\xff\xfe", origin=b"\xff", worker_name=b"\xc3(")),
    "NaN and inf numbers": _one(_job(b"fz-nan", timeout=b"nan", result_ttl=b"inf", failure_ttl=b"-inf")),
    "result_ttl 10**16": _one(_job(b"fz-huge-ttl", result_ttl=b"10000000000000000")),
    "negative result_ttl": _one(_job(b"fz-negative-ttl", result_ttl=b"-5")),
    "failure_ttl 10**16": _one(_job(b"fz-huge-failure-ttl", FAILING_DATA, failure_ttl=b"10000000000000000")),
    "retries_left 1e300": _one(_job(b"fz-retries", FAILING_DATA, retries_left=b"1e300")),
    "retries_left 1.5": _one(_job(b"fz-retries-float", FAILING_DATA, retries_left=b"1.5")),
    'retry_intervals ["x"]': _one(_job(b"fz-intervals-x", FAILING_DATA, retries_left=b"1", retry_intervals=b'["x"]')),
    "retry_intervals [1e400]": _one(
        _job(b"fz-intervals-inf", FAILING_DATA, retries_left=b"1", retry_intervals=b"[1e400]")
    ),
}
