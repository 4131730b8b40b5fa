"""Fixtures of the API tests that serve every kind of task."""

from __future__ import annotations

import shutil

import pytest

from predict import ModelRegistry
from serving.settings import REPO_ROOT
from tests.tabular_models import write_churn
from tests.tiny_transformers import write_model_folder
from tests.unit.test_model_code import ECHO


@pytest.fixture(scope="session")
def task_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("task-models")
    for name in ("iris", "diabetes", "digits", "sentiment", "faces"):
        if not (REPO_ROOT / "models" / name / "model.yaml").is_file():
            pytest.fail(f"models/{name} is missing")
        shutil.copytree(REPO_ROOT / "models" / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    write_churn(root)
    write_model_folder(root, "ner", "token-classification")
    write_model_folder(root, "qa", "question-answering", "options: {max_length: 64, doc_stride: 16}\n")
    (root / "echo").mkdir()
    (root / "echo" / "model.py").write_text(ECHO)
    (root / "echo" / "helpers.py").write_text("PREFIX = '> '\n")
    (root / "echo" / "model.yaml").write_text("task: echo\nadapter: model:Echo\n")
    return root


@pytest.fixture(scope="session")
def task_registry(task_repo):
    registry = ModelRegistry(task_repo)
    registry.load_all()
    return registry


