"""``GET /metrics``: the Prometheus text exposition of every worker's metrics."""

from __future__ import annotations

from flask import Blueprint, Response

from serving.metrics import exposition

metrics_blueprint = Blueprint("metrics", __name__)


@metrics_blueprint.get("/metrics")
def metrics():
    body, content_type = exposition()
    return Response(body, content_type=content_type)
