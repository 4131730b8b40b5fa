"""A job worker's own ``/metrics``: what its job processes did, per model.

The web's ``/metrics`` reports what the job store holds (jobs by state, each
model's queued and running jobs, queued inputs, the age of the oldest queued
job): the same figures from every web process. What happens inside the job
processes (inputs computed, batch durations, attempts by outcome, the model
calls) is counted in those processes, which huey forks: prometheus_client's
multiprocess mode, in a folder of this worker's own (one per
``SERVE_JOB_METRICS_PORT``, wiped at start), served by the worker's main
process on ``HOST:SERVE_JOB_METRICS_PORT``. Prometheus scrapes each job
worker beside the web servers (``deploy/prometheus/prometheus.yml``); rates
come from the counters (``rate(serve_http_job_inputs_total[1m])``: inputs
per second).

:func:`prepare` must run before ``prometheus_client`` is imported (``python
-m jobs.worker`` calls it first); a port already taken is one warning line,
and the worker runs on without its exporter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from serving import multiprocess
from serving.settings import Settings

log = logging.getLogger("jobs.exporter")


def prepare(settings: Settings) -> Path | None:
    """Point this process and the ones it forks at the worker's metrics folder, emptied."""
    if not settings.job_metrics_port:
        return None
    return multiprocess.prepare(settings.job_metrics_path())


def serve(settings: Settings, folder: Path | None) -> Any:
    """Serve the folder's metrics on ``HOST:SERVE_JOB_METRICS_PORT`` from a
    thread of this process; the server, or None (off, or the port is taken)."""
    if folder is None:
        return None
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(folder))
    try:
        server, _ = start_http_server(settings.job_metrics_port, addr=settings.host, registry=registry)
    except OSError as error:
        log.warning("job metrics not served on %s:%d: %s", settings.host, settings.job_metrics_port, error)
        return None
    log.info("job metrics on http://%s:%d/metrics", settings.host, settings.job_metrics_port)
    return server
