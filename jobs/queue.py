"""The job queue: huey, on SQLite (embedded) or Redis (scale-out).

Only a job id and a shard's index travel through the queue, one message per
shard; the record and the inputs live in the job store. huey moves ids from web processes to worker processes and runs the
worker pool; retries after a lost worker are the job store's business (huey
drops a message once a worker took it, so a worker killed mid-job would
otherwise lose it), see :mod:`jobs.maintenance`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import redis
from huey import Huey, RedisHuey, SqliteHuey
from huey.storage import RedisStorage

QUEUE_NAME = "serve-http-jobs"

_runner: Callable[[str, int], None] | None = None


def install_runner(runner: Callable[[str, int], None]) -> None:
    """Make this process (and the workers it forks) able to run jobs."""
    global _runner
    _runner = runner


def run_job(job_id: str, shard: int = 0) -> None:
    """The huey task: run one shard of a job in this worker process."""
    if _runner is None:
        raise RuntimeError("this process has no job runner (start it with `python -m jobs.worker`)")
    _runner(job_id, shard)


def build_huey(redis_url: str, jobs_dir: Path, immediate: bool = False) -> Huey:
    if immediate:  # tests: tasks run inline, in memory
        return Huey(QUEUE_NAME, immediate=True, results=False)
    if redis_url:
        # Timeouts above huey's 1 s blocking read: a server that stops answering
        # fails a probe (/readyz, /metrics) instead of hanging it.
        pool = redis.ConnectionPool.from_url(redis_url, socket_connect_timeout=5, socket_timeout=10)
        return RedisHuey(QUEUE_NAME, connection_pool=pool, results=False)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(QUEUE_NAME, filename=str(jobs_dir / "queue.db"), results=False)


class JobQueue:
    """Enqueues job ids. The huey instance is made on first use in each
    process, so nothing (no SQLite handle, no lock) crosses Gunicorn's fork."""

    def __init__(self, redis_url: str, jobs_dir: Path, immediate: bool = False) -> None:
        self.redis_url = redis_url
        self.jobs_dir = Path(jobs_dir)
        self.immediate = immediate
        self._huey: Huey | None = None
        self._pid = 0
        self._task = None

    @property
    def huey(self) -> Huey:
        if self._huey is None or self._pid != os.getpid():
            self._huey = build_huey(self.redis_url, self.jobs_dir, self.immediate)
            self._task = self._huey.task(name="run_job")(run_job)
            self._pid = os.getpid()
        return self._huey

    def enqueue(self, job_id: str, shard: int = 0) -> None:
        self.huey
        assert self._task is not None
        self._task(job_id, shard)

    def enqueue_shards(self, job_id: str, shards: int) -> None:
        """One message per data shard, in order; in one round trip on Redis."""
        huey = self.huey
        assert self._task is not None
        if isinstance(huey.storage, RedisStorage):
            pipe = huey.storage.conn.pipeline(transaction=False)
            for index in range(shards):
                pipe.lpush(huey.storage.queue_key, huey.serialize_task(self._task.s(job_id, index)))
            pipe.execute()
            return
        for index in range(shards):
            self._task(job_id, index)

    def depth(self) -> int:
        """Messages waiting for a worker: job ids, and scheduled runs that are due.
        One query (SQLite ``count``, Redis ``LLEN``)."""
        return self.huey.pending_count()
