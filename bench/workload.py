"""What the benchmark sends: which models exist, one input per model, request bodies.

Reads manifests only (no adapter import), so the orchestrating process never
imports torch: it forks nothing but ``exec``'d servers and spawned children.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from adapters.loading import ADAPTERS, FOLDER_MODULE
from adapters.manifest import MANIFEST_NAME, Manifest, load_manifest

REPO_ROOT = Path(__file__).resolve().parent.parent
REVIEW = "a warm, funny, beautifully acted film that never lets its audience down"
# Tasks whose inputs are base64 image files on the wire and PIL images in the adapter.
IMAGE_TASKS = {"object-detection", "image-classification"}


@dataclass(frozen=True)
class Model:
    name: str
    manifest: Manifest

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def is_image(self) -> bool:
        return self.task in IMAGE_TASKS


def _adapter_importable(manifest: Manifest, folder: Path) -> str | None:
    """Why the manifest's adapter cannot load, or None; checked without importing it."""
    target = ADAPTERS.get(manifest.adapter, manifest.adapter)
    module, _, cls = target.partition(":")
    if not cls:
        return f"adapter {manifest.adapter!r} is not registered yet"
    if module == FOLDER_MODULE:
        return None if (folder / f"{module}.py").is_file() else f"{folder}/{module}.py not found"
    if importlib.util.find_spec(module) is None:
        return f"adapter module {module} not found"
    return None


def available(repository: Path, names: list[str]) -> tuple[list[Model], list[str]]:
    """The named models present in the repository, and a note for each one skipped."""
    found: list[Model] = []
    notes: list[str] = []
    for name in names:
        folder = repository / name
        if not (folder / MANIFEST_NAME).is_file():
            notes.append(f"{name}: no {folder}/{MANIFEST_NAME} yet, skipped")
            continue
        try:
            manifest = load_manifest(folder)
        except Exception as exc:  # a manifest being written right now, say
            notes.append(f"{name}: manifest unreadable ({exc}), skipped")
            continue
        problem = _adapter_importable(manifest, folder)
        if problem:
            notes.append(f"{name}: {problem}, skipped")
            continue
        found.append(Model(name, manifest))
    return found, notes


def serve_list(repository: Path, models: list[Model]) -> str:
    """SERVE_MODELS for these models plus what they depend on (the registry needs both)."""
    names: list[str] = []

    def add(name: str) -> None:
        if name in names:
            return
        for dep in load_manifest(repository / name).depends_on:
            add(dep)
        names.append(name)

    for model in models:
        add(model.name)
    return ",".join(names)


def limit_threads() -> None:
    """One compute thread per process, as each Gunicorn worker gets on this box
    (workers >= cores); call before numpy or torch starts its thread pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


@functools.cache
def jpeg_bytes() -> bytes:
    """A 640x480 photo (scikit-image's astronaut, scaled and centre-cropped) as JPEG."""
    from PIL import Image
    from skimage import data

    square = Image.fromarray(data.astronaut()).resize((640, 640), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    square.crop((0, 80, 640, 560)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def wire_input(model: Model) -> str:
    """The one input of a request, as it travels in JSON."""
    return base64.b64encode(jpeg_bytes()).decode("ascii") if model.is_image else REVIEW


def body(model: Model) -> bytes:
    return json.dumps({"inputs": [wire_input(model)]}).encode()
