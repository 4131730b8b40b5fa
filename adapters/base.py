"""The one interface every model adapter implements.

An adapter wraps one model of the repository: ``load()`` reads its artifacts,
``predict(batch)`` maps a list of decoded inputs to a list of results in the same
order. Adapters know nothing of HTTP or Flask and work from a Python shell::

    from predict import load_manifest, build_adapter
    adapter = build_adapter(load_manifest("models/sentiment"))
    adapter.load()
    adapter.predict(["a warm, funny film"])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:
    from predict import Manifest

TEXT_CLASSIFICATION = "text-classification"
TEXT_EMBEDDING = "text-embedding"
IMAGE_CLASSIFICATION = "image-classification"
OBJECT_DETECTION = "object-detection"


@dataclass(frozen=True)
class Classification:
    """One text's predicted label and the probability of every label."""

    label: str
    scores: dict[str, float]


@dataclass(frozen=True)
class Detection:
    """One object: label, confidence in [0, 1], box corners in pixels of the upright image."""

    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class ModelInfo:
    """What ``GET /v1/models`` shows of a model."""

    name: str
    task: str
    adapter: str
    version: str
    labels: list[str] = field(default_factory=list)
    description: str = ""
    ready: bool = False


class ModelAdapter(ABC):
    """Base class of every adapter.

    Subclasses set ``task`` and implement ``load`` and ``predict``. Inputs are
    ``str`` for text tasks and RGB ``PIL.Image.Image`` for image tasks.
    Detection adapters return every candidate box with its score; the request's
    thresholds, NMS and limits are applied afterwards by ``adapters.detection``.
    """

    task: ClassVar[str]

    def __init__(self, manifest: "Manifest", folder: Path) -> None:
        self.manifest = manifest
        self.folder = folder
        self.labels: list[str] = list(manifest.labels)
        self.ready = False
        # Loaded adapters named in the manifest's depends_on, set by the registry before load().
        self.dependencies: dict[str, ModelAdapter] = {}

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def options(self) -> dict[str, Any]:
        return self.manifest.options

    def resolve(self, source: str) -> Path:
        """A source path relative to the model's folder."""
        path = Path(source)
        return path if path.is_absolute() else self.folder / path

    @abstractmethod
    def load(self) -> None:
        """Read weights and artifacts; set ``self.labels``. Runs in the Gunicorn master: no torch compute."""

    @abstractmethod
    def predict(self, batch: Sequence[Any]) -> list[Any]:
        """One result per input, in order."""

    def unload(self) -> None:
        self.ready = False

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            task=self.task,
            adapter=self.manifest.adapter,
            version=self.manifest.version,
            labels=list(self.labels),
            description=self.manifest.description,
            ready=self.ready,
        )


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters, for load errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
