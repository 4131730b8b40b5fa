"""What every classification task answers: a label and, where the model gives
them, the probability of every label (``{category, scores}``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from pydantic import BaseModel

from tasks.base import Decoded
from tasks.results import Classification
from tasks.tensors import BYTES, TensorSpec, utf8


class ClassScores(BaseModel):
    """A predicted label and the probability of every label."""

    category: str
    scores: dict[str, float]


def classification_json(result: Classification) -> dict[str, Any]:
    """``{category, scores}`` with scores rounded to 6 places; ``{category}``
    alone for a model that gives no probabilities."""
    if result.scores is None:
        return {"category": result.label}
    return {"category": result.label, "scores": {label: round(float(p), 6) for label, p in result.scores.items()}}


class Classifies:
    """The output half of a classification task (mixed into a task class)."""

    Output: Any = ClassScores

    def encode(self, result: Classification, decoded: Decoded, parameters: BaseModel) -> Any:
        return classification_json(result)

    def dump(self, result: Classification) -> Any:
        return asdict(result)

    def load(self, value: Any) -> Classification:
        return Classification(**value)

    def tensor_outputs(self) -> list[TensorSpec]:
        width = len(self.model.labels) or -1  # type: ignore[attr-defined]
        return [TensorSpec("label", BYTES, (-1,)), TensorSpec("scores", "FP32", (-1, width))]

    def tensors_from_results(self, results: list[Classification], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        """``label`` per input and, where the model gives probabilities,
        ``scores`` in the order of the model's labels (``GET /v1/models/{name}``)."""
        tensors = {"label": utf8([r.label for r in results])}
        labels = self.model.labels  # type: ignore[attr-defined]
        if labels and all(r.scores is not None for r in results):
            tensors["scores"] = np.array([[r.scores.get(label, 0.0) for label in labels] for r in results], dtype=np.float32)
        return tensors
