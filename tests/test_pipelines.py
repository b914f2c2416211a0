"""Replies of a shared pipeline read by name: each queueing function knows its own (workerd.pipelines)."""

from __future__ import annotations

import time

import pytest
import redis

from workerd import pipelines, presence, schema
from workerd.commit import Claim, Committer
from workerd.job import Job
from workerd.serializers import resolve_serializer


def test_each_queued_group_reads_its_own_replies(r: redis.Redis) -> None:
    r.set("a", "1")
    with r.pipeline(transaction=False) as pipe:
        pipe.ping()  # a command of someone else, before
        first = pipelines.queue(pipe, lambda: (pipe.get("a"), pipe.get("b")), lambda replies: replies)
        pipe.ping()
        second = pipelines.queue(pipe, lambda: pipe.exists("a"), lambda replies: replies[0] == 1)
        replies = pipe.execute()
    assert (first.start, first.stop, second.start, second.stop) == (1, 3, 4, 5)
    assert first.read(replies) == [b"1", None]
    assert second.read(replies) is True
    with pytest.raises(ValueError, match=r"4 replies, but commands 4\.\.4 were queued"):
        second.read(replies[:4])


def test_the_heartbeat_replies_by_name(r: redis.Redis) -> None:
    """The worker's heartbeat pipeline: its key, the lease of its job, the expired leases by queue,
    the expired claim lists by queue."""
    name = "w-pipelines"
    r.hset(schema.worker_key(name), "state", "busy")
    committer = Committer(r, name, resolve_serializer(None))
    job = Job.from_mapping("j-pipelines", {})
    held = Claim(job=job, queue="qa", execution_id="e1")
    r.zadd(schema.started_key("qb"), {b"stale-member": 1})
    r.zadd(schema.started_key("qa"), {held.member: time.time() + 60})
    r.zadd(schema.claimers_key("qb"), {"w-dead": 1})
    with r.pipeline(transaction=False) as pipe:
        key = presence.queue_heartbeat(pipe, name, 60, ["qa", "qb"], 30)
        lease = committer.renew_lease(held, 30, 0.0, pipe)
        lost = committer.renew_lease(Claim(job=job, queue="qa", execution_id="e2"), 30, 0.0, pipe)
        expired = committer.expired_leases(["qa", "qb"], time.time(), pipe)
        claims = committer.expired_claims(["qa", "qb"], time.time(), pipe)
        gone = presence.queue_heartbeat(pipe, "w-never-registered", 60, [], 30)
        replies = pipe.execute()
    assert key.read(replies) is True
    assert gone.read(replies) is False
    assert lease.read(replies) is True
    assert lost.read(replies) is False  # no wip entry for execution e2: the lease is lost
    assert expired.read(replies) == {"qa": [], "qb": [b"stale-member"]}
    assert claims.read(replies) == {"qb": ["w-dead"]}  # never this worker, whose heartbeat renewed its own
