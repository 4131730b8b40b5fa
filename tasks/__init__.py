"""The task registry: what an input item and an output item of a kind of model are.

Built-in tasks by name; a manifest may also name ``task: module:Class`` (a
``Task`` subclass; ``model:Class`` is the model folder's own ``model.py``), and
an adapter with its own ``Input`` and ``Output`` types serves a custom task
named by the manifest. Every route, job and stream reaches a task through the
model layer (``predict.Predictor``), never by its name.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from adapters.base import ModelAdapter, one_line
from adapters.loading import load_object
from serving.errors import ModelLoadError, ServeError
from tasks.base import Decoded, Limits, NoParameters, Task
from tasks.custom import CustomTask, declares_types

if TYPE_CHECKING:
    from adapters.manifest import Manifest

__all__ = ["BUILTIN_TASKS", "Decoded", "Limits", "NoParameters", "Task", "build_task", "task_class"]

TEXT_CLASSIFICATION = "text-classification"
TEXT_EMBEDDING = "text-embedding"
TOKEN_CLASSIFICATION = "token-classification"
QUESTION_ANSWERING = "question-answering"
IMAGE_CLASSIFICATION = "image-classification"
OBJECT_DETECTION = "object-detection"
TABULAR_CLASSIFICATION = "tabular-classification"
TABULAR_REGRESSION = "tabular-regression"
TIME_SERIES_FORECAST = "time-series-forecast"
TEXT_TO_IMAGE = "text-to-image"

BUILTIN_TASKS = {
    TEXT_CLASSIFICATION: "tasks.text:TextClassification",
    TEXT_EMBEDDING: "tasks.text:TextEmbedding",
    TOKEN_CLASSIFICATION: "tasks.text:TokenClassification",
    QUESTION_ANSWERING: "tasks.text:QuestionAnswering",
    IMAGE_CLASSIFICATION: "tasks.image:ImageClassification",
    OBJECT_DETECTION: "tasks.detection:ObjectDetection",
    TABULAR_CLASSIFICATION: "tasks.tabular:TabularClassification",
    TABULAR_REGRESSION: "tasks.tabular:TabularRegression",
    TIME_SERIES_FORECAST: "tasks.forecast:TimeSeriesForecast",
    TEXT_TO_IMAGE: "tasks.generation:TextToImage",
}


def _builtin(name: str) -> type[Task]:
    module, _, cls = BUILTIN_TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def task_class(manifest: "Manifest", adapter_cls: type[ModelAdapter], folder: Path) -> type[Task]:
    """The task a manifest asks of an adapter class; raises ``ModelLoadError``
    when the adapter cannot serve it."""
    spec = manifest.task
    own_types = declares_types(adapter_cls)
    served = adapter_cls.served_tasks()
    if ":" in spec:
        cls = load_object(spec, folder, manifest.name, "task")
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ModelLoadError(manifest.name, f"task {spec!r} is not a tasks.Task subclass")
        name = cls.name
    elif spec in BUILTIN_TASKS:
        if own_types:
            raise ModelLoadError(
                manifest.name,
                f"adapter {manifest.adapter!r} declares its own Input and Output, so its task needs a name "
                f"of its own, not the built-in {spec!r}",
            )
        cls, name = _builtin(spec), spec
    elif own_types:
        if served and spec not in served:
            raise ModelLoadError(manifest.name, f"adapter {manifest.adapter!r} serves {', '.join(served)}, manifest says {spec!r}")
        return CustomTask
    else:
        raise ModelLoadError(
            manifest.name, f"unknown task {spec!r}; built-in: {', '.join(BUILTIN_TASKS)} (or module:Class)"
        )
    if name not in served:
        what = ", ".join(served) or "no task"
        raise ModelLoadError(manifest.name, f"adapter {manifest.adapter!r} serves {what}, manifest says {spec!r}")
    return cls


def build_task(cls: type[Task], adapter: ModelAdapter) -> Task:
    """The task of one loaded model; raises ``ModelLoadError`` naming it."""
    try:
        task = cls(adapter)
        example = adapter.manifest.example
        if example is not None:  # a documented example that does not validate would mislead
            task.check(example, task.parameters(None), Limits.defaults(), "example")
    except ModelLoadError:
        raise
    except ServeError as error:
        problems = "; ".join(f"{d['field']}: {d['message']}" for d in error.details if d["field"])
        raise ModelLoadError(adapter.name, f"the manifest's example is not a valid input: {problems or error.message}") from None
    except Exception as exc:  # a custom task or type that cannot be built
        raise ModelLoadError(adapter.name, f"task {adapter.manifest.task!r}: {one_line(exc)}") from exc
    return task
