"""The pieces of a streaming session that know nothing of sockets or Flask.

- ``StreamStats``: the counters of one connection (frames received, processed,
  dropped, failed). The one place where stream metrics hook in.
- ``FrameInbox``: what a connection's reader hands its processor. Frames go to a
  one-slot holder where the newest wins (the frame it replaces is counted as
  dropped), so a client faster than the model never piles frames up; notices
  (answers to option messages) go to a short queue of their own.
- ``ConnectionGate``: at most N open streams per worker process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from serving import metrics

T = TypeVar("T")


@dataclass
class StreamStats:
    """Counters of one stream connection.

    Every frame received ends in exactly one of processed, failed or dropped
    (or is still pending): ``received == processed + failed + dropped + pending``.
    Metrics hook here: one call per event, each with what a metric needs.
    """

    received: int = 0
    processed: int = 0
    dropped: int = 0
    failed: int = 0

    def frame_received(self, size: int) -> None:
        self.received += 1
        metrics.STREAM_RECEIVED.inc()
        metrics.STREAM_FRAME_BYTES.observe(size)

    def frame_dropped(self) -> None:
        self.dropped += 1
        metrics.STREAM_DROPPED.inc()

    def frame_processed(self, model_seconds: float) -> None:
        self.processed += 1
        metrics.STREAM_PROCESSED.inc()

    def frame_failed(self, code: str) -> None:
        self.failed += 1
        metrics.STREAM_FAILED.inc()


@dataclass(frozen=True)
class Frame:
    """One binary message: its sequence number (1-based, in arrival order)."""

    seq: int
    data: bytes
    received_at: float


@dataclass
class Taken(Generic[T]):
    """What the processor takes in one go: notices first, then at most one frame."""

    notices: list[Any]
    frame: T | None
    closed: bool


class FrameInbox:
    """Newest-wins frame holder plus a bounded notice queue, for one reader and
    one processor thread."""

    def __init__(self, stats: StreamStats, max_notices: int = 8) -> None:
        self.stats = stats
        self._frame: Frame | None = None
        # A client that floods option messages loses the oldest answers, never memory.
        self._notices: deque[Any] = deque(maxlen=max_notices)
        self._closed = False
        self._close_reason: tuple[int, str] | None = None
        self._cond = threading.Condition()

    def put_frame(self, data: bytes) -> Frame:
        """Store a new frame; a frame still waiting is replaced and counted as dropped."""
        with self._cond:
            self.stats.frame_received(len(data))
            frame = Frame(seq=self.stats.received, data=data, received_at=time.monotonic())
            if self._frame is not None:
                self.stats.frame_dropped()
            self._frame = frame
            self._cond.notify()
            return frame

    def put_notice(self, notice: Any) -> None:
        with self._cond:
            self._notices.append(notice)
            self._cond.notify()

    def close(self, reason: tuple[int, str] | None = None) -> None:
        """No more input; ``reason`` (close code, text) is what the server should send, if anything."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._close_reason = reason
            self._cond.notify()

    @property
    def close_reason(self) -> tuple[int, str] | None:
        return self._close_reason

    def take(self, timeout: float | None = None) -> Taken[Frame]:
        """Wait until there is a notice, a frame or the close; take them all.

        After the close, a frame still waiting is discarded: nobody reads its answer.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._notices or self._frame is not None or self._closed, timeout)
            notices = list(self._notices)
            self._notices.clear()
            frame, self._frame = self._frame, None
            if self._closed and frame is not None:
                self.stats.frame_dropped()
                frame = None
            return Taken(notices=notices, frame=frame, closed=self._closed)

    def counts(self) -> dict[str, int]:
        """A consistent snapshot of the counters and of the frame waiting (0 or 1)."""
        with self._cond:
            return {
                "received": self.stats.received,
                "processed": self.stats.processed,
                "failed": self.stats.failed,
                "dropped": self.stats.dropped,
                "pending": int(self._frame is not None),
            }


class ConnectionGate:
    """At most ``limit`` holders at once in this process; never blocks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self._open >= self.limit:
                return False
            self._open += 1
            metrics.STREAMS_OPEN.set(self._open)
            return True

    def leave(self) -> None:
        with self._lock:
            self._open = max(0, self._open - 1)
            metrics.STREAMS_OPEN.set(self._open)

    @property
    def open(self) -> int:
        return self._open
