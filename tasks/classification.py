"""What every classification task answers: a label and, where the model gives
them, the probability of every label (``{category, scores}``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from tasks.base import Decoded
from tasks.results import Classification


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
