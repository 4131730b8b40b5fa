"""Runs one shard of a job in a worker process: claim it, read its inputs
(from the record, or by reference from object storage or a local file), run
them through the model in batches, save the shard's results as one part and
its progress, and stop between batches when the job was cancelled or the
shard taken over. The worker that completes the last data shard runs the
join at once: the parts become the job's one result. A model that reports
steps (a diffusion pipeline) has its steps saved as progress while it runs,
and is stopped between two steps the same way. An error the model did not
expect is retried (the shard queued again) until the shard used its
attempts; then the job fails with it, or, with ``on_error: skip``, each input
of the shard gets an error line and the job goes on. With tracing on, the
attempt's spans (queued, run, each batch, done) continue the trace of the
request that submitted it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from opentelemetry.trace import SpanKind

from adapters.progress import Stopped, reporting
from jobs.inference import run_batch
from jobs.records import CANCELLED, FAILED, ON_ERROR_SKIP, RUNNING, SUCCEEDED, Job, JobStore
from jobs.results import ResultStorage, file_name
from jobs.sources import InputSources, read_shard
from predict import Predictor
from serving import metrics, tracing
from serving.errors import ServeError

log = logging.getLogger("jobs.runner")

#: Steps are saved at most this often (and at a call's last step): a fast
#: pipeline's steps would otherwise cost a store write each.
STEP_SAVE_S = 0.1
#: A shard's inputs done are saved at most this often (and when it completes).
PROGRESS_S = 0.25


class StepProgress:
    """The reporter of one batch's calls: saves the shard's steps done, and stops
    the call (:class:`Stopped`) once the shard is no longer this attempt's."""

    def __init__(self, store: JobStore, job: Job, index: int, attempt: int, done: int, steps: int) -> None:
        self.store, self.job, self.index, self.attempt, self.done = store, job, index, attempt, done
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
        if not self.store.progress(self.job.id, self.index, self.attempt, self.done, 0, self.steps + step):
            raise Stopped


class Heartbeat:
    """Refreshes a running shard's heartbeat from a thread, so a batch longer than
    the visibility timeout (a heavy model) does not look like a dead worker."""

    def __init__(self, store: JobStore, job_id: str, index: int, attempt: int, interval: float) -> None:
        self.store, self.job_id, self.index, self.attempt = store, job_id, index, attempt
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}-{index}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.job_id, self.index, self.attempt):
                    return  # cancelled or taken over: the batch loop notices too
            except Exception:
                log.warning("heartbeat of job %s shard %d failed", self.job_id, self.index, exc_info=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def worker_name() -> str:
    """What a shard's record says of the process that claimed it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def skipped_lines(lo: int, hi: int, code: str, message: str) -> bytes:
    """A skipped shard's part: one error line per input."""
    error = {"code": code, "message": message}
    return b"".join(orjson.dumps({"index": i, "error": error}, option=orjson.OPT_APPEND_NEWLINE) for i in range(lo, hi))


@dataclass
class JobRunner:
    store: JobStore
    results: ResultStorage
    predictor: Predictor
    heartbeat_s: float
    requeue: Callable[[str, int], None]
    max_attempts: int = 3
    sources: InputSources | None = None  # inputs by reference; None: only inputs carried in the record

    def __call__(self, job_id: str, index: int = 0) -> None:
        attempt = self.store.claim(job_id, index, worker_name())
        if attempt is None:  # cancelled while queued, or another worker has it
            log.info("job %s shard %d: not queued, skipped", job_id, index)
            return
        job = self.store.get(job_id)
        if job is None:
            return
        self._run(job, index, attempt)

    def _run(self, job: Job, index: int, attempt: int) -> None:
        join = index == job.shards
        lo, hi = job.shard_range(index) if not join else (0, job.total)
        log.info("job %s shard %d/%d: attempt %d, inputs %d-%d of %d to %s",
                 job.id, index, job.shards, attempt, lo, hi, job.total, job.model)
        attributes = {"serve.job.id": job.id, "serve.model": job.model, "serve.job.inputs": job.total}
        if attempt == 1 and index == 0:  # a retry's wait began when the last attempt was given up, which no record keeps
            tracing.interval(job.trace_context or {}, "job queued", job.created_at, time.time(), attributes)
        with tracing.continued(job.trace_context, "job run",
                               {**attributes, "serve.job.shard": index, "serve.job.attempt": attempt},
                               SpanKind.CONSUMER) as span:
            try:
                status = self._attempt(job, index, attempt)
            except BaseException:
                metrics.JOB_ATTEMPTS.labels(job.model, "handed_back").inc()
                raise
            metrics.JOB_ATTEMPTS.labels(job.model, status).inc()
            if span is not None:
                span.set_attribute("serve.job.status", status)

    def _attempt(self, job: Job, index: int, attempt: int) -> str:
        """Run one attempt of a claimed shard; what became of it."""
        job_id = job.id
        owned = index, attempt  # the shard this process owns now: the join's once it began
        try:
            with Heartbeat(self.store, job_id, index, attempt, self.heartbeat_s):
                if index == job.shards:
                    return self._join(job, attempt)
                outcome, computed = self._shard(job, index, attempt)
            if outcome is not None:
                return outcome
            completed, join = self.store.complete(job_id, index, attempt, computed)
            if not completed:
                return self._lost(job_id, index)
            if join is None:
                return "shard_done"
            owned = job.shards, join
            with Heartbeat(self.store, job_id, job.shards, join, self.heartbeat_s):
                return self._join(job, join)
        except ServeError as error:  # the model refused the job (gone, wrong task ...)
            self.store.finish(job_id, *owned, FAILED, error.code, error.message)
            return FAILED
        except Exception as error:
            return self._failed(job, *owned, error)
        except BaseException:
            # Shutdown (SIGTERM, Ctrl-C): hand the shard back at once instead of
            # leaving it for the stale sweep.
            if self.store.release(job_id, *owned):
                self.requeue(job_id, owned[0])
                log.info("job %s shard %d: handed back to the queue on shutdown", job_id, owned[0])
            raise

    def _lost(self, job_id: str, index: int) -> str:
        """The shard is no longer this attempt's: the job was cancelled (its
        results go), failed by another shard, or the shard was taken over."""
        current = self.store.get(job_id)
        status = current.status if current is not None else "gone"
        log.info("job %s shard %d: stopped, the job is %s", job_id, index,
                 status if status != RUNNING else "running, this shard taken over")
        if status == CANCELLED:
            self.results.delete(job_id)
            return CANCELLED
        return "taken_over"

    def _failed(self, job: Job, index: int, attempt: int, error: Exception) -> str:
        """An error the model did not expect: retried while the shard has attempts left."""
        what = f"the worker failed: {type(error).__name__}"
        if attempt < self.max_attempts:
            log.warning("job %s shard %d failed (attempt %d of %d); queued again", job.id, index, attempt,
                        self.max_attempts, exc_info=True)
            if self.store.release(job.id, index, attempt):
                self.requeue(job.id, index)
            return "retried"
        log.exception("job %s shard %d failed on its last attempt", job.id, index)
        if job.on_error == ON_ERROR_SKIP and index < job.shards:
            return self._skip(job, index, attempt, "internal_error", f"{what} (shard {index}, {attempt} attempts)")
        self.store.finish(job.id, index, attempt, FAILED, "internal_error", what)
        return FAILED

    def _skip(self, job: Job, index: int, attempt: int, code: str, message: str) -> str:
        """Give up on a shard of a job that skips failures: an error line per input."""
        lo, hi = job.shard_range(index)
        self.results.write_part(job.id, index, skipped_lines(lo, hi, code, message))
        metrics.JOB_INPUTS.labels(job.model, "failed").inc(hi - lo)
        completed, join = self.store.complete(job.id, index, attempt, 0)
        if completed and join is not None:
            with Heartbeat(self.store, job.id, job.shards, join, self.heartbeat_s):
                self._join(job, join)
        return "skipped"

    def _join(self, job: Job, attempt: int) -> str:
        """Every data shard succeeded: join their parts into the result (unless
        an earlier join did and died before saying so), and the job succeeded."""
        if not self.results.has_result(job.id):
            # Joining the parts takes a while in object storage: still beating.
            with tracing.span("job done", {"serve.job.id": job.id, "serve.job.shards": job.shards}):
                self.results.finalize(job.id, job.shards)
        if self.store.finish(job.id, job.shards, attempt, SUCCEEDED):
            log.info("job %s: succeeded", job.id)
            return SUCCEEDED
        return self._lost(job.id, job.shards)

    def _shard(self, job: Job, index: int, attempt: int) -> tuple[str | None, int]:
        """Compute data shard ``index`` and save its part: (None when done, else
        what stopped it; the inputs computed since its last saved progress)."""
        if attempt > self.max_attempts:  # a skipping job's shard whose workers were lost too often
            lo, hi = job.shard_range(index)
            self.results.write_part(job.id, index, skipped_lines(
                lo, hi, "worker_lost", f"the worker running shard {index} stopped answering, {attempt - 1} time(s)"))
            return None, 0
        if self.results.has_part(job.id, index):  # saved by an attempt that died before saying so
            return None, 0
        spec = self.store.shard_inputs(job.id, index)
        if spec is None:  # cancelled (and its inputs dropped) since the claim
            return self._lost(job.id, index), 0
        _, task = self.predictor.model(job.model)
        inputs = read_shard(spec, task, self.predictor.limits, self.sources)
        lo, hi = job.shard_range(index)
        if len(inputs) != hi - lo:
            raise RuntimeError(f"shard {index} holds {len(inputs)} inputs, not {hi - lo}")
        units = self._steps(job, inputs)
        # From nothing: what a lost attempt had counted of this shard is computed again
        # (and a model's steps are shown from 0).
        if (attempt > 1 or job.steps_total) and not self.store.progress(job.id, index, attempt, 0, 0, 0):
            return self._lost(job.id, index), 0
        lines: list[bytes] = []
        batch = max(1, min(job.batch_size, len(inputs)))
        done = steps = computed = 0
        ok_inputs, failed_inputs = metrics.JOB_INPUTS.labels(job.model, "ok"), metrics.JOB_INPUTS.labels(job.model, "failed")
        batch_duration = metrics.JOB_BATCH_DURATION.labels(job.model)
        saved_at = time.monotonic()
        for start in range(0, len(inputs), batch):
            end = min(start + batch, len(inputs))

            def save(i: int, suffix: str, data: bytes, first: int = lo + start) -> str:
                name = file_name(first + i, suffix)
                self.results.write_file(job.id, name, data)
                return name

            started = time.perf_counter()
            try:
                with tracing.span("job batch", {"serve.job.batch.index": (lo + start) // batch,
                                                "serve.batch.size": end - start}), \
                        reporting(StepProgress(self.store, job, index, attempt, done, steps)):
                    rows = run_batch(self.predictor, job.model, inputs[start:end], job.parameters, save, lo + start)
            except Stopped:  # cancelled or taken over between two steps of an input
                log.info("job %s shard %d: stopped during input %d/%d", job.id, index, lo + done + 1, job.total)
                return self._lost(job.id, index), 0
            lines += [orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows]
            failed = sum(1 for row in rows if "error" in row)
            ok_inputs.inc(len(rows) - failed)
            if failed:
                failed_inputs.inc(failed)
            batch_duration.observe(time.perf_counter() - started)
            done, steps = end, steps + sum(units[start:end])
            computed += end - start
            # Saved at most every PROGRESS_S (and by the shard's completion):
            # a store write per batch of a fast model would cost more than the batch.
            if end < len(inputs) and (units[start] or time.monotonic() - saved_at >= PROGRESS_S):
                saved_at = time.monotonic()
                if not self.store.progress(job.id, index, attempt, done, computed, steps):
                    return self._lost(job.id, index), 0
                computed = 0
        self.results.write_part(job.id, index, b"".join(lines))
        return None, computed

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
