"""utils/ops.py: box conversions, letterbox inversion, and NMS against a pure-Python greedy reference."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision

from utils.general import LOGGER_NAME
from utils.ops import (box_iou, clip_boxes, decode_boxes, non_max_suppression, scale_boxes, xywh2xyxy, xywhn2xyxy,
                       xyxy2xywh, xyxy2xywhn)


# ---------------------------------------------------------------- pure-Python reference
def _iou_py(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_nms(pred, conf_thres, iou_thres, classes=None, agnostic=False, multi_label=False, max_det=300):
    """YOLOv5 NMS spelled out with loops: candidates, then greedy suppression in score order."""
    out = []
    for image in pred.tolist():
        cands = []
        for x, y, w, h, obj, *cls_scores in image:
            if obj <= conf_thres:
                continue
            box = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
            scores = [obj * s for s in cls_scores]
            pairs = list(enumerate(scores)) if multi_label else [max(enumerate(scores), key=lambda p: p[1])]
            cands += [(box, s, c) for c, s in pairs if s > conf_thres and (classes is None or c in classes)]
        cands.sort(key=lambda t: -t[1])
        keep = []
        for box, s, c in cands:
            if all(_iou_py(box, kb) <= iou_thres for kb, _, kc in keep if agnostic or kc == c):
                keep.append((box, s, c))
        out.append(torch.tensor([[*b, s, c] for b, s, c in keep[:max_det]], dtype=torch.float64).reshape(-1, 6))
    return out


def _random_prediction(seed: int, bs: int = 2, n: int = 300, nc: int = 4) -> torch.Tensor:
    """Boxes in a few clusters so that many overlap; random objectness and class scores."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(bs, 6, 2, generator=g) * 400 + 50
    pick = torch.randint(0, 6, (bs, n), generator=g)
    xy = torch.gather(centers, 1, pick[..., None].expand(-1, -1, 2)) + torch.randn(bs, n, 2, generator=g) * 15
    wh = torch.rand(bs, n, 2, generator=g) * 60 + 20
    obj = torch.rand(bs, n, 1, generator=g)
    cls = torch.rand(bs, n, nc, generator=g)
    return torch.cat([xy, wh, obj, cls], 2).double()


def _assert_same(out, ref):
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        assert o.shape == r.shape, (o.shape, r.shape)
        torch.testing.assert_close(o, r.to(o.dtype), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- NMS
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("agnostic", [False, True])
def test_nms_matches_greedy_reference(seed, agnostic):
    pred = _random_prediction(seed)
    out = non_max_suppression(pred, 0.25, 0.45, agnostic=agnostic)
    ref = _reference_nms(pred, 0.25, 0.45, agnostic=agnostic)
    _assert_same(out, ref)
    assert sum(len(o) for o in out) > 10  # the case is not trivially empty


def test_nms_many_candidates_matches_reference():
    """> 1000 candidates: torchvision's batched_nms switches to its per-class loop on CPU."""
    pred = _random_prediction(7, bs=1, n=3000, nc=3)
    assert (pred[0, :, 4] > 0.1).sum() > 1000
    _assert_same(non_max_suppression(pred, 0.1, 0.6), _reference_nms(pred, 0.1, 0.6))


@pytest.mark.parametrize("agnostic", [False, True])
def test_nms_multi_label_matches_reference(agnostic):
    pred = _random_prediction(3)
    out = non_max_suppression(pred, 0.3, 0.5, multi_label=True, agnostic=agnostic)
    _assert_same(out, _reference_nms(pred, 0.3, 0.5, multi_label=True, agnostic=agnostic))
    if not agnostic:  # class-aware: a box keeps several classes, so more rows than best-class NMS
        assert sum(map(len, out)) > sum(map(len, non_max_suppression(pred, 0.3, 0.5)))


def test_nms_classes_filter():
    pred = _random_prediction(4)
    out = non_max_suppression(pred, 0.2, 0.45, classes=[1, 3])
    _assert_same(out, _reference_nms(pred, 0.2, 0.45, classes=[1, 3]))
    assert all(set(o[:, 5].tolist()) <= {1.0, 3.0} for o in out)
    assert any(len(o) for o in out)


def test_nms_max_det_and_order():
    # 400 disjoint boxes on a grid: nothing overlaps, so only max_det limits the output
    xs, ys = torch.meshgrid(torch.arange(20) * 30.0 + 10, torch.arange(20) * 30.0 + 10, indexing="ij")
    n = xs.numel()
    pred = torch.cat([xs.reshape(-1, 1), ys.reshape(-1, 1), torch.full((n, 2), 10.0), torch.rand(n, 1) * 0.5 + 0.5,
                      torch.ones(n, 1)], 1)[None]
    out = non_max_suppression(pred, 0.25, 0.45, max_det=37)[0]
    assert out.shape == (37, 6)
    assert torch.equal(out[:, 4], pred[0, :, 4].sort(descending=True).values[:37])  # the 37 best, in order
    assert len(non_max_suppression(pred, 0.25, 0.45, max_det=1000)[0]) == n
    assert len(non_max_suppression(pred, 0.25, 0.45, max_nms=50)[0]) == 50  # max_nms caps NMS input


def test_nms_confidence_filter():
    # score = obj * cls; a row needs obj > conf and score > conf
    rows = torch.tensor([
        [50, 50, 10, 10, 0.30, 1.00],  # score 0.30 -> kept
        [150, 50, 10, 10, 0.90, 0.20],  # score 0.18 -> dropped
        [250, 50, 10, 10, 0.20, 1.00],  # obj 0.20 -> dropped
        [350, 50, 10, 10, 0.25, 1.00],  # obj == conf: strict '>' drops it
    ])[None]
    out = non_max_suppression(rows, conf_thres=0.25)[0]
    assert out.shape == (1, 6)
    torch.testing.assert_close(out[0], torch.tensor([45.0, 45.0, 55.0, 55.0, 0.30, 0.0]))
    assert (non_max_suppression(_random_prediction(5).float(), 0.6)[0][:, 4] > 0.6).all()


def test_nms_edge_cases(caplog):
    empty = non_max_suppression(torch.zeros(3, 0, 8))
    assert len(empty) == 3 and all(o.shape == (0, 6) for o in empty)
    pred = _random_prediction(6, bs=3)
    out_tuple = non_max_suppression((pred, None))  # eval-mode model output
    _assert_same(out_tuple, non_max_suppression(pred))
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        late = non_max_suppression(pred, time_limit=0.0)
    assert "NMS time limit" in caplog.text
    assert len(late[0]) and all(len(o) == 0 for o in late[1:])  # stopped after the first image
    labels = [torch.tensor([[2.0, 600, 600, 20, 20]]), torch.zeros(0, 5), torch.zeros(0, 5)]
    with_labels = non_max_suppression(pred, labels=labels)
    assert torch.equal(with_labels[0][0], torch.tensor([590.0, 590, 610, 610, 1, 2], dtype=pred.dtype))


@pytest.mark.parametrize("kwargs", [dict(conf_thres=1.5), dict(conf_thres=-0.1), dict(iou_thres=2.0),
                                    dict(max_det=0)])
def test_nms_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros(1, 1, 6), **kwargs)


# ---------------------------------------------------------------- boxes
@pytest.mark.parametrize("to", [torch.tensor, np.array])
def test_box_conversions_round_trip(to):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (50, 2))
    xyxy = to(np.concatenate([xy, xy + rng.uniform(1, 100, (50, 2))], 1))
    back = xywh2xyxy(xyxy2xywh(xyxy))
    assert type(back) is type(xyxy)
    np.testing.assert_allclose(np.asarray(back), np.asarray(xyxy), atol=1e-9)
    np.testing.assert_allclose(np.asarray(xyxy2xywh(to(np.array([[10.0, 20, 30, 60]])))), [[20, 40, 20, 40]])
    n = xyxy2xywhn(xyxy, w=640, h=480)
    np.testing.assert_allclose(np.asarray(xywhn2xyxy(n, w=640, h=480)), np.asarray(xyxy), atol=1e-9)
    shifted = xywhn2xyxy(n, w=640, h=480, padw=7, padh=-3)  # mosaic/letterbox offset
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(xyxy) + np.array([7, -3, 7, -3]), atol=1e-9)


def test_xyxy2xywhn_clip_leaves_input_alone():
    x = torch.tensor([[-10.0, 5, 700, 100]])
    y = xyxy2xywhn(x, w=640, h=480, clip=True, eps=1e-3)
    assert torch.equal(x, torch.tensor([[-10.0, 5, 700, 100]]))
    torch.testing.assert_close(y, torch.tensor([[(640 - 1e-3) / 2 / 640, 52.5 / 480, (640 - 1e-3) / 640, 95 / 480]]))


def test_clip_boxes_in_place():
    for b in (torch.tensor([[-5.0, -5, 700, 500]]), np.array([[-5.0, -5, 700, 500]])):
        out = clip_boxes(b, (480, 640))
        assert out is b
        np.testing.assert_array_equal(np.asarray(b), [[0, 0, 640, 480]])


def test_scale_boxes_inverts_letterbox():
    # a 300x500 (h, w) image letterboxed into 640x640: gain 1.28 -> 384x640, 128 px bands top and bottom
    original = torch.tensor([[50.0, 100, 150, 200], [0, 0, 500, 300]])
    letterboxed = original * 1.28 + torch.tensor([0, 128, 0, 128])
    torch.testing.assert_close(scale_boxes((640, 640), letterboxed.clone(), (300, 500)), original)
    ratio_pad = ((1.28, 1.28), (0.0, 128.0))  # what the dataloader records
    torch.testing.assert_close(scale_boxes((640, 640), letterboxed.clone(), (300, 500), ratio_pad), original)
    pred = torch.cat([letterboxed, torch.ones(2, 2)], 1)
    scale_boxes((640, 640), pred[:, :4], (300, 500))  # in place through a view, as val.py uses it
    torch.testing.assert_close(pred[:, :4], original)
    outside = torch.tensor([[-20.0, 100, 700, 600]])  # beyond the image: clipped
    torch.testing.assert_close(scale_boxes((640, 640), outside, (300, 500)), torch.tensor([[0.0, 0, 500, 300]]))


def test_box_iou_is_torchvision():
    assert box_iou is torchvision.ops.box_iou
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20.0, 20, 30, 30]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 3, 0.0]]))


# ---------------------------------------------------------------- reduced precision (the AMP / --half paths)
def _crowded_prediction(nc: int = 80, n: int = 3000, size: float = 1280.0, seed: int = 0) -> torch.Tensor:
    """Overlapping boxes over a large image with class ids up to 79: where fp16 coordinates and
    batched_nms's class offsets go wrong."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(1, n, 2, generator=g) * size
    wh = 20 + torch.rand(1, n, 2, generator=g) * 200
    obj = torch.rand(1, n, 1, generator=g)
    cls = torch.rand(1, n, nc, generator=g) ** 4
    return torch.cat((xy, wh, obj, cls), 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("agnostic", [False, True])
def test_nms_on_reduced_precision_returns_the_fp32_result(dtype, agnostic):
    low = _crowded_prediction().to(dtype)
    got = non_max_suppression(low, 0.05, 0.45, agnostic=agnostic, multi_label=True)
    ref = non_max_suppression(low.float(), 0.05, 0.45, agnostic=agnostic, multi_label=True)
    assert got[0].dtype == torch.float32 and len(ref[0]) > 50
    assert torch.equal(got[0], ref[0])


def test_nms_half_with_apriori_labels():
    low = _crowded_prediction(n=200).half()
    labels = [torch.tensor([[79.0, 600.0, 500.0, 80.0, 90.0]]).half()]
    got = non_max_suppression(low, 0.05, 0.45, labels=labels)
    assert got[0].dtype == torch.float32 and ((got[0][:, 5] == 79) & (got[0][:, 4] == 1)).sum() == 1


def test_decode_boxes():
    """Centre 2 * xy - 0.5 cells from the cell's corner, size (2 * wh) ** 2 anchors; grid and stride give pixels."""
    xy, wh, anchors = torch.tensor([[0.5, 0.0]]), torch.tensor([[0.5, 1.0]]), torch.tensor([[2.0, 3.0]])
    cxy, cwh = decode_boxes(xy, wh, anchors)
    assert cxy.tolist() == [[0.5, -0.5]] and cwh.tolist() == [[2.0, 12.0]]  # half a cell outside; 1x and 4x
    pxy, pwh = decode_boxes(xy, wh, anchors, grid=torch.tensor([[3.0, 5.0]]), stride=8.0)
    assert pxy.tolist() == [[28.0, 36.0]] and pwh.tolist() == [[16.0, 96.0]]
