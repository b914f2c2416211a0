"""The worker -> master report: one type, encoded and decoded in one place (workerd.reports)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from workerd.reports import (
    ExitKind,
    JobOutcome,
    KillReason,
    RecycleReason,
    Report,
    ReportError,
    StopReason,
    WorkerState,
)
from workerd.supervisor import Child


def _full() -> Report:
    return Report(state=WorkerState.BUSY, job="j1", kill_at=1700000000.5, jobs=3, failed=1, heartbeat=True,
                  outage=True, stopping="finished 3 jobs (max jobs reached)", stop_reason=StopReason.MAX_JOBS,
                  outcome=JobOutcome.RETRIED, queue="q", duration_s=0.25, kill=KillReason.SOFT_MEMORY)  # fmt: skip


def test_every_field_survives_the_round_trip() -> None:
    report = _full()
    assert all(getattr(report, f.name) != f.default for f in dataclasses.fields(Report))  # every field set
    line = report.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert Report.decode(line) == report
    assert Report.decode(Report().encode()) == Report()


def test_enums_are_encoded_as_their_metric_labels() -> None:
    raw = json.loads(_full().encode())
    assert (raw["state"], raw["stop_reason"], raw["outcome"], raw["kill"]) == ("busy", "max_jobs", "retried",
                                                                                "soft_memory")  # fmt: skip


def test_a_stop_is_a_recycle_by_its_reason_not_its_words() -> None:
    assert StopReason.MAX_AGE.recycle is RecycleReason.MAX_AGE
    assert {reason.recycle for reason in StopReason} - {None} == set(RecycleReason)
    assert [reason for reason in StopReason if reason.recycle is None] == [
        StopReason.WARM_SHUTDOWN, StopReason.COLD_SHUTDOWN, StopReason.SUSPENDED, StopReason.BURST_FINISHED,
        StopReason.KILLED,
    ]  # fmt: skip


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.pop("queue"), "missing fields ['queue']"),
    (lambda raw: raw.update(colour="red"), "unknown fields ['colour']"),
    (lambda raw: raw.update(outcome="exploded"), "field outcome has an invalid value 'exploded'"),
    (lambda raw: raw.update(jobs="3"), "field jobs has an invalid value '3'"),
    (lambda raw: raw.update(jobs=True), "field jobs has an invalid value True"),
    (lambda raw: raw.update(heartbeat=None), "field heartbeat has an invalid value None"),
    (lambda raw: raw.update(duration_s="fast"), "field duration_s has an invalid value 'fast'"),
])  # fmt: skip
def test_a_line_that_is_not_a_report_is_refused_with_the_reason(change, message) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads(_full().encode())
    change(raw)
    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Report.decode(json.dumps(raw).encode())


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b""])
def test_a_line_that_is_not_a_json_object_is_refused(line: bytes) -> None:
    with pytest.raises(ReportError, match="a report is not"):
        Report.decode(line)


def test_an_integral_duration_is_a_float() -> None:
    raw = json.loads(Report(duration_s=1.0).encode())
    raw["duration_s"] = 2
    assert Report.decode(json.dumps(raw).encode()).duration_s == 2.0


def _child() -> Child:
    return Child(group="g", generation=0, pid=1, name="w", status_fd=-1)


def test_the_master_applies_a_report_field_by_field() -> None:
    child = _child()
    child.apply(Report(outage=True))
    assert (child.ready, child.reported, child.state) == (False, True, WorkerState.STARTING)
    child.apply(Report(state=WorkerState.BUSY, job="j1", kill_at=5.0))
    assert (child.ready, child.outage_since, child.job, child.kill_at_epoch) == (True, None, "j1", 5.0)
    child.apply(Report(state=WorkerState.IDLE, jobs=4, failed=1))
    assert (child.state, child.job, child.jobs_done, child.jobs_failed) == (WorkerState.IDLE, None, 4, 1)
    child.apply(Report(jobs=5, heartbeat=True))  # a daemon counts units, not failures
    assert (child.jobs_done, child.jobs_failed) == (5, 1)
    child.apply(Report(stopping="idle for 5 s (max idle time)", stop_reason=StopReason.MAX_IDLE))
    assert (child.worker_stop_reason, child.recycle) == (StopReason.MAX_IDLE, RecycleReason.MAX_IDLE)


@pytest.mark.parametrize("setup, clean, kind", [
    ({}, True, ExitKind.STOPPED),
    ({}, False, ExitKind.DIED),
    ({"stop_reason": StopReason.WARM_SHUTDOWN}, False, ExitKind.STOPPED),
    ({"worker_stop_reason": StopReason.BURST_FINISHED}, True, ExitKind.STOPPED),
    ({"worker_stop_reason": StopReason.COLD_SHUTDOWN}, False, ExitKind.DIED),  # exit 1 after a cold stop of its own
    ({"stop_reason": StopReason.SCALE_DOWN}, True, ExitKind.RECYCLED),
    ({"worker_stop_reason": StopReason.MAX_JOBS}, True, ExitKind.RECYCLED),
    ({"stop_reason": StopReason.MAX_AGE, "killed_for": KillReason.TIMEOUT}, False, ExitKind.KILLED),
])  # fmt: skip
def test_how_a_worker_ended(setup: dict[str, object], clean: bool, kind: ExitKind) -> None:
    child = dataclasses.replace(_child(), **setup)  # type: ignore[arg-type]
    assert child.exit_kind(clean) is kind
