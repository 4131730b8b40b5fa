"""``GET /metrics``: the Prometheus text exposition of every worker's metrics,
of the job worker's scheduled runs and of the job subsystem (workers alive,
queue depth, jobs by state); and the ``route`` label of a request.

A route label is the route's path as openapi.yml writes it
(``/v1/jobs/{job_id}``, not Flask's ``/v1/jobs/<job_id:job_id>``): one series
per route, not per path. A wrong method (405) counts under the route whose path
matched; only a path no route has is ``<unmatched>``.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Rule

from api.jobs import JOBS_EXTENSION
from jobs.periodic import run_counts
from jobs.service import BACKEND_ERRORS
from serving.metrics import JobGauges, ScheduledRuns, exposition

log = logging.getLogger(__name__)

metrics_blueprint = Blueprint("metrics", __name__)

UNMATCHED = "<unmatched>"
# A rule's variable, with or without its converter: <name>, <job_id:job_id>, <int(min=1):n>.
_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


@lru_cache(maxsize=None)  # one entry per rule of the app
def route_label(rule: str) -> str:
    """``/v1/jobs/<job_id:job_id>`` -> ``/v1/jobs/{job_id}``."""
    return _VARIABLE.sub(r"{\1}", rule)


def _rule_for_other_method(valid_methods: list[str]) -> Rule | None:
    """The rule whose path the request matched, under a method it allows."""
    adapter = current_app.create_url_adapter(request)
    for method in valid_methods:
        try:
            rule, _ = adapter.match(method=method, return_rule=True)
        except HTTPException:  # a redirect, or no rule for this method after all
            continue
        return rule
    return None


def request_route() -> str:
    """The ``route`` label of the request being handled (see the module's docstring)."""
    rule = request.url_rule
    failed = request.routing_exception
    if rule is None and isinstance(failed, MethodNotAllowed) and failed.valid_methods:
        rule = _rule_for_other_method(failed.valid_methods)
    return route_label(rule.rule) if rule is not None else UNMATCHED


@metrics_blueprint.get("/metrics")
def metrics():
    extra = []
    service = current_app.extensions.get(JOBS_EXTENSION)
    if service is not None:
        try:
            extra.append(ScheduledRuns(run_counts(service.backends.queue.huey)))
        except BACKEND_ERRORS:  # a job store that is down must not take the web metrics with it
            log.warning("scheduled-run counts not read", exc_info=True)
        try:
            figures = service.figures()
        except BACKEND_ERRORS as error:
            log.warning("job figures not read: %s: %s", type(error).__name__, error)
            figures = None
        extra.append(JobGauges(figures))
    body, content_type = exposition(extra, request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)
