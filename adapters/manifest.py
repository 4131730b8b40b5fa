"""The manifest of a model folder: ``models/<name>/model.yaml``.

A manifest names the task, the adapter that serves it, where the weights come
from and the adapter's options. A user serves their own model by adding a folder
with a manifest; nothing in the server changes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from typing_extensions import Annotated

from serving.errors import ModelLoadError

MANIFEST_NAME = "model.yaml"
SHA256 = r"^[0-9a-fA-F]{64}$"

class Batching(BaseModel):
    """Micro-batching of one model (see serving/batching.py)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, le=4096, description="Most inputs in one call of the model.")
    max_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="How long the first queued input waits for company; 0 takes what is queued."
    )
    max_queue: int = Field(256, ge=1, description="Inputs queued per worker before requests get 503.")
    max_queue_wait_ms: float = Field(
        0.0,
        ge=0,
        description="503 at once for a request that would wait longer than this for the model, "
        "predicted from recent calls; 0: no bound in time.",
    )


class FeatureSpec(BaseModel):
    """One input column of a tabular model, as a manifest declares it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["number", "string"] = "number"
    nullable: bool = Field(False, description="Whether the value may be null (missing).")
    categories: Optional[list[str]] = Field(None, min_length=1, description="The only values a string feature takes.")


class Manifest(BaseModel):
    """What ``model.yaml`` may say."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    task: str = Field(description="A built-in task, a custom task's name, or module:Class of a tasks.Task.")
    adapter: str = Field(description="A built-in adapter, module:Class, or model:Class from the folder's model.py.")
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
    optional: bool = Field(
        False, description="If it fails to load, serve the others and report it in /readyz instead of refusing to start."
    )
    features: Optional[list[Union[str, FeatureSpec]]] = Field(
        None,
        min_length=1,
        description="Tabular models: the input columns in order (a name is a number column); "
        "default: read from the fitted model.",
    )
    example: Any = Field(None, description="One input item, shown in the API docs; checked at load.")
    checksums: dict[str, Annotated[str, StringConstraints(pattern=SHA256)]] | str | None = Field(
        None,
        description="sha256 of artifact files, {file: hex}, or the name of a sha256sum-format file "
        "in the folder that lists them; verified before anything is unpickled.",
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


def pinned_checksums(manifest: Manifest, folder: Path) -> dict[str, str]:
    """The manifest's pins, {file: lowercase sha256}, read from the named list file if it names one."""
    if manifest.checksums is None:
        return {}
    if isinstance(manifest.checksums, dict):
        return {name: digest.lower() for name, digest in manifest.checksums.items()}
    path = folder / manifest.checksums
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(manifest.name, f"cannot read checksum list {manifest.checksums}: {type(exc).__name__}") from None
    pins: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        # sha256sum's format: "<hex>  <file>" (a '*' marks binary mode).
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.strip())
        if match is None:
            raise ModelLoadError(manifest.name, f"{manifest.checksums} line {number} is not '<sha256>  <file>'")
        pins[match[2]] = match[1].lower()
    if not pins:
        raise ModelLoadError(manifest.name, f"{manifest.checksums} lists no file")
    return pins


def verify_checksums(manifest: Manifest, folder: Path) -> None:
    """Check every pinned artifact's sha256 before an adapter opens it.

    joblib and torch files are pickles: a swapped file runs code when loaded,
    so a mismatch stops the load with a one-line reason naming model and file.
    """
    root = folder.resolve()
    for name, expected in pinned_checksums(manifest, folder).items():
        path = (folder / name).resolve()
        if root not in path.parents:
            raise ModelLoadError(manifest.name, f"checksum entry {name!r} is outside the model folder")
        try:
            with open(path, "rb") as file:
                actual = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as exc:
            raise ModelLoadError(manifest.name, f"pinned file {name} cannot be read ({type(exc).__name__})") from None
        if actual != expected:
            raise ModelLoadError(
                manifest.name, f"checksum mismatch for {name}: manifest pins sha256 {expected[:12]}..., file has {actual[:12]}..."
            )
