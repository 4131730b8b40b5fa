"""One batch of a job through the model layer, shaped as the synchronous
``POST /v1/models/{name}/predict`` shapes each of its ``outputs``.

No Flask here: a worker calls the ``Predictor`` directly.
"""

from __future__ import annotations

from typing import Any

from predict import ModelInputs, Predictor
from serving.errors import ServeError


def run_batch(predictor: Predictor, model: str, inputs: list[Any], parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"output": ...}`` or, for an input that cannot be read, ``{"error": {code, message}}``, per input."""
    adapter, task = predictor.model(model)
    params = task.parameters(parameters)
    # One unreadable input (an image that does not decode) fails its own line, not the job.
    rows: list[dict[str, Any]] = [{} for _ in inputs]
    readable: list[int] = []
    decoded = []
    for i, item in enumerate(inputs):
        try:
            decoded.append(task.decode(item, params, predictor.limits, f"inputs[{i}]"))
            readable.append(i)
        except ServeError as error:
            rows[i] = {"error": {"code": error.code, "message": error.message}}
    if decoded:
        outcome = predictor.run(ModelInputs(adapter, task, decoded, params), cached=False)
        for i, output in zip(readable, outcome.outputs()):
            rows[i] = {"output": output}
    return rows
