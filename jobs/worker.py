"""The job worker: ``python -m jobs.worker`` (``make worker``).

Loads the model repository once in the main process, the way Gunicorn's master
does, then lets huey's consumer fork ``SERVE_JOB_WORKERS`` processes that share
those pages. The fork-safety rules of ``gunicorn.conf.py`` hold here too: the
main process runs no model (OpenMP state made before a fork hangs the child),
collects and freezes the heap before forking, and each child sets its own
torch and OpenCV thread counts. Scheduled work (the stale-job sweep, every
site's forecast, the disk cache's pruning) runs in the pool too, as huey
tasks on their schedules (``jobs/periodic.py``); the main process only keeps
those chains alive, and this worker's heartbeat (``jobs/presence.py``), by
which web processes know that a worker will take their jobs.

Its processes' metrics (inputs computed, batches, attempts, per model) are
served by this main process on ``SERVE_JOB_METRICS_PORT`` (``jobs/exporter.py``),
and with ``OTEL_*`` set each job process sends its spans (``serving/tracing.py``).

A Redis job backend that keeps nothing on disk is refused (exit 1, one line
saying why), unless ``SERVE_JOBS_ALLOW_VOLATILE=true``: checked before the
models load, and again before each heartbeat while Redis has not answered.
"""

from __future__ import annotations

if __name__ == "__main__":
    # First, before prometheus_client is imported (predict imports it): the job
    # processes count into this worker's own metrics folder (jobs/exporter.py).
    from jobs.exporter import prepare as _prepare_metrics
    from serving.settings import Settings as _Settings

    _METRICS = _prepare_metrics(_Settings())

import gc
import logging
import logging.config
import os
import time
from pathlib import Path
from typing import Callable

from huey.consumer import Consumer, ConsumerStopped

from jobs import exporter
from jobs.backends import build_backends, build_store
from jobs.forecasts import build_forecast_store, refresh_all
from jobs.maintenance import Maintenance
from jobs.periodic import CACHE_PRUNE, FORECASTS, JOB_SWEEP, Periodic
from jobs.presence import Presence
from jobs.queue import install_runner
from jobs.runner import JobRunner
from predict import ModelRegistry, Predictor
from serving import logs, tracing
from serving.cache import DiskCache, NullCache
from serving.errors import JobBackendVolatile, ModelLoadError
from serving.schedule import Schedule
from serving.settings import Settings
from serving.threads import set_compute_threads
from tasks import TIME_SERIES_FORECAST, Limits

log = logging.getLogger("jobs.worker")


class JobConsumer(Consumer):
    """huey's consumer, whose main loop also keeps the scheduled chains alive
    and beats this worker's heartbeat, both every ``interval`` seconds."""

    def __init__(self, huey, chains: Periodic, presence: Presence, interval: float, **options) -> None:
        super().__init__(huey, **options)
        self.chains = chains
        self.presence = presence
        self.interval = interval
        self.exit_code = 0
        self._next_watch = 0.0

    def loop(self, health_check_ts=None):
        try:
            health_check_ts = super().loop(health_check_ts)
        except ConsumerStopped:  # a signal, or the refusal below: a clean stop
            self.presence.leave()
            raise
        if time.monotonic() >= self._next_watch:
            self._next_watch = time.monotonic() + self.interval
            try:
                self.presence.beat()
            except JobBackendVolatile as refused:
                log.critical("job worker: stopping: %s", refused.message)
                self.exit_code = 1
                self.stop()  # running jobs are handed back, as on SIGTERM
                self.presence.leave()
                raise ConsumerStopped from None
            try:
                self.chains.watch()
            except Exception:  # a broker hiccup must not stop the consumer
                log.warning("checking the scheduled tasks failed", exc_info=True)
        return health_check_ts


def compute_threads(settings: Settings) -> int:
    """Torch / OpenCV threads per job process: ``SERVE_TORCH_THREADS`` or cores // processes."""
    return settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.job_workers)


def scheduled_actions(settings: Settings, backends, registry: ModelRegistry, predictor: Predictor) -> dict[str, Callable[[], object]]:
    """What each scheduled task does; a task with nothing to do here is left out."""
    actions: dict[str, Callable[[], object]] = {JOB_SWEEP: Maintenance(settings, backends).sweep}
    name = settings.forecast_model
    if any(m.name == name and m.task == TIME_SERIES_FORECAST for m in registry):
        store = build_forecast_store(settings)
        actions[FORECASTS] = lambda: refresh_all(predictor, store, name)
    if settings.cache_backend == "disk":
        actions[CACHE_PRUNE] = DiskCache(settings.cache_dir, settings.cache_max_bytes).prune
    return actions


def build_consumer(settings: Settings, presence: Presence) -> JobConsumer:
    registry = ModelRegistry(settings.model_repository, settings.models, runs_jobs=True)
    registry.load_all()
    backends = build_backends(settings)
    # A job is one big batch already: the model is called directly, and the
    # prediction cache is left to interactive traffic.
    predictor = Predictor(registry, NullCache(), batching=False, limits=Limits.from_settings(settings))
    install_runner(
        JobRunner(backends.store, backends.results, predictor, settings.job_heartbeat_s, backends.queue.enqueue,
                  max_attempts=settings.job_max_attempts, sources=backends.sources)
    )
    huey = backends.queue.huey
    threads = compute_threads(settings)
    chains = Periodic(
        huey,
        schedules={
            JOB_SWEEP: Schedule.parse(settings.schedule_job_sweep),
            FORECASTS: Schedule.parse(settings.schedule_forecasts),
            CACHE_PRUNE: Schedule.parse(settings.schedule_cache_prune),
        },
        actions=scheduled_actions(settings, backends, registry, predictor),
        lost_after=settings.job_visibility_timeout_s,
        heartbeat_s=settings.job_heartbeat_s,
    )

    @huey.on_startup()
    def per_process_threads() -> None:
        set_compute_threads(threads)
        log.info("job worker process %d: %d compute thread(s)", os.getpid(), threads)
        tracing.start("jobs")  # if OTEL_* asks: after fork, in each job process

    @huey.on_shutdown()
    def flush_traces() -> None:
        tracing.stop()

    consumer = JobConsumer(
        huey,
        chains,
        presence,
        interval=settings.job_heartbeat_s,
        workers=settings.job_workers,
        worker_type="process",
        periodic=False,  # huey's once-a-minute periodic tasks: ours are ETA chains (jobs/periodic.py)
        # SQLite is polled: start at 50 ms, back off to at most 1 s when idle.
        initial_delay=0.05,
        max_delay=1.0,
        health_check_interval=5,
    )
    gc.collect()
    gc.freeze()
    log.info("job worker ready: %s, %d model(s), %d process(es)", backends.name, len(registry), settings.job_workers)
    return consumer


def refuse_volatile(store) -> None:
    """Exit 1 with one line if the job backend would lose every job on a restart;
    a backend that does not answer yet is checked again before each heartbeat."""
    try:
        store.check_durable()
    except JobBackendVolatile as refused:
        log.critical("job worker: cannot start: %s", refused.message)
        raise SystemExit(1) from None
    except Exception as error:
        log.warning("job worker: the job backend does not answer yet (%s: %s); going on", type(error).__name__, error)


def main(metrics_folder: Path | None = None) -> None:
    """Run the worker; ``metrics_folder``: the prepared folder its exporter serves."""
    settings = Settings()
    # The same log lines as the web processes: JSON (or text) with request ids,
    # libraries' output included.
    logs.route_library_output()
    logging.config.dictConfig(logs.logging_config(settings.log_format, settings.log_level))
    store = build_store(settings)
    refuse_volatile(store)
    presence = Presence(store, settings.job_heartbeat_s)
    try:
        with presence.beating():  # alive while the models load
            consumer = build_consumer(settings, presence)
    except ModelLoadError as exc:  # one line naming the model, as the web server's
        presence.leave()
        log.critical("job worker: cannot start: %s", exc)
        raise SystemExit(1) from None
    if presence.refused is not None:  # Redis answered while the models loaded
        presence.leave()
        log.critical("job worker: cannot start: %s", presence.refused.message)
        raise SystemExit(1)
    exporter.serve(settings, metrics_folder)
    consumer.run()
    if consumer.exit_code:
        raise SystemExit(consumer.exit_code)


if __name__ == "__main__":
    main(_METRICS)
