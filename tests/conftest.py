"""Shared fixtures: a model repository built for the tests, sample photos, apps."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from predict import ModelRegistry
from serve_http import create_app
from serving.settings import REPO_ROOT, Settings

SENTIMENT = REPO_ROOT / "models" / "sentiment"


def jpeg_bytes(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    """A real photo with exactly one face (scikit-image's astronaut)."""
    return jpeg_bytes(skdata.astronaut())


@pytest.fixture(scope="session")
def chelsea_jpeg() -> bytes:
    return jpeg_bytes(skdata.chelsea())


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """sentiment (trained by `make models`), faces, and a tiny random YOLOS."""
    from tests.tiny_detector import write_detector_model_folder

    if not (SENTIMENT / "model.joblib").is_file():
        pytest.fail("models/sentiment/model.joblib is missing: run `make models` first")
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SENTIMENT, root / "sentiment")
    shutil.copytree(REPO_ROOT / "models" / "faces", root / "faces")
    write_detector_model_folder(root, "tiny-yolos")
    return root


@pytest.fixture(scope="session")
def registry(model_repo) -> ModelRegistry:
    registry = ModelRegistry(model_repo)
    registry.load_all()
    return registry


@pytest.fixture
def settings(model_repo, tmp_path) -> Settings:
    return Settings(
        _env_file=None,
        model_repository=model_repo,
        cache_backend="disk",
        cache_dir=tmp_path / "cache",
        jobs_dir=tmp_path / "jobs",
    )


@pytest.fixture
def app(settings, registry):
    return create_app(settings, registry=registry)


@pytest.fixture
def client(app):
    return app.test_client()
