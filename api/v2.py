"""The Open Inference Protocol (KServe V2) over REST, as Triton, MLServer and
KServe speak it, so ``tritonclient`` and MLServer clients work unchanged.

Health (``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}/ready``)
answers with the status code: 200 is true, 400 false (as Triton does), the
body repeating it. Server and model metadata, and inference with the binary
tensor data extension (``api/v2_codec.py``). What each model's tensors are is
its task's (``tasks/tensors.py``): the request's tensors become the task's
wire items and go through the one predict path (cache, batching, limits,
metrics, auth), as ``/v1/models/{name}/predict`` does. Errors on these routes
are the protocol's ``{"error": "..."}`` with the service's status codes.
"""

from __future__ import annotations

from typing import Any, Optional

import orjson
from flask import Blueprint, Response, jsonify, request
from flask_pydantic_spec import Response as SpecResponse
from pydantic import BaseModel, Field, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api import operations as ops
from api.context import services
from api.schemas import V2Live, V2ModelReady, V2Ready
from api.spec import API_TITLE, API_VERSION, responses, spec
from api.v2_codec import HEADER_LENGTH, InferenceResponse, decompressed, encode, parse
from serving import control
from serving.errors import Conflict, InvalidInput, LoadFailed, ModelNotFound, NotReady, ServeError
from serving.worker import close_connection
from tasks.base import Strict, schema_error

v2 = Blueprint("v2", __name__)

EXTENSIONS = ["binary_tensor_data", "model_repository"]


class V2Error(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 where any size goes.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Optional[dict[str, Any]] = Field(None, description="task: the model's task.")


def v2_responses(ok, *errors: int) -> SpecResponse:
    """Documented answers, the errors in the protocol's shape."""
    return SpecResponse(HTTP_200=ok, validate=False, **{f"HTTP_{code}": V2Error for code in sorted({401, *errors})})


def _answer(is_ready: bool, **body):
    response = jsonify(**body)
    response.status_code = 200 if is_ready else 400
    return response


@v2.get("/v2/health/live")
@spec.validate(resp=responses(V2Live), tags=["v2"])
def live():
    """Server live: the process answers."""
    return jsonify(live=True)


@v2.get("/v2/health/ready")
@spec.validate(resp=responses(V2Ready, 400), tags=["v2"])
def ready():
    """Server ready: every required model is loaded (400 otherwise)."""
    is_ready = services().registry.ready
    return _answer(is_ready, ready=is_ready)


@v2.get("/v2/models/<name>/ready")
@v2.get("/v2/models/<name>/versions/<version>/ready")
@spec.validate(resp=v2_responses(V2ModelReady, 400, 404), tags=["v2"])
def model_ready(name: str, version: str | None = None):
    """Model ready: this model is loaded (400 when not, 404 when unknown).

    An optional model that failed to load is known and not ready."""
    state = services().registry.states().get(name)
    if state is None:
        raise ModelNotFound(f"no model named {name!r}")
    if version is not None:
        _check_version(name, version)
    return _answer(state.ready, name=name, ready=state.ready)


@v2.get("/v2")
@spec.validate(resp=v2_responses(ServerMetadata), tags=["v2"])
def server_metadata():
    """Server metadata: name, version and the protocol extensions spoken."""
    return jsonify(name=API_TITLE, version=API_VERSION, extensions=EXTENSIONS)


def _check_version(name: str, version: str) -> None:
    served = services().registry.info(name).version
    if version != served:
        raise ModelNotFound(f"model {name!r} has no version {version!r}; it serves version {served!r}")


@v2.get("/v2/models/<name>")
@v2.get("/v2/models/<name>/versions/<version>")
@spec.validate(resp=v2_responses(ModelMetadata, 404, 503), tags=["v2"])
def model_metadata(name: str, version: str | None = None):
    """A model's metadata: its input and output tensors (name, datatype, shape), from its task."""
    adapter, task = services().predictor.model(name)
    if version is not None:
        _check_version(name, version)
    return jsonify(
        name=name,
        versions=[adapter.manifest.version],
        platform=f"serve-http/{adapter.manifest.adapter}",
        inputs=[t.metadata() for t in task.tensor_inputs()],
        outputs=[t.metadata() for t in task.tensor_outputs()],
        parameters={"task": task.name},
    )


@v2.post("/v2/models/<name>/infer")
@v2.post("/v2/models/<name>/versions/<version>/infer")
@spec.validate(resp=v2_responses(InferenceResponse, 400, 404, 413, 422, 503, 504), tags=["v2"])
def infer(name: str, version: str | None = None):
    """Inference: the request's tensors through the model.

    JSON, or with the binary tensor data extension (`Inference-Header-Content-Length`:
    the JSON header's length; binary inputs give `binary_data_size`; outputs
    asked with `binary_data` or the request parameter `binary_data_output`
    come as binary). The request `parameters` besides the protocol's own are
    the task's request parameters (detection options). The model metadata
    (`GET /v2/models/{name}`) names the tensors.
    """
    adapter, task = services().predictor.model(name)
    if version is not None:
        _check_version(name, version)
    body = decompressed(request.get_data(cache=False), request.headers.get("Content-Encoding", ""), request.max_content_length)
    inference = parse(body, request.headers.get(HEADER_LENGTH))
    items = task.items_from_tensors(inference.tensors, "inputs")
    ops.check_batch(len(items), "inputs")
    outcome = ops.predict(name, items, inference.task_parameters, field="rows[{i}]")
    tensors = task.tensors_from_results(outcome.results, outcome.inputs.items, outcome.inputs.parameters)
    body, headers = encode(name, adapter.manifest.version, inference, tensors)
    return Response(body, status=200, headers=headers)


# --- the model repository extension: live model changes ---------------------------


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, or UNAVAILABLE (reason says why: unloaded, failed to load ...).")
    reason: str


class RepositoryIndexRequest(Strict):
    ready: Optional[bool] = Field(None, description="true: only the models ready now.")


class RepositoryChange(BaseModel):
    name: str
    message: str


@v2.get("/v2/repository/index")
@v2.post("/v2/repository/index")
@spec.validate(resp=v2_responses(list[RepositoryModel]), tags=["v2"])
def repository_index():
    """Every model of the repository: served (READY) or not (UNAVAILABLE, and why).

    POST takes `{"ready": true}` for the ready ones only, as Triton's does.
    """
    entries = services().registry.index()
    if request.method == "POST" and request.content_length:
        raw = request.get_json(silent=False)
        try:
            wanted = RepositoryIndexRequest.model_validate(raw if raw is not None else {})
        except ValidationError as error:
            raise schema_error(error, "", "repository index request") from None
        if wanted.ready:
            entries = [entry for entry in entries if entry["state"] == "READY"]
    return jsonify(entries)


_CHANGE_ERRORS = {cls.code: cls for cls in (LoadFailed, ModelNotFound, Conflict, NotReady, InvalidInput)}


def _change(action: str, name: str):
    settings = services().settings
    timeout = max(60.0, 2.0 * settings.graceful_timeout)
    change = control.ask(
        settings.control_path(),
        action,
        name,
        timeout,
        apply_here=lambda act, model: control.apply_change(services().registry, act, model),
    )
    # This worker is being replaced: the client's next request must reach a
    # new one, not this connection kept alive.
    close_connection(request.environ)
    if not change.ok:
        raise _CHANGE_ERRORS.get(change.code or "", ServeError)(change.message)
    return jsonify(name=name, message=change.message)


@v2.post("/v2/repository/models/<name>/load")
@spec.validate(resp=v2_responses(RepositoryChange, 400, 404, 409, 503), tags=["v2"])
def load_model(name: str):
    """Load a model folder anew (a new version, or a new folder) and serve it, with no restart.

    Under Gunicorn the master loads it and new workers replace the old ones,
    which finish what they hold: no request fails, the weights stay shared,
    and every request after the answer gets the new version. A folder that does
    not load leaves the old version serving (400 with the one-line reason).
    Needs the API key when keys are set.
    """
    return _change(control.LOAD, name)


@v2.post("/v2/repository/models/<name>/unload")
@spec.validate(resp=v2_responses(RepositoryChange, 404, 409, 503), tags=["v2"])
def unload_model(name: str):
    """Stop serving a model until it is loaded again (409 while another model depends on it)."""
    return _change(control.UNLOAD, name)


def v2_error(error: BaseException):
    """An error on a V2 route, in the protocol's shape ``{"error": message}``
    (the status and headers as on every route)."""
    from serve_http import render_error

    response = render_error(error)
    found = (response.get_json(silent=True) or {}).get("error") or {}
    message = found.get("message", "internal server error")
    details = [d for d in found.get("details") or () if d.get("field")]
    if details:  # the field paths, as the one line the protocol has room for
        problems = "; ".join(f"{d['field']}: {d.get('message', '')}" for d in details)
        message = problems if len(details) == 1 and details[0].get("message") == message else f"{message}: {problems}"
    response.set_data(orjson.dumps({"error": message}))
    return response


for _family in (ServeError, RequestEntityTooLarge, HTTPException, Exception):
    v2.register_error_handler(_family, v2_error)
