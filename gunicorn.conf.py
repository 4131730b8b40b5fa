"""Gunicorn settings and process hooks; every knob comes from ``serving.settings``.

    gunicorn -c gunicorn.conf.py serve_http:app

The master preloads the app (and so the model weights) once; workers share those
pages copy-on-write. The hooks keep that true and keep torch safe under fork:

- the master loads weights but runs no torch compute, not even a warm-up:
  OpenMP state created before fork makes forked workers hang;
- ``gc.freeze()`` before fork, so a worker's garbage collections do not write
  to (and so copy) every shared object's header;
- torch intra-op threads are set per worker after fork so that
  workers x threads never exceeds the cores;
- traces (``serving/tracing.py``, when ``OTEL_*`` asks for them) start in
  each worker after fork and are flushed when it exits;
- Prometheus multiprocess mode: the folder is set and wiped here, when this
  file is read, because ``preload_app`` builds the app (and its metrics)
  before ``on_starting`` runs; ``child_exit`` marks a worker dead and folds
  its counts into the archive (``serving/multiprocess.py``).
"""

from __future__ import annotations

import gc

from serving import control, multiprocess
from serving.settings import load_settings_on_reload

_settings = load_settings_on_reload()
# Before anything imports prometheus_client (the app does, when preloaded).
multiprocess.prepare(_settings.metrics_path())
control.prepare(_settings.control_path())

from serving import logs, tracing  # noqa: E402 - after the metrics folder is set
from serving.threads import set_compute_threads  # noqa: E402
from serving.reading import ReadLimits  # noqa: E402
from serving.worker import SheddingThreadWorker, raise_open_files  # noqa: E402

wsgi_app = "serve_http:app"
bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
# gthread with a bounded backlog (serving/worker.py); other classes as named.
SheddingThreadWorker.backlog = _settings.worker_backlog
SheddingThreadWorker.accept_delay = _settings.worker_accept_delay_ms / 1000
SheddingThreadWorker.max_wait = _settings.worker_max_wait_ms / 1000
SheddingThreadWorker.read_limits = ReadLimits(
    header_timeout=_settings.header_timeout_s,
    body_timeout=_settings.body_timeout_s,
    max_body=_settings.max_body_bytes,
    max_request_line=8190,
    max_fields=100,
    max_field_size=8190,
)
worker_connections = _settings.worker_connections
# Each connection is a file descriptor: a soft limit of 1,024 (common) would
# stop a worker short of its bound, so it is raised to what the bound needs.
raise_open_files(worker_connections + 256)
worker_class = "serving.worker.SheddingThreadWorker" if _settings.worker_class == "gthread" else _settings.worker_class
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
loglevel = _settings.log_level
accesslog = _settings.access_log or None
access_log_format = _settings.access_log_format
errorlog = "-"
preload_app = True
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
# The request line and headers are client input: keep Gunicorn's own bounds
# (the worker's event loop applies the same while it reads a request).
limit_request_line = SheddingThreadWorker.read_limits.max_request_line
limit_request_fields = SheddingThreadWorker.read_limits.max_fields
limit_request_field_size = SheddingThreadWorker.read_limits.max_field_size

# One formatter for the app's loggers and Gunicorn's error and access logs;
# libraries' warnings and progress output become log records too, before the
# preloaded app imports them.
logs.route_library_output()
logs.GunicornLogger.kind = _settings.log_format
logger_class = logs.GunicornLogger
logconfig_dict = logs.logging_config(_settings.log_format, _settings.log_level)


def when_ready(server) -> None:
    # Models are loaded (preload_app); collect once, then freeze every survivor
    # into the permanent generation before the first fork.
    gc.collect()
    gc.freeze()
    server.log.info("models preloaded; gc frozen before fork")


def pre_fork(server, worker) -> None:
    # Replacement workers are forked later: freeze what the master made since.
    gc.freeze()


def on_reload(server) -> None:
    # SIGHUP, before the new workers fork from the master (preload_app: the app
    # itself is not rebuilt): re-read the API keys, and apply the model changes
    # workers asked for, or re-read the model repository (serving/control.py).
    from api.access import KEY_RING
    from serving import metrics

    app = server.app.wsgi()
    ring = app.extensions.get(KEY_RING)
    if ring is not None:
        ring.reload()
    registry = app.extensions["serve_http"].registry
    # Old models are garbage once replaced; frozen objects would never be collected.
    gc.unfreeze()
    applied = control.apply_pending(
        _settings.control_path(),
        old_workers=list(server.WORKERS),
        apply=lambda action, name: control.apply_change(registry, action, name),
        refresh=lambda: server.log.info("repository re-read: %s", registry.refresh() or "no change"),
    )
    metrics.record_models(registry, registry.load_seconds)
    gc.collect()
    gc.freeze()
    if applied:
        server.log.info("applied %d model change(s)", applied)


def post_fork(server, worker) -> None:
    control.MASTER_PID, control.WORKER = server.pid, worker
    threads_per_worker = _settings.torch_threads_per_worker()
    set_compute_threads(threads_per_worker)
    server.log.info("worker %s: %d compute thread(s)", worker.pid, threads_per_worker)
    # Traces, if OTEL_* asks: a provider (and its exporter thread) per worker, never in the master.
    tracing.start("web")


def worker_exit(server, worker) -> None:
    tracing.stop()  # what is buffered leaves before the worker does


def child_exit(server, worker) -> None:
    from serving import metrics

    multiprocess.worker_exited(worker.pid)
    metrics.WORKER_EXITS.inc()
