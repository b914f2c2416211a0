"""The Redis schema: every key workerd reads or writes, and the Lua scripts that touch several at once.

No other module formats a key string. The layout is RQ 2.12's (docs/PROTOCOL.md §2.1),
so RQ clients, `rq info` and rq-dashboard see workerd's jobs and workers as their own.

=========================================  ======  ==============================================
key                                        type    content
=========================================  ======  ==============================================
rq:queues                                  SET     queue keys (``rq:queue:<name>``)
rq:queue:<name>                            LIST    job ids; producers RPUSH (LPUSH at front), workers pop LEFT
rq:job:<id>                                HASH    the job (workerd.job.Job.to_mapping)
rq:job:<id>:dependents                     SET     ids of jobs waiting for <id>
rq:job::<id>:dependencies                  SET     ids <id> waits for (RQ's double colon)
rq:results:<id>                            STREAM  one entry per execution outcome
rq:execution:<id>:<exec>                   HASH    id, created_at, last_heartbeat, worker_name
rq:executions:<id>                         ZSET    execution ids, score = expiry
rq:wip:<queue>                             ZSET    ``<id>:<exec>``, score = lease deadline (epoch s)
rq:finished:<queue> / rq:failed:<queue>    ZSET    job ids, score = expiry
rq:deferred:<queue> / rq:scheduled:<queue> ZSET    job ids, score = deferral time / run-at time
rq:canceled:<queue>                        ZSET    job ids, score = cancel time
rq:workers, rq:workers:<queue>             SET     worker keys
rq:worker:<name>                           HASH    the worker (birth, last_heartbeat, queues, state, ...)
rq:pubsub:<name>                           CHAN    JSON commands to a worker
rq:suspended                               STRING  "1" while workers are suspended
rq:clean_registries:<queue>                STRING  maintenance lock
rq:scheduler-lock:<queue>                  STRING  name of the scheduler owning the queue
rq:workerd:claim:<queue>:<worker>          LIST    ids Redis handed to <worker>'s idle wait on <queue>
rq:workerd:claims:<queue>                  ZSET    worker names, score = deadline of their claim lists
=========================================  ======  ==============================================

A job id is any byte string (anything can be pushed onto a queue): it may hold ``:``, bytes that
are not UTF-8, or nothing at all. In Python an id is the ``str`` that ``decode_id`` makes of it
(UTF-8 with ``surrogateescape``), and ``encode_id`` gives back the very same bytes: the keys below
that hold an id are built as bytes that way, and the commit scripts get ids as bytes. In
``<id>:<exec>`` the execution id is the part after the LAST colon: execution ids never contain
one; ids may.

workerd adds one hash field, ``workerd_lost_count`` on a job: how many times a worker died holding
it. RQ ignores fields it does not know, and never deletes them.

Where workerd differs from RQ on the wire (same data, fewer round trips, no loss window):
``FETCH_START`` pops the id and writes the started state in one script, so an id is never only in
a process's memory; ``GUARDED_APPLY`` commits an outcome only while the worker still holds the
job's wip entry (its lease), so a worker that was presumed dead cannot overwrite a re-run - or,
for a job canceled while it runs (cancel removes the wip entry), while its execution record is
left, which recovery deletes.

The two ``rq:workerd:`` keys are workerd's own (RQ never reads them): an idle workerd worker waits
with ``BLMOVE <queue> <its claim list> LEFT RIGHT``, so Redis hands each pushed id to exactly one
waiting worker (``BLMOVE q q`` would wake every one). The id stays in that list, with its job still
``queued``, until the worker's ``FETCH_START`` takes it - under one round trip - and the list is
leased as a job is: its owner's heartbeat renews its deadline in ``rq:workerd:claims:<queue>``, and
``RECOVER_CLAIMS`` puts the ids of a worker whose deadline passed back at the front of the queue.
"""

from __future__ import annotations

import enum

from workerd.reports import JobOutcome, WorkerState

PREFIX = "rq:"
QUEUES = "rq:queues"
WORKERS = "rq:workers"
SUSPENDED = "rq:suspended"
LOST_COUNT_FIELD = "workerd_lost_count"

_QUEUE_PREFIX = "rq:queue:"
_JOB_PREFIX = "rq:job:"
_WORKER_PREFIX = "rq:worker:"
_DEFERRED_PREFIX = "rq:deferred:"
_EXECUTION_PREFIX = "rq:execution:"
_EXECUTIONS_PREFIX = "rq:executions:"


class JobStatus(str, enum.Enum):
    """A job hash's `status` field (RQ's JobStatus, the same strings)."""

    CREATED = "created"
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    DEFERRED = "deferred"
    SCHEDULED = "scheduled"
    STOPPED = "stopped"
    CANCELED = "canceled"


class Recovery(str, enum.Enum):
    """What `Committer.recover` found or did with a wip entry (RECOVER_ABANDONED's reply)."""

    ALIVE = "alive"  # its lease holds: its worker is heartbeating
    STALE = "stale"  # no job there any more (committed meanwhile, deleted): the entry is dropped
    REQUEUED = "requeued"
    FAILED = "failed"

    @property
    def outcome(self) -> JobOutcome | None:
        """The job outcome a recovery counts, if it counts one."""
        return {Recovery.REQUEUED: JobOutcome.REQUEUED, Recovery.FAILED: JobOutcome.FAILED}.get(self)


def queue_key(name: str) -> str:
    return f"{_QUEUE_PREFIX}{name}"


def queue_name_from_key(key: str | bytes) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text[len(_QUEUE_PREFIX) :] if text.startswith(_QUEUE_PREFIX) else text


def intermediate_key(queue: str) -> str:
    return f"{_QUEUE_PREFIX}{queue}:intermediate"


# Keys made from a job id are bytes, exactly the id's bytes (see encode_id), as RQ's Job.key is.


def job_key(job_id: str) -> bytes:
    return encode_id(f"{_JOB_PREFIX}{job_id}")


def dependents_key(job_id: str) -> bytes:
    return encode_id(f"{_JOB_PREFIX}{job_id}:dependents")


def dependencies_key(job_id: str) -> bytes:
    return encode_id(f"{_JOB_PREFIX}:{job_id}:dependencies")


def results_key(job_id: str) -> bytes:
    return encode_id(f"rq:results:{job_id}")


def execution_key(job_id: str, execution_id: str) -> bytes:
    return encode_id(f"{_EXECUTION_PREFIX}{job_id}:{execution_id}")


def executions_key(job_id: str) -> bytes:
    return encode_id(f"{_EXECUTIONS_PREFIX}{job_id}")


def started_key(queue: str) -> str:
    return f"rq:wip:{queue}"


def finished_key(queue: str) -> str:
    return f"rq:finished:{queue}"


def failed_key(queue: str) -> str:
    return f"rq:failed:{queue}"


def deferred_key(queue: str) -> str:
    return f"{_DEFERRED_PREFIX}{queue}"


def scheduled_key(queue: str) -> str:
    return f"rq:scheduled:{queue}"


def canceled_key(queue: str) -> str:
    return f"rq:canceled:{queue}"


def worker_key(name: str) -> str:
    return f"{_WORKER_PREFIX}{name}"


def worker_name_from_key(key: str | bytes) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text[len(_WORKER_PREFIX) :] if text.startswith(_WORKER_PREFIX) else text


def workers_by_queue_key(queue: str) -> str:
    return f"rq:workers:{queue}"


def pubsub_channel(worker_name: str) -> str:
    return f"rq:pubsub:{worker_name}"


def maintenance_lock_key(queue: str) -> str:
    return f"rq:clean_registries:{queue}"


def scheduler_lock_key(queue: str) -> str:
    return f"rq:scheduler-lock:{queue}"


def intermediate_first_seen_key(queue: str, job_id: str) -> bytes:
    return encode_id(f"{_QUEUE_PREFIX}{queue}:intermediate:first_seen:{job_id}")


def scheduler_key(name: str) -> str:
    return f"rq:scheduler:{name}"


_CLAIM_PREFIX = "rq:workerd:claim:"


def claim_list_key(queue: str, worker_name: str) -> str:
    """The list an idle worker's wait on `queue` moves job ids into (workerd.waiter)."""
    return f"{_CLAIM_PREFIX}{queue}:{worker_name}"


def claimers_key(queue: str) -> str:
    """Who may hold ids in a claim list of `queue`: worker names, score = lease deadline."""
    return f"rq:workerd:claims:{queue}"


def wip_member(job_id: str, execution_id: str) -> bytes:
    return encode_id(f"{job_id}:{execution_id}")


# How ids are decoded: every byte string maps to a str, and back to the same bytes.
ID_ENCODING_ERRORS = "surrogateescape"


def decode_id(raw: str | bytes) -> str:
    """A job id (or wip member) as read from Redis, as the str that encodes back to its bytes."""
    return raw.decode("utf-8", ID_ENCODING_ERRORS) if isinstance(raw, bytes) else raw


def encode_id(text: str) -> bytes:
    """The bytes of an id, or of a key or value made from one: decode_id's inverse. Never left to
    the Redis client, which encodes a str as strict UTF-8 (hiredis ignores encoding_errors)."""
    return text.encode("utf-8", ID_ENCODING_ERRORS)


def split_wip_member(member: str | bytes) -> tuple[str, str]:
    """`<job_id>:<execution_id>` -> (job_id, execution_id), split at the last colon: a job id may
    hold colons, an execution id (a uuid) never does. RQ 1.x bare ids give an empty execution id."""
    job_id, colon, execution_id = decode_id(member).rpartition(":")
    return (job_id, execution_id) if colon else (execution_id, "")


# -- Lua ------------------------------------------------------------------------------------------
# The key prefixes, job statuses and script replies are spliced into the scripts here so that they
# are spelled once, in this module, with the one helper every script needs before its first write (is_a).

_LUA_PREFIXES = f"""
local JOB_PREFIX = '{_JOB_PREFIX}'
local QUEUE_PREFIX = '{_QUEUE_PREFIX}'
local QUEUES_KEY = '{QUEUES}'
local SUSPENDED_KEY = '{SUSPENDED}'
local DEFERRED_PREFIX = '{_DEFERRED_PREFIX}'
local EXECUTION_PREFIX = '{_EXECUTION_PREFIX}'
local EXECUTIONS_PREFIX = '{_EXECUTIONS_PREFIX}'
local QUEUED, STARTED, FINISHED = '{JobStatus.QUEUED.value}', '{JobStatus.STARTED.value}', '{JobStatus.FINISHED.value}'
local FAILED, CANCELED = '{JobStatus.FAILED.value}', '{JobStatus.CANCELED.value}'
local WORKER_BUSY = '{WorkerState.BUSY.value}'
-- Whether `key` holds a value of `kind`. A command on a key of another type errors, and Redis keeps
-- what the script wrote before: a script checks a key anyone may have written before its first write.
local function is_a(key, kind) return redis.call('TYPE', key)['ok'] == kind end
"""

# Release the dependents of a job that just reached `parent_status` (RQ's enqueue_dependents,
# docs/PROTOCOL.md §5.9): a dependent is enqueued on its own origin queue once every other
# dependency is finished (or failed, when it allows failures). Missing dependency hashes count as met.
_LUA_RELEASE_DEPENDENTS = """
local function release_dependents(parent_id, parent_status, now_stamp)
  local dependents_key = JOB_PREFIX .. parent_id .. ':dependents'
  local ids = redis.call('SMEMBERS', dependents_key)
  local released = {}
  for _, dep in ipairs(ids) do
    local dep_key = JOB_PREFIX .. dep
    local dep_dependencies = JOB_PREFIX .. ':' .. dep .. ':dependencies'
    local f = {}  -- a dependent whose keys are of another type is not released: it is not a job
    local dependencies_type = redis.call('TYPE', dep_dependencies)['ok']
    if is_a(dep_key, 'hash') and (dependencies_type == 'set' or dependencies_type == 'none') then
      f = redis.call('HMGET', dep_key, 'status', 'origin', 'allow_dependency_failures', 'enqueue_at_front')
    end
    local status, origin, allow_failure, at_front = f[1], f[2], f[3] == '1', f[4] == '1'
    if status and origin and status ~= CANCELED then
      local met = parent_status == FINISHED or (parent_status == FAILED and allow_failure)
      if met then
        for _, other in ipairs(redis.call('SMEMBERS', dep_dependencies)) do
          if other ~= parent_id then
            local s = is_a(JOB_PREFIX .. other, 'hash') and redis.call('HGET', JOB_PREFIX .. other, 'status')
            if s and not (s == FINISHED or (allow_failure and s == FAILED)) then
              met = false
              break
            end
          end
        end
      end
      if met then
        local queue = QUEUE_PREFIX .. origin
        redis.call('ZREM', DEFERRED_PREFIX .. origin, dep)
        redis.call('HSET', dep_key, 'status', QUEUED, 'enqueued_at', now_stamp)
        redis.call('SADD', QUEUES_KEY, queue)
        if at_front then redis.call('LPUSH', queue, dep) else redis.call('RPUSH', queue, dep) end
        table.insert(released, dep)
      end
    end
  end
  if #released > 0 and #released == #ids then
    redis.call('DEL', dependents_key)
  else
    -- In slices: unpack() of more than a few thousand values exceeds Lua's stack and errors.
    for first = 1, #released, 1000 do
      redis.call('SREM', dependents_key, unpack(released, first, math.min(first + 999, #released)))
    end
  end
  return #released
end
"""

# A claim list's ids back at the front of their queue, in order - but not a job canceled meanwhile:
# rq's cancel takes a job off its queue with LREM, which does not see one in a claim list.
_LUA_RETURN_CLAIM_LIST = """
local function was_canceled(key) return is_a(key, 'hash') and redis.call('HGET', key, 'status') == CANCELED end
local function return_claim_list(claim_list, queue)
  local moved = 0
  while true do
    local id = redis.call('RPOP', claim_list)
    if not id then return moved end
    if not was_canceled(JOB_PREFIX .. id) then
      redis.call('LPUSH', queue, id)
      moved = moved + 1
    end
  end
end
"""

# KEYS: worker key, queue keys 1..n (priority order), wip keys 1..n, this worker's claim lists 1..n.
# ARGV: n, worker name, execution id, now stamp, now (float), lease deadline, execution ttl,
#       executions score, most ids to skip in one call, '1' if the claim lists may hold ids.
# Pops ids from the first non-empty queue - its claim list first: those ids were its head - until
# one whose hash exists (a key of another type is no job), and marks it started in the same atomic
# step. Ids left in the claim lists go back to the front of their queues, in order, so priority
# and order are kept. Returns {queue index (0: none, -1: workers are suspended), job id, HGETALL
# of the job, skipped ids}. The suspension check is part of the same step, so no job is taken
# after `rq suspend`, even by a worker that was already waiting.
_FETCH_START_BODY = """
local n = tonumber(ARGV[1])
local worker_name, exec_id, now_stamp, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local deadline, exec_ttl, execs_score = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local max_skips = tonumber(ARGV[9])
local claims = ARGV[10] == '1'
local function return_claims()
  if not claims then return end
  for i = 1, n do return_claim_list(KEYS[1 + 2 * n + i], KEYS[1 + i]) end
end
if redis.call('EXISTS', SUSPENDED_KEY) == 1 then
  return_claims()
  return {-1, '', {}, {}}
end
local skipped = {}
for i = 1, n do
  while true do
    local claimed = claims and redis.call('LPOP', KEYS[1 + 2 * n + i])
    local job_id = claimed or redis.call('LPOP', KEYS[1 + i])
    if not job_id then break end
    local key = JOB_PREFIX .. job_id
    local is_job = is_a(key, 'hash')
    -- Canceled while Redis held it for us, where rq's cancel (an LREM of the queue) missed it: dropped.
    local canceled = claimed and is_job and redis.call('HGET', key, 'status') == CANCELED
    if is_job and not canceled then
      -- RQ's bookkeeping key, if anyone left another type there: gone before it could fail ZADD below.
      if not is_a(EXECUTIONS_PREFIX .. job_id, 'zset') then redis.call('DEL', EXECUTIONS_PREFIX .. job_id) end
      redis.call('HSET', key, 'status', STARTED, 'started_at', now_stamp, 'worker_name', worker_name,
                 'last_heartbeat', now_stamp)
      redis.call('PERSIST', key)
      redis.call('ZADD', KEYS[1 + n + i], deadline, job_id .. ':' .. exec_id)
      local exec_key = EXECUTION_PREFIX .. job_id .. ':' .. exec_id
      redis.call('HSET', exec_key, 'id', exec_id, 'created_at', now, 'last_heartbeat', now,
                 'worker_name', worker_name)
      redis.call('EXPIRE', exec_key, exec_ttl)
      redis.call('ZADD', EXECUTIONS_PREFIX .. job_id, execs_score, exec_id)
      redis.call('EXPIRE', EXECUTIONS_PREFIX .. job_id, exec_ttl + 60)
      redis.call('HSET', KEYS[1], 'state', WORKER_BUSY, 'current_job', job_id,
                 'current_job_working_time', '0', 'last_heartbeat', now_stamp)
      return_claims()
      return {i, job_id, redis.call('HGETALL', key), skipped}
    end
    if not canceled then
      table.insert(skipped, job_id)
      if #skipped >= max_skips then
        return_claims()
        return {0, '', {}, skipped}
      end
    end
  end
end
return {0, '', {}, skipped}
"""
FETCH_START = _LUA_PREFIXES + _LUA_RETURN_CLAIM_LIST + _FETCH_START_BODY

# KEYS[1]: a queue key. Removes the ids whose job hash is gone, in place and in one step (rq's
# Queue.compact renames the queue and moves ids back one at a time: a crash between loses the rest,
# and jobs enqueued meanwhile go ahead of older ones). Returns how many ids it removed.
COMPACT_QUEUE = (
    _LUA_PREFIXES
    + """
if not is_a(KEYS[1], 'list') then return 0 end
local removed = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', JOB_PREFIX .. id) == 0 then
    removed = removed + redis.call('LREM', KEYS[1], 0, id)
  end
end
return removed
"""
)

# KEYS[1]: wip key. ARGV: wip member ('' = no lease check), dependents release ('', 'finished',
# 'failed'), job id, now stamp, tolerant ('1' or ''), canceled ok ('1' or ''), then commands as
# (argc, command, args...)*.
# Releases dependents, then applies the commands, atomically and only while the member is still
# in the wip registry, i.e. while this worker still holds the job. A job canceled while it runs
# (RQ's Job.cancel takes its wip entry away but leaves the execution record, which only recovery
# deletes) stays this worker's to renew and commit when 'canceled ok' is set, as RQ's worker commits
# it; a success then releases no dependent (RQ's enqueue_dependents finds the parent canceled), a
# failure releases them as usual (RQ writes 'failed' before it looks). Without 'canceled ok' (a
# requeue) a canceled job is never written. Returns -1 if the lease was lost, -2 after committing a
# canceled job, else the number of dependents released. A command that errors stops the script, and
# Redis keeps the writes made before it: callers validate every argument first. Tolerant (the
# last-resort failure path) attempts every command whatever the others do.
_GUARDED_APPLY_BODY = """
local canceled = false
if ARGV[1] ~= '' then
  local job_key = JOB_PREFIX .. ARGV[3]
  canceled = is_a(job_key, 'hash') and redis.call('HGET', job_key, 'status') == CANCELED
  local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
  local execution_kept = redis.call('EXISTS', EXECUTION_PREFIX .. ARGV[1]) == 1
  if canceled and (ARGV[6] ~= '1' or not (held or execution_kept)) then return -1 end
  if not canceled and not held then return -1 end
end
-- Dependents first: the commands may delete the job and its dependents set (result_ttl = 0).
local released = 0
if ARGV[2] ~= '' and not (canceled and ARGV[2] == FINISHED) then
  released = release_dependents(ARGV[3], ARGV[2], ARGV[4])
end
local call = redis.call
if ARGV[5] == '1' then call = redis.pcall end
local i = 7
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  call(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
end
if canceled then return -2 end
return released
"""
GUARDED_APPLY = _LUA_PREFIXES + _LUA_RELEASE_DEPENDENTS + _GUARDED_APPLY_BODY

# KEYS: GUARDED_APPLY's key, then FETCH_START's keys. ARGV: how many arguments GUARDED_APPLY takes,
# then its arguments, then FETCH_START's. A commit and the fetch of the next job in one call (with a
# backlog, one round trip a job): {GUARDED_APPLY's reply, FETCH_START's reply}. Each body runs as
# written for its own script, with KEYS and ARGV its own slices. A commit that errors stops the
# script before the fetch, as it stops GUARDED_APPLY.
COMMIT_THEN_FETCH = (
    _LUA_PREFIXES
    + _LUA_RELEASE_DEPENDENTS
    + _LUA_RETURN_CLAIM_LIST
    + "local function guarded_apply(KEYS, ARGV)\n"
    + _GUARDED_APPLY_BODY
    + "end\nlocal function fetch_start(KEYS, ARGV)\n"
    + _FETCH_START_BODY
    + """end
local apply_argc = tonumber(ARGV[1])
local apply_keys, apply_args, fetch_keys, fetch_args = {KEYS[1]}, {}, {}, {}
for i = 2, #KEYS do fetch_keys[i - 1] = KEYS[i] end
for i = 2, apply_argc + 1 do apply_args[i - 1] = ARGV[i] end
for i = apply_argc + 2, #ARGV do fetch_args[i - apply_argc - 1] = ARGV[i] end
local applied = guarded_apply(apply_keys, apply_args)
return {applied, fetch_start(fetch_keys, fetch_args)}
"""
)

# KEYS: wip key, queue key, failed key, results key of the job.
# ARGV: wip member, now (epoch), now stamp, max attempts, poison-pill exc_string (base64 zlib),
#       the job's failure ttl (or the default), '1' to ignore the deadline (the worker is known
#       dead), an exc_string to fail with at once ('' for none: e.g. the master killed it over a
#       limit), the results stream's ttl ('' for none), and the job's lost count after this loss.
# The job's own numbers come checked from workerd.job, so no command here can fail on them.
# Recovers one wip entry whose worker stopped renewing its lease: back to the front of its queue,
# or - after max attempts, or with a kill reason - failed. Returns 'alive', 'stale', 'requeued'
# or 'failed'.
RECOVER_ABANDONED = (
    _LUA_PREFIXES
    + _LUA_RELEASE_DEPENDENTS
    + f"""
local member, now, now_stamp = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local score = redis.call('ZSCORE', KEYS[1], member)
if not score or (ARGV[7] ~= '1' and tonumber(score) > now) then return '{Recovery.ALIVE.value}' end
redis.call('ZREM', KEYS[1], member)
-- The execution id follows the last colon (split_wip_member): a job id may hold colons.
local job_id, exec_id = string.match(member, '^(.*):([^:]*)$')
if not job_id then job_id, exec_id = member, '' end
local key = JOB_PREFIX .. job_id
if exec_id ~= '' then
  redis.call('DEL', EXECUTION_PREFIX .. job_id .. ':' .. exec_id)
  redis.call('ZREM', EXECUTIONS_PREFIX .. job_id, exec_id)
end
if not is_a(key, 'hash') or redis.call('HGET', key, 'status') ~= STARTED then return '{Recovery.STALE.value}' end
local lost = tonumber(ARGV[10])
redis.call('HSET', key, '{LOST_COUNT_FIELD}', ARGV[10])
local exc_string = ARGV[5]
if ARGV[8] ~= '' then exc_string = ARGV[8] end
if ARGV[8] == '' and lost < tonumber(ARGV[4]) then
  redis.call('HSET', key, 'status', QUEUED, 'enqueued_at', now_stamp)
  redis.call('SADD', QUEUES_KEY, KEYS[2])
  redis.call('LPUSH', KEYS[2], job_id)
  return '{Recovery.REQUEUED.value}'
end
local ttl = tonumber(ARGV[6])
redis.call('HSET', key, 'status', FAILED, 'ended_at', now_stamp)
if ttl > 0 then redis.call('EXPIRE', key, ARGV[6]) end
local score = now + ttl
if ttl < 0 then score = ttl end  -- RQ's raw negative score: kept forever, as the job hash is
redis.call('ZADD', KEYS[3], score, job_id)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '10', '*', 'type', '2', 'worker_name', '',
           'exc_string', exc_string, 'execution_id', exec_id)
if ARGV[9] ~= '' then redis.call('EXPIRE', KEYS[4], ARGV[9]) end
release_dependents(job_id, FAILED, now_stamp)
return '{Recovery.FAILED.value}'
"""
)

# KEYS: scheduler hash, then per queue i of n: lock key, scheduled registry, queue key.
# ARGV: n, scheduler name, lock ttl, now (epoch), now stamp, hostname, pid, queue names (comma).
# RQ's scheduler-lock protocol (docs/PROTOCOL.md §5.10): a lock absent is taken, one we hold is
# refreshed, anyone else's is left alone. For each queue we hold, due jobs are promoted to the
# queue (front if they asked for it) and removed from the scheduled registry - ids whose hash is
# gone (or is not a hash) are dropped, as RQ does. Returns, per queue, {held (0/1), promoted, dropped}.
SCHEDULER_TICK = (
    _LUA_PREFIXES
    + """
local n, name, ttl, now, now_stamp = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
redis.call('HSET', KEYS[1], 'name', name, 'hostname', ARGV[6], 'pid', ARGV[7], 'queues', ARGV[8],
           'last_heartbeat', now_stamp)
redis.call('HSETNX', KEYS[1], 'created_at', now_stamp)
redis.call('EXPIRE', KEYS[1], ttl)
local report = {}
for i = 1, n do
  local lock, scheduled, queue = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local owner = redis.call('GET', lock)
  local held = 0
  if not owner then
    redis.call('SET', lock, name, 'EX', ttl)
    held = 1
  elseif owner == name then
    redis.call('EXPIRE', lock, ttl)
    held = 1
  end
  local promoted, dropped = 0, 0
  if held == 1 then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', scheduled, 0, now, 'LIMIT', 0, 1000)) do
      local key = JOB_PREFIX .. id
      if is_a(key, 'hash') then
        local f = redis.call('HMGET', key, 'enqueue_at_front', 'enqueue_at_front_on_retry')
        redis.call('HSET', key, 'status', QUEUED, 'enqueued_at', now_stamp)
        redis.call('SADD', QUEUES_KEY, queue)
        if f[1] == '1' or f[2] == '1' then redis.call('LPUSH', queue, id) else redis.call('RPUSH', queue, id) end
        promoted = promoted + 1
      else
        dropped = dropped + 1
      end
      redis.call('ZREM', scheduled, id)
    end
  end
  table.insert(report, {held, promoted, dropped})
end
return report
"""
)

# KEYS: scheduler hash, lock keys. ARGV: scheduler name. Releases the locks this scheduler holds.
SCHEDULER_RELEASE = """
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: claimers zset of a queue, the queue key, claim lists 1..m (of the workers named in ARGV).
# ARGV: now (epoch), '1' to take them whatever their deadline (the workers are known dead or are
#       stopping), a deadline to leave them at instead of removing them ('' for none), then the m
#       worker names. The ids in each claim list whose owner's deadline has passed (or who holds
#       none: a list nobody renews) go back to the front of the queue, in order, and the owner
#       leaves the zset - or stays until the deadline given: a worker that stops puts its claims
#       back itself, and anything Redis hands its closing waits is swept up by the others then.
#       The jobs were never started: their hashes still say queued (one canceled meanwhile is
#       dropped, see _LUA_RETURN_CLAIM_LIST). Returns how many ids went back.
RECOVER_CLAIMS = (
    _LUA_PREFIXES
    + _LUA_RETURN_CLAIM_LIST
    + """
local now, forced, linger, moved = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3], 0
for i = 3, #KEYS do
  local name = ARGV[i + 1]
  local deadline = redis.call('ZSCORE', KEYS[1], name)
  if forced or not deadline or tonumber(deadline) <= now then
    moved = moved + return_claim_list(KEYS[i], KEYS[2])
    if linger == '' then redis.call('ZREM', KEYS[1], name) else redis.call('ZADD', KEYS[1], linger, name) end
  end
end
return moved
"""
)

# KEYS: intermediate list, queue key, job key. ARGV: job id, now stamp.
# An id an RQ worker moved to its intermediate list and never recorded as started (it died in
# between): back to the front of its queue - only if we are the one who removed it.
REQUEUE_FROM_INTERMEDIATE = (
    _LUA_PREFIXES
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if not is_a(KEYS[3], 'hash') then return 0 end
redis.call('HSET', KEYS[3], 'status', QUEUED, 'enqueued_at', ARGV[2])
redis.call('SADD', QUEUES_KEY, KEYS[2])
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"""
)
