"""Dynamic micro-batching: concurrent requests inside one worker become one call.

Request threads ``submit`` their inputs and wait; one batching thread per model
takes what is queued, up to ``max_batch_size`` inputs or ``max_wait_ms`` after the
first arrived, calls the model once, and hands each request its own slice of the
results. Independent of Flask and of models: it batches any
``fn(list) -> list`` of the same length.

- The queue is bounded (``max_queue`` inputs): past it ``submit`` raises
  ``Overloaded`` at once, so an overloaded worker sheds load instead of queueing
  work it will finish too late.
- It is also bounded in time (``max_queue_wait_ms``): a request whose inputs
  would wait longer than that behind the inputs queued and running, at the
  seconds per input recent model calls took (under whatever else shares the
  cores), is refused at once. The answers it admits stay close to the model's
  own latency, and the rest get a fast 503 instead of a late 200.
- Each request has a deadline; one whose deadline passes while it is queued is
  dropped, never computed, and its caller gets ``DeadlineExceeded``.
- If a batched call fails, each request of the batch is retried on its own, so
  one bad input fails only its own request.
- An optional observer hears of every model call (size, seconds) and of the
  queue depth: that is how metrics see batching without this module knowing them.
- While the model runs, the log context names the request ids of the batch.
- With tracing on (``serving/tracing.py``), each model call is one span linked
  to every request it serves, and each request records its ``queue wait``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

from serving import tracing
from serving.errors import DeadlineExceeded, Overloaded
from serving.logs import REQUEST_ID

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

_SMOOTHING = 0.25  # weight of the newest model call in seconds_per_input


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_ms: float = 30_000.0
    max_queue_wait_ms: float = 0.0  # 0: no bound in time


class BatchObserver(Protocol):
    def model_call(self, size: int, seconds: float) -> None: ...

    def queue_depth(self, inputs: int) -> None: ...


class _Unobserved:
    def model_call(self, size: int, seconds: float) -> None:
        pass

    def queue_depth(self, inputs: int) -> None:
        pass


@dataclass(eq=False)
class _Pending:
    items: list
    deadline: float
    request_id: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    results: list | None = None
    error: BaseException | None = None
    abandoned: bool = False
    # Tracing only: the request's recorded span, when it was queued and its batch began (monotonic).
    span: Any = None
    queued_at: float = 0.0
    started_at: float = 0.0
    batch_span: Any = None
    batch_size: int = 0

    def finish(self, results: list | None = None, error: BaseException | None = None) -> None:
        self.results, self.error = results, error
        self.done.set()


class MicroBatcher(Generic[T, R]):
    """Batches calls to ``fn`` from many threads of one process.

    The batching thread starts on first use in each process, so a batcher built
    in the Gunicorn master works in every forked worker (threads do not survive
    ``fork``).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        config: BatchConfig,
        name: str = "model",
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.fn = fn
        self.config = config
        self.name = name
        self.observer = observer or _Unobserved()
        self.clock = clock  # times model calls; tests pass their own
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._running_items = 0  # inputs of the model call under way
        self.seconds_per_input = 0.0  # moving average over recent calls; 0 until the first
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False
        self.batches = 0  # how many calls to fn, for tests and metrics

    @property
    def queued(self) -> int:
        """Inputs waiting, not yet taken into a batch."""
        return self._queued_items

    def submit(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Results for ``items`` in order; blocks until they are computed."""
        items = list(items)
        if not items:
            return []
        wait = self.config.timeout_ms / 1000 if timeout is None else timeout
        pending = _Pending(items=items, deadline=time.monotonic() + wait, request_id=REQUEST_ID.get())
        if tracing.ENABLED:  # a request that is not recorded costs its batch nothing
            pending.span = tracing.recorded()
            pending.queued_at = time.monotonic() if pending.span is not None else 0.0
        with self._cond:
            if self._closed:
                raise Overloaded(f"model {self.name!r} is shutting down")
            # A request larger than the whole queue is still admitted when the
            # queue is empty: it is one batch on its own.
            if self._queued_items and self._queued_items + len(items) > self.config.max_queue:
                raise Overloaded(
                    f"model {self.name!r} has {self._queued_items} inputs queued; try again shortly",
                    details={"queued": self._queued_items, "limit": self.config.max_queue},
                )
            wait_ms = (self._queued_items + self._running_items) * self.seconds_per_input * 1000
            if self.config.max_queue_wait_ms and wait_ms > self.config.max_queue_wait_ms:
                raise Overloaded(
                    f"model {self.name!r} would start on this request in about {wait_ms:.0f} ms; try again shortly",
                    details={"expected_wait_ms": round(wait_ms), "limit_ms": self.config.max_queue_wait_ms},
                )
            self._ensure_thread()
            self._queue.append(pending)
            self._queued_items += len(items)
            self.observer.queue_depth(self._queued_items)
            self._cond.notify()
        if not pending.done.wait(wait):
            with self._cond:
                if not pending.done.is_set():
                    pending.abandoned = True
            if not pending.done.is_set():
                raise DeadlineExceeded(f"model {self.name!r} did not answer within {wait:.1f}s")
        if pending.started_at:
            tracing.queue_wait(self.name, pending.queued_at, pending.started_at, pending.batch_span, pending.batch_size)
        if pending.error is not None:
            raise pending.error
        assert pending.results is not None
        return pending.results

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work; what is queued is still computed, then the thread ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    # --- the batching thread ---------------------------------------------------------

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._thread is None or self._pid != pid or not self._thread.is_alive():
            if self._pid != pid:  # forked: the parent's queue and lock state mean nothing here
                self._queue.clear()
                self._queued_items = 0
            self._pid = pid
            self._thread = threading.Thread(target=self._loop, name=f"batcher-{self.name}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _take(self) -> list[_Pending] | None:
        """Wait for work, then gather up to max_batch_size inputs or max_wait_ms."""
        cfg = self.config
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first_at = time.monotonic()
            until = first_at + cfg.max_wait_ms / 1000
            while self._queued_items < cfg.max_batch_size and not self._closed:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Pending] = []
            size = 0
            now = time.monotonic()
            while self._queue:
                pending = self._queue[0]
                if batch and size + len(pending.items) > cfg.max_batch_size:
                    break
                self._queue.popleft()
                self._queued_items -= len(pending.items)
                if pending.abandoned or now >= pending.deadline:
                    # Its caller has given up: computing it would only delay the rest.
                    pending.finish(error=DeadlineExceeded(f"model {self.name!r}: deadline passed in the queue"))
                    continue
                batch.append(pending)
                size += len(pending.items)
            self.observer.queue_depth(self._queued_items)
            return batch

    def _run(self, batch: list[_Pending]) -> None:
        items = [item for pending in batch for item in pending.items]
        try:
            results = list(self._call(items, batch))
        except BaseException as error:  # noqa: BLE001 - every failure goes back to a caller
            if len(batch) == 1:
                batch[0].finish(error=error)
                return
            # Find the culprit: each request on its own. The failing request's
            # handler logs its error (once, under its own request id).
            log.warning("model %s failed on a batch of %d inputs; retrying each request alone", self.name, len(items))
            for pending in batch:
                try:
                    pending.finish(results=list(self._call(pending.items, [pending])))
                except BaseException as own_error:  # noqa: BLE001
                    pending.finish(error=own_error)
            return
        if len(results) != len(items):
            error = RuntimeError(f"model {self.name!r} returned {len(results)} results for {len(items)} inputs")
            for pending in batch:
                pending.finish(error=error)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.items)
            pending.finish(results=results[start:end])
            start = end

    def _call(self, items: list[T], batch: list[_Pending]) -> Sequence[R]:
        self.batches += 1
        token = REQUEST_ID.set(",".join(p.request_id for p in batch if p.request_id))
        self._running_items = len(items)
        try:
            with tracing.batch(self.name, [p.span for p in batch], len(items)) as span:
                if tracing.ENABLED:
                    began, found = time.monotonic(), span.get_span_context() if span is not None else None
                    for pending in batch:
                        pending.started_at, pending.batch_span, pending.batch_size = began, found, len(items)
                return self._timed(items)
        finally:
            self._running_items = 0
            REQUEST_ID.reset(token)

    def _timed(self, items: list[T]) -> Sequence[R]:
        started = self.clock()
        try:
            return self.fn(items)
        finally:
            seconds = self.clock() - started
            per_input = seconds / len(items)
            # Recent calls weigh most: the cores' other tenants come and go.
            previous = self.seconds_per_input
            self.seconds_per_input = per_input if not previous else previous + _SMOOTHING * (per_input - previous)
            self.observer.model_call(len(items), seconds)


def run_unbatched(
    fn: Callable[[list[Any]], Sequence[Any]], observer: BatchObserver | None = None, name: str = "model"
) -> Callable[[Sequence[Any]], list[Any]]:
    """The same calling shape as ``MicroBatcher.submit`` for models without batching."""
    watch = observer or _Unobserved()

    def run(items: Sequence[Any], timeout: float | None = None) -> list[Any]:
        with tracing.batch(name, [tracing.recorded()], len(items)):
            started = time.perf_counter()
            try:
                return list(fn(list(items)))
            finally:
                watch.model_call(len(items), time.perf_counter() - started)

    return run
