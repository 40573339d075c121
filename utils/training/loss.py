"""Detection losses: one body, with the target assignment as the part that varies.

``DetectionLoss`` is the body every loss shares: given which predictions are matched to which targets (an
``assign`` result, one ``Matches`` per output map), boxes are regressed with CIoU, objectness is trained
towards the detached CIoU of the matched predictions, classes with BCE (optional label smoothing and focal
modulation), with per-level objectness balance (optionally auto-balanced) and the ``box``/``obj``/``cls``
gains. Every loss is computed in float32 on the predictions' device, so it works unchanged under AMP and on
any accelerator. Every loss is called the same way and returns the same thing::

    loss, items = compute_loss(preds, targets, imgs)  # items: [box, obj, cls], detached

``ComputeLoss`` is YOLOv5 v7.0's assignment: targets are matched to anchors by width/height ratio (no IoU
threshold) and each match is also given to the two neighbouring grid cells nearest to the target centre
(three cells per match). YOLOv7's OTA assignment (utils/training/loss_ota.py) picks among these candidates.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, complete_box_iou_loss

from utils.hyperparameters import DEFAULTS, LOSS_KEYS, require
from utils.ops import decode_boxes

# Objectness weight per output level, finest grid first: fine grids hold many more cells, so their
# mean BCE is smaller and gets a larger weight.
BALANCE = {3: [4.0, 1.0, 0.4]}
BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]
NEIGHBOUR_MARGIN = 0.5  # a neighbour cell is used when the centre lies within this distance of its edge
# centre, then the offsets (in grid units) whose subtraction moves to the left, upper, right, lower cell
CELL_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets under label smoothing ``eps`` (arXiv:1902.04103)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of paired ``(N, 4)`` xywh boxes, shape ``(N,)``.

    torchvision's ``complete_box_iou_loss`` is exactly ``1 - CIoU`` with YOLOv5's definition:
    IoU minus the normalised centre distance minus ``alpha * v``, ``alpha`` without gradient, and
    ``eps`` in the union and in the enclosing-box diagonal.
    """
    b1, b2 = box_convert(box1, "cxcywh", "xyxy"), box_convert(box2, "cxcywh", "xyxy")
    return 1.0 - complete_box_iou_loss(b1, b2, reduction="none", eps=eps)


def bce_with_logits(pred: Tensor, true: Tensor, pos_weight: float = 1.0, gamma: float = 0.0, alpha: float = 0.25) -> Tensor:
    """Mean BCE on logits; with ``gamma > 0`` the focal form ``alpha_t * (1 - p_t)^gamma * BCE``.

    Written out (not torchvision's ``sigmoid_focal_loss``) because YOLOv5 combines the focal factor
    with BCE's ``pos_weight``.
    """
    weight = torch.tensor([pos_weight], device=pred.device, dtype=pred.dtype)
    loss = F.binary_cross_entropy_with_logits(pred, true, pos_weight=weight, reduction="none")
    if gamma > 0:
        p = pred.sigmoid()
        p_t = true * p + (1 - true) * (1 - p)
        alpha_t = true * alpha + (1 - true) * (1 - alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** gamma
    return loss.mean()


class Matches(NamedTuple):
    """Which predictions of one output map are matched to which targets: one row per match."""

    b: Tensor  # (m,) image
    a: Tensor  # (m,) anchor
    gj: Tensor  # (m,) grid row
    gi: Tensor  # (m,) grid column
    targets: Tensor  # (m, 6) the matched target rows [image, class, x, y, w, h], xywh normalised
    anchors: Tensor  # (m, 2) the matched anchors, grid units


def target_boxes(m: Matches, ny: int, nx: int) -> Tensor:
    """The matched targets' xywh in grid units of an ``ny x nx`` map, xy relative to the matched cell's corner."""
    tbox = m.targets[:, 2:6] * m.targets.new_tensor([nx, ny, nx, ny])
    tbox[:, :2] -= torch.stack((m.gi, m.gj), 1)
    return tbox


def _flat_index(tobj: Tensor, index: tuple[Tensor, ...]) -> Tensor:
    """Positions of ``(b, a, gj, gi)`` in the flattened ``(bs, na, ny, nx)`` ``tobj``."""
    b, a, gj, gi = index
    _, na, ny, nx = tobj.shape
    return ((b * na + a) * ny + gj) * nx + gi


def scatter_max(tobj: Tensor, index: tuple[Tensor, ...], score: Tensor) -> Tensor:
    """Write ``score`` into ``tobj`` at ``(b, a, gj, gi)``; where several matches share a cell the highest wins.
    (Plain index assignment leaves the winner of duplicates undefined; YOLOv5's optional sort relies on
    last-write-wins, which CUDA does not promise. amax is deterministic.)"""
    flat = _flat_index(tobj, index)
    return tobj.view(-1).scatter_reduce(0, flat, score, reduce="amax").view_as(tobj)


def scatter_last(tobj: Tensor, index: tuple[Tensor, ...], score: Tensor) -> Tensor:
    """``tobj[b, a, gj, gi] = score`` where, for a cell listed twice, the later entry wins (what YOLOv7's
    index assignment does on the CPU), on every device."""
    flat = _flat_index(tobj, index)
    order = torch.arange(flat.shape[0], device=flat.device)
    last = torch.full((tobj.numel(),), -1, device=flat.device, dtype=torch.long)
    last = last.scatter_reduce(0, flat, order, reduce="amax")
    keep = last[flat] == order
    out = tobj.view(-1).clone()
    out[flat[keep]] = score[keep]
    return out.view_as(tobj)


def neighbour_cell_matches(preds: list[Tensor], targets: Tensor, anchors_all: Tensor, anchor_t: float,
                           margin: float = NEIGHBOUR_MARGIN) -> list[Matches]:
    """YOLOv5's matching (YOLOv7's ``find_3_positive``), per output level of ``preds``.

    A target goes to every anchor whose width and height ratios to it are within ``anchor_t``, in its own cell
    and in each neighbouring cell (left, upper, right, lower) whose edge its centre lies within ``margin`` of:
    0.5 gives the nearer neighbour in x and in y (three cells), 1.0 all four inside the grid (five cells,
    YOLOv7's ``find_5_positive``). ``anchors_all``: (nl, na, 2) in grid units.
    """
    device = preds[0].device
    targets = targets.to(device=device, dtype=torch.float32)
    na, nt = anchors_all.shape[1], targets.shape[0]
    anchors_all = anchors_all.to(device=device, dtype=torch.float32)
    # one copy of every target per anchor: (na, nt, 7) = image, class, x, y, w, h, anchor index
    ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1, 1).expand(na, nt, 1)
    t_all = torch.cat((targets.unsqueeze(0).expand(na, nt, 6), ai), 2)
    offsets_all = torch.tensor(CELL_OFFSETS, device=device) * margin
    out = []
    for i, p in enumerate(preds):
        ny, nx = p.shape[2:4]
        anchors = anchors_all[i]
        grid_size = torch.tensor([nx, ny], device=device, dtype=torch.float32)
        # keep (anchor, target) pairs whose w and h are both within anchor_t times the anchor's
        r = t_all[..., 4:6] * grid_size / anchors[:, None]
        t = t_all[torch.max(r, 1 / r).amax(2) < anchor_t]  # (m, 7)
        gxy = t[:, 2:4] * grid_size  # grid units
        gxy_inv = grid_size - gxy  # distance to the right / bottom border
        # the neighbours within the margin, skipped where they would fall outside the grid
        low = ((gxy % 1 < margin) & (gxy > 1)).T  # left, upper
        high = ((gxy_inv % 1 < margin) & (gxy_inv > 1)).T  # right, lower
        keep = torch.stack((torch.ones_like(low[0]), low[0], low[1], high[0], high[1]))  # (5, m)
        t = t.unsqueeze(0).expand(5, -1, -1)[keep]
        offsets = offsets_all[:, None].expand(-1, keep.shape[1], -1)[keep]
        gij = (t[:, 2:4] * grid_size - offsets).long()  # non-negative, so truncation is floor
        gij[:, 0].clamp_(0, nx - 1)  # a centre exactly on the far border
        gij[:, 1].clamp_(0, ny - 1)
        a = t[:, 6].long()
        out.append(Matches(t[:, 0].long(), a, gij[:, 1], gij[:, 0], t[:, :6], anchors[a]))
    return out


def _weighted(x: Tensor, weight: float) -> Tensor:
    return x if weight == 1.0 else weight * x


class DetectionLoss:
    """The loss body for a model whose last layer is an anchor-based ``Detect`` head; subclasses say which
    predictions are matched to which targets by implementing ``assign``.

    ``loss(preds, targets, imgs=None) -> (loss, items)``: ``preds`` the per-map ``(bs, na, ny, nx, nc + 5)`` raw
    maps, ``targets`` ``(n, 6)`` rows ``[image, class, x, y, w, h]`` (xywh normalised), ``imgs`` the batch (read
    only by assignments that need the image size). ``loss`` = (box + obj + cls) * batch size, a scalar;
    ``items`` = ``[box, obj, cls]``, detached.

    ``hyp`` needs ``LOSS_KEYS`` (utils/hyperparameters.py): ``box``, ``obj``, ``cls`` (gains, used as given),
    ``cls_pw``, ``obj_pw``, ``anchor_t``; optional ``fl_gamma`` (focal loss when > 0) and ``label_smoothing``.

    Subclasses may also set: ``scatter_objectness`` (which score a cell matched twice gets), ``gr`` (objectness
    target = ``(1 - gr) + gr * IoU``) and ``head_weights``: the weight of each head's maps, for a model with
    auxiliary heads whose maps follow the lead head's (``preds`` = lead levels, then each auxiliary head's);
    per level the heads' losses are added in head order, each head's objectness with the level's balance
    (under autobalance, only the lead head's objectness moves it).
    """

    gr = 1.0
    head_weights = (1.0,)
    scatter_objectness = staticmethod(scatter_max)

    def __init__(self, model, hyp: dict, autobalance: bool = False):
        model = getattr(model, "module", model)  # unwrap DDP / DataParallel
        self.detect = model.model[-1]  # read at call time: AutoAnchor edits and .to(device) replace buffers
        self.hyp = require(hyp, LOSS_KEYS, type(self).__name__)
        self.na, self.nc, self.nl = self.detect.na, self.detect.nc, self.detect.nl
        self.cp, self.cn = smooth_bce(hyp.get("label_smoothing", DEFAULTS["label_smoothing"]))
        self.fl_gamma = float(hyp.get("fl_gamma", DEFAULTS["fl_gamma"]))
        balance = BALANCE.get(self.nl, BALANCE_DEFAULT)
        if self.nl > len(balance):
            raise ValueError(f"no objectness balance defined for {self.nl} output levels (at most {len(balance)})")
        self.balance = list(balance[: self.nl])
        self.autobalance = autobalance
        self.ssi = 0  # level whose balance stays fixed at 1 under autobalance (stride 16, as in YOLOv5)
        if autobalance:
            strides = [float(s) for s in self.detect.stride]
            if 16.0 not in strides:
                raise ValueError(f"autobalance needs a stride-16 output level, strides are {strides}")
            self.ssi = strides.index(16.0)

    def assign(self, preds: list[Tensor], targets: Tensor, imgs: Tensor | None) -> list[Matches]:
        """One ``Matches`` per map of ``preds`` (``targets`` float32 on the predictions' device)."""
        raise NotImplementedError(f"{type(self).__name__} must implement assign()")

    def __call__(self, preds: list[Tensor], targets: Tensor, imgs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(loss, [box, obj, cls])`` of ``preds`` against ``targets``, see the class docstring."""
        maps = self.nl * len(self.head_weights)
        if len(preds) != maps:
            raise ValueError(f"{type(self).__name__} takes {maps} prediction maps ({self.nl} levels x "
                             f"{len(self.head_weights)} heads), got {len(preds)}: pass the training output of the head")
        preds = [p.float() for p in preds]  # AMP: assign and compute every loss in float32
        targets = targets.to(device=preds[0].device, dtype=torch.float32)
        matches = self.assign(preds, targets, imgs)
        lbox = lobj = lcls = preds[0].new_zeros(())
        for i in range(self.nl):
            level_obj = lead_obj = None
            for h, weight in enumerate(self.head_weights):
                box, obji, cls = self._map_loss(preds[i + h * self.nl], matches[i + h * self.nl])
                if box is not None:
                    lbox = lbox + _weighted(box, weight)
                if cls is not None:
                    lcls = lcls + _weighted(cls, weight)
                obj = _weighted(obji, weight) * self.balance[i]
                level_obj = obj if level_obj is None else level_obj + obj
                lead_obj = obji if h == 0 else lead_obj
            lobj = lobj + level_obj
            if self.autobalance:  # slowly move each level's weight towards 1 / its lead map's loss, once every
                # head used the old weight (YOLOv7's aux loss)
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / lead_obj.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox, lobj, lcls = lbox * self.hyp["box"], lobj * self.hyp["obj"], lcls * self.hyp["cls"]
        return (lbox + lobj + lcls) * preds[0].shape[0], torch.stack((lbox, lobj, lcls)).detach()

    def _map_loss(self, pi: Tensor, m: Matches) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """One map's box loss and class loss over its matches (None without matches; the class loss also None
        for one class, where objectness says it all) and its objectness BCE over every cell."""
        tobj = pi.new_zeros(pi.shape[:4])
        n = m.b.shape[0]
        if not n:
            return None, bce_with_logits(pi[..., 4], tobj, self.hyp["obj_pw"], self.fl_gamma), None
        # split, not slices: its backward is one concatenation, three slices' are three full-size zero tensors
        pxy, pwh, _, pcls = pi[m.b, m.a, m.gj, m.gi].split((2, 2, 1, self.nc), 1)
        pxy, pwh = decode_boxes(pxy.sigmoid(), pwh.sigmoid(), m.anchors)
        iou = bbox_ciou(torch.cat((pxy, pwh), 1), target_boxes(m, *pi.shape[2:4]))
        score = iou.detach().clamp(0)
        if self.gr < 1:
            score = (1.0 - self.gr) + self.gr * score
        tobj = self.scatter_objectness(tobj, (m.b, m.a, m.gj, m.gi), score)
        cls = None
        if self.nc > 1:
            t = torch.full_like(pcls, self.cn)
            t[torch.arange(n, device=pcls.device), m.targets[:, 1].long()] = self.cp
            cls = bce_with_logits(pcls, t, self.hyp["cls_pw"], self.fl_gamma)
        return (1.0 - iou).mean(), bce_with_logits(pi[..., 4], tobj, self.hyp["obj_pw"], self.fl_gamma), cls


class ComputeLoss(DetectionLoss):
    """YOLOv5's loss: ``DetectionLoss`` with YOLOv5's three-cell assignment (``neighbour_cell_matches``)."""

    def assign(self, preds: list[Tensor], targets: Tensor, imgs: Tensor | None = None) -> list[Matches]:
        return self.three_cell_matches(preds, targets)

    def three_cell_matches(self, preds: list[Tensor], targets: Tensor) -> list[Matches]:
        """YOLOv5's matches (YOLOv7's ``find_3_positive``): a target in its cell and the two nearest neighbours."""
        return neighbour_cell_matches(preds, targets, self.detect.anchors, self.hyp["anchor_t"])

    def build_targets(self, p: list[Tensor], targets: Tensor):
        """YOLOv5's view of ``three_cell_matches``, per output level: ``tcls`` (m,) class ids; ``tbox`` (m, 4)
        xywh in grid units with xy relative to the assigned cell's corner; ``indices`` (image, anchor, gj, gi);
        ``anch`` (m, 2) the matched anchors in grid units."""
        matches = self.three_cell_matches(p, targets)
        tbox = [target_boxes(m, *pi.shape[2:4]) for m, pi in zip(matches, p)]
        return ([m.targets[:, 1].long() for m in matches], tbox, [(m.b, m.a, m.gj, m.gi) for m in matches],
                [m.anchors for m in matches])
