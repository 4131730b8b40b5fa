"""The example of every operation's request, in one place.

The OpenAPI document carries them (Swagger's "Try it out" and a Postman
import send them as they are), and ``tests/e2e/test_examples.py`` sends each
to a live Gunicorn and expects the documented 2xx. Values are real: a photo
with a face in it, a review, the names of the served models and sites.

An example names a model the repository serves: the settings' defaults where
that is one (``SERVE_DEFAULT_CLASSIFIER`` ...), else the first served model
of the task. A job id cannot be known before the job exists, so the job
operations' ``job_id`` comes from the submit answer (the document's
``links``); its example only shows the form, as the first image row's
``image_id`` (1) of the text-to-image routes does. A multipart file part has no
JSON example: ``/object-detection`` is sent ``tasks/example.jpg``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from predict import ModelRegistry
from serving.settings import Settings
from tasks import OBJECT_DETECTION, TEXT_CLASSIFICATION, TEXT_EMBEDDING, TIME_SERIES_FORECAST
from tasks.generation import EXAMPLE_PROMPT
from tasks.image import EXAMPLE_IMAGE
from tasks.text import EXAMPLE_TEXT

EXAMPLE_JOB_ID = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Example:
    """One operation's example: its JSON (or form) body and its parameters."""

    body: Any = None
    parameters: dict[str, Any] = field(default_factory=dict)


def served(registry: ModelRegistry, task: str, preferred: Optional[str] = None) -> Optional[str]:
    """``preferred`` if the registry serves it for ``task``, else the first model of that task."""
    names = sorted(a.name for a in registry if registry.task(a.name).name == task)
    if preferred in names:
        return preferred
    return names[0] if names else None


def operation_examples(registry: ModelRegistry, settings: Settings) -> dict[str, Example]:
    """operationId -> its example, for the operations that take input."""
    classifier = served(registry, TEXT_CLASSIFICATION, settings.default_classifier) or settings.default_classifier
    detector = served(registry, OBJECT_DETECTION, settings.default_detector) or settings.default_detector
    embedder = served(registry, TEXT_EMBEDDING) or "minilm"
    forecaster = served(registry, TIME_SERIES_FORECAST, settings.forecast_model)
    site = "09447000"
    if forecaster is not None:
        site = (list(getattr(registry.get(forecaster), "series", ())) or [site])[0]
    # Unloading a model another depends on is refused: an ensemble is the top of its tree.
    ensemble = settings.recommendation_ensemble
    standalone = ensemble if ensemble in {a.name for a in registry} else classifier
    image = {"image": {"content": EXAMPLE_IMAGE}}
    job = {"model": classifier, "inputs": [EXAMPLE_TEXT, "a dull, lifeless remake"]}
    drawing = {"prompt": EXAMPLE_PROMPT, "num_steps": 10, "seed": 42}
    return {
        "visionDetect": Example({"requests": [{**image, "features": [{"maxResults": 5, "score_th": 0.3}]}]}),
        "detect": Example({"requests": [{**image, "model": detector}]}),
        "flatPredict": Example({"image": EXAMPLE_IMAGE, "score_th": 0.3}),
        "prediction": Example({"text": EXAMPLE_TEXT}),
        "classify": Example({"texts": [EXAMPLE_TEXT, "a dull, lifeless remake"], "model": classifier}),
        "recommendation": Example({"input": EXAMPLE_TEXT}),
        "createEmbeddings": Example({"model": embedder, "input": [EXAMPLE_TEXT]}),
        "getForecast": Example(parameters={"site_id": site, "forecast_days": 5}),
        "submitJob": Example(job),
        "uploadJob": Example({"model": classifier, "inputs": "\n".join(f'"{t}"' for t in job["inputs"]) + "\n"}),
        "createGeneratedImage": Example(drawing),
        "imageGeneration": Example(drawing),
        "getGeneratedImage": Example(parameters={"image_id": 1}),
        "getGeneratedImageUrl": Example(parameters={"image_id": 1}),
        "jobFile": Example(parameters={"job_id": EXAMPLE_JOB_ID, "name": "00000000.png"}),
        "getJob": Example(parameters={"job_id": EXAMPLE_JOB_ID}),
        "jobResult": Example(parameters={"job_id": EXAMPLE_JOB_ID}),
        "cancelJob": Example(parameters={"job_id": EXAMPLE_JOB_ID}),
        "getModel": Example(parameters={"name": classifier}),
        "predict": Example({"inputs": [EXAMPLE_TEXT]}, parameters={"name": classifier}),
        "modelMetadata": Example(parameters={"name": classifier}),
        "modelReady": Example(parameters={"name": classifier}),
        "infer": Example(parameters={"name": classifier}),
        "modelMetadataVersion": Example(parameters={"name": classifier, "version": "1"}),
        "modelReadyVersion": Example(parameters={"name": classifier, "version": "1"}),
        "inferVersion": Example(parameters={"name": classifier, "version": "1"}),
        "loadModel": Example(parameters={"name": standalone}),
        "unloadModel": Example(parameters={"name": standalone}),
    }
