"""ComputeLoss: target assignment checked against a hand-worked case, CIoU, and loss behaviour."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from models.yolo import Model
from utils.general import ROOT
from utils.training.loss import ComputeLoss, bbox_ciou, neighbour_cell_matches, smooth_bce

# Four stride-2 convs: layer 2 is stride 8, layer 3 stride 16. A 64x64 image gives 8x8 and 4x4 grids.
TINY_CFG = {
    "nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
    "backbone": [[-1, 1, "Conv", [8, 3, 2]]] * 4,
    "head": [[[2, 3], 1, "Detect", ["nc", "anchors"]]],
}
IMG = 64


def load_hyp(**overrides) -> dict:
    with open(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml", encoding="utf-8") as f:
        hyp = yaml.safe_load(f)
    hyp.update(overrides)
    return hyp


@pytest.fixture
def model():
    return Model(TINY_CFG).train()


def preds_of(model, bs=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model(torch.rand(bs, 3, IMG, IMG, generator=g))


def assignments(tcls, tbox, indices, anch, level):
    """Sorted rows (image, anchor, gj, gi, cls, tx, ty, tw, th, aw, ah), rounded to 1e-4."""
    b, a, gj, gi = indices[level]
    rows = []
    for k in range(len(b)):
        row = (int(b[k]), int(a[k]), int(gj[k]), int(gi[k]), int(tcls[level][k]))
        rows.append(row + tuple(round(float(v), 4) for v in (*tbox[level][k], *anch[level][k])))
    return sorted(rows)


def test_tiny_model_geometry(model):
    det = model.model[-1]
    assert det.stride.tolist() == [8.0, 16.0]
    assert det.anchors.tolist() == [[[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]],
                                    [[1.875, 3.8125], [3.875, 2.8125], [3.6875, 7.4375]]]
    shapes = [tuple(p.shape) for p in preds_of(model)]
    assert shapes == [(2, 3, 8, 8, 7), (2, 3, 4, 4, 7)]


def test_build_targets_hand_computed(model):
    """Every number below was worked out by hand (anchors in grid units, see test_tiny_model_geometry).

    A: image 0, class 1, xywh (0.3375, 0.5375, 0.0625, 0.0625)
       P3: centre (2.7, 4.3), wh (0.5, 0.5). Worst ratios vs the anchors 3.25 / 7.5 / 8.25 -> anchor 0 only.
           x frac 0.7 -> right neighbour (gi 3); y frac 0.3 -> upper neighbour (gj 3).
       P4: wh (0.25, 0.25): ratios 15.25 / 15.5 / 29.75 -> no anchor.
    B: image 1, class 0, xywh (0.55, 0.45, 0.7, 0.25)
       P3: centre (4.4, 3.6), wh (5.6, 2.0). Ratios 4.48 / 2.8 / 1.4375 -> anchors 1 and 2.
           x frac 0.4 -> left neighbour (gi 3); y frac 0.6 -> lower neighbour (gj 4).
       P4: centre (2.2, 1.8), wh (2.8, 1.0). Ratios 3.8125 / 2.8125 / 7.4375 -> anchors 0 and 1.
           x frac 0.2 -> left (gi 1); y frac 0.8 -> lower (gj 2).
    C: image 1, class 1, xywh (0.05, 0.95, 0.0625, 0.0625)
       P3: centre (0.4, 7.6) in the corner cell; the nearer neighbours (left, lower) lie outside the
           grid, so only the centre cell. Anchor 0 only, as for A. P4: no anchor.
    tbox xy is the centre relative to the assigned cell's corner (so -0.5..1.5).
    """
    targets = torch.tensor([
        [0, 1, 0.3375, 0.5375, 0.0625, 0.0625],
        [1, 0, 0.55, 0.45, 0.7, 0.25],
        [1, 1, 0.05, 0.95, 0.0625, 0.0625],
    ])
    loss = ComputeLoss(model, load_hyp())
    out = loss.build_targets(preds_of(model), targets)
    a3, a4 = [1.25, 1.625], {0: [1.875, 3.8125], 1: [3.875, 2.8125]}
    anchors3 = {0: a3, 1: [2.0, 3.75], 2: [4.125, 2.875]}
    p3 = [  # (image, anchor, gj, gi, class, tx, ty, tw, th, aw, ah)
        (0, 0, 4, 2, 1, 0.7, 0.3, 0.5, 0.5, *a3),  # A centre cell
        (0, 0, 4, 3, 1, -0.3, 0.3, 0.5, 0.5, *a3),  # A right neighbour
        (0, 0, 3, 2, 1, 0.7, 1.3, 0.5, 0.5, *a3),  # A upper neighbour
        (1, 0, 7, 0, 1, 0.4, 0.6, 0.5, 0.5, *a3),  # C corner cell only
    ]
    for a in (1, 2):
        p3 += [
            (1, a, 3, 4, 0, 0.4, 0.6, 5.6, 2.0, *anchors3[a]),  # B centre cell
            (1, a, 3, 3, 0, 1.4, 0.6, 5.6, 2.0, *anchors3[a]),  # B left neighbour
            (1, a, 4, 4, 0, 0.4, -0.4, 5.6, 2.0, *anchors3[a]),  # B lower neighbour
        ]
    p4 = []
    for a in (0, 1):
        p4 += [
            (1, a, 1, 2, 0, 0.2, 0.8, 2.8, 1.0, *a4[a]),  # B centre cell
            (1, a, 1, 1, 0, 1.2, 0.8, 2.8, 1.0, *a4[a]),  # B left neighbour
            (1, a, 2, 2, 0, 0.2, -0.2, 2.8, 1.0, *a4[a]),  # B lower neighbour
        ]
    assert assignments(*out, level=0) == sorted(p3)
    assert assignments(*out, level=1) == sorted(p4)


def test_five_cell_matches_take_every_neighbour_inside_the_grid(model):
    """Margin 1.0 (YOLOv7's find_5_positive, which its auxiliary heads use): every neighbour cell inside the
    grid. B and C of test_build_targets_hand_computed on P3: B (centre 4.4, 3.6) gets all four neighbours; C
    (centre 0.4, 7.6, in the bottom-left cell) only the right and upper ones."""
    targets = torch.tensor([[1, 0, 0.55, 0.45, 0.7, 0.25], [1, 1, 0.05, 0.95, 0.0625, 0.0625]])
    m = neighbour_cell_matches(preds_of(model), targets, model.model[-1].anchors, load_hyp()["anchor_t"], margin=1.0)[0]
    cells = sorted(zip(m.targets[:, 1].int().tolist(), m.a.tolist(), m.gj.tolist(), m.gi.tolist()))
    b = [(0, a, gj, gi) for a in (1, 2) for gj, gi in ((3, 4), (3, 3), (2, 4), (3, 5), (4, 4))]
    c = [(1, 0, 7, 0), (1, 0, 7, 1), (1, 0, 6, 0)]
    assert cells == sorted(b + c)


def test_auxiliary_head_maps_are_weighted(model):
    """The loss body serves heads whose maps follow the lead head's (YOLOv7's auxiliary heads) by their
    ``head_weights``: here a second head with the lead's predictions and matches at weight 0.25 adds a quarter
    to every loss."""
    class TwoHeads(ComputeLoss):
        head_weights = (1.0, 0.25)

        def assign(self, preds, targets, imgs=None):
            return self.three_cell_matches(preds[:self.nl], targets) * 2

    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 0, 0.25, 0.7, 0.2, 0.1]])
    preds = preds_of(model)
    _, single = ComputeLoss(model, load_hyp())(preds, targets)
    total, both = TwoHeads(model, load_hyp())(preds + preds, targets)
    torch.testing.assert_close(both, single * 1.25, rtol=1e-6, atol=0)
    assert total.item() == pytest.approx(both.sum().item() * 2, rel=1e-6)
    with pytest.raises(ValueError, match="takes 4 prediction maps"):  # 2 levels x 2 heads
        TwoHeads(model, load_hyp())(preds, targets)


def test_ratio_threshold_rejects_far_target(model):
    # 58x0.6 px: worst-side ratio against every anchor far above anchor_t = 4
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.9, 0.01]])
    loss = ComputeLoss(model, load_hyp())
    tcls, tbox, indices, anch = loss.build_targets(preds_of(model), targets)
    assert all(len(t) == 0 for t in tcls)
    _, items = loss(preds_of(model), targets)
    assert items[0] == 0 and items[2] == 0
    # a looser threshold accepts it (ratio 0.9*8*8 / 4.125 ~ 14 on P3 anchor 2)
    loose = ComputeLoss(model, load_hyp(anchor_t=100.0))
    assert sum(len(t) for t in loose.build_targets(preds_of(model), targets)[0]) > 0


def test_ciou_matches_definition():
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert bbox_ciou(box, box).item() == pytest.approx(1.0, abs=1e-6)
    # same centre and aspect: CIoU = IoU
    half = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert bbox_ciou(half, box).item() == pytest.approx(0.25, abs=1e-6)
    # shifted by 1: IoU 2/6, enclosing box 3x2 -> diagonal^2 13, centre distance^2 1
    shifted = torch.tensor([[1.0, 0.0, 2.0, 2.0]])
    assert bbox_ciou(shifted, box).item() == pytest.approx(1 / 3 - 1 / 13, abs=1e-6)
    # concentric 2x1 vs 1x2: IoU 1/3 and the aspect term
    wide, tall = torch.tensor([[0.0, 0.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    iou = 1 / 3
    expected = iou - v * v / (v - iou + 1)
    assert bbox_ciou(wide, tall).item() == pytest.approx(expected, abs=1e-6)


def test_loss_finite_positive_on_random_preds(model):
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 0, 0.25, 0.7, 0.2, 0.1]])
    total, items = ComputeLoss(model, load_hyp())(preds_of(model), targets)
    assert total.ndim == 0 and torch.isfinite(total) and total > 0
    assert items.shape == (3,) and not items.requires_grad
    assert (items > 0).all()
    assert total.item() == pytest.approx(items.sum().item() * 2, rel=1e-6)  # times batch size
    total.backward()
    assert model.model[-1].m[0].weight.grad.abs().sum() > 0


def test_empty_targets(model):
    total, items = ComputeLoss(model, load_hyp())(preds_of(model), torch.zeros(0, 6))
    lbox, lobj, lcls = items.tolist()
    assert lbox == 0 and lcls == 0 and lobj > 0
    assert torch.isfinite(total)


def test_label_smoothing_targets(model):
    eps = 0.2
    assert smooth_bce(eps) == pytest.approx((0.9, 0.1))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 0, 0.25, 0.7, 0.2, 0.1]])
    preds = preds_of(model)
    loss = ComputeLoss(model, load_hyp(label_smoothing=eps))
    _, items = loss(preds, targets)
    # recompute the class loss by hand with targets 0.9 for the true class, 0.1 for the other
    tcls, _, indices, _ = loss.build_targets(preds, targets)
    expected = 0.0
    for p, c, (b, a, gj, gi) in zip(preds, tcls, indices):
        if len(b):
            pcls = p[b, a, gj, gi, 5:]
            t = torch.full_like(pcls, 0.1)
            t[torch.arange(len(b)), c] = 0.9
            expected += F.binary_cross_entropy_with_logits(pcls, t).item()
    assert items[2].item() == pytest.approx(expected * loss.hyp["cls"], rel=1e-5)
    # and it differs from the unsmoothed loss
    _, plain = ComputeLoss(model, load_hyp())(preds, targets)
    assert abs(plain[2].item() - items[2].item()) > 1e-3


def test_focal_loss_and_autocast(model):
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4]])
    loss = ComputeLoss(model, load_hyp(fl_gamma=1.5), autobalance=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = preds_of(model)
        total, items = loss(preds, targets)
    assert preds[0].dtype == torch.bfloat16
    assert total.dtype == torch.float32 and torch.isfinite(total) and (items >= 0).all()
    assert loss.balance[1] == 1.0  # stride-16 level is the autobalance reference


def test_loss_decreases_on_fixed_batch(model):
    targets = torch.tensor([
        [0, 1, 0.3, 0.4, 0.25, 0.3],
        [0, 0, 0.7, 0.7, 0.4, 0.2],
        [1, 1, 0.5, 0.5, 0.6, 0.6],
    ])
    imgs = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    loss_fn = ComputeLoss(model, load_hyp())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    history = []
    for _ in range(30):
        total, items = loss_fn(model(imgs), targets)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(items)
    first, last = history[0], history[-1]
    assert last.sum() < 0.5 * first.sum()
    assert (last < first).all()  # box, objectness and class losses all fell


@pytest.mark.cuda
def test_loss_on_cuda_with_amp():
    model = Model(TINY_CFG).cuda().train()
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 0, 0.25, 0.7, 0.2, 0.1]])  # CPU: moved inside
    loss = ComputeLoss(model, load_hyp(fl_gamma=1.5))
    with torch.autocast("cuda", dtype=torch.float16):
        preds = model(torch.rand(2, 3, IMG, IMG, device="cuda"))
        total, items = loss(preds, targets)
    assert preds[0].dtype == torch.float16
    assert total.device.type == "cuda" and total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    # the same predictions on the CPU give the same losses
    cpu_model = Model(TINY_CFG).train()
    _, cpu_items = ComputeLoss(cpu_model, load_hyp(fl_gamma=1.5))([p.float().cpu() for p in preds], targets)
    torch.testing.assert_close(items.cpu(), cpu_items, rtol=1e-4, atol=1e-6)


def test_missing_loss_hyperparameters_are_named_as_check_hyp_names_them(model):
    # one missing-key check (utils.hyperparameters.require) for a hyp file and for a dict given to a loss
    hyp = load_hyp()
    del hyp["anchor_t"], hyp["obj_pw"]
    with pytest.raises(ValueError, match=r"ComputeLoss lacks hyperparameters the training reads: obj_pw \(objectness "
                                         r"BCE positive weight\), anchor_t \(anchor-matching ratio threshold\); add them"):
        ComputeLoss(model, hyp)
