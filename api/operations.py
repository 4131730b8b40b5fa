"""What the canonical and the compatibility routes share: the request's limits,
the model layer's one predict path, and what a prediction tells the response
(``X-Cache``) and the access log. Routes only pick fields in and out."""

from __future__ import annotations

from typing import Any, Sequence

from flask import g, request

from api.context import services
from api.schemas import DetectRequest
from predict import Predictions
from serving.errors import invalid
from serving.logs import ENV_BATCH, ENV_MODEL
from tasks import OBJECT_DETECTION, TEXT_CLASSIFICATION


def check_batch(count: int, field: str) -> None:
    limit = services().settings.max_batch_items
    if count > limit:
        raise invalid(field, f"at most {limit} items per request, got {count}")


def note_prediction(outcome: Predictions) -> None:
    """Remember how much of the answer came from the cache (``X-Cache``), and
    the model and input count for the request's access-log line."""
    g.cache_hits = g.get("cache_hits", 0) + outcome.cached
    g.cache_items = g.get("cache_items", 0) + len(outcome.results)
    request.environ[ENV_MODEL] = outcome.inputs.model.name
    request.environ[ENV_BATCH] = g.cache_items


def predict(
    name: str, items: Sequence[Any], parameters: Any = None, *, task: str | None = None, field: str = "inputs[{i}]"
) -> Predictions:
    """The model layer's predict, noted for the response and the log."""
    outcome = services().predictor.predict(name, items, parameters, task=task, field=field)
    note_prediction(outcome)
    return outcome


def classify(model: str | None, texts: list[str], field: str) -> tuple[str, Predictions]:
    """Texts through a text classifier (the default one if ``model`` is None)."""
    name = model or services().settings.default_classifier
    return name, predict(name, texts, task=TEXT_CLASSIFICATION, field=field)


def detect(model: str | None, images: list[Any], parameters: Any, field: str) -> Predictions:
    """Images (base64 or a file's bytes) through a detector (the default one if ``model`` is None)."""
    return predict(model or services().settings.default_detector, images, parameters, task=OBJECT_DETECTION, field=field)


def answer_detect_request(body: DetectRequest) -> dict:
    """The Vision-style batch: every image decoded first, then one response per
    request, each of its features one set of options (their objects concatenated)."""
    check_batch(len(body.requests), "requests")
    predictor, default = services().predictor, services().settings.default_detector
    decoded = [
        predictor.decode(
            item.model or default, [item.image.content], task=OBJECT_DETECTION, field=f"requests[{i}].image.content"
        )
        for i, item in enumerate(body.requests)
    ]
    answers = []
    for i, (item, inputs) in enumerate(zip(body.requests, decoded)):
        runs = [
            predictor.run(inputs.with_parameters(feature, f"requests[{i}].features[{j}]"))
            for j, feature in enumerate(item.features)
        ]
        for outcome in runs:
            note_prediction(outcome)
        answer = runs[0].outputs()[0]
        answer["objects"] = [obj for outcome in runs for obj in outcome.outputs()[0]["objects"]]
        answers.append({"model": inputs.model.name, **answer})
    return {"responses": answers}
