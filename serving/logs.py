"""Structured logs: JSON lines by default, plain text by setting.

- Every record carries ``request_id``: the id of the request being handled in
  this thread (a context variable the app sets), or, in a batching thread, the
  ids of the requests whose inputs are in the batch.
- Gunicorn's error log and access log go through the same formatter
  (:class:`GunicornLogger`, Gunicorn's ``logger_class``). The access line is the
  one line per request: method, route template, path, status, duration, model,
  batch size, client address, request id, and the trace id when tracing is
  on (``serving/tracing.py``; other records carry it too). The app hands route, model and batch
  size to it through the WSGI environ (``serve.*`` keys).
- Library output is log records too (:func:`route_library_output`): Python
  warnings, transformers' own logger, no progress bars; so in JSON mode every
  line a process writes is one JSON object.
- Never logged: request bodies, headers, query strings, API keys (only the
  name of the key that matched).
"""

from __future__ import annotations

import logging
import os
import random
import re
from contextvars import ContextVar
from typing import Any

from gunicorn import glogging
from pythonjsonlogger.orjson import OrjsonFormatter

from serving import tracing

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
# A client's X-Request-ID is kept only if it is this sane; otherwise one is made.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_for(incoming: str) -> str:
    """The client's ``X-Request-ID`` if it is sane, else a new random id."""
    # 128 random bits, as a uuid4 has, without its system call per request: an id
    # needs to be unique, not unguessable (random reseeds itself in forked workers).
    return incoming if _CLIENT_REQUEST_ID.match(incoming) else f"{random.getrandbits(128):032x}"

# WSGI environ keys the app fills for the access line.
ENV_ROUTE = "serve.route"
ENV_MODEL = "serve.model"
ENV_BATCH = "serve.batch_size"
ENV_KEY_NAME = "serve.api_key_name"
ENV_TRACE_ID = "serve.trace_id"

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s rid=%(request_id)s: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(process)d %(message)s"


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` to every record that does not carry one already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        if tracing.ENABLED and not hasattr(record, "trace_id"):
            found = tracing.trace_id()
            if found is not None:
                record.trace_id = found
        return True


def build_formatter(kind: str = "json") -> logging.Formatter:
    """The one formatter of every handler: ``json`` (one object per line) or ``text``."""
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    return OrjsonFormatter(
        JSON_FIELDS,
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp="time",  # ISO 8601, UTC
    )


def logging_config(kind: str, level: str) -> dict[str, Any]:
    """``logconfig_dict`` for Gunicorn: the app's loggers (root) to stderr in
    the chosen format, with the request id on every record."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContextFilter}},
        "formatters": {"serve": {"()": build_formatter, "kind": kind}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "serve",
                "filters": ["request"],
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # It announces every config attribute at INFO.
            "flask_pydantic_spec": {"level": "WARNING"},
        },
    }


def route_library_output() -> None:
    """Send what libraries print at import and load through ``logging``; call
    it before any model loads. Covers ``warnings.warn`` (logger ``py.warnings``),
    transformers' logger (it has its own plain-text stderr handler and does not
    propagate) and tqdm progress bars (transformers' and huggingface_hub's: off)."""
    # For the processes this one starts too (huggingface_hub reads it at import).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.captureWarnings(True)
    # Imported here, once per process start: its handler is added at import.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()


class GunicornLogger(glogging.Logger):
    """Gunicorn's logger with our formatter on its error and access handlers and,
    in JSON mode, an access line of named fields instead of a format string."""

    kind = "json"  # set by gunicorn.conf.py from SERVE_LOG_FORMAT

    def setup(self, cfg) -> None:
        super().setup(cfg)
        formatter = build_formatter(self.kind)
        request_filter = RequestContextFilter()
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter)
            handler.addFilter(request_filter)
        if self.kind == "json":
            for handler in self.access_log.handlers:
                handler.setFormatter(formatter)

    def access(self, resp, req, environ, request_time) -> None:
        if self.kind != "json":
            return super().access(resp, req, environ, request_time)
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        request_id = ""
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = value
                break
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        fields: dict[str, Any] = {"request_id": request_id}
        trace_id = environ.get(ENV_TRACE_ID)
        if trace_id:
            fields["trace_id"] = trace_id
        fields.update({
            "method": method,
            "route": environ.get(ENV_ROUTE),
            "path": path,
            "status": int(status),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "client": environ.get("REMOTE_ADDR"),
            "model": environ.get(ENV_MODEL),
            "batch_size": environ.get(ENV_BATCH),
            "api_key": environ.get(ENV_KEY_NAME),
        })
        try:
            self.access_log.info("%s %s %s", method, path, status, extra=fields)
        except Exception:  # a log line must never fail a request
            self.error("access log failed", exc_info=True)
