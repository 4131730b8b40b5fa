"""The torch models of the repository through the API: embeddings, the MiniLM
classifier and ImageNet classification."""

from __future__ import annotations

import numpy as np
import pytest

from predict import ModelRegistry
from serve_http import create_app
from serving.settings import REPO_ROOT
from tests.conftest import b64


@pytest.fixture(scope="module")
def torch_registry():
    if not (REPO_ROOT / "models" / "minilm-sentiment" / "head.joblib").is_file():
        pytest.fail("models/minilm-sentiment/head.joblib is missing: run `make models` first")
    registry = ModelRegistry(REPO_ROOT / "models", ["minilm", "minilm-sentiment", "imagenet"])
    registry.load_all()
    return registry


@pytest.fixture
def torch_client(settings, torch_registry):
    return create_app(settings, registry=torch_registry).test_client()


def test_embeddings_are_unit_vectors_in_order(torch_client):
    texts = ["a warm, funny film", "a cold, dull film", "a warm, funny film"]
    body = torch_client.post("/v1/models/minilm/predict", json={"inputs": texts}).get_json()
    assert body["task"] == "text-embedding"
    vectors = np.array([o["embedding"] for o in body["outputs"]])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)
    assert vectors[0] @ vectors[1] < 0.99


def test_minilm_sentiment_through_classify(torch_client):
    body = torch_client.post(
        "/v1/classify", json={"texts": ["a warm, funny, beautifully acted film", "a dull, lifeless and tedious mess"], "model": "minilm-sentiment"}
    ).get_json()
    assert [r["category"] for r in body["results"]] == ["fresh", "rotten"]


def test_imagenet_top5_for_the_cat(torch_client, chelsea_jpeg):
    body = torch_client.post("/v1/models/imagenet/predict", json={"inputs": [b64(chelsea_jpeg)]}).get_json()
    (output,) = body["outputs"]
    assert len(output["scores"]) == 5
    assert output["category"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert output["scores"][output["category"]] == max(output["scores"].values())


def test_text_model_rejects_images_and_image_model_rejects_text(torch_client):
    r = torch_client.post("/v1/models/imagenet/predict", json={"inputs": ["not an image"]})
    assert r.status_code == 400
    r = torch_client.post("/v1/models/minilm/predict", json={"inputs": ["   "]})
    assert r.status_code == 422
