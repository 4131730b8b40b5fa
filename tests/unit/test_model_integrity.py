"""Checksums of artifacts, optional models, and per-model readiness."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from predict import ModelRegistry
from serving.errors import ModelLoadError, NotReady
from serving.settings import REPO_ROOT

SENTIMENT = REPO_ROOT / "models" / "sentiment"
FACES = REPO_ROOT / "models" / "faces"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_model(root: Path, source: Path, name: str | None = None, **manifest_changes) -> Path:
    folder = root / (name or source.name)
    shutil.copytree(source, folder)
    manifest = yaml.safe_load((folder / "model.yaml").read_text())
    manifest.update(manifest_changes)
    (folder / "model.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def test_training_writes_the_sums_the_manifest_names():
    manifest = yaml.safe_load((SENTIMENT / "model.yaml").read_text())
    assert manifest["checksums"] == "SHA256SUMS"
    listed = dict(line.split()[::-1] for line in (SENTIMENT / "SHA256SUMS").read_text().splitlines())
    assert listed["model.joblib"] == sha256(SENTIMENT / "model.joblib")
    assert set(listed) == {"model.joblib", "labels.json", "metrics.json"}


def test_inline_pin_is_verified(tmp_path):
    folder = copy_model(tmp_path, SENTIMENT, checksums={"model.joblib": sha256(SENTIMENT / "model.joblib")})
    registry = ModelRegistry(tmp_path)
    registry.load_all()
    assert registry.ready
    (folder / "model.joblib").write_bytes((folder / "model.joblib").read_bytes() + b"\0")
    with pytest.raises(ModelLoadError) as failed:
        ModelRegistry(tmp_path).load_all()
    assert failed.value.model == "sentiment"
    assert "checksum mismatch for model.joblib" in str(failed.value) and "\n" not in str(failed.value)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "model.joblib").write_bytes(b"\x80\x04not a pickle"), "checksum mismatch for model.joblib"),
        (lambda f: (f / "model.joblib").unlink(), "pinned file model.joblib cannot be read"),
        (lambda f: (f / "SHA256SUMS").unlink(), "cannot read checksum list SHA256SUMS"),
        (lambda f: (f / "SHA256SUMS").write_text("deadbeef model.joblib\n"), "SHA256SUMS line 1"),
        (lambda f: (f / "SHA256SUMS").write_text("0" * 64 + "  ../../etc/passwd\n"), "outside the model folder"),
    ],
)
def test_damaged_artifacts_stop_start_naming_model_and_file(tmp_path, damage, reason):
    damage(copy_model(tmp_path, SENTIMENT))
    with pytest.raises(ModelLoadError) as failed:
        ModelRegistry(tmp_path).load_all()
    assert str(failed.value).startswith("model 'sentiment': ")
    assert reason in str(failed.value) and "\n" not in str(failed.value)


def test_corrupt_weights_without_a_pin_still_fail_in_one_line(tmp_path):
    folder = copy_model(tmp_path, SENTIMENT, checksums=None)
    (folder / "model.joblib").write_bytes(b"garbage\n" * 10)
    with pytest.raises(ModelLoadError) as failed:
        ModelRegistry(tmp_path).load_all()
    assert failed.value.model == "sentiment" and "\n" not in str(failed.value)


def test_optional_model_that_fails_is_reported_not_fatal(tmp_path):
    copy_model(tmp_path, FACES)
    broken = copy_model(tmp_path, SENTIMENT, optional=True)
    (broken / "model.joblib").unlink()
    registry = ModelRegistry(tmp_path)
    registry.load_all()
    assert registry.ready  # every required model is loaded
    states = registry.states()
    assert states["faces"].ready and not states["faces"].optional
    assert not states["sentiment"].ready and states["sentiment"].optional
    assert "model.joblib" in states["sentiment"].reason
    assert [(card.name, card.ready) for card in registry.infos()] == [("faces", True), ("sentiment", False)]
    with pytest.raises(NotReady):
        registry.get("sentiment")


def test_a_model_depending_on_a_failed_optional_one_fails_too(tmp_path):
    broken = copy_model(tmp_path, SENTIMENT, name="base", optional=True)
    (broken / "model.joblib").unlink()
    copy_model(tmp_path, SENTIMENT, name="derived", depends_on=["base"])
    with pytest.raises(ModelLoadError) as failed:
        ModelRegistry(tmp_path).load_all()
    assert failed.value.model == "derived" and "base, which did not load" in str(failed.value)
