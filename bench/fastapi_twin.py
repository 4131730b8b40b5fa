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
from pathlib import Path
from typing import Any

from bench.workload import limit_threads

limit_threads()

from fastapi import FastAPI, HTTPException  # noqa: E402  (after the thread limits)
from pydantic import BaseModel, Field  # noqa: E402

from predict import ModelRegistry  # noqa: E402
from serving.errors import ServeError  # noqa: E402
from serving.settings import Settings  # noqa: E402
from tasks import Limits  # noqa: E402

settings = Settings()
limits = Limits.from_settings(settings)
registry = ModelRegistry(settings.model_repository, settings.models)
registry.load_all()

app = FastAPI()


class PredictBody(BaseModel):
    inputs: list[Any] = Field(min_length=1)


@app.post("/predict/{name}")
def predict(name: str, body: PredictBody) -> dict[str, Any]:
    try:
        adapter, task = registry.get(name), registry.task(name)
        parameters = task.parameters(None)
        decoded = [task.decode(item, parameters, limits, "inputs") for item in body.inputs]
        results = adapter.predict([d.value for d in decoded])
        outputs = [task.encode(task.finish(r, d, parameters), d, parameters) for r, d in zip(results, decoded)]
    except ServeError as error:
        raise HTTPException(status_code=400 if error.code != "model_not_found" else 404, detail=error.message)
    return {"model": name, "version": adapter.manifest.version, "task": task.name, "outputs": outputs}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


if os.environ.get("BENCH_READY_DIR"):
    (Path(os.environ["BENCH_READY_DIR"]) / str(os.getpid())).touch()
