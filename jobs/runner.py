"""Runs one job in a worker process: claim it, skip the batches a previous
attempt saved, run the rest through the model in batches, save each batch's
results (and files) and the progress, and stop between batches when the job
was cancelled or taken over. A model that reports steps (a diffusion
pipeline) has its steps saved as progress while it runs, and is stopped
between two steps the same way. With tracing on, the attempt's spans (queued,
run, each batch, done) continue the trace of the request that submitted it."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from opentelemetry.trace import SpanKind

from adapters.progress import Stopped, reporting
from jobs.inference import run_batch
from jobs.records import CANCELLED, FAILED, SUCCEEDED, Job, JobStore
from jobs.results import ResultStorage, file_name
from predict import Predictor
from serving import metrics, tracing
from serving.errors import ServeError

log = logging.getLogger("jobs.runner")

#: Steps are saved at most this often (and at a call's last step): a fast
#: pipeline's steps would otherwise cost a store write each.
STEP_SAVE_S = 0.1


class StepProgress:
    """The reporter of one batch's calls: saves the job's steps done, and stops
    the call (:class:`Stopped`) once the job is no longer this attempt's."""

    def __init__(self, store: JobStore, job: Job, attempt: int, done: int, steps: int) -> None:
        self.store, self.job, self.attempt, self.done = store, job, attempt, done
        self.steps = steps  # of the inputs finished before this call's current one
        self._last_step = 0
        self._last_total = 0
        self._saved_at = 0.0

    def __call__(self, step: int, total: int) -> None:
        if step < self._last_step:  # the next input of the batch began
            self.steps += self._last_total
        self._last_step, self._last_total = step, total
        t = time.monotonic()
        if step < total and t - self._saved_at < STEP_SAVE_S:
            return
        self._saved_at = t
        if not self.store.progress(self.job.id, self.attempt, self.done, 0, self.steps + step):
            raise Stopped


class Heartbeat:
    """Refreshes a running job's heartbeat from a thread, so a batch longer than
    the visibility timeout (a heavy model) does not look like a dead worker."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, interval: float) -> None:
        self.store, self.job_id, self.attempt, self.interval = store, job_id, attempt, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.job_id, self.attempt):
                    return  # cancelled or taken over: the batch loop notices too
            except Exception:
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class JobRunner:
    store: JobStore
    results: ResultStorage
    predictor: Predictor
    heartbeat_s: float
    requeue: Callable[[str], None]

    def __call__(self, job_id: str) -> None:
        attempt = self.store.claim(job_id)
        if attempt is None:  # cancelled while queued, or another worker has it
            log.info("job %s: not queued, skipped", job_id)
            return
        job = self.store.get(job_id)
        if job is None:
            return
        log.info("job %s: attempt %d, %d inputs to %s", job_id, attempt, job.total, job.model)
        attributes = {"serve.job.id": job_id, "serve.model": job.model, "serve.job.inputs": job.total}
        if attempt == 1:  # a retry's wait began when the last attempt was given up, which no record keeps
            tracing.interval(job.trace_context or {}, "job queued", job.created_at, time.time(), attributes)
        with tracing.continued(job.trace_context, "job run", {**attributes, "serve.job.attempt": attempt},
                               SpanKind.CONSUMER) as span:
            try:
                status = self._attempt(job, attempt)
            except BaseException:
                metrics.JOB_ATTEMPTS.labels(job.model, "handed_back").inc()
                raise
            metrics.JOB_ATTEMPTS.labels(job.model, status).inc()
            if span is not None:
                span.set_attribute("serve.job.status", status)

    def _attempt(self, job: Job, attempt: int) -> str:
        """Run one attempt of a claimed job; what became of it."""
        job_id = job.id
        try:
            with Heartbeat(self.store, job_id, attempt, self.heartbeat_s):
                if self.results.has_result(job_id):
                    # A previous attempt died between joining the parts and saying so.
                    finished = self.store.progress(job_id, attempt, job.total, 0)
                else:
                    finished = self._run_batches(job, attempt)
                    if finished:
                        # Joining the parts takes a while in object storage: still beating.
                        with tracing.span("job done", {"serve.job.id": job_id, "serve.job.batches": job.batches}):
                            self.results.finalize(job_id, job.batches)
            if finished and self.store.finish(job_id, attempt, SUCCEEDED):
                log.info("job %s: succeeded", job_id)
                return SUCCEEDED
            if (current := self.store.get(job_id)) is not None and current.status == CANCELLED:
                self.results.delete(job_id)
                return CANCELLED
            return "taken_over"
        except ServeError as error:  # the model refused the job (gone, wrong task ...)
            self.store.finish(job_id, attempt, FAILED, error.code, error.message)
            return FAILED
        except Exception as error:
            log.exception("job %s failed", job_id)
            self.store.finish(job_id, attempt, FAILED, "internal_error", f"the worker failed: {type(error).__name__}")
            return FAILED
        except BaseException:
            # Shutdown (SIGTERM, Ctrl-C): hand the job back at once instead of
            # leaving it for the stale sweep; the saved batches are kept.
            if self.store.release(job_id, attempt):
                self.requeue(job_id)
                log.info("job %s: handed back to the queue on shutdown", job_id)
            raise

    def _run_batches(self, job: Job, attempt: int) -> bool:
        saved = self.results.parts(job.id)
        inputs = self.store.inputs(job.id)
        if len(inputs) != job.total:  # cancelled (and its inputs dropped) since the claim
            return False
        units = self._steps(job, inputs)
        done = steps = 0
        for lo, hi in map(job.batch_range, saved):
            done, steps = done + hi - lo, steps + sum(units[lo:hi])
        if not self.store.progress(job.id, attempt, done, 0, steps):
            return False
        for index in range(job.batches):
            if index in saved:
                continue
            lo, hi = job.batch_range(index)

            def save(i: int, suffix: str, data: bytes, lo: int = lo) -> str:
                name = file_name(lo + i, suffix)
                self.results.write_file(job.id, name, data)
                return name

            started = time.perf_counter()
            try:
                with tracing.span("job batch", {"serve.job.batch.index": index, "serve.batch.size": hi - lo}), \
                        reporting(StepProgress(self.store, job, attempt, done, steps)):
                    rows = run_batch(self.predictor, job.model, inputs[lo:hi], job.parameters, save)
            except Stopped:
                log.info("job %s: cancelled or taken over during input %d/%d", job.id, done + 1, job.total)
                return False
            data = b"".join(orjson.dumps({"index": lo + i, **row}) + b"\n" for i, row in enumerate(rows))
            self.results.write_part(job.id, index, data)
            failed = sum(1 for row in rows if "error" in row)
            metrics.JOB_INPUTS.labels(job.model, "ok").inc(len(rows) - failed)
            if failed:
                metrics.JOB_INPUTS.labels(job.model, "failed").inc(failed)
            metrics.JOB_BATCH_DURATION.labels(job.model).observe(time.perf_counter() - started)
            done, steps = done + hi - lo, steps + sum(units[lo:hi])
            if not self.store.progress(job.id, attempt, done, hi - lo, steps):
                log.info("job %s: cancelled or taken over at %d/%d", job.id, done, job.total)
                return False
        return True

    def _steps(self, job: Job, inputs: list[Any]) -> list[int]:
        """Each input's steps (all 0 unless the model reports steps)."""
        if not job.steps_total:
            return [0] * len(inputs)
        _, task = self.predictor.model(job.model)
        params = task.parameters(job.parameters)
        units = []
        for item in inputs:
            try:
                units.append(task.steps(item, params, self.predictor.limits))
            except ServeError:  # an unreadable input fails its own line, and takes no step
                units.append(0)
        return units
