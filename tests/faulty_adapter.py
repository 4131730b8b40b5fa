"""A text classifier that fails or waits on purpose, for tests of error handling,
logs and load shedding.

Any text containing ``boom`` raises inside the model call. A text
``gate:<folder>`` creates ``<folder>/entered`` and then holds the model until
the test creates ``<folder>/release`` (at most 60 s). Other texts are ``short``
or ``long`` by length. Served as ``adapter: "tests.faulty_adapter:FaultyClassifier"``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import yaml

from adapters.base import ModelAdapter
from tasks import TEXT_CLASSIFICATION
from tasks.results import Classification


class FaultyClassifier(ModelAdapter):
    task = TEXT_CLASSIFICATION

    def load(self) -> None:
        self.labels = ["long", "short"]

    def predict(self, batch: Sequence[str]) -> list[Classification]:
        if any("boom" in text for text in batch):
            raise RuntimeError("the faulty model exploded on purpose")
        for text in batch:
            if text.startswith("gate:"):
                folder = Path(text[len("gate:"):])
                (folder / "entered").touch()
                deadline = time.monotonic() + 60
                while not (folder / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)  # the test opens the gate; bounded
        return [
            Classification(label=label, scores={"short": float(label == "short"), "long": float(label == "long")})
            for label in ("short" if len(text) < 20 else "long" for text in batch)
        ]


def write_faulty_model_folder(models_dir: Path, name: str = "faulty") -> Path:
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"task": TEXT_CLASSIFICATION, "adapter": "tests.faulty_adapter:FaultyClassifier", "version": "1"}
    (folder / "model.yaml").write_text(yaml.safe_dump(manifest))
    return folder
