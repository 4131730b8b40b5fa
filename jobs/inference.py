"""One batch of a job through the model layer, shaped as the synchronous
``POST /v1/models/{name}/predict`` shapes each of its ``outputs``.

No Flask here: a worker calls the ``Predictor`` directly.
"""

from __future__ import annotations

from typing import Any, Callable

from predict import ModelInputs, Predictor
from serving.errors import ServeError

#: ``save(i, suffix, data) -> name``: stores input ``i``'s file, returns its name.
SaveFile = Callable[[int, str, bytes], str]


def run_batch(predictor: Predictor, model: str, inputs: list[Any], parameters: dict[str, Any],
              save: SaveFile | None = None, first: int | None = None) -> list[dict[str, Any]]:
    """``{"output": ...}`` or, for an input that cannot be read, ``{"error": {code, message}}``, per input.
    A task whose results are files (text to image) stores each through ``save``
    and adds ``"file": name`` to its line. With ``first``, each line begins
    with ``"index": first + i`` (a job's result line)."""
    adapter, task = predictor.model(model)
    params = task.parameters(parameters)
    # One unreadable input (an image that does not decode) fails its own line, not the job.
    rows: list[dict[str, Any]] = [{} for _ in inputs] if first is None else [{"index": first + i} for i in range(len(inputs))]
    readable: list[int] = []
    decoded = []
    for i, item in enumerate(inputs):
        try:
            decoded.append(task.decode(item, params, predictor.limits, f"inputs[{i}]"))
            readable.append(i)
        except ServeError as error:
            rows[i]["error"] = {"code": error.code, "message": error.message}
    if decoded:
        outcome = predictor.run(ModelInputs(adapter, task, decoded, params), cached=False)
        for i, output, result in zip(readable, outcome.outputs(), outcome.results):
            rows[i]["output"] = output
            if task.file_suffix is not None and save is not None:
                rows[i]["file"] = save(i, task.file_suffix, task.file_bytes(result))
    return rows
