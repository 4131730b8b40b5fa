"""The manifest of a model folder: ``models/<name>/model.yaml``.

A manifest names the task, the adapter that serves it, where the weights come
from and the adapter's options. A user serves their own model by adding a folder
with a manifest; nothing in the server changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ModelLoadError

MANIFEST_NAME = "model.yaml"

# Built-in adapters by short name; a manifest may also name "package.module:Class".
ADAPTERS = {
    "sklearn": "adapters.sklearn_text:SklearnTextClassifier",
    "transformers-detection": "adapters.transformers_detection:TransformersDetector",
    "haar-cascade": "adapters.haar_cascade:HaarCascadeDetector",
    "text-embedding": "adapters.text_embedding:TextEmbedder",
    "embedding-classifier": "adapters.embedding_classifier:EmbeddingClassifier",
    "efficientnet": "adapters.image_classification:EfficientNetClassifier",
}


class Batching(BaseModel):
    """Micro-batching of one model (see serving/batching.py)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, le=4096, description="Most inputs in one call of the model.")
    max_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="How long the first queued input waits for company; 0 takes what is queued."
    )
    max_queue: int = Field(256, ge=1, description="Inputs queued per worker before requests get 503.")


class Manifest(BaseModel):
    """What ``model.yaml`` may say."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    task: str
    adapter: str
    version: str = "1"
    source: str | None = Field(
        None, description="Weights: a path relative to the folder, a package resource, or a hub id."
    )
    options: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    description: str = ""
    batching: Batching = Field(default_factory=Batching)
    depends_on: list[str] = Field(
        default_factory=list, description="Models this one uses (loaded first, shared, not copied)."
    )


def load_manifest(folder: str | Path) -> Manifest:
    """Read and validate ``folder/model.yaml``; the folder name is the default model name."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(folder.name, f"cannot read {MANIFEST_NAME}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(folder.name, f"{MANIFEST_NAME} must be a mapping")
    raw.setdefault("name", folder.name)
    raw["version"] = str(raw.get("version", "1"))
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ModelLoadError(raw["name"], f"invalid {MANIFEST_NAME}: {problems}") from exc
