"""Detection post-processing as the seed API defines it.

Adapters return every candidate box; the request's options are applied here:
label filter (``type``), score threshold, minimum size as a fraction of the
image, per-label non-maximum suppression and ``maxResults``. Pure numpy, because
torchvision (whose ``batched_nms`` this mirrors) does not import on our CPU build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adapters.base import Detection


@dataclass(frozen=True)
class DetectionOptions:
    """Per-request options; the field names follow the seed API's JSON."""

    max_results: int = 20
    score_th: float = 0.3
    nms_iou: float = 0.4
    min_height: float = 0.0
    min_width: float = 0.0
    label: str | None = None


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
    detections: list[Detection], width: int, height: int, options: DetectionOptions
) -> list[Detection]:
    """Apply the request's options to one image's candidates, best first."""
    candidates = [
        det
        for det in detections
        if (options.label is None or det.label == options.label)
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
    return [candidates[i] for i in kept[: options.max_results]]
