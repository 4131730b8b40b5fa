"""One error shape on every route of ours: ``{"error": {code, message, details,
request_id}}`` with ``details`` always a list of ``{field, message, type, ...}``
objects, as declared in the OpenAPI document. The V2 and OpenAI routes keep
their own protocols' shapes."""

from __future__ import annotations

import pytest
import yaml

from api.schemas import ErrorResponse
from serve_http import MAX_JSON_DEPTH, create_app
from serving.settings import REPO_ROOT
from tests.conftest import b64

KEY = "shape-key-1"
UNKNOWN_JOB = "0" * 32


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture
def client(settings, registry):
    limited = settings.model_copy(update={"max_body_bytes": 4096})
    return create_app(limited, registry=registry).test_client()


@pytest.fixture
def keyed(settings, registry):
    return create_app(settings.model_copy(update={"api_keys": [KEY]}), registry=registry).test_client()


# (what, method, path, request keywords, status): one mistake of each kind.
MISTAKES = [
    ("bad JSON", "post", "/v1/classify", {"data": "{not json", "content_type": "application/json"}, 400),
    ("JSON too deep", "post", "/v1/classify", {"data": deep_json(MAX_JSON_DEPTH + 1),
                                               "content_type": "application/json"}, 400),
    ("validation", "post", "/v1/classify", {"json": {"text": "fine", "colour": "red"}}, 422),
    ("several fields", "post", "/v1/detect", {"json": {"requests": [{"image": {}, "features": [{"score_th": 7}]}]}}, 422),
    ("bad base64", "post", "/v1/models/faces/predict", {"json": {"inputs": ["not base64!"]}}, 400),
    ("not an image", "post", "/v1/detect", {"json": {"requests": [{"image": {"content": b64(b"text")}}]}}, 400),
    ("wrong content type", "post", "/v1/classify", {"data": "text=fine", "content_type": "text/plain"}, 415),
    ("unknown model", "get", "/v1/models/nope", {}, 404),
    ("unknown model to predict", "post", "/v1/models/nope/predict", {"json": {"inputs": ["x"]}}, 404),
    ("wrong task", "post", "/v1/classify", {"json": {"text": "fine", "model": "faces"}}, 422),
    ("unknown route", "get", "/v1/nothing-here", {}, 404),
    ("wrong method", "get", "/v1/classify", {}, 405),
    ("too large", "post", "/v1/classify", {"json": {"text": "x" * 5000}}, 413),
    ("unknown job", "get", f"/v1/jobs/{UNKNOWN_JOB}", {}, 404),
    ("unknown job's result", "get", f"/v1/jobs/{UNKNOWN_JOB}/result", {}, 404),
    ("job of unknown model", "post", "/v1/jobs", {"json": {"model": "nope", "inputs": ["x"]}}, 404),
    ("bad job", "post", "/v1/jobs", {"json": {"model": "sentiment", "inputs": []}}, 422),
    ("upload without file", "post", "/v1/jobs/upload", {"data": {"model": "sentiment"},
                                                       "content_type": "multipart/form-data"}, 400),
    ("seed detect", "post", "/", {"json": {"requests": [{"image": {"content": "!!"}}]}}, 400),
    ("seed predict", "post", "/predict", {"json": {"image": "!!"}}, 400),
    ("seed prediction", "post", "/prediction", {"json": {"txt": "fine"}}, 422),
    ("seed multipart", "post", "/object-detection", {"data": {"other": "x"}, "content_type": "multipart/form-data"}, 400),
]


def check_shape(error: dict) -> None:
    """The one shape, read by the declared schema and by hand."""
    assert set(error) == {"code", "message", "details", "request_id"}
    ErrorResponse.model_validate({"error": error})
    assert isinstance(error["details"], list)
    for detail in error["details"]:
        assert isinstance(detail, dict)
        assert {"field", "message", "type"} <= set(detail), detail
        assert detail["field"] is None or isinstance(detail["field"], str)
        assert isinstance(detail["message"], str) and detail["message"]
        assert isinstance(detail["type"], str) and detail["type"]


def test_every_mistake_answers_the_one_error_shape(client):
    seen = {}
    for what, method, path, keywords, status in MISTAKES:
        r = getattr(client, method)(path, **keywords)
        assert r.status_code == status, (what, r.get_data(as_text=True))
        body = r.get_json()
        assert set(body) == {"error"}, what
        check_shape(body["error"])
        assert body["error"]["request_id"] == r.headers["X-Request-ID"]
        seen[what] = body["error"]
    # The values each kind carries, in its details.
    assert [d["field"] for d in seen["validation"]["details"]] == ["colour"]
    assert len(seen["several fields"]["details"]) >= 2
    assert [d["field"] for d in seen["bad base64"]["details"]] == ["inputs[0]"]
    assert [d["field"] for d in seen["not an image"]["details"]] == ["requests[0].image.content"]
    assert seen["JSON too deep"]["details"][0]["limit"] == MAX_JSON_DEPTH
    assert seen["too large"]["details"][0]["limit"] == 4096
    assert sorted(seen["wrong method"]["details"][0]["allowed"]) == ["OPTIONS", "POST"]
    assert "sentiment" in seen["unknown model"]["details"][0]["available"]
    assert seen["unknown model"]["details"][0]["type"] == "model_not_found"
    assert seen["unknown route"]["details"] == [] and seen["unknown job"]["details"] == []


def test_a_finished_job_conflict_and_a_refused_key_too(client, keyed):
    r = keyed.post("/v1/classify", json={"text": "fine"})
    assert r.status_code == 401
    check_shape(r.get_json()["error"])
    submitted = client.post("/v1/jobs", json={"model": "sentiment", "inputs": ["fine"]}, headers={"Idempotency-Key": "k1"})
    assert submitted.status_code == 202
    clash = client.post("/v1/jobs", json={"model": "sentiment", "inputs": ["other"]}, headers={"Idempotency-Key": "k1"})
    assert clash.status_code == 409
    check_shape(clash.get_json()["error"])
    assert clash.get_json()["error"]["details"][0]["job_id"] == submitted.get_json()["id"]
    early = client.get(submitted.headers["Location"] + "/result")
    assert early.status_code == 409
    check_shape(early.get_json()["error"])


def test_the_forecast_envelope_carries_the_same_error_object(client):
    r = client.get("/forecast?site_id=09447000&forecast_days=five")
    body = r.get_json()
    assert r.status_code == 422 and body["success"] is False
    check_shape(body["error"])


def test_other_protocols_keep_their_own_error_shapes(client):
    v2 = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert v2.status_code == 404 and set(v2.get_json()) == {"error"} and isinstance(v2.get_json()["error"], str)
    openai = client.post("/v1/embeddings", json={"model": "sentiment", "input": "fine", "colour": 1})
    assert openai.status_code in (400, 404)
    assert set(openai.get_json()["error"]) == {"message", "type", "param", "code"}


def test_the_openapi_document_declares_the_shape():
    document = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text())
    schemas = document["components"]["schemas"]
    details = schemas["ErrorDetail"]["properties"]["details"]
    assert details["type"] == "array"
    item = schemas[details["items"]["$ref"].rsplit("/", 1)[-1]]
    assert set(item["required"]) == {"field", "message", "type"}
    assert "details" in schemas["ErrorDetail"]["required"]
