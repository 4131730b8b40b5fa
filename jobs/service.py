"""What the HTTP layer asks of jobs: submit, look up, cancel, find the result,
and how the job subsystem is (``/readyz``, ``/metrics``).

Knows no Flask; the routes in ``api/jobs.py`` turn its answers into HTTP.

A job is refused (503) rather than left queued for ever when no job worker
has beaten for ``SERVE_JOB_WORKER_GRACE_S`` (counted from this process's
start until a first heartbeat, so that a web server and a worker started
together never refuse), and while the backend is a Redis without persistence
that was not allowed. A job whose record is gone but whose marker or results
are still stored is lost (410), not unknown (404).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

import redis
from opentelemetry.trace import SpanKind
from botocore.exceptions import BotoCoreError, ClientError

from jobs.backends import Backends, build_backends
from jobs.presence import alive_window
from jobs.records import FAILED, ON_ERROR_FAIL, SUCCEEDED, Created, Job, WorkerBeats, new_job_id, now, shard_inputs
from jobs.sources import Indexed
from jobs.results import LocalResults, S3Results
from serving.errors import (
    Conflict,
    IdempotencyConflict,
    JobBackendVolatile,
    JobLost,
    JobNotFinished,
    JobNotFound,
    NoJobWorker,
    NotReady,
)
from serving import tracing
from serving.settings import Settings
from utils_serve import digest

log = logging.getLogger("jobs.service")


@dataclass(frozen=True)
class ResultLocation:
    """A finished job's results: a local file to stream, or a pre-signed URL to redirect to."""

    path: Path | None = None
    url: str | None = None


# What a store, queue or bucket raises when it is down or overloaded.
BACKEND_ERRORS = (redis.RedisError, sqlite3.OperationalError, BotoCoreError, ClientError, OSError)


@contextmanager
def backend_call(what: str) -> Iterator[None]:
    """A backend that is down is a 503 for the client (and a traceback in the log), never a 500."""
    try:
        yield
    except BACKEND_ERRORS:
        log.exception("job backend failed: %s", what)
        raise NotReady(f"the job {what} is not reachable; try again") from None


def _iso(value: Any) -> str | None:
    if not isinstance(value, (int, float)):
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(error: BaseException, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit]


class JobService:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self.started_at = now()
        self.alive_s = alive_window(settings)
        self._refusing = False  # a volatile backend's refusal was logged
        self._last_health = "ok"

    @property
    def store(self):
        return self.backends.store

    @property
    def sources(self):
        return self.backends.sources

    # --- the subsystem's health ----------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/readyz``'s ``jobs``: ``status`` ok | degraded (no worker alive) |
        down (the store or queue does not answer, or is refused), and what it
        is made of. Three small queries (Redis: one CONFIG check per process);
        never raises: whatever failed is the answer."""
        report: dict[str, Any] = {"status": "ok", "backend": self.backends.name}
        t = now()
        try:
            self._check_durable()
            beats = self.store.workers(t - self.alive_s)
            depth = self.backends.queue.depth()
        except JobBackendVolatile as refused:
            report.update(status="down", backend_reachable=True, accepting_jobs=False,
                          error={"type": refused.code, "message": refused.message})
        except Exception as error:  # a probe must not fail: the backend's error is the answer
            report.update(status="down", backend_reachable=False, accepting_jobs=False,
                          error={"type": type(error).__name__, "message": _one_line(error)})
        else:
            refusal = self._worker_refusal(beats, t)
            report.update(
                backend_reachable=True,
                workers_alive=beats.alive,
                last_heartbeat_age_s=round(t - beats.last, 3) if beats.last is not None else None,
                queue_depth=depth,
                accepting_jobs=refusal is None,
            )
            if not beats.alive:
                report["status"] = "degraded"
                report["reason"] = refusal or (
                    "no job worker is alive: new jobs wait in the queue; start one with `make worker`"
                    " or `python -m jobs.worker`"
                )
        if report["status"] != self._last_health:  # one line per change, not one per probe
            if report["status"] != "down":
                log.info("job subsystem %s", report["status"])
            elif report["error"]["type"] != JobBackendVolatile.code:  # that one has its own line
                log.warning("job subsystem down: %s", report["error"]["message"])
            self._last_health = report["status"]
        return report

    def figures(self) -> dict[str, Any]:
        """What ``/metrics`` reports of jobs: workers alive, queue depth, jobs by
        status, and each model's active jobs (``ModelQueue``); raises what the
        backend raises when it is down."""
        return {
            "workers_alive": self.store.workers(now() - self.alive_s).alive,
            "queue_depth": self.backends.queue.depth(),
            "jobs": self.store.counts(),
            "models": self.store.active(),
            "now": now(),
        }

    def _check_durable(self) -> None:
        try:
            self.store.check_durable()
        except JobBackendVolatile as refused:
            if not self._refusing:  # one line per process, not one per request
                log.error("job backend refused: %s", refused.message)
                self._refusing = True
            raise
        self._refusing = False

    def _worker_refusal(self, beats: WorkerBeats, t: float) -> str | None:
        """Why a new job would be refused for want of a worker, or None."""
        grace = self.settings.job_worker_grace_s
        if grace <= 0 or beats.alive:
            return None
        since = max(beats.last or 0.0, self.started_at)
        if t - since <= grace:
            return None
        if beats.last is None or beats.last < self.started_at:
            what = f"no job worker has been alive since this server started {t - since:.0f} s ago"
        else:
            what = f"no job worker has been alive for {t - since:.0f} s"
        return (f"{what} (SERVE_JOB_WORKER_GRACE_S={grace:g}), so a job would wait for ever; start one with"
                " `make worker` or `python -m jobs.worker` (same settings as this server)")

    def _require_worker(self) -> None:
        if self.settings.job_worker_grace_s <= 0:
            return
        t = now()
        beats = self.store.workers(t - self.alive_s)
        refusal = self._worker_refusal(beats, t)
        if refusal is not None:
            age = round(t - beats.last, 1) if beats.last is not None else None
            raise NoJobWorker(f"{refusal}; no job was created",
                              details={"workers_alive": 0, "last_heartbeat_age_s": age})

    # --- jobs ------------------------------------------------------------------

    def submit(self, model: str, inputs: Sequence[Any] | Indexed, parameters: dict[str, Any],
               idempotency_key: str | None = None, *, batch_size: int | None = None, shard_size: int | None = None,
               on_error: str = ON_ERROR_FAIL, steps_total: int = 0, summary: dict[str, Any] | None = None) -> Created:
        """A new queued job, or the earlier one made with the same idempotency key and body.
        ``inputs``: the inputs, or an input object's index (``jobs/sources.py``);
        ``batch_size``: inputs per model call (default ``SERVE_JOB_BATCH_SIZE``);
        ``shard_size``: inputs per shard (default ``SERVE_JOB_SHARD_SIZE``; an
        indexed object was cut already); ``on_error``: what a shard failed past
        its last attempt does; ``steps_total``: the steps its progress counts (a diffusion model's)."""
        with backend_call("store"):
            self._check_durable()
            self._require_worker()
        total = inputs.total if isinstance(inputs, Indexed) else len(inputs)
        attributes = {"serve.model": model, "serve.job.inputs": total}
        with tracing.span("job submit", attributes, SpanKind.PRODUCER) as span:
            outcome = self._submit(model, inputs, parameters, idempotency_key, batch_size, shard_size, on_error,
                                   steps_total, summary)
            if span is not None:
                span.set_attributes({"serve.job.id": outcome.job.id, "serve.job.created": outcome.created,
                                     "serve.job.shards": outcome.job.shards})
            return outcome

    def _submit(self, model: str, inputs: Sequence[Any] | Indexed, parameters: dict[str, Any],
                idempotency_key: str | None, batch_size: int | None, shard_size: int | None, on_error: str,
                steps_total: int, summary: dict[str, Any] | None) -> Created:
        by_reference = isinstance(inputs, Indexed)
        if by_reference:
            uri = inputs.shards[0]["uri"]
            size = inputs.shards[0].get("count") or len(inputs.shards[0]["members"])
            what: Any = uri
        else:
            uri, size, what = None, shard_size or self.settings.job_shard_size, list(inputs)
        body_digest = digest(json.dumps([model, what, parameters, size, on_error], sort_keys=True))
        job = Job(
            id=new_job_id(),
            model=model,
            total=inputs.total if by_reference else len(inputs),
            batch_size=batch_size or self.settings.job_batch_size,
            parameters=parameters,
            steps_total=steps_total,
            summary=summary,
            idempotency_key=idempotency_key,
            body_digest=body_digest,
            trace_context=tracing.carrier() or None,  # the worker's spans continue this one
            shard_size=size,
            on_error=on_error,
            inputs_uri=uri,
        )
        shards = inputs.shards if by_reference else shard_inputs(inputs, job)
        with backend_call("store"):
            outcome = self.store.create(job, shards)
        if not outcome.created:
            if outcome.job.body_digest != body_digest:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used for a different request",
                    details={"job_id": outcome.job.id},
                )
            return outcome
        # After the record, so that every marker had a record: one without is a lost job.
        try:
            self.backends.results.write_marker(
                job.id, {"id": job.id, "model": model, "total": job.total, "created_at": job.created_at}
            )
        except Exception:
            self._undo(job.id, "result storage")
        try:
            self.backends.queue.enqueue_shards(job.id, job.shards)
        except Exception:
            self._undo(job.id, "queue")
        return outcome

    def _undo(self, job_id: str, what: str) -> NoReturn:
        """Forget a job half made (its ``what`` failed), so that a retry with
        the same Idempotency-Key makes it anew; a 503 for the client."""
        log.exception("job %s: the job %s failed", job_id, what)
        with backend_call("store"):
            self.store.discard(job_id)
        try:
            self.backends.results.delete(job_id)
        except Exception:  # a marker left behind is a lost job: the sweep deletes it
            log.warning("job %s: its marker was not deleted", job_id, exc_info=True)
        raise NotReady(f"the job {what} is not reachable; try again") from None

    def get(self, job_id: str) -> Job:
        with backend_call("store"):
            self._check_durable()
            job = self.store.get(job_id)
        if job is None:
            self._missing(job_id)
        return job

    def by_number(self, number: int) -> Job:
        """The job of that submission ``number`` (404 if none)."""
        with backend_call("store"):
            self._check_durable()
            job_id = self.store.by_number(number)
        if job_id is None:
            raise JobNotFound(f"no job number {number}")
        return self.get(job_id)

    def file(self, job: Job, name: str) -> ResultLocation | None:
        """Where one of a job's files is (a local path or a pre-signed URL), or None while it is not written."""
        results = self.backends.results
        with backend_call("result storage"):
            if not results.has_file(job.id, name):
                return None
            if isinstance(results, S3Results):
                return ResultLocation(url=results.file_url(job.id, name))
        assert isinstance(results, LocalResults)
        return ResultLocation(path=results.file_path(job.id, name))

    def cancel(self, job_id: str) -> Job:
        with backend_call("store"):
            self._check_durable()
            job = self.store.cancel(job_id)
        if job is None:
            self._missing(job_id)
        if job.status in (SUCCEEDED, FAILED):
            raise Conflict(f"job {job_id} already {job.status}", details={"status": job.status})
        return job

    def result(self, job_id: str) -> ResultLocation:
        job = self.get(job_id)
        if job.status != SUCCEEDED:
            raise JobNotFinished(
                f"job {job_id} is {job.status}; results exist once it succeeded",
                details={"status": job.status},
            )
        results = self.backends.results
        if isinstance(results, S3Results):
            with backend_call("result storage"):
                return ResultLocation(url=results.url(job_id))
        assert isinstance(results, LocalResults)
        return ResultLocation(path=results.path(job_id))

    def _missing(self, job_id: str) -> NoReturn:
        """No record: 410 if result storage holds a trace of the job, else 404."""
        with backend_call("result storage"):
            trace = self.backends.results.trace(job_id)
        if trace is None:
            raise JobNotFound(f"no job {job_id!r}")
        raise JobLost(
            f"job {job_id} existed, but the job backend lost its record (was Redis restarted without"
            " persistence?); submit it again. What it had saved is kept until the job sweep deletes it,"
            f" {self.settings.job_orphan_age_s:g} s after its last write (SERVE_JOB_ORPHAN_AGE_S)",
            details={"job_id": job_id, "model": trace.get("model"), "total": trace.get("total"),
                     "created_at": _iso(trace.get("created_at"))},
        )


def build_service(settings: Settings, immediate: bool = False) -> JobService:
    return JobService(settings, build_backends(settings, immediate=immediate))

