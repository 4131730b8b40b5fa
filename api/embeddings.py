"""OpenAI-compatible embeddings: ``POST /v1/embeddings``, so the ``openai``
client (and every RAG library built on it) works with
``base_url="http://host:8000/v1"``.

Any ``text-embedding`` model of the repository answers, through the one
predict path (cache, batching, limits, metrics, auth: the key is the client's
``api_key``, sent as ``Authorization: Bearer``). ``encoding_format`` is
``float`` or ``base64`` (little-endian float32, what the ``openai`` client
asks for by default); ``usage`` counts the tokens the model's tokenizer reads.
Errors on this route are in OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, with 400 for every invalid request as OpenAI answers.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, Optional

import numpy as np
import orjson
from flask import Blueprint, jsonify, request
from flask_pydantic_spec import Response as SpecResponse
from pydantic import BaseModel, Field
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api import operations as ops
from api.context import services
from api.spec import spec
from serving.errors import ServeError, invalid
from tasks import TEXT_EMBEDDING
from tasks.base import Integer, Strict

embeddings = Blueprint("embeddings", __name__)


class EmbeddingsRequest(Strict):
    model: str = Field(min_length=1, max_length=64, description="A text-embedding model of the repository, e.g. minilm.")
    input: Any = Field(description="A text, or a list of texts (token arrays are not taken).")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32.")
    dimensions: Optional[Integer] = Field(None, ge=1, description="Only the model's own dimension is accepted.")
    user: Optional[str] = Field(None, max_length=256, description="Accepted and ignored.")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, (int, list)) and not isinstance(v, bool) for v in value):
        raise invalid("input", "token arrays are not supported: send the texts")
    raise invalid("input", "input must be a text or a non-empty list of texts")


@embeddings.post("/v1/embeddings")
@spec.validate(
    body=EmbeddingsRequest,
    resp=SpecResponse(HTTP_200=EmbeddingsResponse, validate=False, **{f"HTTP_{c}": OpenAIError for c in (400, 401, 404, 413, 415, 503, 504)}),
    tags=["openai"],
)
def create_embeddings():
    """Embeddings of one text or several, as OpenAI's `POST /v1/embeddings` answers them."""
    body: EmbeddingsRequest = request.context.body
    texts = _texts(body.input)
    ops.check_batch(len(texts), "input")
    adapter, _ = services().predictor.model(body.model, task=TEXT_EMBEDDING)
    dimension = getattr(adapter, "dim", None)
    if body.dimensions is not None and body.dimensions != dimension:
        raise invalid("dimensions", f"model {body.model!r} gives {dimension} dimensions and cannot give {body.dimensions}")
    outcome = ops.predict(body.model, texts, task=TEXT_EMBEDDING, field="input[{i}]")
    data = []
    for index, vector in enumerate(outcome.results):
        if body.encoding_format == "base64":
            value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = [float(x) for x in vector]
        data.append({"object": "embedding", "index": index, "embedding": value})
    counter = getattr(adapter, "count_tokens", None)
    tokens = counter(texts) if callable(counter) else 0
    return jsonify(object="list", data=data, model=body.model, usage={"prompt_tokens": tokens, "total_tokens": tokens})


def openai_error(error: BaseException):
    """Any error on this route in OpenAI's shape; an invalid request is a 400."""
    from serve_http import render_error

    response = render_error(error)
    found = (response.get_json(silent=True) or {}).get("error") or {}
    message, code = found.get("message", "internal server error"), found.get("code")
    details = [d for d in found.get("details") or () if d.get("field")]
    param = details[0]["field"] if details else None
    if details and details[0].get("message") != message:
        message = f"{message}: " + "; ".join(f"{d['field']}: {d.get('message', '')}" for d in details)
    if response.status_code == 422:  # OpenAI answers every invalid request with 400
        response.status_code = 400
    kind = "invalid_request_error" if response.status_code < 500 else "server_error"
    if response.status_code == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    response.set_data(orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}))
    return response


for _family in (ServeError, RequestEntityTooLarge, HTTPException, Exception):
    embeddings.register_error_handler(_family, openai_error)
