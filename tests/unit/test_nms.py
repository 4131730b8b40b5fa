"""NMS and detection post-processing against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.detection import DetectionParameters, box_iou, nms, postprocess
from tasks.results import Detection


def test_iou_hand_computed():
    box = np.array([0, 0, 10, 10], dtype=float)
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [20, 20, 30, 30], [2, 2, 4, 4]], dtype=float)
    # identical: 1; half overlap: 50 / 150; touching corner: 0; apart: 0; inside: 4 / 100
    assert box_iou(box, boxes) == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 0.04])


def test_iou_of_degenerate_boxes_is_zero():
    assert box_iou(np.array([0, 0, 0, 0.0]), np.array([[0, 0, 0, 0.0]])) == pytest.approx([0.0])


def test_nms_keeps_best_and_drops_overlaps_above_threshold():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # IoU(0,1) = 90/110 = 0.818; IoU(0,2) = 1/3; IoU(1,2) = 60/140 = 0.4286
    assert nms(boxes, scores, 0.5) == [0, 2, 3]
    assert nms(boxes, scores, 0.3) == [0, 3]
    assert nms(boxes, scores, 0.9) == [0, 1, 2, 3]


def test_nms_threshold_is_strict_and_one_keeps_all():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=float)  # IoU exactly 1/3
    scores = np.array([0.5, 0.9])
    assert nms(boxes, scores, 1 / 3) == [1, 0]
    assert nms(boxes, scores, 0.33) == [1]
    assert nms(np.array([[0, 0, 1, 1.0]] * 3), np.array([0.1, 0.3, 0.2]), 1.0) == [1, 2, 0]


def test_nms_order_is_by_score_with_stable_ties():
    boxes = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]], dtype=float)
    assert nms(boxes, np.array([0.5, 0.5, 0.7]), 0.5) == [2, 0, 1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5) == []


def det(label, score, x1, y1, x2, y2):
    return Detection(label, score, x1, y1, x2, y2)


def test_postprocess_applies_every_option():
    dets = [
        det("cat", 0.9, 0, 0, 50, 50),
        det("cat", 0.8, 2, 2, 50, 50),    # overlaps the first cat: suppressed
        det("dog", 0.85, 0, 0, 50, 50),   # same box, other label: kept
        det("dog", 0.2, 60, 60, 90, 90),  # below score_th
        det("cat", 0.7, 80, 0, 83, 40),   # 3 px wide: under min_width 0.05 of 100
    ]
    out = postprocess(dets, 100, 100, DetectionParameters(score_th=0.3, nms_iou=0.5, min_width=0.05))
    assert out == [dets[0], dets[2]]
    assert postprocess(dets, 100, 100, DetectionParameters(score_th=0.3, type="dog")) == [dets[2]]
    assert postprocess(dets, 100, 100, DetectionParameters(score_th=0.0, nms_iou=1.0, maxResults=2)) == [dets[0], dets[2]]
    assert postprocess(dets, 100, 100, DetectionParameters(min_height=0.6)) == []
    assert postprocess([], 10, 10, DetectionParameters()) == []
