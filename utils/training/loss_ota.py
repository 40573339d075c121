"""YOLOv7's OTA loss (``ComputeLossOTA``): the shared loss body (utils/training/loss.py) with a dynamic, cost-based
target assignment.

Candidates are YOLOv7's ``find_3_positive``, which is exactly YOLOv5's three-cell matching
(``ComputeLoss.three_cell_matches``). Among each image's candidates every target then takes its ``k``
cheapest, SimOTA style: ``k`` = the integer part of the sum of its 10 best IoUs with the candidates'
decoded boxes (at least 1); the cost is ``BCE(cls) + 3 * -log(IoU + 1e-8)``, the class term on
``sqrt(sigmoid(cls) * sigmoid(obj))`` against the one-hot class; a candidate taken by several targets
goes to the cheapest of all the image's targets. The loss on the matches is the shared body, which is
YOLOv7's: CIoU box loss, objectness towards the detached CIoU, class BCE, per-level objectness balance. Where
two matches share a cell the later one's score is the objectness target, as YOLOv7 writes it.

Same values as YOLOv7, computed differently (tests/training/test_loss_ota.py checks against YOLOv7's own code):

- YOLOv7 loops over images and, inside, over targets (one ``topk`` each). Here all images are padded into
  one ``(images, max targets, max candidates)`` cost tensor and every target's ``k`` cheapest come from one
  batched ``topk`` (``k <= topk_iou`` because IoUs are at most 1). Only a target whose k-th and (k+1)-th cheapest
  candidates cost the same (one cell reached through two targets' neighbourhoods) gets YOLOv7's own
  per-target ``topk``, so that the equal candidate kept is the one YOLOv7 keeps on that device (CPU and
  CUDA ``topk`` choose differently among equal values).
- YOLOv7 builds an ``(targets, candidates, classes)`` tensor per image for the class cost (the one-hot
  target repeated over candidates). With a one-hot target the class sum is the all-negatives BCE of the
  candidate minus the negative term of the target's class plus its positive term, so only
  ``(candidates, classes)`` and ``(targets, candidates)`` tensors are built. The rounding differs in the
  last bits (about 1e-6 of the cost); the choice of candidates does not.
- The assignment runs without autograd (YOLOv7 records a graph it never uses).
- Where two targets are matched to the same cell YOLOv7's objectness target is the last one written;
  this is reproduced with an explicit "last match wins" that is deterministic on every device, where
  index assignment with duplicates is unspecified on CUDA.

The call and result are every loss's here: ``loss(preds, targets, imgs) -> (loss, [box, obj, cls])`` with a
scalar ``loss``; YOLOv7 returns a ``(1,)`` loss and a fourth item, the unscaled total (``loss / batch size``).
YOLOv7's auxiliary-head loss (``ComputeLossAuxOTA``, for heads with ``heads == 2`` such as YOLOv7-W6's) is a
subclass that overrides ``assign`` only, with ``topk_iou = 20`` and ``head_weights = (1.0, 0.25)``: the lead maps
get ``dynamic_k_matches`` over the three-cell candidates, the auxiliary maps over the five-cell ones
(``neighbour_cell_matches(margin=1.0)``), both costed on the lead head's predictions
(tests/training/test_loss_ota_aux.py checks it against YOLOv7's own code).
One deliberate difference: target boxes are scaled to pixels by the image's width and height, where
YOLOv7 multiplies x and w by the height too (identical for square training images, wrong for rectangular).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert

from utils.training.loss import ComputeLoss, Matches, neighbour_cell_matches, scatter_last
from utils.ops import decode_boxes

TOPK_IOU = 10  # a target's k is the sum of its best 10 IoUs, so never more than 10
TOPK_IOU_AUX = 20  # YOLOv7's auxiliary-head loss: the best 20, for the lead maps too
AUX_WEIGHT = 0.25  # YOLOv7's weight of the auxiliary maps' box, objectness and class losses
IOU_COST = 3.0  # weight of -log(IoU) against the class BCE in the cost
LOG_EPS = 1e-8


def batched_box_iou(box1: Tensor, box2: Tensor) -> Tensor:
    """IoU of ``(B, N, 4)`` and ``(B, M, 4)`` xyxy boxes, ``(B, N, M)``; torchvision's ``box_iou`` per image,
    with the same arithmetic (so the same rounding)."""
    area1 = (box1[..., 2] - box1[..., 0]) * (box1[..., 3] - box1[..., 1])
    area2 = (box2[..., 2] - box2[..., 0]) * (box2[..., 3] - box2[..., 1])
    lt = torch.max(box1[:, :, None, :2], box2[:, None, :, :2])
    rb = torch.min(box1[:, :, None, 2:], box2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, :, None] + area2[:, None, :] - inter)


def pixel_boxes(targets: Tensor, imgs: Tensor) -> Tensor:
    """Targets' normalised xywh as xyxy pixels of ``imgs``: x and w by the width, y and h by the height
    (YOLOv7 uses the height for all four, which only square images survive)."""
    h, w = imgs.shape[-2:]
    return box_convert(targets[:, 2:6] * targets.new_tensor([w, h, w, h]), "cxcywh", "xyxy")


def group_slots(group: Tensor, n_groups: int) -> tuple[Tensor, Tensor, int]:
    """For items sorted by ``group``: each item's position inside its group, the group sizes, and the
    largest size (the padded width)."""
    counts = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(group.shape[0], device=group.device) - starts[group]
    return pos, counts, int(counts.max()) if n_groups else 0


def first_k_cheapest(cost: Tensor, k: Tensor, n_valid: Tensor, topk: int = TOPK_IOU) -> Tensor:
    """Boolean ``(B, G, C)``: in each row the ``k[b, g]`` (at most ``topk``) cheapest of the first
    ``n_valid[b]`` columns, the set YOLOv7's per-target ``torch.topk(cost_row, k, largest=False)`` takes.

    One batched ``topk`` decides every row whose k-th and (k+1)-th cheapest differ. Where they are equal (the
    same cell reached through two targets' neighbourhoods has the same cost twice), which of the equal ones
    ``topk`` keeps depends on its algorithm and device; those rows are redone with YOLOv7's exact call.
    """
    bs, g, c = cost.shape
    kmax = min(topk, c)
    val, idx = F.pad(cost, (0, 1), value=float("inf")).topk(kmax + 1, dim=-1, largest=False)
    take = torch.arange(kmax + 1, device=cost.device) < k[..., None]
    chosen = torch.zeros(bs, g, c + 1, dtype=torch.bool, device=cost.device).scatter_(-1, idx, take)[..., :c]
    kth = val.gather(-1, (k - 1).clamp(min=0)[..., None]).squeeze(-1)
    after = val.gather(-1, k.clamp(max=kmax)[..., None]).squeeze(-1)
    tied = (k > 0) & (kth == after)
    if tied.any():
        for (b, t), kk in zip(tied.nonzero().tolist(), k[tied].tolist()):
            row = cost[b, t, : int(n_valid[b])]
            chosen[b, t] = False
            chosen[b, t, row.topk(kk, largest=False).indices] = True
    return chosen


class ComputeLossOTA(ComputeLoss):
    """YOLOv7's ``ComputeLossOTA``: ``loss(predictions, targets, images) -> (loss, [box, obj, cls])``, the
    images for their size. ``hyp`` as for ``ComputeLoss`` (``model.hyp`` when not given, as in YOLOv7)."""

    topk_iou = TOPK_IOU
    scatter_objectness = staticmethod(scatter_last)  # YOLOv7's index assignment: the later match wins

    def __init__(self, model, hyp: dict | None = None, autobalance: bool = False):
        model = getattr(model, "module", model)
        if hyp is None:
            hyp = getattr(model, "hyp", None)
            if hyp is None:
                raise ValueError(f"{type(self).__name__} needs hyp: pass it or set model.hyp")
        super().__init__(model, hyp, autobalance)
        self.gr = float(getattr(model, "gr", self.gr))  # YOLOv7 reads the objectness IoU ratio off the model

    def assign(self, preds: list[Tensor], targets: Tensor, imgs: Tensor | None) -> list[Matches]:
        """OTA matches per level, in YOLOv7's order (image by image; within an image, candidate order)."""
        targets = self._checked_targets(preds, targets, imgs)
        return self.dynamic_k_matches(preds, targets, imgs, self.three_cell_matches(preds, targets))

    def _checked_targets(self, preds: list[Tensor], targets: Tensor, imgs: Tensor | None) -> Tensor:
        """``targets`` in float32 on the predictions' device, after checking that the images (for their size) were given."""
        if imgs is None:
            raise ValueError(f"{type(self).__name__} needs the batch images (imgs): the OTA cost compares boxes in "
                             "pixels of the images' size; call loss(preds, targets, imgs)")
        return targets.to(device=preds[0].device, dtype=torch.float32)

    @torch.no_grad()  # YOLOv7 records a graph here it never uses
    def dynamic_k_matches(self, preds: list[Tensor], targets: Tensor, imgs: Tensor,
                          candidates: list[Matches]) -> list[Matches]:
        """Among ``candidates`` (one ``Matches`` per level of ``preds``), each target's ``k`` cheapest, and a
        candidate taken by several targets given to the cheapest; ``targets`` float32 on the predictions' device."""
        device, bs = preds[0].device, preds[0].shape[0]
        cand = self._candidates(preds, candidates)
        if cand is None or targets.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return [Matches(empty, empty, empty, empty, targets.new_zeros(0, 6), targets.new_zeros(0, 2))
                    for _ in preds]
        level, b, a, gj, gi, anch, pbox, pcls_logit = cand
        # targets grouped by image, keeping their order (YOLOv7's per-image slices)
        t_order = torch.sort(targets[:, 0].long(), stable=True).indices
        tgt = targets[t_order]
        t_img = tgt[:, 0].long()
        t_pos, t_count, g_max = group_slots(t_img, bs)
        c_pos, c_count, c_max = group_slots(b, bs)
        tbox = pixel_boxes(tgt, imgs)
        tbox_pad = tgt.new_zeros(bs, g_max, 4).index_put_((t_img, t_pos), tbox)
        pbox_pad = pbox.new_zeros(bs, c_max, 4).index_put_((b, c_pos), pbox)
        t_valid = torch.arange(g_max, device=device) < t_count[:, None]  # (bs, G)
        c_valid = torch.arange(c_max, device=device) < c_count[:, None]  # (bs, C)
        pair_valid = t_valid[:, :, None] & c_valid[:, None, :]
        iou = batched_box_iou(tbox_pad, pbox_pad).masked_fill(~pair_valid, 0.0)
        k = iou.topk(min(self.topk_iou, c_max), dim=-1).values.sum(-1).int().clamp(min=1)
        k = k.masked_fill(~t_valid | (c_count == 0)[:, None], 0)
        cost = self._class_cost(pcls_logit, tgt[:, 1].long(), (b, c_pos), (t_img, t_pos), pair_valid)
        cost = (cost + IOU_COST * -torch.log(iou + LOG_EPS)).masked_fill(~pair_valid, float("inf"))
        matching = first_k_cheapest(cost, k, c_count, self.topk_iou) & pair_valid
        # a candidate taken by several targets goes to the cheapest of all the image's targets
        multi = matching.sum(1) > 1  # (bs, C)
        best = cost.min(1).indices  # first minimum, as torch.min
        fg = matching.any(1)
        gt_slot = torch.where(multi, best, matching.int().argmax(1))  # (bs, C)
        # back to the flat candidate list (already sorted by image)
        keep = fg[b, c_pos]
        t_index = (torch.cumsum(t_count, 0) - t_count)[b] + gt_slot[b, c_pos]
        matched = tgt[t_index]
        out = []
        for i in range(len(preds)):
            m = keep & (level == i)
            out.append(Matches(b[m], a[m], gj[m], gi[m], matched[m], anch[m]))
        return out

    def _candidates(self, preds: list[Tensor], candidates: list[Matches]):
        """All levels' candidates, stably sorted by image (YOLOv7's per-image order: level by level, candidate
        order within a level), with their decoded boxes in pixels and their class logits for the cost. None
        when there are none."""
        stride = self.detect.stride
        rows = []
        for i, m in enumerate(candidates):
            ps = preds[i][m.b, m.a, m.gj, m.gi]
            pxy, pwh = decode_boxes(ps[:, :2].sigmoid(), ps[:, 2:4].sigmoid(), m.anchors,
                                    torch.stack((m.gi, m.gj), 1), stride[i])
            pbox = box_convert(torch.cat((pxy, pwh), 1), "cxcywh", "xyxy")
            # YOLOv7's class score: sqrt(sigmoid(cls) * sigmoid(obj)), as a logit for BCE
            y = (ps[:, 5:].sigmoid() * ps[:, 4:5].sigmoid()).sqrt()
            logit = torch.log(y / (1 - y))
            rows.append((torch.full_like(m.b, i), m.b, m.a, m.gj, m.gi, m.anchors, pbox, logit))
        if sum(r[0].shape[0] for r in rows) == 0:
            return None
        order = torch.sort(torch.cat([r[1] for r in rows]), stable=True).indices
        return tuple(torch.cat([r[j] for r in rows])[order] for j in range(8))

    @staticmethod
    def _class_cost(logit: Tensor, cls: Tensor, c_index, t_index, pair_valid: Tensor) -> Tensor:
        """``(bs, G, C)`` class BCE summed over classes against each target's one-hot class, without the
        ``(targets, candidates, classes)`` tensor: all-negative sum, minus the target class's negative term,
        plus its positive term."""
        neg = F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit), reduction="none")
        bs, g_max, c_max = pair_valid.shape
        cand = torch.zeros(bs, c_max, dtype=torch.long, device=logit.device).index_put_(
            c_index, torch.arange(logit.shape[0], device=logit.device))
        tcls = torch.zeros(bs, g_max, dtype=torch.long, device=logit.device).index_put_(t_index, cls)
        rows, cols = cand[:, None, :].expand(-1, g_max, -1), tcls[:, :, None].expand(-1, -1, c_max)
        return neg.sum(1)[rows] - logit[rows, cols]  # the target class: BCE(x, 1) - BCE(x, 0) = -x


class ComputeLossAuxOTA(ComputeLossOTA):
    """YOLOv7's ``ComputeLossAuxOTA``, the loss of a head with auxiliary maps (``heads == 2``): ``preds`` = the
    ``nl`` lead maps, then the ``nl`` auxiliary maps. Each target's ``k`` comes from its 20 best IoUs (not 10).
    The lead maps are matched among the three-cell candidates, the auxiliary maps among the five-cell ones (the
    target's cell and all four neighbours inside the grid), both by the cost of the lead head's predictions;
    each auxiliary map's box, objectness and class losses then weigh 0.25 with the level's objectness balance."""

    topk_iou = TOPK_IOU_AUX
    head_weights = (1.0, AUX_WEIGHT)

    def assign(self, preds: list[Tensor], targets: Tensor, imgs: Tensor | None) -> list[Matches]:
        """The lead maps' matches, then the auxiliary maps'; both chosen on the lead predictions."""
        lead = preds[: self.nl]
        targets = self._checked_targets(lead, targets, imgs)
        five_cell = neighbour_cell_matches(lead, targets, self.detect.anchors, self.hyp["anchor_t"], margin=1.0)
        return (self.dynamic_k_matches(lead, targets, imgs, self.three_cell_matches(lead, targets))
                + self.dynamic_k_matches(lead, targets, imgs, five_cell))
