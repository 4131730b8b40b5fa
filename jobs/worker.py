"""The job worker: ``python -m jobs.worker`` (``make worker``).

Loads the model repository once in the main process, the way Gunicorn's master
does, then lets huey's consumer fork ``SERVE_JOB_WORKERS`` processes that share
those pages. The fork-safety rules of ``gunicorn.conf.py`` hold here too: the
main process runs no model (OpenMP state made before a fork hangs the child),
collects and freezes the heap before forking, and each child sets its own
torch and OpenCV thread counts. The main process also runs the stale-job sweep
(``jobs.maintenance``) every heartbeat interval.
"""

from __future__ import annotations

import gc
import logging
import logging.config
import os
import time

from huey.consumer import Consumer

from jobs.backends import build_backends
from jobs.maintenance import Maintenance
from jobs.queue import install_runner
from jobs.runner import JobRunner
from predict import ModelRegistry, Predictor
from serving import logs
from serving.cache import NullCache
from serving.settings import Settings
from serving.threads import set_compute_threads
from tasks import Limits

log = logging.getLogger("jobs.worker")


class JobConsumer(Consumer):
    """huey's consumer plus the sweep, run from its main loop (no extra thread)."""

    def __init__(self, huey, maintenance: Maintenance, interval: float, **options) -> None:
        super().__init__(huey, **options)
        self.maintenance = maintenance
        self.interval = interval
        self._next_sweep = 0.0

    def loop(self, health_check_ts=None):
        health_check_ts = super().loop(health_check_ts)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.interval
            try:
                self.maintenance.sweep()
            except Exception:  # a broker hiccup must not stop the consumer
                log.warning("job sweep failed", exc_info=True)
        return health_check_ts


def compute_threads(settings: Settings) -> int:
    """Torch / OpenCV threads per job process: ``SERVE_TORCH_THREADS`` or cores // processes."""
    return settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.job_workers)


def build_consumer(settings: Settings) -> JobConsumer:
    registry = ModelRegistry(settings.model_repository, settings.models)
    registry.load_all()
    backends = build_backends(settings)
    # A job is one big batch already: the model is called directly, and the
    # prediction cache is left to interactive traffic.
    predictor = Predictor(registry, NullCache(), batching=False, limits=Limits.from_settings(settings))
    install_runner(
        JobRunner(backends.store, backends.results, predictor, settings.job_heartbeat_s, backends.queue.enqueue)
    )
    huey = backends.queue.huey
    threads = compute_threads(settings)

    @huey.on_startup()
    def per_process_threads() -> None:
        set_compute_threads(threads)
        log.info("job worker process %d: %d compute thread(s)", os.getpid(), threads)

    consumer = JobConsumer(
        huey,
        Maintenance(settings, backends),
        interval=settings.job_heartbeat_s,
        workers=settings.job_workers,
        worker_type="process",
        periodic=False,
        # SQLite is polled: start at 50 ms, back off to at most 1 s when idle.
        initial_delay=0.05,
        max_delay=1.0,
        health_check_interval=5,
    )
    gc.collect()
    gc.freeze()
    log.info("job worker ready: %s, %d model(s), %d process(es)", backends.name, len(registry), settings.job_workers)
    return consumer


def main() -> None:
    settings = Settings()
    # The same log lines as the web processes: JSON (or text) with request ids.
    logging.config.dictConfig(logs.logging_config(settings.log_format, settings.log_level))
    build_consumer(settings).run()


if __name__ == "__main__":
    main()
