"""Object detection with an OpenCV Haar cascade (offline, no torch).

Manifest::

    task: object-detection
    adapter: haar-cascade
    source: cv2:haarcascade_frontalface_default.xml   # bundled with OpenCV, or a path in the model folder
    labels: [face]                                     # default: derived from the file name
    options: {scale_factor: 1.1, min_neighbors: 5, min_size: 24, score_scale: 4.0}

Scores. A cascade accepts a window when every stage's sum reaches that stage's
threshold; ``detectMultiScale3(outputRejectLevels=True)`` returns, per grouped
box, the best last-stage sum ("level weight"). We map its margin over the last
stage's threshold, ``m = weight - threshold >= 0``, with the logistic
``score = 1 / (1 + exp(-m / score_scale))``:

- monotone, so ranking by score is ranking by the cascade's own evidence;
- relative to the threshold, because raw weights are on each cascade's own
  scale (the last threshold is -2.99 in frontalface_default, +105.8 in
  frontalface_alt): a fixed logistic of the raw weight would score every alt
  box 1.0;
- every box the cascade accepts scores >= 0.5, so the server's default 0.3
  score threshold never hides a detection the cascade made; raise it to keep
  only the clearer ones.

Measured with frontalface_default (grey, no equalisation): the astronaut's face
m = 8.8 (score 0.90); 97 of scikit-image's 100 LFW faces found (upscaled 4x, padded),
m from 5.3 (0.79), 5th percentile 7.2 (0.86), median 10.9 (0.94); the few false
boxes on 17 face-free sample photos (all on ``coins``) m = 4.9 to 6.5 (0.77 to
0.83). The weight separates faces from look-alikes only weakly: the grouping by
``min_neighbors`` is the real decision, the score ranks. Other face, eye and
cat cascades give margins of 0 to 6 (scores 0.5 to 0.82). The body cascades
(full/upper/lowerbody) accept windows with margins of 29 to 32 only, so their
scores are all ~1.0: there a score says "accepted" and no more.
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
from PIL import Image

from adapters.base import ModelAdapter
from tasks import OBJECT_DETECTION
from tasks.results import Detection
from serving.errors import ModelLoadError

if TYPE_CHECKING:
    from adapters.manifest import Manifest

BUNDLED = "cv2:"

# No cv2.setNumThreads here: it is process-wide, and gunicorn.conf.py's
# post_fork hook already sets it per worker (cores // workers, so 1 with several
# workers on 2 cores). Nothing here starts OpenCV's thread pool in the master:
# reading a cascade runs no parallel_for_.


def _cv2_reason(exc: Exception) -> str:
    """The message of a cv2.error without OpenCV's source path and line."""
    match = re.search(r"error: \(-?\d+:[^)]*\) (.*?)(?: in function|$)", str(exc), re.S)
    return (match.group(1) if match else str(exc)).strip().splitlines()[0]


def label_from_file(name: str) -> str:
    """A label for a cascade file: ``haarcascade_frontalface_default.xml`` -> ``face``.

    ``..._frontalcatface.xml`` -> ``cat``, ``..._fullbody.xml`` -> ``fullbody``,
    ``..._russian_plate_number.xml`` -> ``plate``; a manifest's ``labels`` overrides it.
    """
    full = Path(name).stem.removeprefix("haarcascade_")
    if "plate" in full:  # license_plate_rus_16stages, russian_plate_number
        return "plate"
    stem = full.split("_")[0]
    for view in ("frontal", "profile"):
        stem = stem.removeprefix(view)
    if stem.endswith("face") and stem != "face":
        stem = stem.removesuffix("face")
    return stem or "object"


def last_stage_threshold(path: Path) -> float:
    """The threshold of a cascade file's last stage (the zero of our score margin)."""
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        stages = storage.getFirstTopLevelNode().getNode("stages")
        if stages.empty() or stages.size() == 0:
            raise ValueError("no stages")
        last = stages.at(stages.size() - 1)
        # "stage_threshold" in the old haartraining format OpenCV still reads.
        node = last.getNode("stageThreshold")
        node = last.getNode("stage_threshold") if node.empty() else node
        if not node.isReal():
            raise ValueError("the last stage has no threshold")
        return float(node.real())
    finally:
        storage.release()


class HaarCascadeDetector(ModelAdapter):
    """One OpenCV cascade, one label; scores from the cascade's last-stage margin.

    ``cv2.CascadeClassifier.detectMultiScale*`` is not safe to call from several
    threads on one instance (the classifier keeps the current image's feature
    data; concurrent calls crash with ``vector::_M_range_check``, tested with
    OpenCV 4.14 and reported upstream as opencv/opencv#4287), and the bindings
    release the GIL, so calls are serialised with a lock. Workers are processes,
    and OpenCV threads inside one call, so the lock costs little.
    """

    task = OBJECT_DETECTION

    def __init__(self, manifest: "Manifest", folder: Path) -> None:
        super().__init__(manifest, folder)
        self.cascade: cv2.CascadeClassifier | None = None
        self.threshold = 0.0
        self._lock = threading.Lock()

    def _path(self) -> Path:
        source = self.manifest.source
        if not source:
            raise ModelLoadError(self.name, "no source: name a cascade, e.g. cv2:haarcascade_frontalface_default.xml")
        if source.startswith(BUNDLED):
            return Path(cv2.data.haarcascades) / source.removeprefix(BUNDLED)
        return self.resolve(source)

    def _option(self, key: str, default: float, cast: type, low: float) -> float:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or cast(value) != value or value < low:
            kind = "an integer" if cast is int else "a number"
            raise ModelLoadError(self.name, f"option {key} must be {kind} >= {low}, not {value!r}")
        return cast(value)

    def load(self) -> None:
        self.scale_factor = self._option("scale_factor", 1.1, float, 1.0001)
        self.min_neighbors = int(self._option("min_neighbors", 5, int, 0))
        self.min_size = int(self._option("min_size", 24, int, 1))
        self.score_scale = self._option("score_scale", 4.0, float, 1e-6)
        path = self._path()
        if not path.is_file():
            raise ModelLoadError(self.name, f"cascade file {self.manifest.source!r} not found")
        # load() rather than the constructor: on a bad file the constructor
        # raises a bare SystemError, load() a cv2.error or False.
        cascade = cv2.CascadeClassifier()
        try:
            loaded = cascade.load(str(path)) and not cascade.empty()
            threshold = last_stage_threshold(path) if loaded else None
        except (cv2.error, ValueError) as exc:
            raise ModelLoadError(self.name, f"cascade {self.manifest.source!r} is unreadable: {_cv2_reason(exc)}") from exc
        if threshold is None:
            raise ModelLoadError(self.name, f"cascade {self.manifest.source!r} is empty or not a cascade")
        if len(self.manifest.labels) > 1:
            raise ModelLoadError(self.name, "a cascade detects one class: give at most one label")
        self.cascade, self.threshold = cascade, threshold
        self.labels = list(self.manifest.labels) or [label_from_file(path.name)]

    def score(self, weight: float) -> float:
        """The logistic of the last-stage margin (module docstring): in [0.5, 1)."""
        margin = max(weight - self.threshold, 0.0)
        return 1.0 / (1.0 + math.exp(-margin / self.score_scale))

    def _detect(self, image: Image.Image) -> list[Detection]:
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        with self._lock:
            boxes, _levels, weights = self.cascade.detectMultiScale3(
                gray,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(self.min_size, self.min_size),
                outputRejectLevels=True,
            )
        height, width = gray.shape
        label = self.labels[0]
        # Boxes may reach past the image's edge: clip them to it.
        return [
            Detection(
                label=label,
                score=self.score(float(weight)),
                x1=float(max(x, 0)),
                y1=float(max(y, 0)),
                x2=float(min(x + w, width)),
                y2=float(min(y + h, height)),
            )
            for (x, y, w, h), weight in zip(np.reshape(boxes, (-1, 4)).tolist(), np.ravel(weights).tolist())
        ]

    def predict(self, batch: Sequence[Image.Image]) -> list[list[Detection]]:
        if self.cascade is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return [self._detect(image) for image in batch]
