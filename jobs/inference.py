"""One batch of a job through the model layer, shaped as the synchronous
``POST /v1/models/{name}/predict`` shapes each of its ``outputs``.

No Flask here: a worker calls the ``Predictor`` directly.
"""

from __future__ import annotations

from typing import Any

from adapters.base import IMAGE_CLASSIFICATION, OBJECT_DETECTION, TEXT_CLASSIFICATION, TEXT_EMBEDDING
from adapters.detection import DetectionOptions
from predict import Predictor
from serving.errors import ServeError, WrongTask
from utils_serve import DecodedImage, ImageLimits, classification_json, decode_image, detection_json

TEXT_TASKS = (TEXT_CLASSIFICATION, TEXT_EMBEDDING)


def detection_options(parameters: dict[str, Any]) -> DetectionOptions:
    """The job's ``parameters`` (the predict route's names) as detection options."""
    return DetectionOptions(
        max_results=parameters.get("maxResults", 20),
        score_th=parameters.get("score_th", 0.3),
        nms_iou=parameters.get("nms_iou", 0.4),
        min_height=parameters.get("min_height", 0.0),
        min_width=parameters.get("min_width", 0.0),
        label=parameters.get("type"),
    )


def run_batch(
    predictor: Predictor, model: str, inputs: list[str], parameters: dict[str, Any], limits: ImageLimits
) -> list[dict[str, Any]]:
    """``{"output": ...}`` or, for an input that cannot be read, ``{"error": {code, message}}``, per input."""
    task = predictor.registry.get(model).task
    if task == TEXT_CLASSIFICATION:
        return [{"output": classification_json(r)} for r in predictor.classify(model, inputs).results]
    if task == TEXT_EMBEDDING:
        vectors = predictor.embed(model, inputs).results
        return [{"output": {"embedding": [round(x, 6) for x in vector]}} for vector in vectors]
    if task not in (IMAGE_CLASSIFICATION, OBJECT_DETECTION):
        raise WrongTask(f"model {model!r} does {task}, which jobs cannot run")

    # One unreadable image fails its own line, not the job.
    rows: list[dict[str, Any]] = [{} for _ in inputs]
    images: list[tuple[int, DecodedImage]] = []
    for i, content in enumerate(inputs):
        try:
            images.append((i, decode_image(content, limits)))
        except ServeError as error:
            rows[i] = {"error": {"code": error.code, "message": error.message}}
    decoded = [image for _, image in images]
    if task == IMAGE_CLASSIFICATION:
        results = predictor.classify_images(model, decoded).results if decoded else []
        outputs = [classification_json(r) for r in results]
    else:
        results = predictor.detect(model, decoded, detection_options(parameters)).results if decoded else []
        outputs = [
            {
                "width": image.width,
                "height": image.height,
                "objects": [detection_json(d, image.width, image.height) for d in objects],
            }
            for image, objects in zip(decoded, results)
        ]
    for (i, _), output in zip(images, outputs):
        rows[i] = {"output": output}
    return rows
