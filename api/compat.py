"""Compatibility routes: the seed material's own clients work unchanged."""

from __future__ import annotations

import sys

from flask import Blueprint, jsonify, request
from flask_pydantic_spec import MultipartFormRequest

from api import operations as ops
from api.context import services
from api.schemas import (
    CacheCleared,
    DetectRequest,
    DetectResponse,
    FlatPredictRequest,
    FlatPredictResponse,
    SeedHealth,
    ObjectDetectionResponse,
    PredictionRequest,
    PredictionResponse,
    RecommendationRequest,
    RecommendationResponse,
)
from api.spec import responses, spec
from serving.errors import InvalidInput, UnsupportedMediaType
from tasks.detection import normalized_box

compat = Blueprint("compat", __name__)


@compat.post("/")
@spec.validate(
    body=DetectRequest,
    resp=responses(DetectResponse, 400, 401, 404, 413, 415, 422, 503),
    tags=["compatibility"],
)
def vision_detect():
    """Vision-style batch detection (send `X-Api-Token` when API keys are set)."""
    return jsonify(ops.answer_detect_request(request.context.body))


@compat.post("/predict")
@spec.validate(
    body=FlatPredictRequest,
    resp=responses(FlatPredictResponse, 400, 401, 404, 413, 415, 422, 503),
    tags=["compatibility"],
)
def flat_predict():
    """One base64 image with flat options -> `normalizedVertices`."""
    body: FlatPredictRequest = request.context.body
    outcome = ops.detect(None, [body.image], body.parameters(), "image")
    width, height = outcome.inputs.items[0].value.size
    vertices = [
        {**normalized_box(det, width, height), "score": round(float(det.score), 4)} for det in outcome.results[0]
    ]
    return jsonify(normalizedVertices=vertices)


@compat.post("/prediction")
@spec.validate(
    body=PredictionRequest,
    resp=responses(PredictionResponse, 400, 401, 413, 415, 422, 503),
    tags=["compatibility"],
)
def prediction():
    """`{"text"}` -> `{"category"}` with the default classifier."""
    body: PredictionRequest = request.context.body
    _, outcome = ops.classify(None, [body.text], "text")
    return jsonify(category=outcome.results[0].label)


@compat.post("/object-detection")
@spec.validate(
    body=MultipartFormRequest(file_key="image"),
    resp=responses(ObjectDetectionResponse, 400, 401, 413, 415, 422, 503),
    tags=["compatibility"],
)
def object_detection():
    """Multipart upload of one `image` file -> objects with pixel boxes."""
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("send the image as multipart/form-data", details={"field": "image"})
    upload = request.files.get("image")
    if upload is None:
        raise InvalidInput("multipart field 'image' is missing", details={"field": "image"})
    data = upload.read(services().predictor.limits.image.max_bytes + 1)
    detections = ops.detect(None, [data], None, "image").results[0]
    objects = [
        {
            "box": [round(d.x1), round(d.y1), round(d.x2), round(d.y2)],
            "label": d.label,
            "score": round(float(d.score), 4),
        }
        for d in detections
    ]
    return jsonify(objects=objects)


@compat.post("/recommendation")
@spec.validate(
    body=RecommendationRequest,
    resp=responses(RecommendationResponse, 400, 401, 404, 413, 415, 422, 502, 503, 504),
    tags=["compatibility"],
)
def recommendation():
    """The fusion seed's route: the ensemble of `SERVE_RECOMMENDATION_ENSEMBLE` -> `{"result"}`."""
    body: RecommendationRequest = request.context.body
    name = services().settings.recommendation_ensemble
    if body.inputs is None:
        outcome = ops.predict(name, [body.input], body.parameters, field="input")
        return jsonify(result=outcome.outputs()[0])
    ops.check_batch(len(body.inputs), "inputs")
    return jsonify(result=ops.predict(name, body.inputs, body.parameters).outputs())


@compat.delete("/cache")
@spec.validate(resp=responses(CacheCleared, 401), tags=["compatibility"])
def clear_cache():
    """Empty the prediction cache."""
    return jsonify(cleared=services().predictor.cache.clear())


@compat.get("/healthCheck")
@spec.validate(resp=responses(SeedHealth), tags=["compatibility"])
def health_check():
    """Liveness, under the seeds' name: the vision seed's `status` and the forecast seed's envelope."""
    return jsonify(status="ok", success=True, message="Success.", data={"status": "ok"})


def compute_threads() -> int:
    """The threads this worker's models compute with (set after fork by gunicorn.conf.py)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    if "cv2" in sys.modules:
        return sys.modules["cv2"].getNumThreads()
    return 1
