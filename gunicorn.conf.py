"""Gunicorn settings and process hooks; every knob comes from ``serving.settings``.

    gunicorn -c gunicorn.conf.py serve_http:app

The master preloads the app (and so the model weights) once; workers share those
pages copy-on-write. The hooks keep that true and keep torch safe under fork:

- the master loads weights but runs no torch compute, not even a warm-up:
  OpenMP state created before fork makes forked workers hang;
- ``gc.freeze()`` before fork, so a worker's garbage collections do not write
  to (and so copy) every shared object's header;
- torch intra-op threads are set per worker after fork so that
  workers x threads never exceeds the cores.
"""

from __future__ import annotations

import gc
import sys

from serving.settings import load_settings_on_reload

_settings = load_settings_on_reload()

wsgi_app = "serve_http:app"
bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = _settings.worker_class
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
loglevel = _settings.log_level
accesslog = _settings.access_log or None
access_log_format = _settings.access_log_format
errorlog = "-"
preload_app = True
# The request line and headers are client input: keep Gunicorn's own bounds.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# The application's own loggers (root) go to stderr in Gunicorn's error-log
# shape; gunicorn.error and gunicorn.access keep the handlers Gunicorn builds
# from `errorlog` and `accesslog`, so they are not named here.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
    },
    "root": {"level": _settings.log_level.upper(), "handlers": ["stderr"]},
    "loggers": {
        # It announces every config attribute at INFO.
        "flask_pydantic_spec": {"level": "WARNING"},
    },
}


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
    # SIGHUP: re-read the API keys in the master, before the new workers fork
    # from it (preload_app: the app itself is not rebuilt).
    from api.access import KEY_RING

    ring = server.app.wsgi().extensions.get(KEY_RING)
    if ring is not None:
        ring.reload()


def post_fork(server, worker) -> None:
    threads_per_worker = _settings.torch_threads_per_worker()
    if "torch" in sys.modules:  # only when a torch model is loaded
        import torch

        torch.set_num_threads(threads_per_worker)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already fixed by an earlier parallel call
            pass
    if "cv2" in sys.modules:
        import cv2

        cv2.setNumThreads(threads_per_worker)
    server.log.info("worker %s: %d compute thread(s)", worker.pid, threads_per_worker)
