"""The one detection matcher of utils.deploy.verify, and the end-to-end (--nms) comparison built on it.

Whole exports are verified in test_export.py (fp32, fp16, --nms), test_int8.py (INT8 by detections) and
test_interrupts.py (a failed verification keeps the previous file); these cases pin the matching rules."""
from __future__ import annotations

import pytest
import torch
import torchvision

from utils.deploy.verify import MATCH_IOU, VerificationError, end2end_error, match

SCALE, TOL, CONF = 100.0, 1e-3, 0.25


def dets(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def end2end(rows: torch.Tensor) -> list[torch.Tensor]:
    """``rows`` as one image's outputs of an end-to-end graph: num, boxes, scores, int classes (padded)."""
    pad = torch.zeros(3, 6)
    padded = torch.cat((rows, pad))
    return [torch.tensor([len(rows)], dtype=torch.int32), padded[:, :4], padded[:, 4], padded[:, 5].int()]


def iou_match(ref, out):
    return match(ref, out, -torchvision.ops.box_iou(ref[:, :4], out[:, :4]), -MATCH_IOU)


def test_match_gives_a_contested_detection_to_the_most_confident_reference():
    # both references overlap the one candidate; the second row is the more confident one
    ref = dets([0, 0, 10, 10, 0.4, 1], [1, 0, 11, 10, 0.9, 1])
    out = dets([1, 0, 11, 10, 0.8, 1])
    pairs, free = iou_match(ref, out)
    assert pairs == [(1, 0)] and not free.any()
    reordered, _ = iou_match(ref.flip(0), out)
    assert reordered == [(0, 0)]  # the same reference, whatever the row order


def test_match_is_one_to_one_within_a_class():
    ref = dets([0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0], [50, 50, 60, 60, 0.7, 2])
    out = dets([0, 0, 10, 10, 0.9, 1], [0, 0, 10, 10, 0.6, 0], [50, 50, 60, 60, 0.7, 1])
    pairs, free = iou_match(ref, out)
    assert pairs == [(0, 1)]  # one of the two class-0 references; the other boxes are of other classes
    assert free.tolist() == [True, False, True]
    pairs, free = iou_match(ref, out[:0])
    assert pairs == [] and free.shape == (0,)
    pairs, free = iou_match(ref[:0], out)
    assert pairs == [] and free.all()


def test_match_takes_the_nearest_candidate_not_the_first():
    ref = dets([0, 0, 10, 10, 0.9, 0])
    out = dets([2, 0, 12, 10, 0.9, 0], [0, 0, 10, 11, 0.9, 0])
    assert iou_match(ref, out)[0] == [(0, 1)]


def test_end2end_error_is_order_free_and_measures_the_difference():
    ref = dets([0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.8, 1], [50, 50, 70, 60, 0.5, 0])
    out = ref[[2, 0, 1]].clone()
    out[1, 0] += 0.05  # 0.05 px of a 100 px image
    out[2, 4] -= 2e-4
    max_abs, error = end2end_error(ref, end2end(out), SCALE, TOL, CONF)
    assert max_abs == pytest.approx(0.05, abs=1e-5) and error == pytest.approx(0.05 / SCALE, abs=1e-7)


def test_end2end_error_lets_only_borderline_scores_go_missing():
    ref = dets([0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, CONF + TOL / 2, 1])
    end2end_error(ref, end2end(ref[:1]), SCALE, TOL, CONF)  # the borderline one rounded below the threshold
    with pytest.raises(VerificationError, match="no exported detection matches"):
        end2end_error(ref, end2end(ref[1:]), SCALE, TOL, CONF)
    moved = ref.clone()
    moved[0, :4] += 1.0  # 1 px: beyond TOL * SCALE
    with pytest.raises(VerificationError, match="no exported detection matches"):
        end2end_error(ref, end2end(moved), SCALE, TOL, CONF)
    other_class = ref.clone()
    other_class[0, 5] = 3
    with pytest.raises(VerificationError, match="no exported detection matches"):
        end2end_error(ref, end2end(other_class), SCALE, TOL, CONF)


def test_end2end_error_refuses_extra_detections_unless_borderline():
    ref = dets([0, 0, 10, 10, 0.9, 0])
    end2end_error(ref, end2end(torch.cat((ref, dets([30, 30, 40, 40, CONF - TOL / 2, 0])))), SCALE, TOL, CONF)
    with pytest.raises(VerificationError, match="1 exported detections that non_max_suppression does not keep"):
        end2end_error(ref, end2end(torch.cat((ref, dets([30, 30, 40, 40, 0.6, 0])))), SCALE, TOL, CONF)
