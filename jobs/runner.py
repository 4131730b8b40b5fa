"""Runs one job in a worker process: claim it, skip the batches a previous
attempt saved, run the rest through the model in batches, save each batch's
results and the progress, and stop between batches when the job was cancelled
or taken over."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import orjson

from jobs.records import CANCELLED, FAILED, SUCCEEDED, JobStore
from jobs.inference import run_batch
from jobs.results import ResultStorage
from predict import Predictor
from serving.errors import ServeError

log = logging.getLogger("jobs.runner")


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
        try:
            with Heartbeat(self.store, job_id, attempt, self.heartbeat_s):
                if self.results.has_result(job_id):
                    # A previous attempt died between joining the parts and saying so.
                    finished = self.store.progress(job_id, attempt, job.total, 0)
                else:
                    finished = self._run_batches(job, attempt)
                    if finished:
                        # Joining the parts takes a while in object storage: still beating.
                        self.results.finalize(job_id, job.batches)
            if finished and self.store.finish(job_id, attempt, SUCCEEDED):
                log.info("job %s: succeeded", job_id)
            elif (current := self.store.get(job_id)) is not None and current.status == CANCELLED:
                self.results.delete(job_id)
        except ServeError as error:  # the model refused the job (gone, wrong task ...)
            self.store.finish(job_id, attempt, FAILED, error.code, error.message)
        except Exception as error:
            log.exception("job %s failed", job_id)
            self.store.finish(job_id, attempt, FAILED, "internal_error", f"the worker failed: {type(error).__name__}")
        except BaseException:
            # Shutdown (SIGTERM, Ctrl-C): hand the job back at once instead of
            # leaving it for the stale sweep; the saved batches are kept.
            if self.store.release(job_id, attempt):
                self.requeue(job_id)
                log.info("job %s: handed back to the queue on shutdown", job_id)
            raise

    def _run_batches(self, job, attempt: int) -> bool:
        saved = self.results.parts(job.id)
        done = sum(hi - lo for lo, hi in map(job.batch_range, saved))
        if not self.store.progress(job.id, attempt, done, 0):
            return False
        inputs = self.store.inputs(job.id)
        if len(inputs) != job.total:  # cancelled (and its inputs dropped) since the claim
            return False
        for index in range(job.batches):
            if index in saved:
                continue
            lo, hi = job.batch_range(index)
            rows = run_batch(self.predictor, job.model, inputs[lo:hi], job.parameters)
            data = b"".join(orjson.dumps({"index": lo + i, **row}) + b"\n" for i, row in enumerate(rows))
            self.results.write_part(job.id, index, data)
            done += hi - lo
            if not self.store.progress(job.id, attempt, done, hi - lo):
                log.info("job %s: cancelled or taken over at %d/%d", job.id, done, job.total)
                return False
        return True
