"""``GET /metrics``: the Prometheus text exposition of every worker's metrics,
and of the job worker's scheduled runs."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app

from api.jobs import JOBS_EXTENSION
from jobs.periodic import run_counts
from jobs.service import BACKEND_ERRORS
from serving.metrics import ScheduledRuns, exposition

log = logging.getLogger(__name__)

metrics_blueprint = Blueprint("metrics", __name__)


@metrics_blueprint.get("/metrics")
def metrics():
    extra = []
    service = current_app.extensions.get(JOBS_EXTENSION)
    if service is not None:
        try:
            extra.append(ScheduledRuns(run_counts(service.backends.queue.huey)))
        except BACKEND_ERRORS:  # a job store that is down must not take the web metrics with it
            log.warning("scheduled-run counts not read", exc_info=True)
    body, content_type = exposition(extra)
    return Response(body, content_type=content_type)
