"""The bad-input catalogue: nothing a client sends crashes, hangs or misleads the service.

Each named case is one hostile or malformed request; it must get the documented
4xx JSON error (status and code) and leave the state as it was: the prediction
cache holds the same entries, no model queue keeps work, an earlier cached
answer is still a HIT, and a normal request still gets the right answer.

Odd but valid images (1x1, CMYK, 16-bit, animated GIF, EXIF-rotated) are not
client mistakes: they are answered 200, and the tests check the answer is the
one the upright RGB picture gets.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import diskcache
from prometheus_client import REGISTRY
import pytest
from PIL import Image

from api.context import EXTENSION
from tests import inputs
from tests.api.test_routes import error_of
from tests.conftest import b64

GOOD_TEXT = {"text": "a warm, funny, beautifully acted film"}


@dataclass
class Case:
    """One bad request: route, how it is sent, and the error it must get."""

    method: str
    path: str
    status: int
    code: str
    json: Any = None
    data: bytes | str | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    field: str | None = None  # a details[].field the error must name

    def send(self, client):
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.data is not None:
            kwargs["data"] = self.data
        if self.content_type is not None:
            kwargs["content_type"] = self.content_type
        return client.open(self.path, method=self.method, **kwargs)


def detect(content: Any, **feature) -> dict:
    item: dict[str, Any] = {"image": {"content": content}}
    if feature:
        item["features"] = [feature]
    return {"requests": [item]}


def raw_json(text: str) -> dict:
    return {"data": text.encode("utf-8"), "content_type": "application/json"}


def image_case(content: str, status: int, code: str, path: str = "/v1/detect") -> Case:
    if path == "/v1/detect":
        return Case("POST", path, status, code, json=detect(content), field="requests[0].image.content")
    if path == "/predict":
        return Case("POST", path, status, code, json={"image": content}, field="image")
    return Case("POST", path, status, code, json={"inputs": [content]}, field="inputs[0]")


_png = inputs.encode(inputs.astronaut(), "PNG")
_jpeg = inputs.encode(inputs.astronaut(), "JPEG", quality=90)
_nested = "[" * 5000 + "]" * 5000

CASES: dict[str, Case] = {
    # --- image bytes ---------------------------------------------------------------
    "invalid-base64": image_case("@@not base64!!", 400, "invalid_input"),
    "base64-bad-padding": image_case("QUJD=", 400, "invalid_input"),
    "base64-of-text": image_case(b64(b"hello, I am not an image at all"), 400, "invalid_input"),
    "base64-of-json": image_case(b64(b'{"image": true}'), 400, "invalid_input", path="/predict"),
    "truncated-jpeg": image_case(b64(_jpeg[: len(_jpeg) // 2]), 400, "invalid_input"),
    "truncated-png": image_case(b64(_png[: len(_png) // 2]), 400, "invalid_input", path="/v1/models/faces/predict"),
    "png-header-only": image_case(b64(_png[:40]), 400, "invalid_input"),
    "zero-byte-image": image_case("", 422, "validation_failed"),
    "zero-byte-image-flat": Case("POST", "/predict", 422, "validation_failed", json={"image": ""}, field="image"),
    "huge-dimensions": image_case(b64(inputs.encode(Image.new("L", (8000, 6000)), "PNG")), 413, "payload_too_large"),
    "png-decompression-bomb": image_case(b64(inputs.png_bomb()), 413, "payload_too_large"),
    "gif-decompression-bomb": image_case(b64(inputs.gif_bomb()), 413, "payload_too_large", path="/predict"),
    "fits-not-allowed": image_case(b64(inputs.fits_file()), 400, "unsupported_format"),
    "eps-not-allowed": image_case(b64(inputs.eps_file()), 400, "unsupported_format"),
    "pdf-not-an-image": image_case(b64(inputs.pdf_file()), 400, "invalid_input"),
    "image-over-byte-limit": image_case(b64(b"\xff\xd8" + bytes(11 * 1024 * 1024)), 413, "payload_too_large"),
    # --- JSON shape -------------------------------------------------------------------
    "requests-not-a-list": Case("POST", "/v1/detect", 422, "validation_failed", json={"requests": {}}, field="requests"),
    "content-a-number": Case("POST", "/v1/detect", 422, "validation_failed", json=detect(123), field="requests[0].image.content"),
    "image-a-string": Case("POST", "/", 422, "validation_failed", json={"requests": [{"image": "abc"}]}, field="requests[0].image"),
    "max-results-as-string": Case("POST", "/v1/detect", 422, "validation_failed", json=detect("x", maxResults="20"), field="requests[0].features[0].maxResults"),
    "threshold-as-bool": Case("POST", "/predict", 422, "validation_failed", json={"image": "x", "score_th": True}, field="score_th"),
    "text-a-number": Case("POST", "/prediction", 422, "validation_failed", json={"text": 5}, field="text"),
    "texts-of-numbers": Case("POST", "/v1/classify", 422, "validation_failed", json={"texts": [1, 2]}, field="texts[0]"),
    "inputs-not-strings": Case("POST", "/v1/models/sentiment/predict", 422, "validation_failed", json={"inputs": [{"a": 1}]}, field="inputs[0]"),
    "body-a-list": Case("POST", "/v1/classify", 422, "validation_failed", json=[GOOD_TEXT]),
    "body-null": Case("POST", "/prediction", 422, "validation_failed", **raw_json("null")),
    "missing-requests": Case("POST", "/v1/detect", 422, "validation_failed", json={}, field="requests"),
    "missing-image": Case("POST", "/", 422, "validation_failed", json={"requests": [{}]}, field="requests[0].image"),
    "missing-text": Case("POST", "/prediction", 422, "validation_failed", json={}, field="text"),
    "extra-top-field": Case("POST", "/v1/detect", 422, "validation_failed", json={**detect("x"), "debug": True}, field="debug"),
    "extra-feature-field": Case("POST", "/v1/detect", 422, "validation_failed", json=detect("x", threshold=0.5), field="requests[0].features[0].threshold"),
    "nan-literal": Case("POST", "/v1/classify", 400, "invalid_input", **raw_json('{"text": NaN}')),
    "infinity-literal": Case("POST", "/predict", 400, "invalid_input", **raw_json('{"image": "x", "score_th": Infinity}')),
    "number-overflowing-to-infinity": Case("POST", "/predict", 400, "invalid_input", **raw_json('{"image": "x", "nms_iou": 1e999}')),
    "negative-threshold": Case("POST", "/v1/detect", 422, "validation_failed", json=detect("x", score_th=-0.1), field="requests[0].features[0].score_th"),
    "threshold-above-one": Case("POST", "/predict", 422, "validation_failed", json={"image": "x", "score_th": 1.5}, field="score_th"),
    "iou-out-of-range": Case("POST", "/v1/models/faces/predict", 422, "validation_failed", json={"inputs": ["x"], "parameters": {"nms_iou": 2}}, field="parameters.nms_iou"),
    "max-results-zero": Case("POST", "/v1/detect", 422, "validation_failed", json=detect("x", maxResults=0), field="requests[0].features[0].maxResults"),
    "max-results-huge": Case("POST", "/v1/detect", 422, "validation_failed", json=detect("x", maxResults=10**12), field="requests[0].features[0].maxResults"),
    "negative-min-height": Case("POST", "/predict", 422, "validation_failed", json={"image": "x", "min_height": -1}, field="min_height"),
    "empty-requests": Case("POST", "/v1/detect", 422, "validation_failed", json={"requests": []}, field="requests"),
    "empty-texts": Case("POST", "/v1/classify", 422, "validation_failed", json={"texts": []}, field="texts"),
    "empty-inputs": Case("POST", "/v1/models/sentiment/predict", 422, "validation_failed", json={"inputs": []}, field="inputs"),
    "batch-over-limit": Case("POST", "/v1/detect", 422, "validation_failed", json={"requests": [{"image": {"content": "x"}}] * 65}, field="requests"),
    "texts-over-limit": Case("POST", "/v1/classify", 422, "validation_failed", json={"texts": ["fine"] * 65}, field="texts"),
    "blank-text": Case("POST", "/prediction", 422, "validation_failed", json={"text": " \n\t "}, field="text"),
    "one-megabyte-text": Case("POST", "/v1/classify", 422, "validation_failed", json={"text": "a" * 1_000_000}, field="text"),
    "deeply-nested-json": Case("POST", "/v1/classify", 400, "invalid_input", **raw_json(_nested)),
    "deep-value-in-field": Case("POST", "/v1/classify", 400, "invalid_input", **raw_json('{"text": ' + "[" * 500 + "]" * 500 + "}")),
    "nested-value-in-field": Case("POST", "/v1/classify", 422, "validation_failed", **raw_json('{"text": ' + "[" * 30 + "]" * 30 + "}"), field="text"),
    "not-json-at-all": Case("POST", "/", 400, "invalid_input", **raw_json("{not json")),
    "empty-json-body": Case("POST", "/v1/classify", 400, "invalid_input", **raw_json("")),
    "non-utf8-body": Case("POST", "/v1/classify", 400, "invalid_input", data=b'{"text": "caf\xe9 \xff\xfe"}', content_type="application/json"),
    "lone-surrogate-escape": Case("POST", "/prediction", 400, "invalid_input", **raw_json('{"text": "\\ud800"}')),
    "utf16-body": Case("POST", "/prediction", 400, "invalid_input", data=json.dumps(GOOD_TEXT).encode("utf-16"), content_type="application/json"),
    # --- transport ----------------------------------------------------------------------
    "body-over-limit": Case("POST", "/v1/classify", 413, "payload_too_large", data=b"x" * (21 * 1024 * 1024), content_type="application/json"),
    "text-plain-content-type": Case("POST", "/v1/classify", 415, "unsupported_media_type", data=json.dumps(GOOD_TEXT), content_type="text/plain"),
    "form-content-type": Case("POST", "/v1/detect", 415, "unsupported_media_type", data="requests=1", content_type="application/x-www-form-urlencoded"),
    "no-content-type": Case("POST", "/prediction", 415, "unsupported_media_type", data=json.dumps(GOOD_TEXT)),
    "json-to-multipart-route": Case("POST", "/object-detection", 415, "unsupported_media_type", json={"image": "x"}),
    "multipart-without-image": Case("POST", "/object-detection", 400, "invalid_input", data={"picture": (io.BytesIO(_png), "a.png")}, content_type="multipart/form-data"),
    "multipart-empty-file": Case("POST", "/object-detection", 400, "invalid_input", data={"image": (io.BytesIO(b""), "a.png")}, content_type="multipart/form-data"),
    "multipart-not-an-image": Case("POST", "/object-detection", 400, "invalid_input", data={"image": (io.BytesIO(b"%PDF-1.4 nope"), "a.pdf")}, content_type="multipart/form-data"),
    "multipart-truncated-jpeg": Case("POST", "/object-detection", 400, "invalid_input", data={"image": (io.BytesIO(_jpeg[:3000]), "a.jpg")}, content_type="multipart/form-data"),
    # --- models and routes -----------------------------------------------------------------
    "unknown-model-predict": Case("POST", "/v1/models/nope/predict", 404, "model_not_found", json={"inputs": ["x"]}),
    "unknown-model-classify": Case("POST", "/v1/classify", 404, "model_not_found", json={**GOOD_TEXT, "model": "nope"}),
    "unknown-model-detect": Case("POST", "/v1/detect", 404, "model_not_found", json={"requests": [{"image": {"content": b64(_png)}, "model": "nope"}]}),
    "path-traversal-model": Case("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", 404, "not_found"),
    "model-name-too-long": Case("POST", "/v1/classify", 422, "validation_failed", json={**GOOD_TEXT, "model": "m" * 65}, field="model"),
    "classifier-asked-to-detect": Case("POST", "/v1/detect", 422, "wrong_task", json={"requests": [{"image": {"content": b64(_png)}, "model": "sentiment"}]}),
    "detector-asked-to-classify": Case("POST", "/v1/classify", 422, "wrong_task", json={**GOOD_TEXT, "model": "faces"}),
    "get-on-post-route": Case("GET", "/v1/detect", 405, "method_not_allowed"),
    "put-on-cache": Case("PUT", "/v1/cache", 405, "method_not_allowed"),
    "delete-on-prediction": Case("DELETE", "/prediction", 405, "method_not_allowed"),
    "post-on-health": Case("POST", "/healthz", 405, "method_not_allowed"),
    "unknown-route": Case("GET", "/v2/everything", 404, "not_found"),
}


def cache_entries(app) -> int:
    return len(diskcache.Cache(str(app.extensions[EXTENSION].settings.cache_dir)))


def model_metrics() -> dict[str, float]:
    """Model calls and cache lookups so far, from this process's Prometheus registry."""
    found = {}
    for model in ("sentiment", "faces"):
        found[f"{model} calls"] = REGISTRY.get_sample_value("serve_http_batch_size_count", {"model": model}) or 0.0
        for result in ("hit", "miss"):
            found[f"{model} {result}"] = (
                REGISTRY.get_sample_value("serve_http_cache_lookups_total", {"model": model, "result": result}) or 0.0
            )
    return found


def client_errors() -> float:
    """Requests answered 4xx so far, every route and method."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "serve_http_requests"
        for sample in family.samples
        if sample.name == "serve_http_requests_total" and sample.labels["status"] == "4xx"
    )


@pytest.fixture
def warm(app, client):
    """A cached answer made before the bad request; it must survive it."""
    first = client.post("/v1/classify", json=GOOD_TEXT)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    return first.get_json()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_its_error_and_changes_nothing(app, client, warm, name):
    case = CASES[name]
    before = cache_entries(app)
    metrics_before, errors_before = model_metrics(), client_errors()
    response = case.send(client)
    error = error_of(response, case.status)
    assert error["code"] == case.code, error
    assert "Traceback" not in response.get_data(as_text=True)
    if case.field is not None:
        details = error["details"]
        fields = [d["field"] for d in details] if isinstance(details, list) else [details["field"]]
        assert case.field in fields, details
    if case.status == 405:
        assert response.headers["Allow"]
    # Nothing changed: same cache entries, no queued work, no model call or cache
    # lookup, the warm answer still cached; the metrics count one more 4xx.
    assert cache_entries(app) == before
    assert model_metrics() == metrics_before
    assert client_errors() == errors_before + 1
    predictor = app.extensions[EXTENSION].predictor
    for model in ("sentiment", "faces"):
        batcher = predictor.batcher(model)
        assert batcher is None or batcher.queued == 0
    again = client.post("/v1/classify", json=GOOD_TEXT)
    assert again.headers["X-Cache"] == "HIT" and again.get_json() == warm


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40
    routes = {case.path.split("/v1/models/")[0] or "/v1/models" for case in CASES.values()}
    assert {"/", "/v1/detect", "/v1/classify", "/predict", "/prediction", "/object-detection"} <= routes


# --- odd but valid images: answered, and answered right -----------------------------------


def faces(client, raw: bytes) -> dict:
    r = client.post("/v1/detect", json=detect(b64(raw), score_th=0.05))
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()["responses"][0]


def boxes(answer: dict) -> list[tuple]:
    return [tuple(round(v) for v in obj["box"].values()) for obj in answer["objects"]]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_rotated_photo_gets_the_upright_boxes(client, fmt):
    rotated, upright = inputs.exif_rotated(fmt)
    a, b = faces(client, rotated), faces(client, upright)
    assert (a["width"], a["height"]) == (b["width"], b["height"]) == (512, 512)
    assert boxes(b), "the upright astronaut has a face"
    if fmt == "PNG":  # lossless: the very same pixels
        assert boxes(a) == boxes(b)
    else:  # JPEG re-encodes each orientation on its own: a pixel or two apart
        for (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) in zip(boxes(a), boxes(b)):
            assert max(abs(ax1 - bx1), abs(ay1 - by1), abs(ax2 - bx2), abs(ay2 - by2)) <= 6


def test_cmyk_and_16_bit_photos_find_the_face(client):
    for raw in (inputs.cmyk_jpeg(), inputs.sixteen_bit_png()):
        answer = faces(client, raw)
        assert [obj["label"] for obj in answer["objects"]] == ["face"], answer


def test_animated_gif_is_read_as_its_first_frame(client):
    gif, first_frame = inputs.animated_gif()
    assert faces(client, gif)["objects"] == faces(client, first_frame)["objects"]


@pytest.mark.parametrize("model", ["faces", "tiny-yolos"])
@pytest.mark.parametrize("size", [(1, 1), (1, 4000), (4000, 1)])
def test_degenerate_sizes_are_answered_by_every_detector(client, model, size):
    raw = inputs.encode(Image.new("RGB", size, "white"), "PNG")
    r = client.post(f"/v1/models/{model}/predict", json={"inputs": [b64(raw)]})
    assert r.status_code == 200, r.get_data(as_text=True)
    (output,) = r.get_json()["outputs"]
    assert (output["width"], output["height"]) == size
    for obj in output["objects"]:
        box = obj["box"]
        assert 0 <= box["x1"] <= box["x2"] <= size[0] and 0 <= box["y1"] <= box["y2"] <= size[1]
