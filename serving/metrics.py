"""Prometheus metrics of serve-http, declared once.

Names follow the Prometheus conventions (base units, ``_total`` counters) in
the style of BentoML's ``bentoml_service_request_*`` and MLServer's
``model_infer_*``. Under Gunicorn they live in multiprocess mode (see
``serving/multiprocess.py``); in a single process (tests, a Python shell) they
use prometheus_client's default registry. Every gauge names its multiprocess
mode.
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from serving import multiprocess, tracing
from serving.exemplars import EXEMPLARS, WithExemplars

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# --- HTTP ---------------------------------------------------------------------
REQUESTS = Counter(
    "serve_http_requests_total",
    "HTTP requests answered, by route template, method and status class.",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "serve_http_request_duration_seconds",
    "Time from routing to response, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
IN_PROGRESS = Gauge(
    "serve_http_requests_in_progress",
    "Requests being handled now, by route template.",
    ["route"],
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    "serve_http_rejected_requests_total",
    "Requests answered 503 (queue full or model not ready), by route template and reason.",
    ["route", "reason"],
)

# --- models -------------------------------------------------------------------
INFERENCE = Histogram(
    "serve_http_inference_duration_seconds",
    "Time of one model call (one batch), by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "serve_http_batch_size",
    "Inputs per model call, by model.",
    ["model"],
    buckets=BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "serve_http_queue_depth",
    "Inputs waiting in a model's batching queue, summed over live workers.",
    ["model"],
    multiprocess_mode="livesum",
)
CACHE_LOOKUPS = Counter(
    "serve_http_cache_lookups_total",
    "Prediction cache lookups, by model and result (hit or miss).",
    ["model", "result"],
)
MODEL_LOAD = Gauge(
    "serve_http_model_load_seconds",
    "Time the model took to load at start-up.",
    ["model"],
    multiprocess_mode="max",
)
MODEL_INFO = Gauge(
    "serve_http_model_info",
    "Always 1 for each served model; the labels carry its metadata.",
    ["model", "version", "adapter", "task"],
    multiprocess_mode="max",
)

# --- WebSocket detection streams ----------------------------------------------
STREAM_FRAMES = Counter(
    "serve_http_stream_frames_total",
    "Frames of /v1/detect/stream, by event: received, then processed, failed or dropped (newest frame wins).",
    ["event"],
)
STREAM_RECEIVED = STREAM_FRAMES.labels("received")
STREAM_PROCESSED = STREAM_FRAMES.labels("processed")
STREAM_FAILED = STREAM_FRAMES.labels("failed")
STREAM_DROPPED = STREAM_FRAMES.labels("dropped")
STREAM_FRAME_BYTES = Histogram(
    "serve_http_stream_frame_bytes",
    "Size of the frames received on /v1/detect/stream.",
    buckets=(16_384, 65_536, 262_144, 1_048_576, 4_194_304),
)
STREAMS_OPEN = Gauge(
    "serve_http_streams_open",
    "Open /v1/detect/stream connections, summed over live workers.",
    multiprocess_mode="livesum",
)

# --- job workers (their own exporter: jobs/exporter.py) ------------------------
JOB_INPUTS = Counter(
    "serve_http_job_inputs_total",
    "Job inputs a job worker computed, by model and outcome (ok: a result line, failed: an error line).",
    ["model", "outcome"],
)
JOB_BATCH_DURATION = Histogram(
    "serve_http_job_batch_duration_seconds",
    "Time of one job batch in a job worker (decode, model, saving its lines and files), by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
JOB_ATTEMPTS = Counter(
    "serve_http_job_attempts_total",
    "Job attempts a job worker ended, by model and outcome (succeeded, failed, cancelled, taken_over, handed_back).",
    ["model", "outcome"],
)

# --- processes ----------------------------------------------------------------
WORKER_EXITS = Counter(
    "serve_http_worker_exits_total",
    "Gunicorn workers that exited (recycled by max_requests, killed, crashed); counted by the master.",
)


class ModelMetrics:
    """One model's series, bound once: the batcher and the predictor call these
    on every batch, so no label lookup happens per call."""

    def __init__(self, model: str) -> None:
        self.model = (model,)
        self.inference = INFERENCE.labels(model)
        self.batch_size = BATCH_SIZE.labels(model)
        self.queue = QUEUE_DEPTH.labels(model)
        self.hits = CACHE_LOOKUPS.labels(model, "hit")
        self.misses = CACHE_LOOKUPS.labels(model, "miss")

    def model_call(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        if tracing.ENABLED:  # the batch's span is current
            EXEMPLARS.observe(INFERENCE, self.model, seconds)

    def queue_depth(self, inputs: int) -> None:
        self.queue.set(inputs)

    def cache(self, hits: int, misses: int) -> None:
        if hits:
            self.hits.inc(hits)
        if misses:
            self.misses.inc(misses)


_recorded: set[tuple[str, str, str, str]] = set()


def record_models(models: Iterable, load_seconds: dict[str, float]) -> None:
    """Model info and load time; called where the models are loaded (the master),
    again after live changes: a replaced or unloaded model's series drop to 0."""
    current = set()
    for adapter in models:
        manifest = adapter.manifest
        labels = (adapter.name, manifest.version, manifest.adapter, manifest.task)
        MODEL_INFO.labels(*labels).set(1)
        current.add(labels)
        if adapter.name in load_seconds:
            MODEL_LOAD.labels(adapter.name).set(load_seconds[adapter.name])
    for labels in _recorded - current:
        MODEL_INFO.labels(*labels).set(0)
    _recorded.clear()
    _recorded.update(current)


class ScheduledRuns:
    """The job worker's scheduled runs, read at scrape time from the chains'
    shared state (``jobs/periodic.py``): whichever machine ran them, every web
    process reports the same counts."""

    def __init__(self, states: Iterable[tuple[str, dict[str, Any]]]) -> None:
        self.states = list(states)

    def collect(self):
        runs = CounterMetricFamily(
            "serve_http_scheduled_runs",
            "Runs of the job worker's scheduled tasks, by task and outcome (ok, failed).",
            labels=["task", "outcome"],
        )
        last = GaugeMetricFamily(
            "serve_http_scheduled_last_run_timestamp_seconds",
            "When each scheduled task last ended, by outcome (alert on a stale ok).",
            labels=["task", "outcome"],
        )
        for task, state in self.states:
            for outcome in ("ok", "failed"):
                runs.add_metric([task, outcome], (state.get("runs") or {}).get(outcome, 0))
                ended = (state.get("last") or {}).get(outcome)
                if ended is not None:
                    last.add_metric([task, outcome], ended)
        yield runs
        yield last


class JobGauges:
    """The job subsystem, read at scrape time from the job store and queue
    (``JobService.figures``): the same figures from every web process, whichever
    machine runs the workers. ``figures`` None: the backend did not answer,
    and only ``serve_http_job_backend_up 0`` is reported."""

    def __init__(self, figures: dict[str, Any] | None) -> None:
        self.figures = figures

    def collect(self):
        up = GaugeMetricFamily("serve_http_job_backend_up", "1 when the job store and queue answered this scrape, else 0.")
        up.add_metric([], 0 if self.figures is None else 1)
        yield up
        if self.figures is None:
            return
        yield GaugeMetricFamily(
            "serve_http_job_workers_alive",
            "Job workers whose heartbeat is younger than 3 x SERVE_JOB_HEARTBEAT_S (at least 5 s).",
            value=self.figures["workers_alive"],
        )
        yield GaugeMetricFamily(
            "serve_http_job_queue_depth",
            "Messages waiting in the job queue for a worker (job ids, due scheduled runs).",
            value=self.figures["queue_depth"],
        )
        jobs = GaugeMetricFamily(
            "serve_http_jobs",
            "Jobs by state: each record status, and lost (no record, results still stored), within retention.",
            labels=["state"],
        )
        for state, count in self.figures["jobs"].items():
            jobs.add_metric([state], count)
        yield jobs
        by_model = GaugeMetricFamily(
            "serve_http_model_jobs",
            "Active jobs by model and state (queued, running); a model with none has no series.",
            labels=["model", "state"],
        )
        queued_inputs = GaugeMetricFamily(
            "serve_http_job_queued_inputs",
            "Inputs of the queued jobs, by model: the work waiting for a worker.",
            labels=["model"],
        )
        oldest = GaugeMetricFamily(
            "serve_http_job_oldest_queued_age_seconds",
            "Age of the oldest queued job of each model (0 when none is queued).",
            labels=["model"],
        )
        for model, queue in sorted(self.figures["models"].items()):
            by_model.add_metric([model, "queued"], queue.queued)
            by_model.add_metric([model, "running"], queue.running)
            queued_inputs.add_metric([model], queue.queued_inputs)
            waited = self.figures["now"] - queue.oldest_queued_at if queue.oldest_queued_at is not None else 0.0
            oldest.add_metric([model], max(0.0, waited))
        yield by_model
        yield queued_inputs
        yield oldest


def exposition(extra: Iterable[Any] = (), accept: str = "") -> tuple[bytes, str]:
    """The exposition of every process's metrics (and of ``extra`` collectors)
    and its content type: Prometheus text, or OpenMetrics (with the latency
    histograms' exemplars) when ``accept`` (the scrape's Accept header) asks for it."""
    openmetrics = "application/openmetrics-text" in accept
    path = multiprocess.folder()
    collectors = list(extra)
    if openmetrics:
        # One document: OpenMetrics ends with "# EOF", so it cannot be two joined.
        registry = CollectorRegistry(auto_describe=False)
        if path is None:
            registry.register(WithExemplars(REGISTRY, EXEMPLARS))
        else:
            registry.register(WithExemplars(MultiProcessCollector(None, str(path)), EXEMPLARS))
        for collector in collectors:
            registry.register(collector)
        if path is None:
            return generate_openmetrics(registry), OPENMETRICS_TYPE
        with multiprocess.scrape_lock(path):
            return generate_openmetrics(registry), OPENMETRICS_TYPE
    if path is None:
        body = generate_latest(REGISTRY)
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(path))
        with multiprocess.scrape_lock(path):
            body = generate_latest(registry)
    if collectors:
        registry = CollectorRegistry()
        for collector in collectors:
            registry.register(collector)
        body += generate_latest(registry)
    return body, CONTENT_TYPE_LATEST
