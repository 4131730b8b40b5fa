"""Job records in Redis: shared by web replicas and workers on other machines.

A job is a hash ``<ns>:job:<id>`` with its inputs beside it; ``<ns>:running``
holds the ids a worker is running (the stale-job sweep reads it) and
``<ns>:finished`` the finished ones by finish time (retention). Every state
change is one Lua script, so it is atomic however many processes race.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import redis

from jobs.records import Created, Job, now

_INT = ("total", "batch_size", "done", "computed", "attempt")
_FLOAT = ("created_at", "started_at", "finished_at", "heartbeat_at")

# KEYS: job hash, inputs, idempotency key (or ""); ARGV: job id, inputs JSON, then field/value pairs.
_CREATE = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[2])
return false
"""

# KEYS: job hash, running set; ARGV: id, now.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return false end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
if redis.call('HGET', KEYS[1], 'started_at') == '' then redis.call('HSET', KEYS[1], 'started_at', ARGV[2]) end
redis.call('HSET', KEYS[1], 'status', 'running', 'heartbeat_at', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return attempt
"""

# KEYS: job hash, running set, finished zset, inputs; ARGV: id, attempt, action, now, values...
_OWNED = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then
  return 0
end
local action = ARGV[3]
if action == 'progress' then
  redis.call('HSET', KEYS[1], 'done', ARGV[5], 'heartbeat_at', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'computed', ARGV[6])
elseif action == 'heartbeat' then
  redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[4])
elseif action == 'finish' then
  redis.call('HSET', KEYS[1], 'status', ARGV[5], 'finished_at', ARGV[4], 'error_code', ARGV[6], 'error_message', ARGV[7])
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  redis.call('DEL', KEYS[4])
elseif action == 'release' then
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 1
"""

# KEYS: job hash, running set, finished zset, inputs; ARGV: id, now.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  redis.call('DEL', KEYS[4])
end
return status
"""

# KEYS: job hash, running set, finished zset; ARGV: id, cutoff, max attempts, now.
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  redis.call('SREM', KEYS[2], ARGV[1])
  return false
end
if tonumber(redis.call('HGET', KEYS[1], 'heartbeat_at')) >= tonumber(ARGV[2]) then return false end
redis.call('SREM', KEYS[2], ARGV[1])
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
if attempt >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[4], 'error_code', 'worker_lost',
    'error_message', 'the worker running this job stopped answering, ' .. attempt .. ' time(s)')
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'queued')
return 'requeued'
"""


class RedisJobStore:
    """Job records under the ``namespace`` prefix of one Redis database."""

    def __init__(self, url: str, namespace: str = "serve-http") -> None:
        # redis-py's pool reconnects in a forked child by itself.
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.ns = namespace
        self._create = self.redis.register_script(_CREATE)
        self._claim = self.redis.register_script(_CLAIM)
        self._owned = self.redis.register_script(_OWNED)
        self._cancel = self.redis.register_script(_CANCEL)
        self._requeue = self.redis.register_script(_REQUEUE)

    def _key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    @property
    def _running(self) -> str:
        return f"{self.ns}:running"

    @property
    def _finished(self) -> str:
        return f"{self.ns}:finished"

    def _idempotency(self, key: str | None) -> str:
        return f"{self.ns}:idempotency:{key}" if key is not None else ""

    @staticmethod
    def _encode(job: Job) -> list[str]:
        flat: list[str] = []
        for name, value in job.as_dict().items():
            if name == "parameters":
                value = json.dumps(value)
            flat += [name, "" if value is None else str(value)]
        return flat

    @staticmethod
    def _decode(values: dict[str, str]) -> Job:
        record: dict[str, Any] = {}
        for name, value in values.items():
            if name == "parameters":
                record[name] = json.loads(value)
            elif name in _INT:
                record[name] = int(value)
            elif name in _FLOAT:
                record[name] = float(value) if value != "" else None
            else:
                record[name] = value if value != "" or name == "body_digest" else None
        return Job(**record)

    def create(self, job: Job, inputs: Sequence[Any]) -> Created:
        existing = self._create(
            keys=[self._key(job.id), self._key(job.id) + ":inputs", self._idempotency(job.idempotency_key)],
            args=[job.id, json.dumps(list(inputs)), *self._encode(job)],
        )
        if existing:
            previous = self.get(existing)
            if previous is not None:
                return Created(previous, created=False)
        return Created(job, created=True)

    def get(self, job_id: str) -> Job | None:
        values = self.redis.hgetall(self._key(job_id))
        return self._decode(values) if values else None

    def inputs(self, job_id: str) -> list[Any]:
        data = self.redis.get(self._key(job_id) + ":inputs")
        return json.loads(data) if data else []

    def claim(self, job_id: str) -> int | None:
        attempt = self._claim(keys=[self._key(job_id), self._running], args=[job_id, repr(now())])
        return int(attempt) if attempt else None

    def _owned_call(self, job_id: str, attempt: int, action: str, *values: Any) -> bool:
        keys = [self._key(job_id), self._running, self._finished, self._key(job_id) + ":inputs"]
        args = [job_id, attempt, action, repr(now()), *("" if v is None else v for v in values)]
        return bool(self._owned(keys=keys, args=args))

    def progress(self, job_id: str, attempt: int, done: int, computed: int) -> bool:
        return self._owned_call(job_id, attempt, "progress", done, computed)

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        return self._owned_call(job_id, attempt, "heartbeat")

    def finish(self, job_id: str, attempt: int, status: str, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        return self._owned_call(job_id, attempt, "finish", status, error_code, error_message)

    def release(self, job_id: str, attempt: int) -> bool:
        return self._owned_call(job_id, attempt, "release")

    def cancel(self, job_id: str) -> Job | None:
        keys = [self._key(job_id), self._running, self._finished, self._key(job_id) + ":inputs"]
        self._cancel(keys=keys, args=[job_id, repr(now())])
        return self.get(job_id)

    def requeue_stale(self, cutoff: float, max_attempts: int) -> tuple[list[str], list[str]]:
        requeued: list[str] = []
        failed: list[str] = []
        for job_id in self.redis.smembers(self._running):
            outcome = self._requeue(
                keys=[self._key(job_id), self._running, self._finished],
                args=[job_id, repr(cutoff), max_attempts, repr(now())],
            )
            if outcome == "requeued":
                requeued.append(job_id)
            elif outcome == "failed":
                failed.append(job_id)
        return requeued, failed

    def discard(self, job_id: str) -> None:
        key = self.redis.hget(self._key(job_id), "idempotency_key")
        pipe = self.redis.pipeline()
        pipe.delete(self._key(job_id), self._key(job_id) + ":inputs")
        if key:
            pipe.delete(self._idempotency(key))
        pipe.srem(self._running, job_id)
        pipe.zrem(self._finished, job_id)
        pipe.execute()

    def purge(self, finished_before: float) -> list[str]:
        expired = self.redis.zrangebyscore(self._finished, "-inf", finished_before)
        for job_id in expired:
            self.discard(job_id)
        return list(expired)
