"""What the canonical and the compatibility routes share: decode, check limits,
call the model layer, and shape JSON. Routes only pick fields in and out."""

from __future__ import annotations

from flask import g, request

from adapters.base import Classification, Detection
from adapters.detection import DetectionOptions
from api.context import services
from api.schemas import DetectRequest, Feature
from serving.errors import ServeError, ValidationFailed
from serving.logs import ENV_BATCH, ENV_MODEL
from utils_serve import DecodedImage, decode_image, detection_json


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message, "type": "value_error"}])


def check_batch(count: int, field: str) -> None:
    limit = services().settings.max_batch_items
    if count > limit:
        raise _invalid(field, f"at most {limit} items per request, got {count}")


def check_texts(texts: list[str], field: str) -> None:
    """Texts must be non-blank and within the length limit; ``field`` may hold ``{i}``."""
    limit = services().settings.max_text_chars
    for i, text in enumerate(texts):
        if not text.strip():
            raise _invalid(field.format(i=i), "text is empty")
        if len(text) > limit:
            raise _invalid(field.format(i=i), f"text is longer than {limit} characters")


def note_prediction(model: str, cached: int, total: int) -> None:
    """Remember how much of the answer came from the cache (``X-Cache``), and
    the model and input count for the request's access-log line."""
    g.cache_hits = g.get("cache_hits", 0) + cached
    g.cache_items = g.get("cache_items", 0) + total
    request.environ[ENV_MODEL] = model
    request.environ[ENV_BATCH] = g.cache_items


def decode_images(contents: list[str], field: str) -> list[DecodedImage]:
    """Decode every image first: one bad image fails the request before any compute.

    The error's details name the offending field, e.g. ``requests[2].image.content``.
    """
    limits = services().limits
    images = []
    for i, content in enumerate(contents):
        try:
            images.append(decode_image(content, limits))
        except ServeError as error:
            # Every image error names its field, beside what else it says.
            where = {"field": field.format(i=i)}
            error.details = {**error.details, **where} if isinstance(error.details, dict) else (error.details or where)
            raise
    return images


def classify(model: str | None, texts: list[str]) -> tuple[str, list[Classification]]:
    name = model or services().settings.default_classifier
    outcome = services().predictor.classify(name, texts)
    note_prediction(name, outcome.cached, len(texts))
    return name, outcome.results


def detect(model: str | None, images: list[DecodedImage], options: DetectionOptions) -> tuple[str, list[list[Detection]]]:
    name = model or services().settings.default_detector
    outcome = services().predictor.detect(name, images, options)
    note_prediction(name, outcome.cached, len(images))
    return name, outcome.results


def detect_with_features(model: str | None, image: DecodedImage, features: list[Feature]) -> tuple[str, list[Detection]]:
    """Each feature is one set of options; their objects are concatenated in feature order."""
    objects: list[Detection] = []
    name = ""
    for feature in features:
        name, results = detect(model, [image], feature.options())
        objects.extend(results[0])
    return name, objects


def detection_output(image: DecodedImage, objects: list[Detection]) -> dict:
    return {
        "width": image.width,
        "height": image.height,
        "objects": [detection_json(d, image.width, image.height) for d in objects],
    }


def answer_detect_request(body: DetectRequest) -> dict:
    """The Vision-style batch: every image decoded first, then one response per request."""
    check_batch(len(body.requests), "requests")
    images = decode_images([item.image.content for item in body.requests], "requests[{i}].image.content")
    answers = []
    for item, image in zip(body.requests, images):
        name, objects = detect_with_features(item.model, image, item.features)
        answers.append({"model": name, **detection_output(image, objects)})
    return {"responses": answers}
