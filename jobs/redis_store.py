"""Job records in Redis: shared by web replicas and workers on other machines.

A job is a hash ``<ns>:job:<id>`` with its inputs beside it; ``<ns>:running``
holds the ids of running jobs; each shard of a job is a hash
``<ns>:job:<id>:shard:<i>`` (the join is the last), its inputs a field of
``<ns>:job:<id>:inputs``, and ``<ns>:leases`` holds the running shards by
heartbeat (the stale-shard sweep reads it) and
``<ns>:finished`` the finished ones by finish time (retention). Every state
change is one Lua script, so it is atomic however many processes race, and
each one moves the job between the per-status counters of the ``<ns>:counts``
hash, so that counting jobs by status is one HGETALL, not a scan;
``<ns>:queued`` holds the queued ids by creation time, so that the active
jobs (``active``: queued and running) are read without a scan of the retained ones.
``<ns>:workers`` holds each running job worker's last heartbeat (a sorted set
by time), ``<ns>:workers:stopped`` the same of the workers that stopped on purpose.

A Redis that keeps nothing on disk loses every record on a restart, while the
results of those jobs stay in their storage: :meth:`RedisJobStore.check_durable`
refuses such a server unless ``SERVE_JOBS_ALLOW_VOLATILE`` says otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields
from typing import Any, Sequence

import orjson
import redis

from jobs.records import LOST, STATES, WORKER_KEPT_S, Created, Job, ModelQueue, Shard, WorkerBeats, now
from serving.errors import JobBackendVolatile

log = logging.getLogger("jobs.redis_store")

# A refusal is asked again after this long: a server fixed with CONFIG SET is
# accepted without restarting the processes that refused it.
RECHECK_REFUSAL_S = 5.0

_INT = ("total", "batch_size", "done", "computed", "attempt", "steps_total", "steps_done", "number", "shard_size",
        "shards_done")
_KEPT = {f.name for f in fields(Job)}  # the hash's other fields are the scripts' own (shard_count ...)
_JSON = ("parameters", "summary", "trace_context")
_FLOAT = ("created_at", "started_at", "finished_at", "heartbeat_at")

# Every script derives a shard's key from its job's (``<job key>:shard:<i>``)
# and a lease's member from the job id (``<id>:<i>``).
#
# stop_shards(job key, leases, id, now): the shards of a job that finished and
# have not are cancelled (a runner's next save fails), their leases dropped.
_STOP_SHARDS = """
local function stop_shards(job, leases, id, t)
  local n = tonumber(redis.call('HGET', job, 'shard_count') or '0')
  for i = 0, n do
    local key = job .. ':shard:' .. i
    local status = redis.call('HGET', key, 'status')
    if status == 'queued' or status == 'running' or status == 'waiting' then
      redis.call('HSET', key, 'status', 'cancelled', 'finished_at', t)
      redis.call('ZREM', leases, id .. ':' .. i)
    end
  end
end
"""

# queued_again(job key, running set, queued zset, counts, id): a running job
# none of whose shards runs any more waits for a worker: queued.
_QUEUED_AGAIN = """
local function queued_again(job, running, queued, counts, id)
  if redis.call('HINCRBY', job, 'shards_running', -1) > 0 then return end
  redis.call('HSET', job, 'status', 'queued')
  redis.call('SREM', running, id)
  redis.call('ZADD', queued, redis.call('HGET', job, 'created_at'), id)
  redis.call('HINCRBY', counts, 'running', -1)
  redis.call('HINCRBY', counts, 'queued', 1)
end
"""

# KEYS: job hash, inputs, idempotency key (or ""), counts, number counter, number prefix, queued zset;
# ARGV: job id, created_at, data shards n, then n shard inputs (JSON), then field/value pairs.
# Returns the earlier job's id (a replayed idempotency key) or the new job's number.
_CREATE = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
  redis.call('SET', KEYS[3], ARGV[1])
end
local n = tonumber(ARGV[3])
local number = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 4 + n))
redis.call('HSET', KEYS[1], 'number', number, 'shard_count', n, 'shards_running', 0)
redis.call('SET', KEYS[6] .. number, ARGV[1])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[2], i, ARGV[4 + i])
  redis.call('HSET', KEYS[1] .. ':shard:' .. i, 'status', 'queued', 'attempt', 0, 'done', 0, 'steps', 0)
end
redis.call('HSET', KEYS[1] .. ':shard:' .. n, 'status', 'waiting', 'attempt', 0, 'done', 0, 'steps', 0)
redis.call('HINCRBY', KEYS[4], 'queued', 1)
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1])
return number
"""

# KEYS: job hash, shard hash, running set, counts, queued zset, leases; ARGV: id, index, now, worker, lease.
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return false end
if redis.call('HGET', KEYS[2], 'status') ~= 'queued' then return false end
local attempt = redis.call('HINCRBY', KEYS[2], 'attempt', 1)
redis.call('HSET', KEYS[2], 'status', 'running', 'worker', ARGV[4], 'heartbeat_at', ARGV[3])
if not redis.call('HGET', KEYS[2], 'started_at') then redis.call('HSET', KEYS[2], 'started_at', ARGV[3]) end
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[5])
redis.call('HINCRBY', KEYS[1], 'shards_running', 1)
if status == 'queued' then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'queued', -1)
  redis.call('HINCRBY', KEYS[4], 'running', 1)
  redis.call('HSET', KEYS[1], 'status', 'running')
  if redis.call('HGET', KEYS[1], 'started_at') == '' then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
end
if tonumber(redis.call('HGET', KEYS[1], 'attempt')) < attempt then redis.call('HSET', KEYS[1], 'attempt', attempt) end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[3])
return attempt
"""

# KEYS: job hash, shard hash, running set, finished zset, inputs, counts, queued zset, leases;
# ARGV: id, index, attempt, action, now, lease, values...
_OWNED = _STOP_SHARDS + _QUEUED_AGAIN + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[2], 'status') ~= 'running'
    or redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[3] then
  return false
end
local action, t = ARGV[4], ARGV[5]
if action == 'progress' then  -- done, computed, steps
  local done, steps = tonumber(redis.call('HGET', KEYS[2], 'done')), tonumber(redis.call('HGET', KEYS[2], 'steps'))
  redis.call('HSET', KEYS[2], 'done', ARGV[7], 'steps', ARGV[9], 'heartbeat_at', t)
  redis.call('HINCRBY', KEYS[1], 'done', tonumber(ARGV[7]) - done)
  redis.call('HINCRBY', KEYS[1], 'steps_done', tonumber(ARGV[9]) - steps)
  redis.call('HINCRBY', KEYS[1], 'computed', ARGV[8])
  redis.call('HSET', KEYS[1], 'heartbeat_at', t)
  redis.call('ZADD', KEYS[8], t, ARGV[6])
elseif action == 'heartbeat' then
  redis.call('HSET', KEYS[2], 'heartbeat_at', t)
  redis.call('HSET', KEYS[1], 'heartbeat_at', t)
  redis.call('ZADD', KEYS[8], t, ARGV[6])
elseif action == 'complete' then  -- computed
  local total, size = tonumber(redis.call('HGET', KEYS[1], 'total')), tonumber(redis.call('HGET', KEYS[1], 'shard_size'))
  if size == 0 then size = total end
  local lo = tonumber(ARGV[2]) * size
  local inputs = math.min(lo + size, total) - lo
  local done = tonumber(redis.call('HGET', KEYS[2], 'done'))
  redis.call('HSET', KEYS[2], 'status', 'succeeded', 'done', inputs, 'heartbeat_at', t, 'finished_at', t)
  redis.call('ZREM', KEYS[8], ARGV[6])
  redis.call('HDEL', KEYS[5], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'done', inputs - done)
  redis.call('HINCRBY', KEYS[1], 'computed', ARGV[7])
  redis.call('HSET', KEYS[1], 'heartbeat_at', t)
  redis.call('HINCRBY', KEYS[1], 'shards_running', -1)
  local n = tonumber(redis.call('HGET', KEYS[1], 'shard_count'))
  if redis.call('HINCRBY', KEYS[1], 'shards_done', 1) < n then return {1} end
  local join = KEYS[1] .. ':shard:' .. n
  local attempt = redis.call('HINCRBY', join, 'attempt', 1)
  redis.call('HSET', join, 'status', 'running', 'worker', redis.call('HGET', KEYS[2], 'worker'),
    'heartbeat_at', t, 'started_at', t)
  redis.call('ZADD', KEYS[8], t, ARGV[1] .. ':' .. n)
  redis.call('HINCRBY', KEYS[1], 'shards_running', 1)
  return {1, attempt}
elseif action == 'finish' then  -- status, error code, error message
  redis.call('HSET', KEYS[1], 'status', ARGV[7], 'finished_at', t, 'error_code', ARGV[8], 'error_message', ARGV[9])
  redis.call('HSET', KEYS[2], 'status', ARGV[7], 'finished_at', t)
  redis.call('ZREM', KEYS[8], ARGV[6])
  stop_shards(KEYS[1], KEYS[8], ARGV[1], t)
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], t, ARGV[1])
  redis.call('DEL', KEYS[5])
  redis.call('HINCRBY', KEYS[6], 'running', -1)
  redis.call('HINCRBY', KEYS[6], ARGV[7], 1)
elseif action == 'release' then
  redis.call('HSET', KEYS[2], 'status', 'queued')
  redis.call('ZREM', KEYS[8], ARGV[6])
  queued_again(KEYS[1], KEYS[3], KEYS[7], KEYS[6], ARGV[1])
end
return {1}
"""

# KEYS: job hash, running set, finished zset, inputs, counts, queued zset, leases; ARGV: id, now.
_CANCEL = _STOP_SHARDS + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
  stop_shards(KEYS[1], KEYS[7], ARGV[1], ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  redis.call('DEL', KEYS[4])
  redis.call('HINCRBY', KEYS[5], status, -1)
  redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
end
return status
"""

# KEYS: job hash, shard hash, running set, finished zset, counts, queued zset, leases, inputs;
# ARGV: lease, id, index, cutoff, max attempts, now.
_REQUEUE = _STOP_SHARDS + _QUEUED_AGAIN + """
local status, shard = redis.call('HGET', KEYS[1], 'status'), redis.call('HGET', KEYS[2], 'status')
if status ~= 'running' or shard ~= 'running' then
  redis.call('ZREM', KEYS[7], ARGV[1])
  if shard == 'running' then redis.call('HSET', KEYS[2], 'status', 'cancelled') end
  return false
end
if tonumber(redis.call('HGET', KEYS[2], 'heartbeat_at')) >= tonumber(ARGV[4]) then return false end
redis.call('ZREM', KEYS[7], ARGV[1])
local attempt = tonumber(redis.call('HGET', KEYS[2], 'attempt'))
local join = tonumber(ARGV[3]) == tonumber(redis.call('HGET', KEYS[1], 'shard_count'))
if attempt >= tonumber(ARGV[5]) and (join or redis.call('HGET', KEYS[1], 'on_error') ~= 'skip') then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[6], 'error_code', 'worker_lost',
    'error_message', 'the worker running shard ' .. ARGV[3] .. ' of this job stopped answering, ' .. attempt .. ' time(s)')
  redis.call('HSET', KEYS[2], 'status', 'failed', 'finished_at', ARGV[6])
  stop_shards(KEYS[1], KEYS[7], ARGV[2], ARGV[6])
  redis.call('SREM', KEYS[3], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[2])
  redis.call('DEL', KEYS[8])
  redis.call('HINCRBY', KEYS[5], 'running', -1)
  redis.call('HINCRBY', KEYS[5], 'failed', 1)
  return 'failed'
end
redis.call('HSET', KEYS[2], 'status', 'queued')
queued_again(KEYS[1], KEYS[3], KEYS[6], KEYS[5], ARGV[2])
return 'requeued'
"""

# KEYS: job hash, inputs, running set, finished zset, counts, queued zset; ARGV: id, idempotency key prefix, number prefix.
_DISCARD = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local key = redis.call('HGET', KEYS[1], 'idempotency_key')
if key and key ~= '' then redis.call('DEL', ARGV[2] .. key) end
local number = redis.call('HGET', KEYS[1], 'number')
if number then redis.call('DEL', ARGV[3] .. number) end
local n = tonumber(redis.call('HGET', KEYS[1], 'shard_count') or '0')
for i = 0, n do redis.call('DEL', KEYS[1] .. ':shard:' .. i) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('HINCRBY', KEYS[5], status, -1)
return status
"""


class RedisJobStore:
    """Job records under the ``namespace`` prefix of one Redis database."""

    def __init__(self, url: str, namespace: str = "serve-http", allow_volatile: bool = False) -> None:
        # redis-py's pool reconnects in a forked child by itself. The timeouts
        # keep a probe (/readyz, /metrics) from hanging on a server that does
        # not answer; no command here blocks on the server's side.
        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10)
        self.ns = namespace
        self.allow_volatile = allow_volatile
        self._durable: tuple[str | None, float] | None = None  # (refusal or None, when asked)
        self._create = self.redis.register_script(_CREATE)
        self._claim = self.redis.register_script(_CLAIM)
        self._owned = self.redis.register_script(_OWNED)
        self._cancel = self.redis.register_script(_CANCEL)
        self._requeue = self.redis.register_script(_REQUEUE)
        self._discard = self.redis.register_script(_DISCARD)

    def _key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    @property
    def _running(self) -> str:
        return f"{self.ns}:running"

    @property
    def _finished(self) -> str:
        return f"{self.ns}:finished"

    @property
    def _queued(self) -> str:
        return f"{self.ns}:queued"

    @property
    def _leases(self) -> str:
        """Running shards (``<id>:<index>``) by their last heartbeat: what the stale sweep reads."""
        return f"{self.ns}:leases"

    def _shard(self, job_id: str, index: int) -> str:
        return f"{self._key(job_id)}:shard:{index}"

    @property
    def _counts(self) -> str:
        return f"{self.ns}:counts"

    @property
    def _workers(self) -> str:
        return f"{self.ns}:workers"

    def _idempotency(self, key: str | None) -> str:
        return f"{self.ns}:idempotency:{key}" if key is not None else ""

    @staticmethod
    def _encode(job: Job) -> list[str]:
        flat: list[str] = []
        for name, value in job.as_dict().items():
            if name in _JSON and value is not None:
                value = json.dumps(value)
            flat += [name, "" if value is None else str(value)]
        return flat

    @staticmethod
    def _decode(values: dict[str, str]) -> Job:
        record: dict[str, Any] = {}
        for name, value in values.items():
            if name not in _KEPT:
                continue
            if name in _JSON:
                record[name] = json.loads(value) if value != "" else None
            elif name in _INT:
                record[name] = int(value)
            elif name in _FLOAT:
                record[name] = float(value) if value != "" else None
            else:
                record[name] = value if value != "" or name == "body_digest" else None
        return Job(**record)

    @property
    def _numbers(self) -> str:
        return f"{self.ns}:number:"

    def create(self, job: Job, shards: Sequence[Any]) -> Created:
        outcome = self._create(
            keys=[self._key(job.id), self._key(job.id) + ":inputs", self._idempotency(job.idempotency_key), self._counts,
                  f"{self.ns}:numbers", self._numbers, self._queued],
            args=[job.id, repr(job.created_at), len(shards), *map(orjson.dumps, shards), *self._encode(job)],
        )
        if isinstance(outcome, str):
            previous = self.get(outcome)
            if previous is not None:
                return Created(previous, created=False)
        job.number = int(outcome)
        return Created(job, created=True)

    def get(self, job_id: str) -> Job | None:
        values = self.redis.hgetall(self._key(job_id))
        return self._decode(values) if values else None

    def by_number(self, number: int) -> str | None:
        return self.redis.get(f"{self._numbers}{number}")

    def shard_inputs(self, job_id: str, index: int) -> Any:
        data = self.redis.hget(self._key(job_id) + ":inputs", str(index))
        return orjson.loads(data) if data else None

    def shards(self, job_id: str) -> list[Shard]:
        count = self.redis.hget(self._key(job_id), "shard_count")
        if count is None:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for index in range(int(count) + 1):
            pipe.hgetall(self._shard(job_id, index))
        found = []
        for index, values in enumerate(pipe.execute()):
            times = {name: float(values[name]) if values.get(name) else None
                     for name in ("heartbeat_at", "started_at", "finished_at")}
            found.append(Shard(job_id, index, values["status"], int(values["attempt"]), values.get("worker"),
                               int(values["done"]), int(values["steps"]), **times))
        return found

    def claim(self, job_id: str, index: int, worker: str) -> int | None:
        attempt = self._claim(
            keys=[self._key(job_id), self._shard(job_id, index), self._running, self._counts, self._queued, self._leases],
            args=[job_id, index, repr(now()), worker, f"{job_id}:{index}"],
        )
        return int(attempt) if attempt else None

    def _owned_call(self, job_id: str, index: int, attempt: int, action: str, *values: Any) -> list | None:
        keys = [self._key(job_id), self._shard(job_id, index), self._running, self._finished,
                self._key(job_id) + ":inputs", self._counts, self._queued, self._leases]
        args = [job_id, index, attempt, action, repr(now()), f"{job_id}:{index}",
                *("" if v is None else v for v in values)]
        return self._owned(keys=keys, args=args) or None

    def progress(self, job_id: str, index: int, attempt: int, done: int, computed: int, steps: int = 0) -> bool:
        return self._owned_call(job_id, index, attempt, "progress", done, computed, steps) is not None

    def heartbeat(self, job_id: str, index: int, attempt: int) -> bool:
        return self._owned_call(job_id, index, attempt, "heartbeat") is not None

    def complete(self, job_id: str, index: int, attempt: int, computed: int) -> tuple[bool, int | None]:
        outcome = self._owned_call(job_id, index, attempt, "complete", computed)
        if outcome is None:
            return False, None
        return True, (int(outcome[1]) if len(outcome) > 1 else None)

    def finish(self, job_id: str, index: int, attempt: int, status: str, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        return self._owned_call(job_id, index, attempt, "finish", status, error_code, error_message) is not None

    def release(self, job_id: str, index: int, attempt: int) -> bool:
        return self._owned_call(job_id, index, attempt, "release") is not None

    def cancel(self, job_id: str) -> Job | None:
        keys = [self._key(job_id), self._running, self._finished, self._key(job_id) + ":inputs", self._counts,
                self._queued, self._leases]
        self._cancel(keys=keys, args=[job_id, repr(now())])
        return self.get(job_id)

    def requeue_stale(self, cutoff: float, max_attempts: int) -> tuple[list[tuple[str, int]], list[str]]:
        requeued: list[tuple[str, int]] = []
        failed: list[str] = []
        for lease in self.redis.zrangebyscore(self._leases, "-inf", cutoff):
            job_id, index = lease.rsplit(":", 1)
            outcome = self._requeue(
                keys=[self._key(job_id), self._shard(job_id, int(index)), self._running, self._finished, self._counts,
                      self._queued, self._leases, self._key(job_id) + ":inputs"],
                args=[lease, job_id, index, repr(cutoff), max_attempts, repr(now())],
            )
            if outcome == "requeued":
                requeued.append((job_id, int(index)))
            elif outcome == "failed":
                failed.append(job_id)
        return requeued, failed

    def discard(self, job_id: str) -> None:
        self._discard(
            keys=[self._key(job_id), self._key(job_id) + ":inputs", self._running, self._finished, self._counts,
                  self._queued],
            args=[job_id, self._idempotency(""), self._numbers],
        )

    def purge(self, finished_before: float) -> list[str]:
        expired = self.redis.zrangebyscore(self._finished, "-inf", finished_before)
        for job_id in expired:
            self.discard(job_id)
        return list(expired)

    def known(self, job_ids: Sequence[str]) -> set[str]:
        ids = list(job_ids)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(self._key(job_id))
        return {job_id for job_id, found in zip(ids, pipe.execute()) if found}

    def counts(self) -> dict[str, int]:
        # One HGETALL of the counters the scripts keep; never below 0, should
        # a record have gone another way (a key evicted under maxmemory).
        stored = self.redis.hgetall(self._counts)
        return {name: max(0, int(stored.get(name, 0))) for name in (*STATES, LOST)}

    def active(self) -> dict[str, ModelQueue]:
        pipe = self.redis.pipeline()  # MULTI: no job in both or neither
        pipe.zrange(self._queued, 0, -1)
        pipe.smembers(self._running)
        queued, running = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for job_id in dict.fromkeys([*queued, *running]):
            pipe.hmget(self._key(job_id), "model", "status", "total", "done", "created_at")
        found: dict[str, ModelQueue] = {}
        for model, status, total, done, created_at in pipe.execute():
            if model is not None:  # a job that went on meanwhile counts where its record says
                found.setdefault(model, ModelQueue()).add(status, int(total) - int(done), float(created_at))
        return found

    def set_lost(self, count: int) -> None:
        self.redis.hset(self._counts, LOST, count)

    def beat(self, worker: str) -> None:
        t = now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self._workers, {worker: t})
        pipe.zrem(self._workers + ":stopped", worker)
        for key in (self._workers, self._workers + ":stopped"):
            pipe.zremrangebyscore(key, "-inf", t - WORKER_KEPT_S)
        pipe.execute()

    def leave(self, worker: str) -> None:
        pipe = self.redis.pipeline()  # MULTI: never counted in neither set
        pipe.zrem(self._workers, worker)
        pipe.zadd(self._workers + ":stopped", {worker: now()})
        pipe.execute()

    def workers(self, alive_after: float) -> WorkerBeats:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self._workers, f"({alive_after!r}", "+inf")
        pipe.zrevrange(self._workers, 0, 0, withscores=True)
        pipe.zrevrange(self._workers + ":stopped", 0, 0, withscores=True)
        alive, running, stopped = pipe.execute()
        beats = [newest[0][1] for newest in (running, stopped) if newest]
        return WorkerBeats(alive=int(alive), last=max(beats) if beats else None)

    def check_durable(self) -> None:
        """Refuse a server with neither AOF nor RDB snapshots (``CONFIG GET
        appendonly`` no and ``save`` empty): once per process when it passes,
        again every few seconds while it does not. A server whose CONFIG is
        renamed or denied (managed Redis) is trusted, with a warning."""
        if self._durable is not None:
            refusal, asked = self._durable
            if refusal is None or time.monotonic() - asked < RECHECK_REFUSAL_S:
                if refusal is not None:
                    raise JobBackendVolatile(refusal)
                return
        refusal = self._volatile_reason()
        self._durable = (refusal, time.monotonic())
        if refusal is not None:
            raise JobBackendVolatile(refusal)

    def _volatile_reason(self) -> str | None:
        try:
            appendonly = self.redis.config_get("appendonly").get("appendonly", "")
            save = self.redis.config_get("save").get("save", "")
        except redis.ResponseError as error:  # CONFIG renamed (rename-command) or denied by an ACL
            log.warning("cannot ask Redis at %s whether it keeps the job records on disk (%s); "
                        "make sure it has AOF or RDB persistence", self._where(), error)
            return None
        if appendonly == "yes" or save.strip():
            return None
        if self.allow_volatile:
            log.warning("Redis at %s keeps the job records in memory only (appendonly no, save \"\"): "
                        "accepted because SERVE_JOBS_ALLOW_VOLATILE=true; a Redis restart loses every job", self._where())
            return None
        return (f"Redis at {self._where()} keeps the job records in memory only (appendonly no, save \"\"): "
                "a restart would lose every job. Turn on AOF (appendonly yes) or RDB snapshots (e.g. save 60 1000) "
                "on it, or set SERVE_JOBS_ALLOW_VOLATILE=true to accept the loss")

    def _where(self) -> str:
        """host:port/db, never the URL (it may carry a password)."""
        kwargs = self.redis.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
