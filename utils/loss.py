"""Detection loss with YOLOv5 v7.0 semantics.

Targets are matched to anchors by width/height ratio (no IoU threshold), each match is also given
to the two neighbouring grid cells nearest to the target centre (three cells per match), boxes are
regressed with CIoU, objectness is trained towards the detached CIoU of the prediction, and
classes with BCE (optional label smoothing and focal modulation). Every loss is computed in float32
on the predictions' device, so the class works unchanged under AMP and on any accelerator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, complete_box_iou_loss

from utils.hyperparameters import DEFAULTS, LOSS_KEYS, require

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


class ComputeLoss:
    """YOLOv5 loss for a model whose last layer is the anchor-based ``Detect`` head.

    ``hyp`` needs ``LOSS_KEYS`` (utils/hyperparameters.py): ``box``, ``obj``, ``cls`` (gains, used as given),
    ``cls_pw``, ``obj_pw``, ``anchor_t``; optional ``fl_gamma`` (focal loss when > 0) and ``label_smoothing``.
    """

    gr = 1.0  # objectness target = (1 - gr) + gr * IoU

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

    def __call__(self, preds: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """``preds``: per-level ``(bs, na, ny, nx, nc + 5)`` raw maps; ``targets``: ``(n, 6)`` rows of
        ``[image, class, x, y, w, h]`` (xywh normalised). Returns ``(total * bs, [box, obj, cls])``."""
        device = preds[0].device
        zero = torch.zeros((), device=device)
        lbox, lobj, lcls = zero, zero, zero
        tcls, tbox, indices, anch = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            pi = pi.float()  # AMP: compute every loss in float32
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5  # centre may sit up to half a cell outside its cell
                pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]  # 0..4x the anchor
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])
                lbox = lbox + (1.0 - iou).mean()
                score = iou.detach().clamp(0)
                if self.gr < 1:
                    score = (1.0 - self.gr) + self.gr * score
                tobj = self._scatter_best(tobj, (b, a, gj, gi), score)
                if self.nc > 1:  # a single class needs no class loss: objectness says it all
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls = lcls + bce_with_logits(pcls, t, self.hyp["cls_pw"], self.fl_gamma)
            obji = bce_with_logits(pi[..., 4], tobj, self.hyp["obj_pw"], self.fl_gamma)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:  # slowly move each level's weight towards 1 / its loss
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.stack((lbox, lobj, lcls)).detach()

    @staticmethod
    def _scatter_best(tobj: Tensor, index: tuple[Tensor, ...], score: Tensor) -> Tensor:
        """Write ``score`` into ``tobj`` at ``(b, a, gj, gi)``; where several targets share a cell the
        highest wins. (Plain index assignment leaves the winner of duplicates undefined; YOLOv5's
        optional sort relies on last-write-wins, which CUDA does not promise. amax is deterministic.)"""
        b, a, gj, gi = index
        _, na, ny, nx = tobj.shape
        flat = ((b * na + a) * ny + gj) * nx + gi
        return tobj.view(-1).scatter_reduce(0, flat, score, reduce="amax").view_as(tobj)

    def build_targets(self, p: list[Tensor], targets: Tensor):
        """Match targets to anchors and grid cells, per output level.

        Returns lists over levels of: ``tcls`` (m,) class ids; ``tbox`` (m, 4) xywh in grid units
        with xy relative to the assigned cell's corner; ``indices`` (image, anchor, gj, gi);
        ``anch`` (m, 2) the matched anchors in grid units.
        """
        device = p[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        na, nt = self.na, targets.shape[0]
        anchors_all = self.detect.anchors.to(device=device, dtype=torch.float32)
        # one copy of every target per anchor: (na, nt, 7) = image, class, x, y, w, h, anchor index
        ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1, 1).expand(na, nt, 1)
        t_all = torch.cat((targets.unsqueeze(0).expand(na, nt, 6), ai), 2)
        offsets_all = torch.tensor(CELL_OFFSETS, device=device) * NEIGHBOUR_MARGIN
        g = NEIGHBOUR_MARGIN
        tcls, tbox, indices, anch = [], [], [], []
        for i in range(self.nl):
            ny, nx = p[i].shape[2:4]
            anchors = anchors_all[i]
            gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=torch.float32)
            t = t_all * gain  # xywh in grid units
            # keep (anchor, target) pairs whose w and h are both within anchor_t times the anchor's
            r = t[..., 4:6] / anchors[:, None]
            t = t[torch.max(r, 1 / r).amax(2) < self.hyp["anchor_t"]]  # (m, 7)
            gxy = t[:, 2:4]
            gxy_inv = gxy.new_tensor([nx, ny]) - gxy  # distance to the right / bottom border
            # the nearer neighbour in x and in y, skipped where it would fall outside the grid
            low = ((gxy % 1 < g) & (gxy > 1)).T  # left, upper
            high = ((gxy_inv % 1 < g) & (gxy_inv > 1)).T  # right, lower
            keep = torch.stack((torch.ones_like(low[0]), low[0], low[1], high[0], high[1]))  # (5, m)
            t = t.unsqueeze(0).expand(5, -1, -1)[keep]
            offsets = offsets_all[:, None].expand(-1, keep.shape[1], -1)[keep]
            b, c, a = t[:, 0].long(), t[:, 1].long(), t[:, 6].long()
            gxy, gwh = t[:, 2:4], t[:, 4:6]
            gij = (gxy - offsets).long()  # non-negative, so truncation is floor
            gij[:, 0].clamp_(0, nx - 1)  # a centre exactly on the far border
            gij[:, 1].clamp_(0, ny - 1)
            indices.append((b, a, gij[:, 1], gij[:, 0]))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
