"""What the HTTP layer asks of jobs: submit, look up, cancel, find the result.

Knows no Flask; the routes in ``api/jobs.py`` turn its answers into HTTP.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import redis
from botocore.exceptions import BotoCoreError, ClientError

from jobs.backends import Backends, build_backends
from jobs.records import FAILED, SUCCEEDED, Created, Job, new_job_id
from jobs.results import LocalResults, S3Results
from serving.errors import Conflict, IdempotencyConflict, JobNotFinished, JobNotFound, NotReady
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


class JobService:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends

    @property
    def store(self):
        return self.backends.store

    def health(self) -> dict[str, Any]:
        """``/readyz``'s ``jobs``: ``status`` ok | degraded | down and what it is made of."""
        return {"status": "ok", "backend": self.backends.name}

    def submit(self, model: str, inputs: Sequence[Any], parameters: dict[str, Any],
               idempotency_key: str | None = None) -> Created:
        """A new queued job, or the earlier one made with the same idempotency key and body."""
        body_digest = digest(json.dumps([model, list(inputs), parameters], sort_keys=True))
        job = Job(
            id=new_job_id(),
            model=model,
            total=len(inputs),
            batch_size=self.settings.job_batch_size,
            parameters=parameters,
            idempotency_key=idempotency_key,
            body_digest=body_digest,
        )
        with backend_call("store"):
            outcome = self.store.create(job, inputs)
        if not outcome.created:
            if outcome.job.body_digest != body_digest:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used for a different request",
                    details={"job_id": outcome.job.id},
                )
            return outcome
        try:
            self.backends.queue.enqueue(job.id)
        except Exception:
            log.exception("could not enqueue job %s", job.id)
            # Forgotten, so that a retry with the same Idempotency-Key makes it anew.
            with backend_call("store"):
                self.store.discard(job.id)
            raise NotReady("the job queue is not reachable; try again") from None
        return outcome

    def get(self, job_id: str) -> Job:
        with backend_call("store"):
            job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> Job:
        with backend_call("store"):
            job = self.store.cancel(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
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


def build_service(settings: Settings, immediate: bool = False) -> JobService:
    return JobService(settings, build_backends(settings, immediate=immediate))

