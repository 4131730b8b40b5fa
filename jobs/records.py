"""What a job is: its record, its states, and how the stores speak of them."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
STATES = ACTIVE + FINISHED
# Not a record's status: a job whose record the backend lost while result
# storage still holds its trace (the job sweep counts them, then deletes them).
LOST = "lost"


def new_job_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


@dataclass
class Job:
    """One job's record: what to run, where it stands, and what went wrong.

    ``attempt`` counts the runs a worker started; a worker owns the job only
    while the record still carries its attempt number, so a worker that was
    presumed dead and is not cannot overwrite its successor's progress.
    ``computed`` counts the inputs that went through the model over all
    attempts: ``total`` when nothing was recomputed after a retry.
    ``steps_done`` of ``steps_total`` counts the steps of a model whose
    inputs take many (a diffusion pipeline's denoising steps; 0 of 0 for
    others), saved while an input is computed. ``number`` is the job's place
    in the order of submission (1, 2, ...), never reused: the small id of
    routes that show one (``/generated-images/{id}``). ``summary`` keeps what
    such a route shows of the request after the inputs are dropped (a
    finished job's are): None for other jobs. ``trace_context`` holds the
    submitting request's W3C ``traceparent`` (and ``tracestate``) when tracing
    is on, so that the worker's spans join that request's trace.
    """

    id: str
    model: str
    total: int
    batch_size: int
    parameters: dict[str, Any] = field(default_factory=dict)
    status: str = QUEUED
    done: int = 0
    computed: int = 0
    attempt: int = 0
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    idempotency_key: str | None = None
    body_digest: str = ""
    steps_total: int = 0
    steps_done: int = 0
    number: int = 0
    summary: dict[str, Any] | None = None
    trace_context: dict[str, str] | None = None

    @property
    def batches(self) -> int:
        return -(-self.total // self.batch_size)

    def batch_range(self, index: int) -> tuple[int, int]:
        start = index * self.batch_size
        return start, min(start + self.batch_size, self.total)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Created:
    """The outcome of a submission: the job, and whether this call made it
    (False: an earlier request with the same idempotency key did)."""

    job: Job
    created: bool


# A stopped worker's last heartbeat is kept this long, so that "last seen 2 h
# ago" can be told; the stores drop older ones when a worker beats.
WORKER_KEPT_S = 24 * 3600.0


@dataclass(frozen=True)
class WorkerBeats:
    """What the job store knows of the job workers' heartbeats."""

    alive: int  # running workers whose last heartbeat is newer than the cutoff asked for
    last: float | None  # the newest heartbeat (or stop) of any worker kept (a day), None if none


@dataclass
class ModelQueue:
    """One model's active jobs, as ``/metrics`` reports them."""

    queued: int = 0
    running: int = 0
    queued_inputs: int = 0
    oldest_queued_at: float | None = None  # created_at of its oldest queued job

    def add(self, status: str, total: int, created_at: float) -> None:
        if status == QUEUED:
            self.queued += 1
            self.queued_inputs += total
            if self.oldest_queued_at is None or created_at < self.oldest_queued_at:
                self.oldest_queued_at = created_at
        elif status == RUNNING:
            self.running += 1


class JobStore(Protocol):
    """Where job records live: SQLite on one machine, Redis across machines.

    Every state change is one atomic check-and-set on the store, so web
    replicas, workers and the stale-job sweep may race freely.
    """

    def create(self, job: Job, inputs: Sequence[Any]) -> Created:
        """Record a queued job; with an idempotency key already used, return that job instead."""

    def get(self, job_id: str) -> Job | None: ...

    def by_number(self, number: int) -> str | None:
        """The id of the job with that ``number``, or None."""

    def inputs(self, job_id: str) -> list[Any]: ...

    def claim(self, job_id: str) -> int | None:
        """queued -> running; the new attempt number, or None if the job is not queued."""

    def progress(self, job_id: str, attempt: int, done: int, computed: int, steps: int = 0) -> bool:
        """Save progress (inputs done, ``computed`` more inputs computed, steps
        done) and a heartbeat, while ``attempt`` still owns the running job."""

    def heartbeat(self, job_id: str, attempt: int) -> bool: ...

    def finish(self, job_id: str, attempt: int, status: str, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        """running -> succeeded / failed, if ``attempt`` still owns it."""

    def release(self, job_id: str, attempt: int) -> bool:
        """running -> queued: the worker stops on purpose (shutdown) and gives the job back."""

    def cancel(self, job_id: str) -> Job | None:
        """queued / running -> cancelled; the record after the call (unchanged if finished)."""

    def requeue_stale(self, cutoff: float, max_attempts: int) -> tuple[list[str], list[str]]:
        """Running jobs whose heartbeat is older than ``cutoff``: back to queued, or failed
        once they used ``max_attempts``. Returns (requeued ids, failed ids)."""

    def discard(self, job_id: str) -> None:
        """Forget a job at once (its enqueue failed: a retry must not find it)."""

    def purge(self, finished_before: float) -> list[str]:
        """Delete the records of jobs finished before the cutoff; their ids."""

    def known(self, job_ids: Sequence[str]) -> set[str]:
        """The ids among ``job_ids`` that have a record."""

    def counts(self) -> dict[str, int]:
        """Jobs by status (every status, zeros included), and ``lost`` as the last sweep counted it."""

    def active(self) -> dict[str, "ModelQueue"]:
        """The queued and running jobs of each model that has any: read over the
        active jobs only (the queue), never over the retained finished ones."""

    def set_lost(self, count: int) -> None:
        """Record how many lost jobs (a trace in result storage, no record) the sweep found."""

    def beat(self, worker: str) -> None:
        """Job worker ``worker`` is alive now (its heartbeat)."""

    def leave(self, worker: str) -> None:
        """Job worker ``worker`` stops on purpose: no longer alive, its last heartbeat now."""

    def workers(self, alive_after: float) -> WorkerBeats:
        """How many workers beat after ``alive_after``, and the newest heartbeat."""

    def check_durable(self) -> None:
        """Raise :class:`serving.errors.JobBackendVolatile` if a restart of the
        backend would lose every record (and that was not allowed)."""
