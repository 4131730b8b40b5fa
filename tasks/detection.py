"""Object detection: the request's options (one definition, with their
defaults), their application to a model's candidates, and the JSON of boxes.

Adapters return every candidate box with its score; the request's options are
applied here: label filter (``type``), score threshold, minimum size as a
fraction of the image, per-label non-maximum suppression and ``maxResults``.
Pure numpy, because torchvision (whose ``batched_nms`` this mirrors) does not
import on our CPU build.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, Optional

import numpy as np
from pydantic import BaseModel, Field

from serving.errors import invalid
from tasks.base import Decoded, Integer, Strict
from tasks.image import ImageTask
from tasks.results import Detection
from tasks.tensors import BYTES, TensorSpec, utf8


class DetectionParameters(Strict):
    """Detection options, named as in the seed API."""

    maxResults: Integer = Field(20, ge=1, le=1000, description="Most objects returned.")
    score_th: float = Field(0.3, ge=0, le=1, description="Lowest score kept.")
    nms_iou: float = Field(0.4, ge=0, le=1, description="IoU above which overlapping boxes of one label are merged.")
    min_height: float = Field(0.0, ge=0, le=1, description="Smallest box height, as a fraction of the image height.")
    min_width: float = Field(0.0, ge=0, le=1, description="Smallest box width, as a fraction of the image width.")
    type: Optional[str] = Field(None, max_length=200, description="Keep only this label.")


class PixelBox(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class NormalizedBox(BaseModel):
    x: float
    y: float
    width: float
    height: float


class DetectedObject(BaseModel):
    label: str
    score: float
    box: PixelBox = Field(description="Corners in pixels of the upright (EXIF-rotated) image.")
    normalizedBox: NormalizedBox = Field(description="Top-left corner and size as fractions of the image.")


class Detections(BaseModel):
    width: int
    height: int
    objects: list[DetectedObject]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x1, y1, x2, y2]`` box against each row of ``boxes``."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS: indices of the kept boxes, best score first.

    A box is dropped when its IoU with a kept, higher-scoring box is strictly
    greater than ``iou_threshold`` (torchvision's rule), so 1.0 keeps everything.
    Ties in score keep the earlier box (stable sort).
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return keep


def postprocess(
    detections: list[Detection], width: int, height: int, options: DetectionParameters
) -> list[Detection]:
    """Apply the request's options to one image's candidates, best first."""
    candidates = [
        det
        for det in detections
        if (options.type is None or det.label == options.type)
        and det.score >= options.score_th
        and (det.x2 - det.x1) >= options.min_width * width
        and (det.y2 - det.y1) >= options.min_height * height
    ]
    if not candidates:
        return []
    boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in candidates], dtype=np.float64)
    scores = np.array([d.score for d in candidates], dtype=np.float64)
    labels = np.array([d.label for d in candidates])
    kept: list[int] = []
    # Suppression happens within a label only: a person box must not erase the
    # dog it overlaps.
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        kept.extend(index[i] for i in nms(boxes[index], scores[index], options.nms_iou))
    kept.sort(key=lambda i: (-scores[i], i))
    return [candidates[i] for i in kept[: options.maxResults]]


def normalized_box(det: Detection, width: int, height: int) -> dict[str, float]:
    """Top-left corner and size as fractions of the image size."""
    return {
        "x": round(float(det.x1) / width, 4),
        "y": round(float(det.y1) / height, 4),
        "width": round(float(det.x2 - det.x1) / width, 4),
        "height": round(float(det.y2 - det.y1) / height, 4),
    }


def detection_json(det: Detection, width: int, height: int) -> dict[str, Any]:
    """One object as the canonical API shows it: pixel box and normalised box."""
    return {
        "label": det.label,
        "score": round(float(det.score), 4),
        "box": {
            "x1": round(float(det.x1), 2),
            "y1": round(float(det.y1), 2),
            "x2": round(float(det.x2), 2),
            "y2": round(float(det.y2), 2),
        },
        "normalizedBox": normalized_box(det, width, height),
    }


class ObjectDetection(ImageTask):
    """Image -> `{width, height, objects}`; `parameters` are the detection options."""

    name = "object-detection"
    Parameters = DetectionParameters
    Output = Detections

    def parameters(self, raw: BaseModel | Mapping[str, Any] | None, field: str = "parameters") -> BaseModel:
        """The options, validated; a ``type`` that is none of the model's labels
        is a 422 (it would keep no object, and look like an empty image)."""
        options = super().parameters(raw, field)
        labels = self.model.labels
        if options.type is not None and labels and options.type not in labels:
            shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
            raise invalid(f"{field}.type", f"{options.type!r} is not a label of model {self.model.name!r} ({shown})")
        return options

    def finish(self, result: list[Detection], decoded: Decoded, parameters: DetectionParameters) -> list[Detection]:
        width, height = decoded.value.size
        return postprocess(result, width, height, parameters)

    def encode(self, result: list[Detection], decoded: Decoded, parameters: BaseModel) -> Any:
        width, height = decoded.value.size
        return {"width": width, "height": height, "objects": [detection_json(d, width, height) for d in result]}

    def dump(self, result: list[Detection]) -> Any:
        return [asdict(d) for d in result]

    def load(self, value: Any) -> list[Detection]:
        return [Detection(**d) for d in value]

    def tensor_outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("boxes", "FP32", (-1, 4)),
            TensorSpec("scores", "FP32", (-1,)),
            TensorSpec("labels", BYTES, (-1,)),
            TensorSpec("image_index", "INT64", (-1,)),
            TensorSpec("image_size", "INT64", (-1, 2)),
        ]

    def tensors_from_results(self, results: list[list[Detection]], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        """Every kept object of every image in one flat list: its pixel box
        ``[x1, y1, x2, y2]``, score, label and the index of its image; and each
        image's ``[width, height]``."""
        objects = [(i, d) for i, found in enumerate(results) for d in found]
        return {
            "boxes": np.array([[d.x1, d.y1, d.x2, d.y2] for _, d in objects], dtype=np.float32).reshape(len(objects), 4),
            "scores": np.array([d.score for _, d in objects], dtype=np.float32),
            "labels": utf8([d.label for _, d in objects]),
            "image_index": np.array([i for i, _ in objects], dtype=np.int64),
            "image_size": np.array([d.value.size for d in decoded], dtype=np.int64).reshape(len(decoded), 2),
        }
