"""Job records in SQLite: the embedded default, one machine, no extra server."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from jobs.records import (
    ACTIVE, CANCELLED, FAILED, LOST, QUEUED, RUNNING, STATES, WORKER_KEPT_S, Created, Job, ModelQueue, WorkerBeats, now,
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
    trace_context text
);
create index if not exists jobs_status on jobs (status, heartbeat_at);
create index if not exists jobs_finished on jobs (finished_at);
create table if not exists job_inputs (
    job_id text primary key references jobs (id) on delete cascade,
    data blob not null
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
    "trace_context",
)
# Columns added since the first release: a jobs.db made before gets them on open.
_ADDED = {
    "steps_total": "integer not null default 0",
    "steps_done": "integer not null default 0",
    "number": "integer not null default 0",
    "summary": "text",
    "trace_context": "text",
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
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=normal")
            conn.execute("pragma foreign_keys=on")
            conn.executescript(_SCHEMA)
            present = {row["name"] for row in conn.execute("pragma table_info(jobs)")}
            for name, kind in _ADDED.items():
                if name not in present:
                    try:
                        conn.execute(f"alter table jobs add column {name} {kind}")
                    except sqlite3.OperationalError:  # another process added it meanwhile
                        pass
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

    def create(self, job: Job, inputs: Sequence[Any]) -> Created:
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
            conn.execute(
                "insert into job_inputs (job_id, data) values (?, ?)",
                (job.id, json.dumps(list(inputs)).encode()),
            )
        return Created(job, created=True)

    def get(self, job_id: str) -> Job | None:
        return self._job(self._conn.execute("select * from jobs where id = ?", (job_id,)).fetchone())

    def by_number(self, number: int) -> str | None:
        row = self._conn.execute("select id from jobs where number = ?", (number,)).fetchone()
        return row["id"] if row else None

    def inputs(self, job_id: str) -> list[Any]:
        row = self._conn.execute("select data from job_inputs where job_id = ?", (job_id,)).fetchone()
        return json.loads(row["data"]) if row else []

    def claim(self, job_id: str) -> int | None:
        t = now()
        with self._write() as conn:
            row = conn.execute(
                "update jobs set status = ?, attempt = attempt + 1, started_at = coalesce(started_at, ?),"
                " heartbeat_at = ? where id = ? and status = ? returning attempt",
                (RUNNING, t, t, job_id, QUEUED),
            ).fetchone()
        return row["attempt"] if row else None

    def _owned_update(self, job_id: str, attempt: int, assignments: str, values: tuple) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                f"update jobs set {assignments} where id = ? and attempt = ? and status = ?",
                (*values, job_id, attempt, RUNNING),
            )
        return cursor.rowcount == 1

    def progress(self, job_id: str, attempt: int, done: int, computed: int, steps: int = 0) -> bool:
        return self._owned_update(
            job_id, attempt, "done = ?, computed = computed + ?, steps_done = ?, heartbeat_at = ?",
            (done, computed, steps, now()),
        )

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        return self._owned_update(job_id, attempt, "heartbeat_at = ?", (now(),))

    def finish(self, job_id: str, attempt: int, status: str, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        finished = self._owned_update(
            job_id, attempt, "status = ?, finished_at = ?, error_code = ?, error_message = ?",
            (status, now(), error_code, error_message),
        )
        if finished:  # a finished job's inputs are never read again
            self._conn.execute("delete from job_inputs where job_id = ?", (job_id,))
        return finished

    def release(self, job_id: str, attempt: int) -> bool:
        return self._owned_update(job_id, attempt, "status = ?", (QUEUED,))

    def cancel(self, job_id: str) -> Job | None:
        with self._write() as conn:
            cursor = conn.execute(
                f"update jobs set status = ?, finished_at = ? where id = ? and status in ({', '.join('?' * len(ACTIVE))})",
                (CANCELLED, now(), job_id, *ACTIVE),
            )
            if cursor.rowcount:
                conn.execute("delete from job_inputs where job_id = ?", (job_id,))
        return self.get(job_id)

    def requeue_stale(self, cutoff: float, max_attempts: int) -> tuple[list[str], list[str]]:
        with self._write() as conn:
            failed = [
                row["id"] for row in conn.execute(
                    "update jobs set status = ?, finished_at = ?, error_code = 'worker_lost',"
                    " error_message = 'the worker running this job stopped answering, ' || attempt || ' time(s)'"
                    " where status = ? and heartbeat_at < ? and attempt >= ? returning id",
                    (FAILED, now(), RUNNING, cutoff, max_attempts),
                ).fetchall()
            ]
            requeued = [
                row["id"] for row in conn.execute(
                    "update jobs set status = ? where status = ? and heartbeat_at < ? returning id",
                    (QUEUED, RUNNING, cutoff),
                ).fetchall()
            ]
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
            "select model, status, count(*) as jobs, sum(total) as inputs, min(created_at) as oldest"
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
