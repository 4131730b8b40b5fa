"""Health in the KServe V2 (Open Inference Protocol) shape, for orchestrators
that speak it. The protocol answers with the status code: 200 is true, a 4xx
is false (400 here, as Triton does); the body repeats it."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.context import services
from api.schemas import V2Live, V2ModelReady, V2Ready
from api.spec import responses, spec
from serving.errors import ModelNotFound

v2 = Blueprint("v2", __name__)


def _answer(is_ready: bool, **body):
    response = jsonify(**body)
    response.status_code = 200 if is_ready else 400
    return response


@v2.get("/v2/health/live")
@spec.validate(resp=responses(V2Live), tags=["health"])
def live():
    """Server live: the process answers."""
    return jsonify(live=True)


@v2.get("/v2/health/ready")
@spec.validate(resp=responses(V2Ready, 400), tags=["health"])
def ready():
    """Server ready: every required model is loaded (400 otherwise)."""
    is_ready = services().registry.ready
    return _answer(is_ready, ready=is_ready)


@v2.get("/v2/models/<name>/ready")
@spec.validate(resp=responses(V2ModelReady, 400, 404), tags=["health"])
def model_ready(name: str):
    """Model ready: this model is loaded (400 when not, 404 when unknown).

    An optional model that failed to load is known and not ready."""
    state = services().registry.states().get(name)
    if state is None:
        raise ModelNotFound(f"no model named {name!r}")
    return _answer(state.ready, name=name, ready=state.ready)
