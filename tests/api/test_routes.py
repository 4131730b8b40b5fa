"""Every route's contract through the Flask test client, on the real models."""

from __future__ import annotations

import io

import pytest

from tests.conftest import b64

FACE_REGION = (170, 60, 260, 170)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    return body["error"]


# --- models ---------------------------------------------------------------------


def test_models_list_every_model_with_metadata(client):
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["models"]}
    assert set(models) == {"sentiment", "faces", "tiny-yolos"}
    assert models["sentiment"]["task"] == "text-classification"
    assert sorted(models["sentiment"]["labels"]) == ["fresh", "plot", "rotten"]
    assert models["faces"]["labels"] == ["face"]
    assert models["tiny-yolos"]["adapter"] == "transformers-detection"
    assert all(m["ready"] and m["version"] for m in models.values())


def test_one_model_and_unknown_model(client):
    assert client.get("/v1/models/faces").get_json()["task"] == "object-detection"
    error = error_of(client.get("/v1/models/nope"), 404)
    assert error["code"] == "model_not_found"
    [detail] = error["details"]
    assert (detail["field"], detail["type"]) == (None, "model_not_found") and "faces" in detail["available"]


# --- classification -------------------------------------------------------------


def test_classify_single_text(client):
    body = client.post("/v1/classify", json={"text": "a warm, funny, beautifully acted film"}).get_json()
    assert body["model"] == "sentiment"
    assert body["category"] == "fresh"
    assert set(body["scores"]) == {"fresh", "rotten", "plot"}
    assert abs(sum(body["scores"].values()) - 1) < 1e-3
    assert body["scores"]["fresh"] == max(body["scores"].values())


def test_classify_batch_keeps_order(client):
    texts = ["a warm, funny, beautifully acted film", "a dull, lifeless and tedious mess", "a warm, funny, beautifully acted film"]
    body = client.post("/v1/classify", json={"texts": texts}).get_json()
    categories = [r["category"] for r in body["results"]]
    assert categories == ["fresh", "rotten", "fresh"]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "body"),
        ({"text": "x", "texts": ["y"]}, "body"),
        ({"texts": []}, "texts"),
        ({"text": 5}, "text"),
        ({"text": "   "}, "text"),
        ({"texts": ["ok", ""]}, "texts[1]"),
        ({"text": "x", "colour": "red"}, "colour"),
    ],
)
def test_classify_rejects_bad_bodies_with_field_path(client, payload, field):
    error = error_of(client.post("/v1/classify", json=payload), 422)
    assert error["code"] == "validation_failed"
    assert field in [d["field"] for d in error["details"]]


def test_classify_limits_from_settings(settings, registry):
    from serve_http import create_app

    tight = settings.model_copy(update={"max_text_chars": 10, "max_batch_items": 2})
    client = create_app(tight, registry=registry).test_client()
    assert error_of(client.post("/v1/classify", json={"text": "x" * 11}), 422)["details"][0]["field"] == "text"
    assert error_of(client.post("/v1/classify", json={"texts": ["a", "b", "c"]}), 422)["details"][0]["field"] == "texts"
    assert client.post("/v1/classify", json={"texts": ["a", "b"]}).status_code == 200


def test_classify_with_a_detector_is_wrong_task(client):
    assert error_of(client.post("/v1/classify", json={"text": "hi", "model": "faces"}), 422)["code"] == "wrong_task"


def test_seed_prediction_route(client):
    r = client.post("/prediction", json={"text": "a warm, funny, beautifully acted film"})
    assert r.get_json() == {"category": "fresh"}


# --- detection --------------------------------------------------------------------


def test_detect_batch_one_response_per_request(client, astronaut_jpeg, chelsea_jpeg):
    body = {
        "requests": [
            {"image": {"content": b64(astronaut_jpeg)}},
            {"image": {"content": b64(chelsea_jpeg)}, "model": "tiny-yolos", "features": [{"score_th": 0.0, "maxResults": 3}]},
        ]
    }
    responses = client.post("/v1/detect", json=body).get_json()["responses"]
    assert [r["model"] for r in responses] == ["faces", "tiny-yolos"]
    (face,) = responses[0]["objects"]
    assert (responses[0]["width"], responses[0]["height"]) == (512, 512)
    box, norm = face["box"], face["normalizedBox"]
    assert norm["x"] == pytest.approx(box["x1"] / 512, abs=1e-3)
    assert norm["width"] == pytest.approx((box["x2"] - box["x1"]) / 512, abs=1e-3)
    assert 0 < len(responses[1]["objects"]) <= 3  # random weights: boxes, not meaning


def test_features_apply_type_and_max_results(client, chelsea_jpeg):
    def objects(feature):
        body = {"requests": [{"image": {"content": b64(chelsea_jpeg)}, "model": "tiny-yolos", "features": [feature]}]}
        return client.post("/v1/detect", json=body).get_json()["responses"][0]["objects"]

    everything = objects({"score_th": 0.0, "nms_iou": 1.0, "maxResults": 1000})
    labels = {o["label"] for o in everything}
    assert len(everything) > 1
    one_label = sorted(labels)[0]
    assert {o["label"] for o in objects({"score_th": 0.0, "nms_iou": 1.0, "maxResults": 1000, "type": one_label})} == {one_label}
    assert len(objects({"score_th": 0.0, "maxResults": 1})) == 1
    scores = [o["score"] for o in everything]
    assert scores == sorted(scores, reverse=True)
    assert objects({"score_th": 1.0}) == [] or all(o["score"] >= 1.0 for o in objects({"score_th": 1.0}))


def test_seed_flat_predict_returns_normalized_vertices(client, astronaut_jpeg):
    r = client.post("/predict", json={"image": b64(astronaut_jpeg), "maxResults": 5, "score_th": 0.3, "nms_iou": 0.4, "min_height": 0.03, "min_width": 0.03})
    (vertex,) = r.get_json()["normalizedVertices"]
    assert set(vertex) == {"x", "y", "width", "height", "score"}
    assert 170 / 512 - 0.1 < vertex["x"] < 260 / 512


def test_seed_root_route_and_multipart(client, astronaut_jpeg):
    r = client.post("/", json={"requests": [{"image": {"content": b64(astronaut_jpeg)}, "features": [{"maxResults": 20, "score_th": 0.3, "nms_iou": 0.4, "min_height": 0.03, "min_width": 0.03}]}]})
    assert len(r.get_json()["responses"][0]["objects"]) == 1
    r = client.post("/object-detection", data={"image": (io.BytesIO(astronaut_jpeg), "a.jpg")}, content_type="multipart/form-data")
    (obj,) = r.get_json()["objects"]
    assert obj["label"] == "face" and len(obj["box"]) == 4 and all(isinstance(v, int) for v in obj["box"])


def test_multipart_without_image_or_with_json(client):
    r = client.post("/object-detection", data={"other": "x"}, content_type="multipart/form-data")
    assert error_of(r, 400)["details"] == [
        {"field": "image", "message": "multipart field 'image' is missing", "type": "invalid_input"}]
    assert error_of(client.post("/object-detection", json={"image": "x"}), 415)["code"] == "unsupported_media_type"


def test_generic_predict_for_both_tasks(client, astronaut_jpeg):
    text = client.post("/v1/models/sentiment/predict", json={"inputs": ["a warm, funny, beautifully acted film"]}).get_json()
    assert text["task"] == "text-classification" and text["outputs"][0]["category"] == "fresh"
    image = client.post("/v1/models/faces/predict", json={"inputs": [b64(astronaut_jpeg)], "parameters": {"maxResults": 5}}).get_json()
    assert image["version"] == "1" and len(image["outputs"][0]["objects"]) == 1


@pytest.mark.parametrize(
    "content, status, code",
    [
        ("not base64 at all!", 400, "invalid_input"),
        (b64(b"plain text, not an image"), 400, "invalid_input"),
        (b64(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"), 400, "invalid_input"),
    ],
)
def test_bad_images_are_400_naming_the_field(client, content, status, code):
    body = {"requests": [{"image": {"content": content}}]}
    error = error_of(client.post("/v1/detect", json=body), status)
    assert error["code"] == code
    assert [d["field"] for d in error["details"]] == ["requests[0].image.content"]


def test_one_bad_image_fails_the_batch_before_compute(client, astronaut_jpeg):
    body = {"requests": [{"image": {"content": b64(astronaut_jpeg)}}, {"image": {"content": "!!"}}]}
    error = error_of(client.post("/v1/detect", json=body), 400)
    assert [d["field"] for d in error["details"]] == ["requests[1].image.content"]
    # Nothing was computed, so nothing was cached.
    r = client.post("/v1/detect", json={"requests": [body["requests"][0]]})
    assert r.headers["X-Cache"] == "MISS"


@pytest.mark.parametrize(
    "feature, field",
    [
        ({"score_th": 1.5}, "requests[0].features[0].score_th"),
        ({"nms_iou": -0.1}, "requests[0].features[0].nms_iou"),
        ({"maxResults": 0}, "requests[0].features[0].maxResults"),
        ({"maxResults": "many"}, "requests[0].features[0].maxResults"),
        ({"min_height": 2}, "requests[0].features[0].min_height"),
        ({"scoreTh": 0.3}, "requests[0].features[0].scoreTh"),
    ],
)
def test_out_of_range_options_are_422(client, astronaut_jpeg, feature, field):
    body = {"requests": [{"image": {"content": b64(astronaut_jpeg)}, "features": [feature]}]}
    error = error_of(client.post("/v1/detect", json=body), 422)
    assert [d["field"] for d in error["details"]] == [field]


def test_nan_is_rejected(client):
    r = client.post("/v1/detect", data='{"requests": [{"image": {"content": "AA=="}, "features": [{"score_th": NaN}]}]}', content_type="application/json")
    assert error_of(r, 400)["code"] == "invalid_input"


def test_batch_over_limit_is_422(settings, registry, astronaut_jpeg):
    from serve_http import create_app

    client = create_app(settings.model_copy(update={"max_batch_items": 2}), registry=registry).test_client()
    item = {"image": {"content": b64(astronaut_jpeg)}}
    error = error_of(client.post("/v1/detect", json={"requests": [item] * 3}), 422)
    assert error["details"][0]["field"] == "requests"


# --- cache --------------------------------------------------------------------------


def test_second_identical_request_is_served_from_cache(client, app, astronaut_jpeg, monkeypatch):
    faces = app.extensions["serve_http"].registry.get("faces")
    calls = []
    original = faces.predict
    monkeypatch.setattr(faces, "predict", lambda batch: calls.append(len(batch)) or original(batch))

    body = {"requests": [{"image": {"content": b64(astronaut_jpeg)}, "features": [{"score_th": 0.3}]}]}
    first = client.post("/v1/detect", json=body)
    second = client.post("/v1/detect", json=body)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.get_json() == first.get_json()
    assert calls == [1]

    body["requests"][0]["features"][0]["score_th"] = 0.31
    assert client.post("/v1/detect", json=body).headers["X-Cache"] == "MISS"
    assert calls == [1, 1]


def test_batch_computes_only_new_items(client):
    assert client.post("/v1/classify", json={"texts": ["one film"]}).headers["X-Cache"] == "MISS"
    r = client.post("/v1/classify", json={"texts": ["one film", "another film"]})
    assert r.headers["X-Cache"] == "PARTIAL"


def test_delete_cache_empties_it(client):
    client.post("/v1/classify", json={"text": "cached film"})
    assert client.post("/v1/classify", json={"text": "cached film"}).headers["X-Cache"] == "HIT"
    assert client.delete("/v1/cache").get_json()["cleared"] >= 1
    assert client.post("/v1/classify", json={"text": "cached film"}).headers["X-Cache"] == "MISS"
    assert client.delete("/cache").get_json() == {"cleared": 1}


# --- errors, ids, auth ------------------------------------------------------------------


def test_404_405_415_are_json(client):
    assert error_of(client.get("/v2/nothing"), 404)["code"] == "not_found"
    r = client.get("/v1/detect")
    assert error_of(r, 405)["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    assert error_of(client.post("/v1/classify", data="text=hi", content_type="application/x-www-form-urlencoded"), 415)


def test_body_over_limit_is_413(settings, registry):
    from serve_http import create_app

    client = create_app(settings.model_copy(update={"max_body_bytes": 1000}), registry=registry).test_client()
    r = client.post("/v1/classify", data='{"text": "' + "x" * 2000 + '"}', content_type="application/json")
    assert error_of(r, 413)["code"] == "payload_too_large"


def test_unexpected_errors_are_500_json_without_traceback(client, app, monkeypatch):
    sentiment = app.extensions["serve_http"].registry.get("sentiment")
    monkeypatch.setattr(sentiment, "predict", lambda batch: 1 / 0)
    r = client.post("/v1/classify", json={"text": "boom"})
    error = error_of(r, 500)
    assert error["message"] == "internal server error"
    assert "ZeroDivision" not in r.get_data(as_text=True)


def test_info_and_health(client):
    info = client.get("/info").get_json()
    assert info["default_detector"] == "faces" and len(info["models"]) == 3
    # No forecast model here: the seed's envelope lists no site.
    assert (info["success"], info["message"], info["data"]) == (True, "Success.", {"model": None, "sites": []})
    assert client.get("/healthCheck").get_json() == {
        "status": "ok", "success": True, "message": "Success.", "data": {"status": "ok"}
    }
    ready = {"ready": True, "optional": False, "reason": None}
    body = client.get("/readyz").get_json()
    assert (body["status"], body["models"]) == ("ready", {"faces": ready, "sentiment": ready, "tiny-yolos": ready})
    # The job subsystem and the cache are reported beside the models: here no
    # job worker has ever run (degraded, not a reason for 503) and the cache works.
    assert body["jobs"]["status"] in ("ok", "degraded") and body["jobs"]["backend_reachable"] is True
    assert body["cache"]["status"] == "ok"


def test_api_keys(settings, registry):
    from serve_http import create_app

    client = create_app(settings.model_copy(update={"api_keys": ["k1", "k2"]}), registry=registry).test_client()
    body = {"text": "a film"}
    for headers in ({}, {"X-Api-Token": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k1"}):
        r = client.post("/v1/classify", json=body, headers=headers)
        error = error_of(r, 401)
        assert error["message"] == "missing or invalid API key"
    assert client.post("/v1/classify", json=body, headers={"X-Api-Token": "k2"}).status_code == 200
    assert client.post("/v1/classify", json=body, headers={"Authorization": "Bearer k1"}).status_code == 200
    # Health and docs stay public.
    assert client.get("/healthz").status_code == 200
    assert client.get("/apidoc/openapi.json").status_code == 200


# --- load shedding and deadlines ------------------------------------------------------


def test_full_queue_is_503_and_late_inference_is_504(settings):
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from adapters.base import ModelAdapter
    from tasks.results import Classification
    from adapters.manifest import Manifest
    from predict import ModelRegistry
    from serve_http import create_app

    entered, release = threading.Event(), threading.Event()

    class Slow(ModelAdapter):
        task = "text-classification"

        def load(self):
            pass

        def predict(self, batch):
            entered.set()
            assert release.wait(10)
            return [Classification("a", {"a": 1.0}) for _ in batch]

    manifest = Manifest(name="slow", task="text-classification", adapter="x", batching={"max_batch_size": 1, "max_queue": 1})
    registry = ModelRegistry(Path("."))
    registry.add(Slow(manifest, Path(".")))
    app = create_app(settings.model_copy(update={"cache_backend": "none", "inference_timeout_ms": 300}), registry=registry)
    batcher_of = app.extensions["serve_http"].predictor

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(app.test_client().post, "/v1/classify", json={"text": "one", "model": "slow"})
        assert entered.wait(5)
        second = pool.submit(app.test_client().post, "/v1/classify", json={"text": "two", "model": "slow"})
        while batcher_of.batcher("slow").queued < 1:
            pass
        r = app.test_client().post("/v1/classify", json={"text": "three", "model": "slow"})
        assert error_of(r, 503)["code"] == "overloaded"
        assert r.headers["Retry-After"] == "1"
        # The first runs past its 300 ms deadline: 504; the second expires in the queue.
        assert error_of(first.result(10), 504)["code"] == "deadline_exceeded"
        assert error_of(second.result(10), 504)["code"] == "deadline_exceeded"
        release.set()
