"""Job records in SQLite: the embedded default, one machine, no extra server."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson

from jobs.records import (
    ACTIVE, CANCELLED, FAILED, LOST, ON_ERROR_SKIP, QUEUED, RUNNING, STATES, SUCCEEDED, WAITING, WORKER_KEPT_S,
    Created, Job, ModelQueue, Shard, WorkerBeats, now, shard_count,
)

_SCHEMA = """
create table if not exists jobs (
    id text primary key,
    model text not null,
    total integer not null,
    batch_size integer not null,
    parameters text not null,
    status text not null,
    done integer not null default 0,
    computed integer not null default 0,
    attempt integer not null default 0,
    created_at real not null,
    started_at real,
    finished_at real,
    heartbeat_at real,
    error_code text,
    error_message text,
    idempotency_key text unique,
    body_digest text not null default '',
    steps_total integer not null default 0,
    steps_done integer not null default 0,
    number integer not null default 0,
    summary text,
    trace_context text,
    shard_size integer not null default 0,
    shards_done integer not null default 0,
    on_error text not null default 'fail',
    inputs_uri text
);
create index if not exists jobs_status on jobs (status, heartbeat_at);
create index if not exists jobs_finished on jobs (finished_at);
create table if not exists job_shards (
    job_id text not null references jobs (id) on delete cascade,
    idx integer not null,
    status text not null,
    attempt integer not null default 0,
    worker text,
    done integer not null default 0,
    steps integer not null default 0,
    heartbeat_at real,
    started_at real,
    finished_at real,
    primary key (job_id, idx)
);
create index if not exists job_shards_status on job_shards (status, heartbeat_at);
create table if not exists shard_inputs (
    job_id text not null references jobs (id) on delete cascade,
    idx integer not null,
    data blob not null,
    primary key (job_id, idx)
);
create table if not exists job_workers (
    id text primary key,
    beat_at real not null,
    stopped integer not null default 0
);
create table if not exists job_stats (
    name text primary key,
    value integer not null
);
"""

_COLUMNS = (
    "id", "model", "total", "batch_size", "parameters", "status", "done", "computed", "attempt",
    "created_at", "started_at", "finished_at", "heartbeat_at", "error_code", "error_message",
    "idempotency_key", "body_digest", "steps_total", "steps_done", "number", "summary",
    "trace_context", "shard_size", "shards_done", "on_error", "inputs_uri",
)
# Columns added since the first release: a jobs.db made before gets them on open.
_ADDED = {
    "steps_total": "integer not null default 0",
    "steps_done": "integer not null default 0",
    "number": "integer not null default 0",
    "summary": "text",
    "trace_context": "text",
    "shard_size": "integer not null default 0",
    "shards_done": "integer not null default 0",
    "on_error": "text not null default 'fail'",
    "inputs_uri": "text",
}


_INHERITED: list[sqlite3.Connection] = []


class SqliteJobStore:
    """A ``jobs`` table in ``<jobs_dir>/jobs.db``; one connection per process and thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    @property
    def _conn(self) -> sqlite3.Connection:
        # A connection must not cross a fork (Gunicorn and huey fork after import).
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            if conn is not None:
                # Inherited from the parent: kept, never closed here (closing a
                # connection made before the fork is what SQLite warns against).
                _INHERITED.append(conn)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One opener at a time, across threads and processes (a web process
            # and a worker starting together): switching a new file to WAL takes
            # a lock SQLite's busy timeout does not wait for ("database is locked").
            with open(self.path.with_name(self.path.name + ".lock"), "a") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("pragma journal_mode=wal")
                conn.execute("pragma synchronous=normal")
                conn.execute("pragma foreign_keys=on")
                conn.executescript(_SCHEMA)
                present = {row["name"] for row in conn.execute("pragma table_info(jobs)")}
                for name, kind in _ADDED.items():
                    if name not in present:
                        conn.execute(f"alter table jobs add column {name} {kind}")
                conn.execute("create index if not exists jobs_number on jobs (number)")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("begin immediate")
        try:
            yield conn
        except BaseException:
            conn.execute("rollback")
            raise
        conn.execute("commit")

    @staticmethod
    def _job(row: sqlite3.Row | None) -> Job | None:
        if row is None:
            return None
        values = dict(row)
        values["parameters"] = json.loads(values["parameters"])
        values["summary"] = json.loads(values["summary"]) if values["summary"] else None
        values["trace_context"] = json.loads(values["trace_context"]) if values["trace_context"] else None
        return Job(**values)

    def create(self, job: Job, shards: Sequence[Any]) -> Created:
        record = job.as_dict()
        record["parameters"] = json.dumps(job.parameters)
        record["summary"] = json.dumps(job.summary) if job.summary is not None else None
        record["trace_context"] = json.dumps(job.trace_context) if job.trace_context else None
        with self._write() as conn:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "select * from jobs where idempotency_key = ?", (job.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return Created(self._job(row), created=False)
            (job.number,) = conn.execute(
                "insert into job_stats (name, value) values ('numbers', 1)"
                " on conflict (name) do update set value = value + 1 returning value"
            ).fetchone()
            record["number"] = job.number
            conn.execute(
                f"insert into jobs ({', '.join(_COLUMNS)}) values ({', '.join('?' for _ in _COLUMNS)})",
                [record[name] for name in _COLUMNS],
            )
            conn.executemany(
                "insert into job_shards (job_id, idx, status) values (?, ?, ?)",
                [(job.id, i, QUEUED if i < len(shards) else WAITING) for i in range(len(shards) + 1)],
            )
            conn.executemany(
                "insert into shard_inputs (job_id, idx, data) values (?, ?, ?)",
                [(job.id, i, orjson.dumps(spec)) for i, spec in enumerate(shards)],
            )
        return Created(job, created=True)

    def get(self, job_id: str) -> Job | None:
        return self._job(self._conn.execute("select * from jobs where id = ?", (job_id,)).fetchone())

    def by_number(self, number: int) -> str | None:
        row = self._conn.execute("select id from jobs where number = ?", (number,)).fetchone()
        return row["id"] if row else None

    def shard_inputs(self, job_id: str, index: int) -> Any:
        row = self._conn.execute(
            "select data from shard_inputs where job_id = ? and idx = ?", (job_id, index)
        ).fetchone()
        return orjson.loads(row["data"]) if row else None

    def shards(self, job_id: str) -> list[Shard]:
        rows = self._conn.execute(
            "select job_id, idx as 'index', status, attempt, worker, done, steps, heartbeat_at, started_at,"
            " finished_at from job_shards where job_id = ? order by idx", (job_id,)
        )
        return [Shard(**dict(row)) for row in rows]

    def claim(self, job_id: str, index: int, worker: str) -> int | None:
        t = now()
        with self._write() as conn:
            job = conn.execute("select status from jobs where id = ?", (job_id,)).fetchone()
            if job is None or job["status"] not in ACTIVE:
                return None
            row = conn.execute(
                "update job_shards set status = ?, attempt = attempt + 1, worker = ?, heartbeat_at = ?,"
                " started_at = coalesce(started_at, ?) where job_id = ? and idx = ? and status = ? returning attempt",
                (RUNNING, worker, t, t, job_id, index, QUEUED),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "update jobs set status = ?, started_at = coalesce(started_at, ?), heartbeat_at = ?,"
                " attempt = max(attempt, ?) where id = ?",
                (RUNNING, t, t, row["attempt"], job_id),
            )
        return row["attempt"]

    def _owned(self, conn: sqlite3.Connection, job_id: str, index: int, attempt: int) -> sqlite3.Row | None:
        """The shard's row if ``attempt`` owns it and its job runs, else None (inside a write)."""
        return conn.execute(
            "select s.done, s.steps from job_shards s join jobs j on j.id = s.job_id"
            " where s.job_id = ? and s.idx = ? and s.attempt = ? and s.status = ? and j.status = ?",
            (job_id, index, attempt, RUNNING, RUNNING),
        ).fetchone()

    def progress(self, job_id: str, index: int, attempt: int, done: int, computed: int, steps: int = 0) -> bool:
        t = now()
        with self._write() as conn:
            shard = self._owned(conn, job_id, index, attempt)
            if shard is None:
                return False
            conn.execute(
                "update job_shards set done = ?, steps = ?, heartbeat_at = ? where job_id = ? and idx = ?",
                (done, steps, t, job_id, index),
            )
            conn.execute(
                "update jobs set done = done + ?, steps_done = steps_done + ?, computed = computed + ?,"
                " heartbeat_at = ? where id = ?",
                (done - shard["done"], steps - shard["steps"], computed, t, job_id),
            )
        return True

    def heartbeat(self, job_id: str, index: int, attempt: int) -> bool:
        t = now()
        with self._write() as conn:
            if self._owned(conn, job_id, index, attempt) is None:
                return False
            conn.execute("update job_shards set heartbeat_at = ? where job_id = ? and idx = ?", (t, job_id, index))
            conn.execute("update jobs set heartbeat_at = ? where id = ?", (t, job_id))
        return True

    def complete(self, job_id: str, index: int, attempt: int, computed: int) -> tuple[bool, int | None]:
        t = now()
        with self._write() as conn:
            shard = self._owned(conn, job_id, index, attempt)
            if shard is None:
                return False, None
            job = self._job(conn.execute("select * from jobs where id = ?", (job_id,)).fetchone())
            lo, hi = job.shard_range(index)
            conn.execute(
                "update job_shards set status = ?, done = ?, heartbeat_at = ?, finished_at = ? where job_id = ? and idx = ?",
                (SUCCEEDED, hi - lo, t, t, job_id, index),
            )
            conn.execute("delete from shard_inputs where job_id = ? and idx = ?", (job_id, index))
            conn.execute(
                "update jobs set done = done + ?, computed = computed + ?, shards_done = shards_done + 1,"
                " heartbeat_at = ? where id = ?",
                (hi - lo - shard["done"], computed, t, job_id),
            )
            if job.shards_done + 1 < job.shards:
                return True, None
            (join,) = conn.execute(
                "update job_shards set status = ?, attempt = attempt + 1, worker = (select worker from job_shards"
                " where job_id = ? and idx = ?), heartbeat_at = ?, started_at = ? where job_id = ? and idx = ?"
                " returning attempt",
                (RUNNING, job_id, index, t, t, job_id, job.shards),
            ).fetchone()
        return True, join

    def finish(self, job_id: str, index: int, attempt: int, status: str, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        t = now()
        with self._write() as conn:
            if self._owned(conn, job_id, index, attempt) is None:
                return False
            conn.execute(
                "update job_shards set status = ?, finished_at = ? where job_id = ? and idx = ?",
                (status, t, job_id, index),
            )
            conn.execute(
                "update jobs set status = ?, finished_at = ?, error_code = ?, error_message = ? where id = ?",
                (status, t, error_code, error_message, job_id),
            )
            self._stop_shards(conn, job_id)
            # A finished job's inputs are never read again.
            conn.execute("delete from shard_inputs where job_id = ?", (job_id,))
        return True

    def release(self, job_id: str, index: int, attempt: int) -> bool:
        with self._write() as conn:
            if self._owned(conn, job_id, index, attempt) is None:
                return False
            conn.execute("update job_shards set status = ? where job_id = ? and idx = ?", (QUEUED, job_id, index))
            self._queued_when_idle(conn, job_id)
        return True

    @staticmethod
    def _queued_when_idle(conn: sqlite3.Connection, job_id: str) -> None:
        """A running job none of whose shards runs is waiting for a worker: queued."""
        conn.execute(
            "update jobs set status = ? where id = ? and status = ? and not exists"
            " (select 1 from job_shards where job_id = ? and status = ?)",
            (QUEUED, job_id, RUNNING, job_id, RUNNING),
        )

    def cancel(self, job_id: str) -> Job | None:
        with self._write() as conn:
            cursor = conn.execute(
                f"update jobs set status = ?, finished_at = ? where id = ? and status in ({', '.join('?' * len(ACTIVE))})",
                (CANCELLED, now(), job_id, *ACTIVE),
            )
            if cursor.rowcount:
                self._stop_shards(conn, job_id)
                conn.execute("delete from shard_inputs where job_id = ?", (job_id,))
        return self.get(job_id)

    @staticmethod
    def _stop_shards(conn: sqlite3.Connection, job_id: str) -> None:
        """The shards of a job that finished and have not: cancelled (a runner's next save fails)."""
        conn.execute(
            "update job_shards set status = ?, finished_at = ? where job_id = ? and status in (?, ?, ?)",
            (CANCELLED, now(), job_id, QUEUED, RUNNING, WAITING),
        )

    def requeue_stale(self, cutoff: float, max_attempts: int) -> tuple[list[tuple[str, int]], list[str]]:
        t = now()
        requeued: list[tuple[str, int]] = []
        failed: list[str] = []
        with self._write() as conn:
            stale = conn.execute(
                "select s.job_id, s.idx, s.attempt, j.status, j.on_error, j.total, j.shard_size from job_shards s"
                " join jobs j on j.id = s.job_id where s.status = ? and s.heartbeat_at < ?",
                (RUNNING, cutoff),
            ).fetchall()
            for row in stale:
                job_id, index = row["job_id"], row["idx"]
                if row["status"] != RUNNING:  # its job finished meanwhile: the shard is let go
                    conn.execute("update job_shards set status = ? where job_id = ? and idx = ?",
                                 (CANCELLED, job_id, index))
                    continue
                join = index == shard_count(row["total"], row["shard_size"])
                if row["attempt"] >= max_attempts and (join or row["on_error"] != ON_ERROR_SKIP):
                    conn.execute("update job_shards set status = ?, finished_at = ? where job_id = ? and idx = ?",
                                 (FAILED, t, job_id, index))
                    conn.execute(
                        "update jobs set status = ?, finished_at = ?, error_code = 'worker_lost', error_message = ?"
                        " where id = ?",
                        (FAILED, t, f"the worker running shard {index} of this job stopped answering,"
                                    f" {row['attempt']} time(s)", job_id),
                    )
                    self._stop_shards(conn, job_id)
                    conn.execute("delete from shard_inputs where job_id = ?", (job_id,))
                    failed.append(job_id)
                    continue
                conn.execute("update job_shards set status = ? where job_id = ? and idx = ?", (QUEUED, job_id, index))
                self._queued_when_idle(conn, job_id)
                requeued.append((job_id, index))
        return requeued, failed

    def discard(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute("delete from jobs where id = ?", (job_id,))

    def purge(self, finished_before: float) -> list[str]:
        with self._write() as conn:
            return [
                row["id"] for row in conn.execute(
                    "delete from jobs where finished_at is not null and finished_at < ? returning id",
                    (finished_before,),
                ).fetchall()
            ]

    def known(self, job_ids: Sequence[str]) -> set[str]:
        ids = list(job_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # below SQLite's bound on parameters
            chunk = ids[start : start + 500]
            found.update(row["id"] for row in self._conn.execute(
                f"select id from jobs where id in ({', '.join('?' * len(chunk))})", chunk
            ))
        return found

    def counts(self) -> dict[str, int]:
        # One pass over the (status, heartbeat_at) index; retention bounds the rows.
        counts = dict.fromkeys(STATES, 0)
        for status, count in self._conn.execute("select status, count(*) from jobs group by status"):
            counts[status] = count
        row = self._conn.execute("select value from job_stats where name = ?", (LOST,)).fetchone()
        counts[LOST] = row["value"] if row else 0
        return counts

    def active(self) -> dict[str, ModelQueue]:
        found: dict[str, ModelQueue] = {}
        rows = self._conn.execute(
            "select model, status, count(*) as jobs, sum(total - done) as inputs, min(created_at) as oldest"
            " from jobs where status in (?, ?) group by model, status",
            ACTIVE,
        )
        for row in rows:
            queue = found.setdefault(row["model"], ModelQueue())
            if row["status"] == QUEUED:
                queue.queued, queue.queued_inputs, queue.oldest_queued_at = row["jobs"], row["inputs"], row["oldest"]
            else:
                queue.running = row["jobs"]
        return found

    def set_lost(self, count: int) -> None:
        with self._write() as conn:
            conn.execute(
                "insert into job_stats (name, value) values (?, ?) on conflict (name) do update set value = excluded.value",
                (LOST, count),
            )

    def beat(self, worker: str) -> None:
        t = now()
        with self._write() as conn:
            conn.execute(
                "insert into job_workers (id, beat_at) values (?, ?)"
                " on conflict (id) do update set beat_at = excluded.beat_at, stopped = 0",
                (worker, t),
            )
            conn.execute("delete from job_workers where beat_at < ?", (t - WORKER_KEPT_S,))

    def leave(self, worker: str) -> None:
        # Kept as stopped, its last beat now: "a worker was alive until N s ago".
        with self._write() as conn:
            conn.execute("update job_workers set stopped = 1, beat_at = ? where id = ?", (now(), worker))

    def workers(self, alive_after: float) -> WorkerBeats:
        row = self._conn.execute(
            "select count(*) filter (where not stopped and beat_at > ?) as alive, max(beat_at) as last from job_workers",
            (alive_after,),
        ).fetchone()
        return WorkerBeats(alive=row["alive"], last=row["last"])

    def check_durable(self) -> None:
        """A SQLite file outlives the processes: nothing to check."""
