"""Object detection with a Hugging Face checkpoint (YOLOS, DETR and kin).

Manifest::

    task: object-detection
    adapter: transformers-detection
    source: checkpoint            # a folder (relative to the model folder, or absolute)
    # source: hustvl/yolos-tiny   # or a hub id "owner/name" (needs the network or the HF cache)
    options:
      threshold: 0.0              # candidates at or below this score are dropped in the adapter

A hub id is looked up in the local HF cache first; an uncached one needs the
network, and offline fails after huggingface_hub's retries (~25 s). DETR
checkpoints with a timm backbone (facebook/detr-resnet-50) need ``timm``;
those with transformers' own ResNet backbone do not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection

from adapters.base import ModelAdapter, one_line
from tasks import OBJECT_DETECTION
from tasks.results import Detection
from serving.errors import ModelLoadError

if TYPE_CHECKING:
    from adapters.manifest import Manifest

# A hub id is "owner/name". A bare name could be a legacy hub model or a
# mistyped folder; we read it as a folder, so a missing checkpoint fails at
# once instead of after huggingface_hub's ~25 s of connection retries.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# COCO checkpoints keep ids of unused categories as "N/A" so the ids match COCO's.
_PLACEHOLDER_LABELS = {"N/A", ""}


class TransformersDetector(ModelAdapter):
    """An ``AutoModelForObjectDetection`` checkpoint with its image processor.

    ``load`` only reads weights: it runs in the Gunicorn master before fork, and
    torch compute there (even a warm-up pass) starts OpenMP threads that hang in
    the forked workers. Each image is run on its own (see ``predict``).
    """

    task = OBJECT_DETECTION

    def __init__(self, manifest: "Manifest", folder: Path) -> None:
        super().__init__(manifest, folder)
        self.processor: Any = None
        self.model: Any = None
        self.id2label: dict[int, str] = {}
        self.threshold = 0.0

    def _locate(self) -> tuple[str, bool]:
        """Where the checkpoint is and whether that is a hub id."""
        source = self.manifest.source
        if not source:
            raise ModelLoadError(self.name, "no source: name a checkpoint folder or a hub id")
        local = self.resolve(source)
        if local.is_dir():
            return str(local), False
        if not Path(source).is_absolute() and _HUB_ID.fullmatch(source):
            return source, True
        raise ModelLoadError(self.name, f"checkpoint folder {source!r} not found")

    @staticmethod
    def _pretrained(cls: Any, where: str, hub: bool, **kwargs: Any) -> Any:
        if not hub:
            return cls.from_pretrained(where, **kwargs)
        # The HF cache first: offline, a cached model then loads at once.
        try:
            return cls.from_pretrained(where, local_files_only=True, **kwargs)
        except OSError:
            return cls.from_pretrained(where, **kwargs)

    def load(self) -> None:
        threshold = self.options.get("threshold", 0.0)
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
            raise ModelLoadError(self.name, f"option threshold must be a number in [0, 1), not {threshold!r}")
        self.threshold = float(threshold)
        where, hub = self._locate()
        try:
            config = self._pretrained(AutoConfig, where, hub)
            # transformers 5 picks the torchvision backend when torchvision is
            # installed; naming PIL keeps preprocessing (and so the boxes) the
            # same whatever else is installed. (use_fast=False is deprecated.)
            processor = self._pretrained(AutoImageProcessor, where, hub, backend="pil")
            model = self._pretrained(AutoModelForObjectDetection, where, hub, config=config)
        except Exception as exc:  # OSError, ValueError, ImportError (e.g. a timm backbone)...
            origin = "the Hugging Face hub or cache" if hub else "its folder"
            raise ModelLoadError(self.name, f"cannot load {self.manifest.source!r} from {origin}: {one_line(exc, 200)}") from exc
        model.eval()
        self.processor, self.model = processor, model
        self.id2label = {int(i): str(name) for i, name in model.config.id2label.items()}
        if not self.manifest.labels:
            self.labels = [
                name for _, name in sorted(self.id2label.items()) if name not in _PLACEHOLDER_LABELS
            ]

    def _detect(self, image: Image.Image) -> list[Detection]:
        image = image if image.mode == "RGB" else image.convert("RGB")
        width, height = image.size
        image = _pad_thin(image)
        inputs = self.processor(images=[image], return_tensors="pt")
        outputs = self.model(**inputs)
        result = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(image.height, image.width)]
        )[0]
        detections = []
        for score, label_id, box in zip(
            result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()
        ):
            label = self.id2label.get(int(label_id), str(label_id))
            if label in _PLACEHOLDER_LABELS:
                continue
            x1, y1, x2, y2 = box
            detections.append(
                Detection(
                    label=label,
                    score=float(score),
                    x1=min(max(x1, 0.0), width),
                    y1=min(max(y1, 0.0), height),
                    x2=min(max(x2, 0.0), width),
                    y2=min(max(y2, 0.0), height),
                )
            )
        return detections

    def predict(self, batch: Sequence[Image.Image]) -> list[list[Detection]]:
        # One forward per image, not one padded batch: YOLOS takes no pixel
        # mask, so padding to the batch's largest image changes its boxes, and
        # the prediction cache needs an image's result not to depend on its
        # batch-mates. On a CPU worker batching saves little anyway.
        with torch.inference_mode():
            return [self._detect(image) for image in batch]


# Beyond this aspect ratio the processor's resize would shrink the short side
# below a pixel (a 1x4000 image crashed the forward pass).
MAX_ASPECT = 4


def _pad_thin(image: Image.Image) -> Image.Image:
    """Pad a very thin image with black on the right or bottom up to MAX_ASPECT:1.

    Padding there keeps every pixel's coordinates, so boxes need no shift; they
    are clipped to the original size afterwards.
    """
    width, height = image.size
    padded = (max(width, -(-height // MAX_ASPECT)), max(height, -(-width // MAX_ASPECT)))
    if padded == (width, height):
        return image
    canvas = Image.new("RGB", padded)
    canvas.paste(image, (0, 0))
    return canvas
