"""The Open Inference Protocol and OpenAI routes through the Flask test client:
every task's tensors, request parameters, errors in each protocol's shape, and
live model changes applied in-process (as outside Gunicorn)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from predict import ModelRegistry
from serve_http import create_app
from serving.settings import REPO_ROOT
from tests.conftest import b64

GRID = [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0], [0, 4, 12, 0, 0, 8, 8, 0],
        [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0], [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]


@pytest.fixture
def app(settings, task_registry, task_repo):
    settings.model_repository = task_repo
    return create_app(settings, registry=task_registry)


def infer(client, model: str, inputs: list[dict], **extra):
    return client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})


def outputs(response) -> dict:
    assert response.status_code == 200, response.get_json()
    return {o["name"]: o for o in response.get_json()["outputs"]}


def bytes_tensor(name: str, values: list[str]) -> dict:
    return {"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values}


def test_server_and_model_metadata_come_from_the_tasks(client):
    assert client.get("/v2").get_json() == {
        "name": "serve-http", "version": "1.0.0", "extensions": ["binary_tensor_data", "model_repository"]
    }
    metadata = client.get("/v2/models/churn").get_json()
    assert metadata["parameters"] == {"task": "tabular-classification"} and metadata["platform"] == "serve-http/sklearn"
    assert metadata["inputs"] == [
        {"name": "tenure_months", "datatype": "FP64", "shape": [-1]},
        {"name": "monthly_charges", "datatype": "FP64", "shape": [-1]},
        {"name": "contract", "datatype": "BYTES", "shape": [-1]},
    ]
    assert client.get("/v2/models/qa/versions/1").get_json()["inputs"] == [
        {"name": "question", "datatype": "BYTES", "shape": [-1]}, {"name": "context", "datatype": "BYTES", "shape": [-1]}
    ]
    assert client.get("/v2/models/digits").get_json()["outputs"] == [{"name": "output", "datatype": "BYTES", "shape": [-1]}]
    assert client.get("/v2/models/churn/versions/2").status_code == 404


def test_a_mixed_record_travels_one_tensor_per_feature(client):
    r = infer(client, "churn", [
        {"name": "tenure_months", "shape": [2], "datatype": "INT32", "data": [3, 40]},
        {"name": "monthly_charges", "shape": [2], "datatype": "FP64", "data": [80.5, 60]},
        bytes_tensor("contract", ["monthly", "two-year"]),
    ])
    v1 = client.post("/v1/models/churn/predict", json={"inputs": [
        {"tenure_months": 3, "monthly_charges": 80.5, "contract": "monthly"},
        {"tenure_months": 40, "monthly_charges": 60, "contract": "two-year"},
    ]}).get_json()["outputs"]
    assert outputs(r)["label"]["data"] == [o["category"] for o in v1]
    bad = infer(client, "churn", [
        {"name": "tenure_months", "shape": [1], "datatype": "INT32", "data": [3]},
        {"name": "monthly_charges", "shape": [1], "datatype": "FP64", "data": [80.5]},
        bytes_tensor("contract", ["weekly"]),
    ])
    assert bad.status_code == 422 and "rows[0].contract" in bad.get_json()["error"]


def test_a_custom_model_takes_and_gives_json_text(client):
    r = infer(client, "digits", [bytes_tensor("input", [json.dumps(GRID)])])
    (answer,) = outputs(r)["output"]["data"]
    assert json.loads(answer)["digit"] == 0


def test_entities_and_answers_through_the_protocol(client):
    text = "Ann lives in Berlin."
    (entities,) = outputs(infer(client, "ner", [bytes_tensor("text", [text])]))["entities"]["data"]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in json.loads(entities))
    answer = outputs(infer(client, "qa", [bytes_tensor("question", ["Where?"]), bytes_tensor("context", [text])]))
    start, end = answer["start"]["data"][0], answer["end"]["data"][0]
    assert text[start:end] == answer["answer"]["data"][0] and answer["start"]["datatype"] == "INT64"


def test_request_parameters_are_the_tasks_own(client, astronaut_jpeg):
    image = bytes_tensor("image", [b64(astronaut_jpeg)])
    assert outputs(infer(client, "faces", [image]))["labels"]["data"] == ["face"]
    none = outputs(infer(client, "faces", [image], parameters={"score_th": 1.0, "binary_data_output": False}))
    assert none["boxes"]["shape"] == [0, 4]
    bad = infer(client, "faces", [image], parameters={"score_th": 2})
    assert bad.status_code == 422 and bad.get_json() == {"error": "invalid parameters: parameters.score_th: Input should be less than or equal to 1"}


def test_errors_are_the_protocols_shape_with_the_services_statuses(client, settings, task_registry):
    assert infer(client, "nope", [bytes_tensor("text", ["x"])]).get_json() == {"error": "no model named 'nope'"}
    r = infer(client, "sentiment", [bytes_tensor("text", ["x"] * 65)])
    assert r.status_code == 422 and r.get_json() == {"error": "inputs: at most 64 items per request, got 65"}
    assert infer(client, "sentiment", [bytes_tensor("text", [" "])]).get_json() == {"error": "rows[0]: text is empty"}
    assert client.get("/v2/models/sentiment/infer").status_code == 405
    keyed = create_app(settings.model_copy(update={"api_keys": ["k"]}), registry=task_registry).test_client()
    r = keyed.post("/v2/models/sentiment/infer", json={"inputs": [bytes_tensor("text", ["x"])]})
    assert (r.status_code, r.get_json(), r.headers["WWW-Authenticate"]) == (401, {"error": "missing or invalid API key"},
                                                                             'Bearer realm="serve-http"')
    assert keyed.get("/v2/health/live").status_code == 200  # health stays public


def test_binary_data_through_the_app(client):
    import tritonclient.http as httpclient

    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"a warm film", b"a dull mess"], dtype=object))
    data, length = httpclient.InferenceServerClient.generate_request_body(
        [text], outputs=[httpclient.InferRequestedOutput("label"), httpclient.InferRequestedOutput("scores")]
    )
    r = client.post("/v2/models/sentiment/infer", data=data, headers={"Inference-Header-Content-Length": str(length)})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    result = httpclient.InferResult.from_response_body(r.data, header_length=int(r.headers["Inference-Header-Content-Length"]))
    assert result.as_numpy("label").tolist() == [b"fresh", b"rotten"] and result.as_numpy("scores").shape == (2, 3)
    # The same inputs as JSON, from the prediction cache: the same answers.
    again = outputs(infer(client, "sentiment", [bytes_tensor("text", ["a warm film", "a dull mess"])]))
    assert again["label"]["data"] == ["fresh", "rotten"]


def test_openai_errors_are_openais_shape(settings, task_registry):
    keyed = create_app(settings.model_copy(update={"api_keys": ["k"]}), registry=task_registry).test_client()
    r = keyed.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
    assert r.status_code == 401 and r.get_json() == {
        "error": {"message": "missing or invalid API key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    }
    r = keyed.post("/v1/embeddings", json={"model": "sentiment", "input": "x", "colour": "red"}, headers={"X-Api-Token": "k"})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "colour"
    r = keyed.post("/v1/embeddings", json={"model": "sentiment", "input": "x"}, headers={"X-Api-Token": "k"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "wrong_task"


# --- live model changes, in this process ----------------------------------------------------


@pytest.fixture
def own_repo(tmp_path, settings):
    root = tmp_path / "repo"
    for name in ("sentiment", "iris"):
        shutil.copytree(REPO_ROOT / "models" / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    registry = ModelRegistry(root)
    registry.load_all()
    client = create_app(settings.model_copy(update={"model_repository": root}), registry=registry).test_client()
    return root, registry, client


def test_load_serves_the_new_version_and_the_cache_never_the_old(own_repo):
    root, _, client = own_repo
    body = {"inputs": ["a warm, funny film"]}
    first = client.post("/v1/models/sentiment/predict", json=body)
    assert client.post("/v1/models/sentiment/predict", json=body).headers["X-Cache"] == "HIT"
    manifest = root / "sentiment" / "model.yaml"
    manifest.write_text(manifest.read_text().replace('version: "1"', 'version: "2"'))
    r = client.post("/v2/repository/models/sentiment/load")
    assert r.status_code == 200 and r.get_json() == {"name": "sentiment", "message": "loaded sentiment"}
    after = client.post("/v1/models/sentiment/predict", json=body)
    assert (after.get_json()["version"], after.headers["X-Cache"]) == ("2", "MISS")
    assert after.get_json()["outputs"] == first.get_json()["outputs"]  # same weights, new version
    assert client.get("/v1/models/sentiment").get_json()["version"] == "2"


def test_a_failed_load_keeps_the_old_model_and_says_why(own_repo):
    root, registry, client = own_repo
    before = registry.get("iris")
    (root / "iris" / "model.joblib").write_bytes(b"junk")
    r = client.post("/v2/repository/models/iris/load")
    assert r.status_code == 400 and r.get_json()["error"].startswith("checksum mismatch for model.joblib")
    assert registry.get("iris") is before
    assert client.post("/v2/repository/models/nope/load").status_code == 404


def test_unload_index_and_load_again(own_repo):
    _, _, client = own_repo
    assert client.post("/v2/repository/models/iris/unload").get_json() == {"name": "iris", "message": "unloaded iris"}
    index = {e["name"]: e for e in client.post("/v2/repository/index").get_json()}
    assert index["iris"] == {"name": "iris", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert [e["name"] for e in client.post("/v2/repository/index", json={"ready": True}).get_json()] == ["sentiment"]
    assert client.get("/v2/models/iris/ready").status_code == 404
    assert client.post("/v2/repository/models/iris/unload").status_code == 404
    assert client.post("/v2/repository/models/iris/load").status_code == 200
    assert client.get("/v2/models/iris/ready").get_json() == {"name": "iris", "ready": True}


def test_a_model_others_depend_on_is_not_unloaded_and_reloads_them(tmp_path, settings):
    root = tmp_path / "repo"
    for name in ("minilm", "minilm-sentiment"):
        shutil.copytree(REPO_ROOT / "models" / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    registry = ModelRegistry(root)
    registry.load_all()
    client = create_app(settings.model_copy(update={"model_repository": root}), registry=registry).test_client()
    r = client.post("/v2/repository/models/minilm/unload")
    assert r.status_code == 409 and "used by minilm-sentiment" in r.get_json()["error"]
    head = registry.get("minilm-sentiment")
    assert client.post("/v2/repository/models/minilm/load").get_json()["message"] == "loaded minilm, minilm-sentiment"
    rebuilt = registry.get("minilm-sentiment")
    assert rebuilt is not head and rebuilt.dependencies["minilm"] is registry.get("minilm")
    r = client.post("/v1/classify", json={"text": "a warm, funny film", "model": "minilm-sentiment"})
    assert r.status_code == 200


def test_refresh_loads_new_changed_and_drops_removed_folders(own_repo):
    root, registry, _ = own_repo
    assert registry.refresh() == {}
    shutil.copytree(REPO_ROOT / "models" / "diabetes", root / "diabetes", ignore=shutil.ignore_patterns("__pycache__"))
    manifest = root / "iris" / "model.yaml"
    manifest.write_text(manifest.read_text().replace('version: "1"', 'version: "3"'))
    shutil.rmtree(root / "sentiment")
    assert registry.refresh() == {"diabetes": "loaded", "iris": "loaded", "sentiment": "unloaded"}
    assert registry.get("iris").manifest.version == "3" and "sentiment" not in {m.name for m in registry}
    assert {e["name"] for e in registry.index()} == {"diabetes", "iris", "sentiment"}
