"""Box operations and non-maximum suppression.

Boxes are rows of 4 numbers, either a ``torch.Tensor`` or a ``numpy.ndarray``; every function
accepts both and returns the same kind it was given. Formats:

- ``xyxy``: top-left and bottom-right corners, pixels.
- ``xywh``: center x, center y, width, height, pixels.
- ``xywhn``: ``xywh`` divided by the image width/height (YOLO label files).

In-place or not: ``clip_boxes`` and ``scale_boxes`` work in place and also return their input,
so callers may pass a view (``pred[:, :4]``) and rely on it being updated, as YOLOv5 callers do.
The format converters always return a new array.

Public API: ``xyxy2xywh``, ``xywh2xyxy``, ``xywhn2xyxy``, ``xyxy2xywhn``, ``clip_boxes``,
``scale_boxes``, ``box_iou``, ``decode_boxes`` (the anchor-based heads' box decode), ``non_max_suppression``.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
import torchvision
from torchvision.ops import box_iou  # re-exported: (N, 4) x (M, 4) xyxy -> (N, M) IoU

from utils.general import LOGGER

__all__ = [
    "box_iou", "clip_boxes", "decode_boxes", "label_lines", "non_max_suppression", "realtime_nms_budget", "scale_boxes",
    "xywh2xyxy", "xywhn2xyxy", "xyxy2xywh", "xyxy2xywhn",
]


def _empty_like(x):
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x):
    """Corners -> center, width, height."""
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x):
    """Center, width, height -> corners."""
    y = _empty_like(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xywhn2xyxy(x, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0):
    """Normalized center/size -> pixel corners, shifted by a letterbox/mosaic offset (padw, padh)."""
    y = _empty_like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x, w: float = 640, h: float = 640, clip: bool = False, eps: float = 0.0):
    """Pixel corners -> normalized center/size.

    ``clip`` first clips the corners to the image shrunk by ``eps`` (so a box touching the border stays
    strictly inside after normalization). Unlike YOLOv5, the input is never modified.
    """
    if clip:
        x = clip_boxes(_empty_like(x), (h - eps, w - eps))
    y = _empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def clip_boxes(boxes, shape: Sequence[float]):
    """Clip xyxy ``boxes`` in place to an image of ``shape`` = (height, width); returns ``boxes``."""
    h, w = float(shape[0]), float(shape[1])
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(img1_shape: Sequence[int], boxes, img0_shape: Sequence[int], ratio_pad=None):
    """Map xyxy ``boxes`` from a letterboxed image back to the original image, in place.

    img1_shape: (h, w) of the letterboxed (network input) image. img0_shape: (h, w) of the original.
    ratio_pad: ``((gain_h, gain_w), (pad_w, pad_h))`` as recorded by the dataloader; when omitted the
    letterbox is recomputed assuming a centered pad and one gain for both axes (what ``letterbox`` does).
    Returns ``boxes``, clipped to the original image.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad_w = (img1_shape[1] - img0_shape[1] * gain) / 2
        pad_h = (img1_shape[0] - img0_shape[0] * gain) / 2
        gain_h = gain_w = gain
    else:  # per axis: rounding the resized size to whole pixels makes the gains differ slightly (0.3% at 96 px)
        gain_h, gain_w = ratio_pad[0][0], ratio_pad[0][1]
        pad_w, pad_h = ratio_pad[1][0], ratio_pad[1][1]
    boxes[..., [0, 2]] -= pad_w
    boxes[..., [1, 3]] -= pad_h
    boxes[..., [0, 2]] /= gain_w
    boxes[..., [1, 3]] /= gain_h
    return clip_boxes(boxes, img0_shape)


def decode_boxes(xy: torch.Tensor, wh: torch.Tensor, anchors: torch.Tensor, grid: torch.Tensor | None = None,
                 stride: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Box centres and sizes from the sigmoid outputs of an anchor-based head (YOLOv5/YOLOv7), the one decode
    shared by ``Detect`` and the losses.

    The centre is ``2 * xy - 0.5`` cells from the cell's corner (so it may sit up to half a cell outside its
    cell), the size ``(2 * wh) ** 2`` anchors (0 to 4 times the anchor). Without ``grid`` and ``stride`` both
    are in grid units with xy relative to the cell, as the losses compare them; ``grid`` (the cells' x, y) makes
    xy absolute and ``stride`` turns both into pixels (``anchors`` in grid units). The order of operations is
    YOLOv7's, so decoded candidates equal YOLOv7's bit for bit.
    """
    xy = xy * 2 - 0.5
    if grid is not None:
        xy = xy + grid
    wh = wh * 2
    wh = wh * wh * anchors  # not ** 2 (the same bits in torch): LiteRT's converter cannot lower pow
    if stride is not None:  # strides are powers of two: scaling after the anchor product rounds the same
        xy, wh = xy * stride, wh * stride
    return xy, wh


def _check_nms_args(conf_thres: float, iou_thres: float, max_det: int, max_nms: int) -> None:
    if not 0.0 <= conf_thres <= 1.0:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if not 0.0 <= iou_thres <= 1.0:
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    if max_det < 1 or max_nms < 1:
        raise ValueError(f"max_det and max_nms must be >= 1, got max_det={max_det}, max_nms={max_nms}")


def _append_apriori_labels(x: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """Add labels rows [cls, x, y, w, h] as candidates with objectness and class score 1 (autolabelling)."""
    v = torch.zeros((len(lb), x.shape[1]), device=x.device, dtype=x.dtype)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb), device=x.device), lb[:, 0].long() + 5] = 1.0
    return torch.cat((x, v), 0)


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool, classes) -> torch.Tensor:
    """One image's raw rows (xywh, obj, cls...) -> (n, 6) rows [x1, y1, x2, y2, score, cls]."""
    scores = x[:, 5:] * x[:, 4:5]  # score = obj * cls
    box = xywh2xyxy(x[:, :4])
    if multi_label:  # one candidate per (box, class) pair above the threshold
        i, j = (scores > conf_thres).nonzero(as_tuple=False).T
        out = torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
    else:
        conf, j = scores.max(1, keepdim=True)
        out = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
    if classes is not None:
        keep = torch.as_tensor(classes, device=x.device, dtype=out.dtype)
        out = out[(out[:, 5:6] == keep).any(1)]
    return out


def realtime_nms_budget(batch_size: int) -> float:
    """YOLOv5's NMS time budget for a batch (seconds): detection gives up on late images rather than stall."""
    return 0.5 + 0.05 * batch_size


@torch.no_grad()
def non_max_suppression(
    prediction, conf_thres: float = 0.25, iou_thres: float = 0.45, classes=None, agnostic: bool = False,
    multi_label: bool = False, labels=(), max_det: int = 300, max_nms: int = 30000, time_limit: float | None = None,
) -> list[torch.Tensor]:
    """Filter raw detector output with per-class (or class-agnostic) NMS, YOLOv5 v7.0 semantics.

    prediction: (bs, N, 5 + nc) rows [x, y, w, h, obj, cls_0..cls_nc-1] (or a tuple whose first item is
    that tensor, as a model in eval mode returns). A row is a candidate when obj > conf_thres; its score
    for class c is obj * cls_c. With ``multi_label`` (only when nc > 1) every class with score > conf_thres
    is kept, otherwise the best class if its score > conf_thres. ``classes`` keeps only those class ids.
    At most ``max_nms`` highest-scoring candidates enter NMS and at most ``max_det`` boxes come out.
    ``labels``: optional per-image tensors [cls, x, y, w, h] added as certain candidates.

    Returns a list of bs (n, 6) float32 tensors [x1, y1, x2, y2, conf, cls], sorted by conf descending,
    whatever the prediction's dtype: fp16/bf16 predictions are filtered in fp32, because half-precision
    boxes lose whole pixels past 1024 and batched_nms's per-class coordinate offsets (CUDA, < 20k boxes)
    snap them to a 16-32 px grid. ``time_limit`` (seconds for the batch, none by default): when it runs out,
    a warning is logged and the images not yet processed get empty results. Only real-time callers set it
    (``realtime_nms_budget``, detect.py's as in YOLOv5): a metric or a verification must not depend on how
    busy the machine is.
    """
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]  # eval-mode model output: (inference_out, train_out)
    prediction = prediction.float()
    _check_nms_args(conf_thres, iou_thres, max_det, max_nms)
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    time_limit = math.inf if time_limit is None else time_limit
    multi_label &= nc > 1  # one class: multi-label is the same as best-class
    output = [torch.zeros((0, 6), device=prediction.device) for _ in range(bs)]
    t0 = time.time()
    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]
        if labels is not None and len(labels) and len(labels[xi]):
            x = _append_apriori_labels(x, labels[xi].float())
        if x.shape[0]:
            x = _candidates(x, conf_thres, multi_label, classes)
            x = x[x[:, 4].argsort(descending=True)[:max_nms]]  # cap the NMS input size
            # batched_nms keeps classes apart exactly (no max_wh offset that breaks for boxes > 7680 px)
            groups = torch.zeros_like(x[:, 5]) if agnostic else x[:, 5]
            keep = torchvision.ops.batched_nms(x[:, :4], x[:, 4], groups, iou_thres)[:max_det]
            output[xi] = x[keep]
        if time.time() - t0 > time_limit:
            LOGGER.warning(f"WARNING NMS time limit {time_limit:.3f}s exceeded after {xi + 1}/{bs} images")
            break
    return output


def filter_end2end(out, conf_thres: float, classes=None, max_det: int = 1000) -> list[torch.Tensor]:
    """The output of an export with NMS inside, (num_dets, boxes, scores, classes), as per-image (n, 6) rows
    [x1, y1, x2, y2, conf, cls]: only the confidence, class and max_det filters apply (the graph already
    suppressed overlaps, with its own IoU threshold)."""
    num, boxes, scores, cls = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)) for x in out)
    result = []
    for i in range(boxes.shape[0]):
        n = int(num[i].reshape(-1)[0])
        d = torch.cat((boxes[i, :n].float(), scores[i, :n, None].float(), cls[i, :n, None].float()), 1)
        d = d[d[:, 4] > conf_thres]
        if classes is not None:
            d = d[(d[:, 5:6] == torch.as_tensor(classes, dtype=d.dtype, device=d.device)).any(1)]
        result.append(d[d[:, 4].argsort(descending=True)][:max_det])
    return result


def label_lines(det, shape, save_conf: bool = False) -> list[str]:
    """YOLO label lines 'cls x y w h [conf]' (normalized xywh) for (n, 6) detections on an image of ``shape``."""
    h, w = shape[:2]
    gain = np.array([w, h, w, h], dtype=np.float64)
    lines = []
    for *xyxy, conf, cls in det.tolist():
        xywh = (xyxy2xywh(np.array(xyxy, dtype=np.float64)) / gain).tolist()
        row = (int(cls), *xywh, conf) if save_conf else (int(cls), *xywh)
        lines.append(("%g " * len(row)).rstrip() % row)
    return lines
