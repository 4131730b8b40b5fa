"""The one interface every model adapter implements.

An adapter wraps one model of the repository: ``load()`` reads its artifacts,
``predict(batch)`` maps a list of inputs to a list of results in the same
order. Optional per-item hooks run outside the batched call: ``preprocess``
(in the request's thread, before the batch) and ``postprocess`` (after it).
Adapters know nothing of HTTP or Flask and work from a Python shell::

    from predict import load_manifest, build_adapter
    adapter = build_adapter(load_manifest("models/sentiment"))
    adapter.load()
    adapter.predict(["a warm, funny film"])

What an input and a result are is the task's (``tasks/``): an adapter declares
the registered tasks it serves (``tasks = ("text-classification",)``, or
``task = "..."`` for one), or its own pydantic ``Input`` and ``Output`` types.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:
    from adapters.manifest import Manifest


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

    Subclasses declare ``tasks`` (or ``task``, or ``Input`` and ``Output``) and
    implement ``load`` and ``predict``. ``predict`` gets what the task decodes
    (``str`` for text tasks, an RGB ``PIL.Image.Image`` for image tasks, a
    tuple of feature values for tabular tasks, the validated ``Input`` for a
    custom task), after ``preprocess``. Detection adapters return every
    candidate box with its score; the request's thresholds, NMS and limits are
    applied by the task (``tasks.detection``).
    """

    #: Registered tasks this adapter can serve; the manifest picks one.
    tasks: ClassVar[tuple[str, ...]] = ()
    #: Shorthand for an adapter of one task.
    task: ClassVar[str | None] = None
    #: A custom task's input and output types (pydantic models or any type pydantic validates).
    Input: ClassVar[Any] = None
    Output: ClassVar[Any] = None

    def __init__(self, manifest: "Manifest", folder: Path) -> None:
        self.manifest = manifest
        self.folder = folder
        self.labels: list[str] = list(manifest.labels)
        self.ready = False
        # Loaded adapters named in the manifest's depends_on, set by the registry before load().
        self.dependencies: dict[str, ModelAdapter] = {}
        # What the folder's files were when loaded (set by the registry; part of the cache keys).
        self.revision = ""

    @classmethod
    def served_tasks(cls) -> tuple[str, ...]:
        """The registered task names this adapter class declares."""
        return tuple(cls.tasks) or ((cls.task,) if isinstance(cls.task, str) else ())

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

    def inspect(self) -> None:
        """Check the options and artifacts without reading weights: what a web
        process does for a model only job workers run (``Task.jobs_only``)."""

    @abstractmethod
    def predict(self, batch: Sequence[Any]) -> list[Any]:
        """One result per input, in order."""

    def preprocess(self, item: Any) -> Any:
        """Per-item work before the batched call (resizing, tokenising ...); runs
        in the request's thread, only for inputs the cache does not answer."""
        return item

    def postprocess(self, result: Any) -> Any:
        """Per-item work on one result of the batched call."""
        return result

    def unload(self) -> None:
        self.ready = False

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            task=self.manifest.task,
            adapter=self.manifest.adapter,
            version=self.manifest.version,
            labels=list(self.labels),
            description=self.manifest.description,
            ready=self.ready,
        )


def one_line(problem: BaseException | str, limit: int = 300) -> str:
    """An exception (or a text) as one line of at most ``limit`` characters, for load errors."""
    text = " ".join(str(problem).split()) or type(problem).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
