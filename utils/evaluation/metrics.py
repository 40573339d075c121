"""Detection metrics: COCO-exact mAP, YOLOv5-style P/R/F1, confusion matrix, fitness.

``evaluate_detections`` reproduces pycocotools' COCOeval (bbox, area range 'all') on plain arrays:

- Matching, per image and class: detections in descending score (stable sort, as pycocotools'
  mergesort of -score); at each IoU threshold t a detection takes the not-yet-matched ground truth of
  highest IoU >= min(t, 1 - 1e-10); among equal IoUs the later ground truth wins, as in pycocotools' loop.
- Accumulation, per class over all images: detections sorted globally by score (stable, images in list
  order), cumulative TP/FP, precision envelope made monotone from the right, sampled at 101 recall
  points (searchsorted 'left'); AP is the mean of the samples. Classes without ground truth are left
  out of every mean (pycocotools marks them -1).
- Differences: every detection is used (pycocotools keeps maxDets=100 per image and class; limit the
  input with NMS ``max_det`` instead). Precision is tp / (tp + fp) without pycocotools' +eps, so
  perfect predictions give exactly 1.0 (pycocotools: 1 - 2e-16 at worst). Crowd annotations and
  area ranges are not supported; pycocotools also ignores boxes with area > 1e10 px^2, we do not.

The matching is vectorized over images and IoU thresholds: only detection/ground-truth pairs of the
same class with IoU >= the lowest threshold can interact, so each image is reduced to that small
block, blocks of similar size are padded into one array and the greedy loop runs over detection rank
for all of them at once.
"""
from __future__ import annotations


import numpy as np
import torch

from utils.ops import box_iou

__all__ = ["ConfusionMatrix", "evaluate_detections", "fitness"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # same values as pycocotools' Params.iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # same values as pycocotools' Params.recThrs
_CHUNK_ELEMENTS = 2_000_000  # bound on the padded (images, dets, gts) IoU array matched at once (16 MB)


def _as_array(x, ncols: int) -> np.ndarray:
    """Tensor/array/None -> float64 (n, ncols) array (extra columns dropped, empty input allowed)."""
    if x is None:
        return np.zeros((0, ncols))
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros((0, ncols))
    if x.ndim != 2 or x.shape[1] < ncols:
        raise ValueError(f"expected an (n, >={ncols}) array, got shape {x.shape}")
    return x[:, :ncols]


def _check_classes(cls: np.ndarray, nc: int, what: str) -> np.ndarray:
    c = cls.astype(np.int64)
    if len(c) and (c.min() < 0 or c.max() >= nc or np.any(c != cls)):
        raise ValueError(f"{what} class ids must be integers in [0, {nc}), got range [{cls.min()}, {cls.max()}]")
    return c


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU in float64; 0 where both boxes have zero area (pycocotools skips them instead of 0/0)."""
    iou = box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    return np.nan_to_num(iou, nan=0.0)


def _prepare(predictions, targets, nc: int, min_thr: float):
    """Sort each image's detections by score and cut the (det, gt) IoU matrix down to pairs that can match.

    Returns conf, cls of all detections (image order, then score order), GT classes, and a list of
    blocks (global det indices, IoU sub-matrix with -1 for pairs of different classes).
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction entries but {len(targets)} target entries")
    confs, clss, gt_cls, blocks, offset = [], [], [], [], 0
    for pred, tgt in zip(predictions, targets):
        p, t = _as_array(pred, 6), _as_array(tgt, 5)
        p = p[np.argsort(-p[:, 4], kind="mergesort")]  # stable, like pycocotools
        pc, tc = _check_classes(p[:, 5], nc, "prediction"), _check_classes(t[:, 0], nc, "target")
        confs.append(p[:, 4])
        clss.append(pc)
        gt_cls.append(tc)
        if len(p) and len(t):
            iou = _iou(p[:, :4], t[:, 1:5])
            iou[pc[:, None] != tc[None, :]] = -1.0  # classes are matched separately
            can = iou >= min_thr
            rows, cols = np.flatnonzero(can.any(1)), np.flatnonzero(can.any(0))
            if len(rows):
                blocks.append((offset + rows, iou[np.ix_(rows, cols)]))
        offset += len(p)
    cat = np.concatenate
    return cat(confs) if confs else np.zeros(0), cat(clss) if clss else np.zeros(0, np.int64), \
        cat(gt_cls) if gt_cls else np.zeros(0, np.int64), blocks


def _match_chunk(ious: list[np.ndarray], thr: np.ndarray) -> np.ndarray:
    """Greedy pycocotools matching of several images at once -> (images, dets, thresholds) TP flags."""
    n_img, n_det, n_gt = len(ious), max(m.shape[0] for m in ious), max(m.shape[1] for m in ious)
    iou = np.full((n_img, n_det, n_gt), -1.0)  # padding never matches (thresholds are >= 0)
    for b, m in enumerate(ious):
        iou[b, : m.shape[0], : m.shape[1]] = m
    taken = np.zeros((n_img, len(thr), n_gt), dtype=bool)  # a GT matches once per threshold
    tp = np.zeros((n_img, n_det, len(thr)), dtype=bool)
    for k in range(n_det):  # detection rank k of every image (scores descending)
        row = iou[:, k, None, :]
        ok = (row >= thr[None, :, None]) & ~taken
        val = np.where(ok, row, -np.inf)
        best = n_gt - 1 - val[..., ::-1].argmax(-1)  # last of the maxima, as pycocotools' '<' test
        hit = ok.any(-1)
        tp[:, k] = hit
        bi, ti = np.nonzero(hit)
        taken[bi, ti, best[bi, ti]] = True
    return tp


def _chunks(blocks):
    """Groups of similar-sized blocks whose padded (images, dets, gts) array stays under _CHUNK_ELEMENTS."""
    blocks = sorted(blocks, key=lambda b: b[1].shape)  # similar sizes together: little padding
    chunk, max_d, max_g = [], 0, 0
    for blk in blocks:
        d, g = max(max_d, blk[1].shape[0]), max(max_g, blk[1].shape[1])
        if chunk and (len(chunk) + 1) * d * g > _CHUNK_ELEMENTS:
            yield chunk
            chunk, d, g = [], blk[1].shape[0], blk[1].shape[1]
        chunk.append(blk)
        max_d, max_g = d, g
    if chunk:
        yield chunk


def _match(blocks, n_dets: int, thr: np.ndarray) -> np.ndarray:
    """TP flags (n_dets, thresholds) for all detections."""
    tp = np.zeros((n_dets, len(thr)), dtype=bool)
    for chunk in _chunks(blocks):
        flags = _match_chunk([m for _, m in chunk], thr)
        for b, (det_idx, _) in enumerate(chunk):
            tp[det_idx] = flags[b, : len(det_idx)]
    return tp


def moving_average(y: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Box filter over ``fraction`` of the points, edges padded; steadies the best-F1 pick (YOLOv5).

    Public because ``utils.evaluation.metric_plots`` draws its mean curves with it (fraction 0.05 there).
    """
    nf = round(len(y) * fraction * 2) // 2 + 1  # odd window
    yp = np.concatenate((np.full(nf // 2, y[0]), y, np.full(nf // 2, y[-1])))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def _coco_ap(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """One class, one threshold: pycocotools' 101-point interpolated precision samples."""
    n = len(recall)
    env = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope from the right
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    return np.where(idx < n, env[np.minimum(idx, n - 1)], 0.0)


def _per_class(conf, cls, tp, nt, classes, px):
    """Per-class AP at every threshold, precision samples and P/R curves at the first (0.5) threshold."""
    n_t = tp.shape[1]
    order = np.argsort(-conf, kind="mergesort")  # global score order, ties by image then rank
    order = order[np.argsort(cls[order], kind="mergesort")]  # group by class, keep score order
    conf, cls, tp = conf[order], cls[order], tp[order]
    starts, ends = np.searchsorted(cls, classes, "left"), np.searchsorted(cls, classes, "right")
    ap = np.zeros((len(classes), n_t))
    pr_samples = np.zeros((len(classes), n_t, len(RECALL_THRESHOLDS)))
    p_curve, r_curve = np.zeros((len(classes), len(px))), np.zeros((len(classes), len(px)))
    for ci, (s, e) in enumerate(zip(starts, ends)):
        if e == s:
            continue  # GT but no detections: AP 0, P 0, R 0
        tpc = np.cumsum(tp[s:e], axis=0, dtype=np.float64)
        recall = tpc / nt[classes[ci]]
        precision = tpc / np.arange(1, e - s + 1, dtype=np.float64)[:, None]
        for t in range(n_t):
            pr_samples[ci, t] = _coco_ap(recall[:, t], precision[:, t])
        ap[ci] = pr_samples[ci].mean(1)
        r_curve[ci] = np.interp(-px, -conf[s:e], recall[:, 0], left=0)  # conf falls along the curve
        p_curve[ci] = np.interp(-px, -conf[s:e], precision[:, 0], left=1)
    return ap, pr_samples, p_curve, r_curve


def _threshold_index(thr: np.ndarray, value: float) -> int | None:
    hits = np.flatnonzero(np.isclose(thr, value))
    return int(hits[0]) if len(hits) else None


def _empty_result(n_px: int, n_t: int) -> dict:
    z = np.zeros(0)
    return dict(precision=0.0, recall=0.0, map50=0.0, map75=0.0, map=0.0, f1=0.0, conf_threshold=0.0,
                ap=np.zeros((0, n_t)), ap50=z, p=z, r=z, f1_per_class=z, classes=np.zeros(0, np.int64),
                nt=np.zeros(0, np.int64), px=np.linspace(0, 1, n_px), p_curve=np.zeros((0, n_px)),
                r_curve=np.zeros((0, n_px)), f1_curve=np.zeros((0, n_px)), pr_curve=np.zeros((0, 101)),
                pr_recall=RECALL_THRESHOLDS.copy())


def evaluate_detections(predictions, targets, nc: int, iou_thresholds=IOU_THRESHOLDS) -> dict:
    """COCO mAP and YOLOv5-style P/R/F1 for a whole dataset.

    predictions: one (n, 6) array/tensor per image, rows [x1, y1, x2, y2, conf, cls] in pixels.
    targets: one (m, 5) array/tensor per image, rows [cls, x1, y1, x2, y2] in the same pixels.
    nc: number of classes; class ids must be integers in [0, nc).
    iou_thresholds: IoU thresholds in [0, 1]; the first one is used for P, R, F1 and the curves.

    Returns a dict of floats ``precision``, ``recall``, ``f1`` (means over classes with ground truth, at
    ``conf_threshold``, the confidence of best smoothed mean F1), ``map50``, ``map75`` (NaN when the
    threshold is not evaluated), ``map`` (mean over all thresholds); and arrays with one row per class
    that has ground truth, in the order of ``classes``: ``ap`` (classes, thresholds), ``ap50``, ``p``,
    ``r``, ``f1_per_class``, ``nt`` (ground-truth count); curves ``px`` (1000 confidences), ``p_curve``,
    ``r_curve``, ``f1_curve`` (classes, 1000), ``pr_curve`` (classes, 101) = interpolated precision at
    recall ``pr_recall`` for the first threshold. With no ground truth at all every mean is 0.
    """
    thr = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if not len(thr) or thr.min() < 0 or thr.max() > 1:
        raise ValueError(f"iou_thresholds must be a non-empty list of values in [0, 1], got {thr}")
    thr_eff = np.minimum(thr, 1 - 1e-10)  # pycocotools: IoU 1.0 must still match
    px = np.linspace(0, 1, 1000)
    conf, cls, gt_cls, blocks = _prepare(predictions, targets, nc, float(thr_eff.min()))
    nt_all = np.bincount(gt_cls, minlength=nc)
    classes = np.flatnonzero(nt_all)
    if not len(classes):
        return _empty_result(len(px), len(thr))
    tp = _match(blocks, len(conf), thr_eff)
    ap, pr_samples, p_curve, r_curve = _per_class(conf, cls, tp, nt_all, classes, px)

    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + 1e-16)
    i = int(moving_average(f1_curve.mean(0)).argmax())  # best mean-F1 confidence, as YOLOv5 picks it
    p, r, f1 = p_curve[:, i], r_curve[:, i], f1_curve[:, i]
    i50, i75 = _threshold_index(thr, 0.5), _threshold_index(thr, 0.75)
    per_thr = ap.mean(0)
    return dict(
        precision=float(p.mean()), recall=float(r.mean()), f1=float(f1.mean()), conf_threshold=float(px[i]),
        map50=float(per_thr[i50]) if i50 is not None else float("nan"),
        map75=float(per_thr[i75]) if i75 is not None else float("nan"),
        map=float(ap.mean()), ap=ap, ap50=ap[:, i50] if i50 is not None else np.full(len(classes), np.nan),
        p=p, r=r, f1_per_class=f1, classes=classes, nt=nt_all[classes], px=px, p_curve=p_curve,
        r_curve=r_curve, f1_curve=f1_curve, pr_curve=pr_samples[:, 0], pr_recall=RECALL_THRESHOLDS.copy(),
    )


def class_weights(labels: list[np.ndarray], nc: int) -> np.ndarray:
    """Inverse class frequencies over a dataset's label arrays (rows [cls, ...]), summing to 1; a class
    with no boxes counts as one box (YOLOv5's labels_to_class_weights)."""
    classes = np.concatenate([lb[:, 0] for lb in labels if len(lb)] or [np.zeros(0)]).astype(int)
    counts = np.bincount(classes, minlength=nc).astype(np.float64)
    counts[counts == 0] = 1
    w = 1 / counts
    return w / w.sum()


def image_weights(labels: list[np.ndarray], nc: int, weights_per_class: np.ndarray) -> np.ndarray:
    """Each image's sampling weight: its boxes' class weights summed (an image without boxes gets 0)."""
    counts = np.array([np.bincount(lb[:, 0].astype(int), minlength=nc) if len(lb) else np.zeros(nc) for lb in labels])
    return (counts * np.asarray(weights_per_class).reshape(1, nc)).sum(1)


def fitness(x) -> np.ndarray:
    """Model fitness for best.pt selection: 0.1 * mAP50 + 0.9 * mAP50-95 of rows [P, R, mAP50, mAP50-95]."""
    x = np.asarray(x, dtype=np.float64)
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (x[..., :4] * w).sum(-1)


class ConfusionMatrix:
    """Detection confusion matrix, rows = predicted class, columns = true class, index ``nc`` = background.

    Per image, detections above ``conf`` are paired with labels of any class at IoU > ``iou_thres``:
    each detection keeps its highest-IoU label, then each label its highest-IoU detection (YOLOv5's
    rule). Paired -> matrix[pred, true]; unpaired label -> [background, true] (missed); unpaired
    detection -> [pred, background] (false alarm; YOLOv5 v7.0 forgot these when nothing matched).
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.nc, self.conf, self.iou_thres = int(nc), float(conf), float(iou_thres)
        self.matrix = np.zeros((self.nc + 1, self.nc + 1))

    def _pairs(self, gt_boxes: np.ndarray, det_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label index, detection index) pairs, one-to-one, greedy by IoU."""
        if not len(gt_boxes) or not len(det_boxes):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        iou = _iou(gt_boxes, det_boxes)
        gi, di = np.nonzero(iou > self.iou_thres)
        order = np.argsort(-iou[gi, di], kind="mergesort")
        gi, di = gi[order], di[order]
        _, first = np.unique(di, return_index=True)  # best label for each detection
        keep = np.sort(first)  # back to IoU order
        gi, di = gi[keep], di[keep]
        _, first = np.unique(gi, return_index=True)  # then best detection for each label
        return gi[first], di[first]

    def process_batch(self, detections, labels) -> None:
        """Add one image. detections: (n, 6) [x1, y1, x2, y2, conf, cls] or None; labels: (m, 5) [cls, x1..y2]."""
        labels, det = _as_array(labels, 5), _as_array(detections, 6)
        det = det[det[:, 4] > self.conf]
        gt_cls = _check_classes(labels[:, 0], self.nc, "label")
        det_cls = _check_classes(det[:, 5], self.nc, "detection")
        gi, di = self._pairs(labels[:, 1:5], det[:, :4])
        np.add.at(self.matrix, (det_cls[di], gt_cls[gi]), 1)
        missed = np.ones(len(labels), bool)
        missed[gi] = False
        np.add.at(self.matrix, (self.nc, gt_cls[missed]), 1)
        extra = np.ones(len(det), bool)
        extra[di] = False
        np.add.at(self.matrix, (det_cls[extra], self.nc), 1)

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true positives and false positives (background excluded)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]
