"""The canonical, versioned API: ``/v1/...`` plus health and readiness."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, current_app, g, jsonify, request

from api import operations as ops
from api.context import services
from api.jobs import JOBS_EXTENSION
from api.schemas import (
    CacheCleared,
    ClassifyRequest,
    ClassifyResponse,
    DetectRequest,
    DetectResponse,
    Health,
    ModelCard,
    ModelList,
    PredictRequest,
    PredictResponse,
    Readiness,
)
from api.spec import responses, spec

v1 = Blueprint("v1", __name__)


@v1.after_app_request
def cache_header(response):
    """``X-Cache``: HIT when every item came from the prediction cache, MISS when
    none did, PARTIAL in between."""
    items = g.get("cache_items", 0)
    if items:
        hits = g.get("cache_hits", 0)
        response.headers["X-Cache"] = "HIT" if hits == items else ("MISS" if hits == 0 else "PARTIAL")
    return response


@v1.get("/v1/models")
@spec.validate(resp=responses(ModelList), tags=["models"])
def list_models():
    """Every model of the repository: name, task, version, labels, readiness.

    An optional model that failed to load is listed with `ready: false`; asking
    it to predict is 503.
    """
    return jsonify(models=[asdict(card) for card in services().registry.infos()])


@v1.get("/v1/models/<name>")
@spec.validate(resp=responses(ModelCard, 404), tags=["models"])
def get_model(name: str):
    """One model's metadata."""
    return jsonify(asdict(services().registry.info(name)))


@v1.post("/v1/models/<name>/predict")
@spec.validate(
    body=PredictRequest,
    resp=responses(PredictResponse, 400, 401, 404, 413, 415, 422, 503),
    tags=["models"],
)
def predict(name: str):
    """Run any model on a batch of inputs.

    What an input, `parameters` and an output are depends on the model's task:
    texts for text models, base64 image files for image models, records
    `{feature: value}` for tabular models, the model's own input for a custom
    one. Each served model has its own operation below
    (`/v1/models/<model>/predict`) with its exact schema and a ready example.
    """
    body: PredictRequest = request.context.body
    services().predictor.model(name)  # an unknown model is a 404 before anything else
    ops.check_batch(len(body.inputs), "inputs")
    outcome = ops.predict(name, body.inputs, body.parameters)
    inputs = outcome.inputs
    return jsonify(model=name, version=inputs.model.manifest.version, task=inputs.task.name, outputs=outcome.outputs())


@v1.post("/v1/detect")
@spec.validate(
    body=DetectRequest,
    resp=responses(DetectResponse, 400, 401, 404, 413, 415, 422, 503),
    tags=["detection"],
)
def detect():
    """Vision-style batch detection: one response per request, in order."""
    return jsonify(ops.answer_detect_request(request.context.body))


@v1.post("/v1/classify")
@spec.validate(
    body=ClassifyRequest,
    resp=responses(ClassifyResponse, 400, 401, 404, 413, 415, 422, 503),
    tags=["classification"],
)
def classify():
    """Text classification: `{"text": ...}` or `{"texts": [...]}`."""
    body: ClassifyRequest = request.context.body
    if body.text is not None:
        name, outcome = ops.classify(body.model, [body.text], "text")
        return jsonify(model=name, **outcome.outputs()[0])
    ops.check_batch(len(body.texts), "texts")
    name, outcome = ops.classify(body.model, body.texts, "texts[{i}]")
    return jsonify(model=name, results=outcome.outputs())


@v1.delete("/v1/cache")
@spec.validate(resp=responses(CacheCleared, 401, 503), tags=["cache"])
def clear_cache():
    """Empty the prediction cache.

    503 `cache_unavailable` while the cache cannot be used (a read-only or
    full disk): predictions are served uncached meanwhile, and the cache
    reopens itself; `/readyz` says when it is retried.
    """
    return jsonify(cleared=services().predictor.cache.clear())


@v1.get("/healthz")
@spec.validate(resp=responses(Health), tags=["health"])
def healthz():
    """Liveness: the process answers."""
    return jsonify(status="ok")


@v1.get("/readyz")
@spec.validate(resp=responses(Readiness, 503), tags=["health"])
def readyz():
    """Readiness: 200 when every required model is loaded, 503 otherwise.

    The body names each model: ready or not, optional or required, and why it
    failed to load; and says how the job subsystem and the prediction cache
    are (`ok`, `degraded` or `down`), which never makes it 503.
    """
    registry = services().registry
    states = {name: asdict(state) for name, state in registry.states().items()}
    ready = registry.ready
    # The job subsystem and the cache are reported, never a reason for 503:
    # the models answer without them.
    jobs = current_app.extensions.get(JOBS_EXTENSION)
    response = jsonify(
        status="ready" if ready else "not_ready",
        models=states,
        jobs=jobs.health() if jobs is not None else None,
        cache=services().predictor.cache.health(),
    )
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return response
