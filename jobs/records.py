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
# A shard's own state before it can run: the join, until every data shard succeeded.
WAITING = "waiting"

# What a job does with a shard that failed past its last attempt.
ON_ERROR_FAIL = "fail"  # the job fails with that shard's error
ON_ERROR_SKIP = "skip"  # each of its inputs gets an error line, and the job goes on
ON_ERROR = (ON_ERROR_FAIL, ON_ERROR_SKIP)


def shard_count(total: int, shard_size: int) -> int:
    """Data shards of ``total`` inputs, ``shard_size`` each (0: one shard of all)."""
    size = shard_size or total
    return -(-total // size) if size else 0


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

    A job is split into :attr:`shards` of ``shard_size`` inputs, each its own
    queue message, claimed, heartbeaten, retried and saved on its own
    (:class:`Shard`), so that every idle worker process takes shards of the
    same job; ``shards_done`` of them succeeded. One more shard, the join
    (index ``shards``), joins their results once the last one succeeded.
    ``attempt`` is then the highest attempt of any shard, ``done`` and
    ``computed`` the sums over shards. ``on_error`` says what a shard that
    failed past its last attempt does (``fail`` the job, or ``skip``: an error
    line per input). ``inputs_uri`` names where the inputs were read from
    when the request named them by reference (None: they came in the body).
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
    shard_size: int = 0  # 0: one shard of every input (a record made before shards)
    shards_done: int = 0
    on_error: str = ON_ERROR_FAIL
    inputs_uri: str | None = None

    @property
    def shards(self) -> int:
        """Data shards; the join is shard ``shards``."""
        return shard_count(self.total, self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        """Inputs ``[lo, hi)`` of data shard ``index``."""
        size = self.shard_size or self.total
        start = index * size
        return start, min(start + size, self.total)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Shard:
    """One shard of a job: ``attempt`` counts its runs, and a worker owns it
    only while the shard carries that worker's attempt (as a job did before
    shards). ``worker`` names the process that claimed it last
    (``host:pid``); ``done`` and ``steps`` are its saved progress."""

    job_id: str
    index: int
    status: str = QUEUED
    attempt: int = 0
    worker: str | None = None
    done: int = 0
    steps: int = 0
    heartbeat_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


def shard_inputs(inputs: Sequence[Any], job: Job) -> list[list[Any]]:
    """A job's inputs cut into its data shards."""
    return [list(inputs[lo:hi]) for lo, hi in map(job.shard_range, range(job.shards))]


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

    def create(self, job: Job, shards: Sequence[Any]) -> Created:
        """Record a queued job, its data shards (queued) and its join (waiting),
        with each data shard's inputs (``shards[i]``: a list of inputs, or a
        reference to them, ``jobs/sources.py``); with an idempotency key
        already used, return that job instead."""

    def get(self, job_id: str) -> Job | None: ...

    def by_number(self, number: int) -> str | None:
        """The id of the job with that ``number``, or None."""

    def shard_inputs(self, job_id: str, index: int) -> Any:
        """Data shard ``index``'s inputs as ``create`` got them; None once dropped (the job finished)."""

    def shards(self, job_id: str) -> list[Shard]:
        """The job's shards, the join last."""

    def claim(self, job_id: str, index: int, worker: str) -> int | None:
        """Shard queued -> running (its job queued -> running with the first):
        the new attempt number, or None if the shard is not queued or its job not active."""

    def progress(self, job_id: str, index: int, attempt: int, done: int, computed: int, steps: int = 0) -> bool:
        """Save a shard's progress (its inputs done, ``computed`` more inputs
        computed, its steps done) and a heartbeat, while ``attempt`` still owns
        the running shard of a running job; the job's figures move by as much."""

    def heartbeat(self, job_id: str, index: int, attempt: int) -> bool: ...

    def complete(self, job_id: str, index: int, attempt: int, computed: int) -> tuple[bool, int | None]:
        """Data shard running -> succeeded (every input done, ``computed`` more
        computed), if ``attempt`` owns it: (whether it did, and the join's
        attempt when this was the last data shard: the join is then running,
        owned by the caller)."""

    def finish(self, job_id: str, index: int, attempt: int, status: str, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        """The job running -> succeeded (by its join) / failed (by any shard), if ``attempt`` owns that shard."""

    def release(self, job_id: str, index: int, attempt: int) -> bool:
        """Shard running -> queued: the worker stops on purpose (shutdown) or
        retries after an error; the job is queued again once no shard of it runs."""

    def cancel(self, job_id: str) -> Job | None:
        """queued / running -> cancelled; the record after the call (unchanged if finished)."""

    def requeue_stale(self, cutoff: float, max_attempts: int) -> tuple[list[tuple[str, int]], list[str]]:
        """Running shards whose heartbeat is older than ``cutoff``: back to
        queued, or their job failed once they used ``max_attempts`` (unless
        the job skips failed shards: then queued again, for the runner to
        write their error lines). Returns ((job id, shard) requeued, job ids failed)."""

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
