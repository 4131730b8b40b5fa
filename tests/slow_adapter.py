"""A text classifier that takes as long as it is told: for deadline and shutdown tests.

A text ``sleep:2.5`` makes its batch take 2.5 s (the longest such text of the
batch); any other text answers at once. Every call appends a line to the file
named by ``SLOW_ADAPTER_LOG`` (if set), so a test can see that the call began
without sleeping itself. It simulates a slow model; nothing here is a mock of
the service.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from adapters.base import ModelAdapter
from tasks import TEXT_CLASSIFICATION
from tasks.results import Classification


class SlowClassifier(ModelAdapter):
    task = TEXT_CLASSIFICATION

    def load(self) -> None:
        self.labels = ["done"]

    def predict(self, batch: Sequence[str]) -> list[Classification]:
        seconds = max((float(t[6:]) for t in batch if t.startswith("sleep:")), default=0.0)
        log = os.environ.get("SLOW_ADAPTER_LOG")
        if log:
            with open(log, "a") as file:
                file.write(f"{os.getpid()} {seconds}\n")
        time.sleep(seconds)
        return [Classification("done", {"done": 1.0}) for _ in batch]


class PacedClassifier(ModelAdapter):
    """A text classifier whose every call takes ``SLOW_ADAPTER_PACE_S`` (0.05 s
    by default), whatever its batch: a job's shards take long enough for every
    worker process to take some. Its answer depends on the text (``even`` or
    ``odd`` by length), so that results in the wrong order or of the wrong
    input show."""

    task = TEXT_CLASSIFICATION

    def load(self) -> None:
        self.labels = ["even", "odd"]
        self.pace = float(os.environ.get("SLOW_ADAPTER_PACE_S", "0.05"))

    def predict(self, batch: Sequence[str]) -> list[Classification]:
        time.sleep(self.pace)
        return [Classification(label, {label: 1.0}) for label in (self.labels[len(t) % 2] for t in batch)]
