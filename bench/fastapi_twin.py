"""The usual peer of serve-http: a minimal FastAPI app on uvicorn, same adapters.

    uvicorn bench.fastapi_twin:app --workers 5

Each worker process imports this module and loads the models itself (uvicorn
does not preload and fork), with one torch thread, like a serve-http worker.
The endpoint is a plain ``def``, so FastAPI runs it in its threadpool: the
common way to call blocking model code. Same body and answer shape as
``POST /v1/models/<name>/predict``; no cache, no batching.

Environment: SERVE_MODEL_REPOSITORY, SERVE_MODELS (as serve-http reads them) and
BENCH_READY_DIR, where each worker drops a file once its models are loaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from bench.workload import IMAGE_TASKS, limit_threads

limit_threads()

from fastapi import FastAPI, HTTPException  # noqa: E402  (after the thread limits)
from pydantic import BaseModel, Field  # noqa: E402

from adapters.base import Classification, Detection  # noqa: E402
from adapters.detection import DetectionOptions, postprocess  # noqa: E402
from predict import ModelRegistry  # noqa: E402
from serving.errors import ServeError  # noqa: E402
from serving.settings import Settings  # noqa: E402
from utils_serve import ImageLimits, classification_json, decode_image, detection_json  # noqa: E402

settings = Settings()
limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, tuple(settings.image_formats))
registry = ModelRegistry(settings.model_repository, settings.models)
registry.load_all()

app = FastAPI()


class PredictBody(BaseModel):
    inputs: list[str] = Field(min_length=1)


def _output(result: Any, width: int = 0, height: int = 0) -> Any:
    if isinstance(result, Classification):
        return classification_json(result)
    if isinstance(result, list) and result and isinstance(result[0], Detection):
        kept = postprocess(result, width, height, DetectionOptions())
        return {"width": width, "height": height, "objects": [detection_json(d, width, height) for d in kept]}
    if isinstance(result, list) and result and isinstance(result[0], float):  # a text embedding
        return {"embedding": [round(x, 6) for x in result]}
    return asdict(result) if is_dataclass(result) else result  # type: ignore[arg-type]


@app.post("/predict/{name}")
def predict(name: str, body: PredictBody) -> dict[str, Any]:
    try:
        adapter = registry.get(name)
        if adapter.task in IMAGE_TASKS:
            images = [decode_image(item, limits).image for item in body.inputs]
            results = adapter.predict(images)
            outputs = [_output(r, img.width, img.height) for r, img in zip(results, images)]
        else:
            outputs = [_output(r) for r in adapter.predict(body.inputs)]
    except ServeError as error:
        raise HTTPException(status_code=400 if error.code != "model_not_found" else 404, detail=error.message)
    return {"model": name, "version": adapter.manifest.version, "task": adapter.task, "outputs": outputs}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


if os.environ.get("BENCH_READY_DIR"):
    (Path(os.environ["BENCH_READY_DIR"]) / str(os.getpid())).touch()
