"""Whether job workers are alive: each worker's heartbeat in the job store.

A job worker (``python -m jobs.worker``) beats every ``SERVE_JOB_HEARTBEAT_S``
under an id of its own (host, pid, a random token): from a thread while its
models load, then from its consumer's main loop; it forgets its heartbeat when
it stops on purpose, and one that is killed simply stops beating. A web
process counts as alive the workers whose heartbeat is younger than
:func:`alive_window`, and refuses new jobs once none was seen for
``SERVE_JOB_WORKER_GRACE_S`` (``jobs/service.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from typing import Iterator

from jobs.records import JobStore
from serving.errors import JobBackendVolatile
from serving.settings import Settings

log = logging.getLogger("jobs.presence")

ALIVE_BEATS = 3  # heartbeats a worker may miss before it counts as gone
MIN_ALIVE_S = 5.0  # and never less than this: a slow store write is not a death


def alive_window(settings: Settings) -> float:
    """Seconds since its last heartbeat during which a worker counts as alive."""
    return max(ALIVE_BEATS * settings.job_heartbeat_s, MIN_ALIVE_S)


class Presence:
    """One job worker's heartbeat. ``beat`` never raises but for a backend
    the worker must refuse (:class:`JobBackendVolatile`)."""

    def __init__(self, store: JobStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.refused: JobBackendVolatile | None = None
        self._failing = False

    def beat(self) -> None:
        try:
            self.store.check_durable()
            self.store.beat(self.id)
        except JobBackendVolatile:
            raise
        except Exception:  # the store is down: beat again next time, one warning per outage
            if not self._failing:
                log.warning("job worker heartbeat not written; trying every %.1f s", self.interval, exc_info=True)
            self._failing = True
            return
        if self._failing:
            log.info("job worker heartbeat written again")
            self._failing = False

    def leave(self) -> None:
        try:
            self.store.leave(self.id)
        except Exception:
            log.warning("job worker heartbeat not removed; it ages out", exc_info=True)

    @contextmanager
    def beating(self) -> Iterator["Presence"]:
        """Beat from a thread for the duration of the block (the models' loading,
        which may take minutes), so that a worker on its way counts as alive.
        The thread is joined at the end: nothing of it crosses the fork that follows."""
        stop = threading.Event()

        def run() -> None:
            while True:
                try:
                    self.beat()
                except JobBackendVolatile as refused:
                    self.refused = refused
                    return
                if stop.wait(self.interval):
                    return

        thread = threading.Thread(target=run, name="job-worker-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
