"""ComputeLossAuxOTA: equal to YOLOv7's own ComputeLossAuxOTA (recorded fixture) on models of ours with the same
head geometry, and the training loss the trainer picks for each kind of head."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from helpers import load_tool
from models.yolo import Model
from utils.training.loss import ComputeLoss, neighbour_cell_matches
from utils.training.loss_ota import ComputeLossAuxOTA, ComputeLossOTA
from utils.training.trainer import select_train_loss

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "yolov7_aux_ota_reference.pt"
MATCH_KEYS = ("b", "a", "gj", "gi", "targets", "anchors")
W6_ANCHORS = [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
              [436, 615, 739, 380, 925, 792]]
TOOL = load_tool("make_yolov7_ota_reference")  # the seeded predictions the fixture was made from
REFERENCE = torch.load(FIXTURE, weights_only=True)


def four_level_config(nc: int = 80) -> dict:
    """A small model of ours with YOLOv7-W6's head geometry: IDetect on strides 8, 16, 32 and 64 with the P6
    anchors (the loss reads only the head's anchors, strides, na, nc and nl)."""
    convs = [[-1, 1, "Conv", [c, 3, 2]] for c in (8, 8, 16, 16, 16, 16)]  # layers 2-5: P3/8 to P6/64
    return {"nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": W6_ANCHORS, "backbone": convs,
            "head": [[[2, 3, 4, 5], 1, "IDetect", ["nc", "anchors"]]]}


def four_level_aux_config(nc: int = 80) -> dict:
    """``four_level_config`` with YOLOv7's auxiliary head: IAuxDetect reading the four levels (lead) and one extra
    conv on each (auxiliary), as YOLOv7-W6 does."""
    d = four_level_config(nc)
    aux = [[j, 1, "Conv", [8, 3, 1]] for j in (2, 3, 4, 5)]  # layers 6-9
    d["head"] = aux + [[[2, 3, 4, 5, 6, 7, 8, 9], 1, "IAuxDetect", ["nc", "anchors"]]]
    return d


@pytest.fixture(scope="module")
def models() -> dict:
    """Per YOLOv7 config of the fixture, a model of ours with its head's anchors and strides."""
    return {"yolov7-tiny.yaml": Model("yolov7-tiny.yaml", nc=TOOL.NC), "yolov7-w6.yaml": Model(four_level_config())}


def setup(case: dict, models: dict):
    """Our model for the case (its head checked against YOLOv7's), the seeded 2 * nl maps and the images."""
    model = models[case["cfg"]]
    head = model.model[-1]
    assert torch.equal(head.anchors, case["anchors"]) and torch.equal(head.stride, case["stride"].float())
    preds = TOOL.seeded_predictions(case["seed"], case["bs"], case["imgsz"], case["stride"].tolist() * 2)
    assert TOOL.fingerprint(preds) == pytest.approx(case["fingerprint"], rel=1e-9)  # same inputs as recorded
    return model, preds, torch.zeros(case["bs"], 3, case["imgsz"], case["imgsz"])


def rows(match: tuple) -> list[tuple]:
    """One row per match, in order: image, anchor, gj, gi, target row, anchor wh."""
    b, a, gj, gi, tgt, anch = match
    return [(int(b[k]), int(a[k]), int(gj[k]), int(gi[k]), *tgt[k].tolist(), *anch[k].tolist()) for k in range(len(b))]


@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_equals_yolov7(name, models):
    """Loss, items, gradients and every map's matches (in YOLOv7's order) as YOLOv7's ComputeLossAuxOTA."""
    case = REFERENCE["cases"][name]
    model, preds, imgs = setup(case, models)
    preds = [p.requires_grad_() for p in preds]
    loss_fn = ComputeLossAuxOTA(model, case["hyp"])
    loss, items = loss_fn(preds, case["targets"], imgs)
    torch.testing.assert_close(loss.view(1), case["loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.cat((items, items.sum().view(1))), case["loss_items"], rtol=1e-5, atol=0)
    loss.backward()
    assert TOOL.grad_fingerprint(preds) == pytest.approx(case["grad"], rel=1e-5)
    matches = loss_fn.assign([p.detach() for p in preds], case["targets"], imgs)
    assert len(matches) == len(case["matches"]) == 2 * model.model[-1].nl
    for i, (ours, ref) in enumerate(zip(matches, case["matches"])):
        assert rows(ours) == rows(tuple(ref[k] for k in MATCH_KEYS)), f"map {i}"


def _cells(m: dict) -> set[tuple]:
    return set(zip(*(m[k].tolist() for k in ("b", "a", "gj", "gi"))))


def test_fixture_covers_what_it_is_for():
    """Three and four levels, the auxiliary maps matched in cells the lead maps' candidates never reach, an image
    without targets, a level without matches, and a cell matched twice."""
    cases = REFERENCE["cases"].values()
    assert {len(c["stride"]) for c in cases} == {3, 4}
    assert any(set(range(c["bs"])) - set(c["targets"][:, 0].long().tolist()) for c in cases)
    assert any(len(m["b"]) == 0 for c in cases for m in c["matches"])
    lead, aux = REFERENCE["cases"]["w6_aux_256"]["matches"][:4], REFERENCE["cases"]["w6_aux_256"]["matches"][4:]
    assert any(_cells(x) - _cells(y) for x, y in zip(aux, lead))
    assert any(len(_cells(m)) < len(m["b"]) for c in cases for m in c["matches"])


def test_auxiliary_candidates_are_the_five_cells(models):
    """The auxiliary maps choose among the target's cell and all four neighbours (YOLOv7's find_5_positive)."""
    case = REFERENCE["cases"]["tiny_aux_160"]
    model, preds, imgs = setup(case, models)
    loss_fn = ComputeLossAuxOTA(model, case["hyp"])
    three = loss_fn.three_cell_matches(preds[:3], case["targets"])
    five = neighbour_cell_matches(preds[:3], case["targets"], model.model[-1].anchors, case["hyp"]["anchor_t"], 1.0)
    aux = loss_fn.assign(preds, case["targets"], imgs)[3:]
    for t, f, m in zip(three, five, aux):
        three_cells, five_cells = (set(zip(*(x.tolist() for x in c[:4]))) for c in (t, f))
        assert three_cells < five_cells and len(t.b) < len(f.b)  # every level has targets away from the borders
        assert set(zip(*(x.tolist() for x in m[:4]))) <= five_cells


def test_differs_from_the_lead_maps_alone(models):
    """The auxiliary maps add to each item: without them (the OTA loss with k from 20 IoUs) every item is smaller."""
    case = REFERENCE["cases"]["w6_aux_256"]
    model, preds, imgs = setup(case, models)
    lead_only = ComputeLossOTA(model, case["hyp"])
    lead_only.topk_iou = ComputeLossAuxOTA.topk_iou
    items = lead_only(preds[:4], case["targets"], imgs)[1]
    assert (items < case["loss_items"][:3]).all()


def test_autobalance_moves_after_both_heads(models):
    """Under autobalance each level's balance changes once both heads' objectness used it (YOLOv7): the first
    call equals the call without autobalance, and the balance then moves."""
    case = REFERENCE["cases"]["tiny_aux_160"]
    model, preds, imgs = setup(case, models)
    fixed = ComputeLossAuxOTA(model, case["hyp"])(preds, case["targets"], imgs)[0]
    balanced = ComputeLossAuxOTA(model, case["hyp"], autobalance=True)
    assert torch.equal(balanced(preds, case["targets"], imgs)[0], fixed)
    assert balanced.balance != [4.0, 1.0, 0.4]


def test_needs_the_images_and_all_maps(models):
    case = REFERENCE["cases"]["tiny_aux_160"]
    model, preds, imgs = setup(case, models)
    loss_fn = ComputeLossAuxOTA(model, case["hyp"])
    with pytest.raises(ValueError, match="ComputeLossAuxOTA needs the batch images"):
        loss_fn(preds, case["targets"])
    with pytest.raises(ValueError, match=r"takes 6 prediction maps \(3 levels x 2 heads\), got 3"):
        loss_fn(preds[:3], case["targets"], imgs)


def test_our_model_trains_through_it():
    """Our four-level IAuxDetect model's lead and auxiliary maps give a finite loss whose gradient reaches the first
    layer and both heads' output convs."""
    model = Model(four_level_aux_config(nc=3)).train()
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch.p6.yaml").read_text())
    imgs = torch.rand(2, 3, 128, 128)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [0, 2, 0.2, 0.8, 0.1, 0.15], [1, 0, 0.9, 0.1, 0.2, 0.2]])
    maps = model(imgs)
    assert len(maps) == 8
    loss, items = select_train_loss(model, hyp)(maps, targets, imgs)
    assert torch.isfinite(loss) and (items > 0).all()
    loss.backward()
    head = model.model[-1]
    assert model.model[0].conv.weight.grad.abs().sum() > 0
    assert all(c.weight.grad.abs().sum() > 0 for c in (*head.m, *head.m2))


# --- which loss trains ----------------------------------------------------------------------------------------


def _hyp(**overrides) -> dict:
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    hyp.pop("loss_ota", None)
    return {**hyp, **overrides}


@pytest.mark.parametrize("overrides,expected", [({}, ComputeLoss), ({"loss_ota": 0}, ComputeLoss),
                                                ({"loss_ota": 1}, ComputeLossOTA)])
def test_single_head_follows_loss_ota(overrides, expected, models):
    loss = select_train_loss(models["yolov7-tiny.yaml"], _hyp(**overrides))
    assert type(loss) is expected


@pytest.fixture
def aux_head_model():
    """A small model of ours with YOLOv7's auxiliary head (IAuxDetect) on the W6 geometry."""
    return Model(four_level_aux_config(nc=3))


@pytest.mark.parametrize("overrides", [{}, {"loss_ota": 1}])
def test_auxiliary_heads_train_with_the_aux_loss(overrides, aux_head_model):
    loss = select_train_loss(aux_head_model, _hyp(**overrides))
    assert type(loss) is ComputeLossAuxOTA and loss.head_weights == (1.0, 0.25) and loss.nl == 4


def test_auxiliary_heads_refuse_loss_ota_0(aux_head_model):
    with pytest.raises(ValueError, match=r"hyp loss_ota: 0 cannot be honoured: IAuxDetect has auxiliary heads"):
        select_train_loss(aux_head_model, _hyp(loss_ota=0))
