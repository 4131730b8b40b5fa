"""What adapters return: the domain types of the built-in tasks.

Plain frozen dataclasses, no JSON and no HTTP: each task (``tasks/``) says how
its type is shaped as JSON and kept in the prediction cache.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Classification:
    """A predicted label and, where the model gives them, the probability of every label."""

    label: str
    scores: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: label, confidence in [0, 1], box corners in pixels of the upright image."""

    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True, slots=True)
class Regression:
    """A regressor's prediction: one value, or one per target of a multi-output model."""

    value: float | None = None
    values: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class Entity:
    """A span of a text that a token classifier labelled; offsets are characters."""

    label: str
    score: float
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Answer:
    """An extractive answer: the span of the context and its score."""

    answer: str
    score: float
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Forecast:
    """The next values of one series: one per step, with the step's date, and
    the prediction interval where the model gives one."""

    series: str
    times: tuple[str, ...]
    values: tuple[float, ...]
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None
