"""The ecosystem's own clients against a real Gunicorn: ``tritonclient`` over
the Open Inference Protocol (KServe V2), with and without binary data, and
the ``openai`` client on the embeddings route; their answers equal ``/v1``'s."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest
import requests

from serving.settings import REPO_ROOT
from tests.conftest import b64
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
TEXTS = ["a warm, funny, beautifully acted film", "a dull and lifeless mess"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocols")
    repository = tmp / "models"
    for name in ("sentiment", "faces", "iris", "minilm"):
        shutil.copytree(REPO_ROOT / "models" / name, repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"SERVE_MODEL_REPOSITORY": str(repository), "WORKERS": "2", "SERVE_CACHE_BACKEND": "none"}
    with GunicornServer(tmp, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def triton(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


def v1(server, model: str, inputs: list) -> list[dict]:
    r = requests.post(f"{server.url}/v1/models/{model}/predict", json={"inputs": inputs}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


def infer(triton, model: str, tensors: dict[str, tuple[np.ndarray, str]], outputs: list[str], binary: bool):
    import tritonclient.http as httpclient

    inputs = []
    for name, (array, datatype) in tensors.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    return triton.infer(model, inputs, outputs=requested)


def as_text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def test_health_and_metadata_through_tritonclient(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("sentiment") and triton.is_model_ready("iris", model_version="1")
    assert not triton.is_model_ready("iris", model_version="7")
    server = triton.get_server_metadata()
    assert server["name"] == "serve-http" and "binary_tensor_data" in server["extensions"]
    metadata = triton.get_model_metadata("iris")
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "scores"]
    embedding = triton.get_model_metadata("minilm")["outputs"]
    assert embedding == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


@pytest.mark.parametrize("binary", [True, False])
def test_sentiment_bytes_in_label_and_scores_out(server, triton, binary):
    result = infer(triton, "sentiment", {"text": (np.array([t.encode() for t in TEXTS], dtype=object), "BYTES")},
                   ["label", "scores"], binary)
    expected = v1(server, "sentiment", TEXTS)
    assert as_text(result.as_numpy("label")) == [o["category"] for o in expected]
    labels = requests.get(f"{server.url}/v1/models/sentiment", timeout=10).json()["labels"]
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and scores.shape == (2, len(labels))
    for row, output in zip(scores, expected):
        assert row.tolist() == pytest.approx([output["scores"][label] for label in labels], abs=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_minilm_embeddings_as_fp32(server, triton, binary):
    result = infer(triton, "minilm", {"text": (np.array([t.encode() for t in TEXTS], dtype=object), "BYTES")},
                   ["embedding"], binary)
    vectors = result.as_numpy("embedding")
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    for vector, output in zip(vectors, v1(server, "minilm", TEXTS)):
        assert vector.tolist() == pytest.approx(output["embedding"], abs=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_faces_image_bytes_in_boxes_out(server, triton, astronaut_jpeg, binary):
    # Binary data carries the file itself; JSON carries it as base64 text.
    element = astronaut_jpeg if binary else b64(astronaut_jpeg).encode()
    names = ["boxes", "scores", "labels", "image_index", "image_size"]
    result = infer(triton, "faces", {"image": (np.array([element], dtype=object), "BYTES")}, names, binary)
    (expected,) = v1(server, "faces", [b64(astronaut_jpeg)])
    boxes = result.as_numpy("boxes")
    assert boxes.shape == (len(expected["objects"]), 4) == (1, 4)
    box = expected["objects"][0]["box"]
    assert boxes[0].tolist() == pytest.approx([box["x1"], box["y1"], box["x2"], box["y2"]], abs=0.01)
    assert as_text(result.as_numpy("labels")) == ["face"] and result.as_numpy("image_index").tolist() == [0]
    assert result.as_numpy("image_size").tolist() == [[expected["width"], expected["height"]]]


@pytest.mark.parametrize("binary", [True, False])
def test_iris_fp32_matrix_in(server, triton, binary):
    result = infer(triton, "iris", {"features": (np.array([SETOSA, VIRGINICA], dtype=np.float32), "FP32")},
                   ["label", "scores"], binary)
    names = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    # FP32 rounds the measurements: /v1 gets the same float32 values.
    rows = [dict(zip(names, np.array(row, dtype=np.float32).astype(float).tolist())) for row in (SETOSA, VIRGINICA)]
    expected = v1(server, "iris", rows)
    assert as_text(result.as_numpy("label")) == [o["category"] for o in expected] == ["setosa", "virginica"]
    for row, output in zip(result.as_numpy("scores"), expected):
        assert row.tolist() == pytest.approx([output["scores"][k] for k in ("setosa", "versicolor", "virginica")], abs=1e-6)


def test_an_mlserver_style_json_body_is_answered(server):
    """The protocol's own JSON examples, as MLServer's docs write them (any
    input name for a single tensor, content_type hints)."""
    body = {
        "inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [SETOSA]}],
        "parameters": {"content_type": "np"},
    }
    r = requests.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == "iris" and answer["model_version"] == "1"
    label = next(o for o in answer["outputs"] if o["name"] == "label")
    assert label == {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["setosa"]}
    text = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[0]], "parameters": {"content_type": "str"}}]}
    r = requests.post(f"{server.url}/v2/models/sentiment/versions/1/infer", json=text, timeout=30)
    assert r.status_code == 200 and next(o for o in r.json()["outputs"] if o["name"] == "label")["data"] == ["fresh"]


def test_protocol_errors_are_its_own_shape(server, triton):
    from tritonclient.utils import InferenceServerException

    for path, body, status in (
        ("/v2/models/nope/infer", {"inputs": []}, 404),
        ("/v2/models/iris/infer", {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, 422),
        ("/v2/models/iris/infer", {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": [1, 2]}]}, 422),
        ("/v2/models/iris/versions/9/infer", {"inputs": []}, 404),
    ):
        r = requests.post(server.url + path, json=body, timeout=10)
        assert r.status_code == status and set(r.json()) == {"error"} and r.json()["error"], (path, r.text)
    r = requests.post(server.url + "/v2/models/iris/infer", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="no model named"):
        triton.get_model_metadata("nope")


def test_openai_client_embeddings_equal_the_predict_route(server):
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused-without-keys")
    expected = [o["embedding"] for o in v1(server, "minilm", TEXTS)]
    for encoding in ("float", "base64"):
        response = client.embeddings.create(model="minilm", input=TEXTS, encoding_format=encoding)
        assert [d.index for d in response.data] == [0, 1] and response.model == "minilm"
        for data, vector in zip(response.data, expected):
            # Asked for explicitly, base64 comes back as it travels: little-endian float32.
            got = np.frombuffer(base64.b64decode(data.embedding), "<f4") if encoding == "base64" else data.embedding
            assert list(got) == pytest.approx(vector, abs=1e-6)
        assert response.usage.prompt_tokens == response.usage.total_tokens > len(" ".join(TEXTS).split())
    # The client's default asks for base64 and decodes it.
    (single,) = client.embeddings.create(model="minilm", input=TEXTS[0]).data
    assert single.embedding == pytest.approx(expected[0], abs=1e-6)
    with pytest.raises(BadRequestError, match="cannot give 64"):
        client.embeddings.create(model="minilm", input="x", dimensions=64)
    with pytest.raises(BadRequestError, match="does text-classification"):
        client.embeddings.create(model="sentiment", input="x")
    with pytest.raises(NotFoundError):
        client.embeddings.create(model="nope", input="x")
    raw = requests.post(f"{server.url}/v1/embeddings", json={"model": "minilm", "input": [1, 2]}, timeout=10)
    assert raw.status_code == 400
    assert raw.json()["error"] == {"message": "token arrays are not supported: send the texts", "type": "invalid_request_error",
                                   "param": "input", "code": "validation_failed"}


def test_base64_embeddings_are_little_endian_float32(server):
    r = requests.post(f"{server.url}/v1/embeddings", json={"model": "minilm", "input": TEXTS[0], "encoding_format": "base64"}, timeout=10)
    vector = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,) and vector.tolist() == pytest.approx(v1(server, "minilm", TEXTS[:1])[0]["embedding"], abs=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests(server, triton, algorithm):
    import tritonclient.http as httpclient

    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    result = triton.infer("sentiment", [text], request_compression_algorithm=algorithm)
    assert as_text(result.as_numpy("label")) == [o["category"] for o in v1(server, "sentiment", TEXTS)]
