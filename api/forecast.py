"""The streamflow forecast seed's routes, for its clients unchanged: ``GET
/info`` (its site list, beside the service's own keys) and ``GET
/forecast?site_id=&forecast_days=``.

Every answer is the seed's envelope, ``{"success", "message", "data"}``; an
error also carries the service's own ``error`` object (code, details,
request id), and its status is the service's: unknown site 404, a bad or
missing parameter 422, a bad key 401. A forecast is a read: the job worker
recomputes every site's forecast on its schedule (``SERVE_SCHEDULE_FORECASTS``)
and stores it; a site the scheduler has not reached yet is computed once here
and stored. The blocking model code runs on Gunicorn's worker threads, off
any event loop. Cross-origin requests are answered (``*``) as the seed did,
unless ``SERVE_CORS_ORIGINS`` sets the service's own policy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Optional

import orjson
from flask import Blueprint, Flask, current_app, jsonify, request
from flask_pydantic_spec import Response as SpecResponse
from pydantic import BaseModel, Field
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.compat import compute_threads
from api.context import services
from api.schemas import ErrorDetail, Info, Site
from api.spec import API_TITLE, API_VERSION, spec
from jobs.forecasts import ForecastStore, build_forecast_store, compute
from jobs.service import BACKEND_ERRORS
from serving.errors import ModelNotFound, NotFound, ServeError, ValidationFailed
from serving.settings import Settings
from tasks import TIME_SERIES_FORECAST

log = logging.getLogger(__name__)

FORECASTS_EXTENSION = "serve_http.forecasts"
SUCCESS = "Success."

forecast = Blueprint("forecast", __name__)


class ForecastQuery(BaseModel):
    """Query strings are text: ``forecast_days=5`` is read as the number 5;
    other parameters (a client's cache buster) are ignored, as the seed did."""

    site_id: str = Field(min_length=1, max_length=128, description="A site of GET /info, e.g. 09447000.")
    forecast_days: int = Field(ge=1, le=3660, description="Days ahead, 1 to the model's maximum (14 for streamflow).")


class ForecastPoint(BaseModel):
    time: str = Field(description="The day (ISO 8601).")
    flow: float
    lower: Optional[float] = Field(None, description="Low end of the model's 80 % prediction interval.")
    upper: Optional[float] = None


class ForecastData(BaseModel):
    site_id: str
    forecast_days: int
    model: str
    computed_at: str = Field(description="When the stored forecast was computed (UTC, ISO 8601).")
    forecast: list[ForecastPoint]


class ForecastEnvelope(BaseModel):
    success: bool
    message: str
    data: ForecastData


class EnvelopeError(BaseModel):
    success: bool = Field(description="false")
    message: str
    data: None = None
    error: ErrorDetail


def _responses(ok: type[BaseModel], *errors: int) -> SpecResponse:
    codes = {f"HTTP_{code}": EnvelopeError for code in sorted({401, *errors})}
    return SpecResponse(HTTP_200=ok, validate=False, **codes)


def init_forecast(app: Flask, settings: Settings) -> None:
    """Give the app its forecast store (nothing connects yet) and the routes."""
    app.extensions[FORECASTS_EXTENSION] = build_forecast_store(settings)
    app.register_blueprint(forecast)


def envelope(data: Any):
    return jsonify(success=True, message=SUCCESS, data=data)


def forecast_model():
    """The forecast model's adapter, or None when the service has none."""
    name = services().settings.forecast_model
    try:
        adapter, _ = services().predictor.model(name, task=TIME_SERIES_FORECAST)
    except ModelNotFound:
        return None
    return adapter


@forecast.get("/info")
@spec.validate(resp=_responses(Info), tags=["compatibility"])
def info():
    """Service name, version, models and the answering worker's threads; and, in the
    forecast seed's envelope, the sites the forecast model covers."""
    settings = services().settings
    adapter = forecast_model()
    sites = [] if adapter is None else [Site(**site).model_dump() for site in adapter.sites]
    return jsonify(
        name=API_TITLE,
        version=API_VERSION,
        default_classifier=settings.default_classifier,
        default_detector=settings.default_detector,
        models=[asdict(card) for card in services().registry.infos()],
        process={"pid": os.getpid(), "compute_threads": compute_threads(), "batching": settings.batching},
        success=True,
        message=SUCCESS,
        data={"model": None if adapter is None else adapter.name, "sites": sites},
    )


@forecast.get("/forecast")
@spec.validate(query=ForecastQuery, resp=_responses(ForecastEnvelope, 404, 422, 503), tags=["forecast"])
def get_forecast():
    """The next `forecast_days` days of flow at `site_id`, with the 80 % interval,
    from the forecast the job worker last stored."""
    query: ForecastQuery = request.context.query
    name = services().settings.forecast_model
    adapter, _ = services().predictor.model(name, task=TIME_SERIES_FORECAST)
    site = adapter.site(query.site_id)
    if site is None:
        raise NotFound(f"unknown site_id {query.site_id!r}", details={"field": "site_id", "sites": adapter.series[:50]})
    if query.forecast_days > adapter.max_horizon:
        raise ValidationFailed(
            f"forecast_days must be 1 to {adapter.max_horizon}",
            details=[{"field": "forecast_days", "message": f"at most {adapter.max_horizon}", "type": "less_than_equal"}],
        )
    stored, computed_at = stored_forecast(name, adapter, site["id"])
    points = [
        {"time": step["time"], "flow": step["value"], "lower": step.get("lower"), "upper": step.get("upper")}
        for step in stored["forecast"][: query.forecast_days]
    ]
    return envelope({
        "site_id": site["id"],
        "forecast_days": query.forecast_days,
        "model": name,
        "computed_at": datetime.fromtimestamp(computed_at, timezone.utc).isoformat(timespec="seconds"),
        "forecast": points,
    })


def stored_forecast(name: str, adapter: Any, series: str) -> tuple[dict[str, Any], float]:
    """The stored forecast of ``series`` by the model now served, and when it was
    computed; computed (and stored) here when the scheduler has not yet. A store
    that is down does not fail the read: the model answers directly."""
    store: ForecastStore = current_app.extensions[FORECASTS_EXTENSION]
    predictor = services().predictor
    try:
        found = store.get(name, adapter.revision, series)
        if found is not None:
            return found
        return compute(predictor, store, name, series)
    except BACKEND_ERRORS:
        log.warning("forecast store not reachable; forecasting %s directly", series, exc_info=True)
        return compute(predictor, None, name, series)


def envelope_error(error: BaseException):
    """Any error on these routes in the seed's envelope, with the service's status
    and its ``error`` object."""
    from serve_http import render_error

    response = render_error(error)
    found = (response.get_json(silent=True) or {}).get("error") or {}
    message = found.get("message", "internal server error")
    # The field paths, unless a detail only repeats the message.
    fields = [d for d in found.get("details") or () if d.get("field") and d.get("message") != message]
    if fields:
        message = f"{message}: " + "; ".join(f"{d['field']}: {d.get('message', '')}" for d in fields)
    response.set_data(orjson.dumps({"success": False, "message": message, "data": None, "error": found}))
    return response


for _family in (ServeError, RequestEntityTooLarge, HTTPException, Exception):
    forecast.register_error_handler(_family, envelope_error)
