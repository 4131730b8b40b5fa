"""The flask-pydantic-spec instance every route is declared on, and the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, make_response
from flask_pydantic_spec import FlaskPydanticSpec, Response
from flask_pydantic_spec.flask_backend import FlaskBackend
from pydantic import ValidationError

from serving.errors import InvalidInput, ValidationFailed
from tasks.base import validation_details

API_TITLE = "serve-http"
API_VERSION = "1.0.0"


class _Backend(FlaskBackend):
    """Validation failures become the service's errors before the library builds
    its own answer: it serialises the offending input, which fails (a 500) on
    bytes that are not UTF-8 or integers beyond 64 bits."""

    def validate(self, func, query, body, headers, cookies, resp, before, after, *args, **kwargs):
        # A route that declares no input (GET /healthz, /readyz ...) has nothing to
        # validate: skip parsing query, headers and cookies into empty models.
        if query is None and headers is None and cookies is None and getattr(body, "model", None) is None:
            return make_response(func(*args, **kwargs))
        return super().validate(func, query, body, headers, cookies, resp, before, after, *args, **kwargs)

    def request_validation(self, request, query, body, headers, cookies) -> None:
        # Query parameters are validated here, as the text they are: the library
        # reads each as JSON first, so a site id "1160815" would arrive a number.
        parsed = None
        if query is not None:
            try:
                parsed = query.model_validate(request.args.to_dict())
            except ValidationError as error:
                raise ValidationFailed("query parameters do not match the schema", details=validation_details(error)) from None
        try:
            super().request_validation(request, None, body, headers, cookies)
        except ValidationError as error:
            raise ValidationFailed("request body does not match the schema", details=validation_details(error)) from None
        except ValueError:  # a multipart part declared application/json that is not UTF-8 JSON
            raise InvalidInput("a part declared application/json is not valid UTF-8 JSON") from None
        request.context.query = parsed


spec = FlaskPydanticSpec("flask", backend=_Backend, title=API_TITLE, version=API_VERSION, path="apidoc")


def responses(ok, *errors: int, status: int = 200) -> Response:
    """A route's documented responses: its success model (``status``, 200 by
    default) and the error codes it can answer."""
    from api.schemas import ErrorResponse

    # Any route may answer 401 once API keys are set: which routes stay public
    # is a setting (SERVE_PUBLIC_ROUTES), not part of the route.
    codes = {f"HTTP_{code}": ErrorResponse for code in sorted({401, *errors})}
    # Responses are built by our own code from our own models; validating them
    # again on every request costs time and proves nothing new.
    return Response(validate=False, **{f"HTTP_{status}": ok}, **codes)


def openapi_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of the app: its routes, the API-key security
    schemes, and an operation per model the app serves (``api.model_docs``).

    The routes' part is generated once per process: every app has the same
    routes, and the generator moves nested schemas out of its model table on
    its first run, so a second run would leave them out.
    """
    from api.model_docs import add_model_operations

    global _document
    if _document is None:
        spec.register(app, register_route=False)
        _document = _complete(dict(spec.spec))
    served = app.extensions["serve_http"]
    return add_model_operations(_document, served.registry, served.settings)


_document: dict[str, Any] | None = None


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    components = dict(document.get("components", {}))
    components["securitySchemes"] = {
        "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Token"},
        "BearerAuth": {"type": "http", "scheme": "bearer"},
    }
    document["components"] = components
    document["security"] = [{}, {"ApiKeyHeader": []}, {"BearerAuth": []}]
    document["info"] = {
        **document.get("info", {}),
        "description": "Model server: any model of the repository over JSON (text, images, "
        "tabular records, custom inputs). Every error is {error: {code, message, details, request_id}}, "
        "details always a list of {field, message, type, ...} objects.",
    }
    _unique_operation_ids(document)
    _inference_bodies(document)
    # The generator leaves defaultdicts inside; plain JSON types only.
    return json.loads(json.dumps(document))


def _unique_operation_ids(document: dict[str, Any]) -> None:
    """One view serving two paths (``/v2/models/{name}`` and its versioned twin)
    gets one id from the generator; clients generated from the document need
    each to be unique."""
    seen: set[str] = set()
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            name = operation.get("operationId")
            if name is None:
                continue
            candidate = f"{name}Version" if "{version}" in path else name
            n = 1
            while candidate in seen:
                n += 1
                candidate = f"{name}_{n}"
            operation["operationId"] = candidate
            seen.add(candidate)


def _inference_bodies(document: dict[str, Any]) -> None:
    """The V2 inference body, which the route parses itself (JSON, or JSON and
    binary tensor data), documented with an example."""
    from api.model_docs import Components
    from api.v2_codec import BINARY_TYPE, InferenceRequest

    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    reference = Components(schemas).of(InferenceRequest, "An inference request.")
    example = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a warm, funny, beautifully acted film"]}]
    }
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = document.get("paths", {}).get(path, {}).get("post")
        if operation is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": reference, "example": example},
                    BINARY_TYPE: {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "description": "The JSON header, then the binary tensor data (Inference-Header-Content-Length).",
                        },
                    },
                },
            }
            answer = operation["responses"]["200"].setdefault("content", {})
            answer[BINARY_TYPE] = {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Outputs asked in binary: the JSON header, then their data.",
                },
            }
