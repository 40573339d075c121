"""P6 models (four output levels, strides 8-64): YOLOv5 v7.0's yolov5{n,s,m,l,x}6 and the RepVGG P6 variant.

The YOLOv5 side comes from tests/data/yolov5_p6_reference.pt, recorded once with YOLOv5's own code
(tools/make_yolov5_reference.py --p6). Beside the layouts and outputs, the code that depends on the number
of levels is run with four: the loss's objectness balance, test-time augmentation's level clipping,
AutoAnchor and the trainer's loss-gain scaling.
"""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import train
from helpers import export_onnx_and_compare, randomize_batchnorm_, rel_error
from models.common import RepVGGBlock
from models.yolo import Detect, Model, scale_image
from utils.training.autoanchor import check_anchors, kmean_anchors
from utils.training.loss import ComputeLoss
from yolov5_reference import P6_CONFIGS, P6_REFERENCE_PATH, p6_input, seeded_state_dict

PARAMS = {"yolov5n6": 3_246_940, "yolov5s6": 12_626_620, "yolov5m6": 35_731_932, "yolov5l6": 76_770_172,
          "yolov5x6": 140_794_780}  # YOLOv5 v7.0's Model() summaries at nc=80
P6_ANCHORS = [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
              [436, 615, 739, 380, 925, 792]]  # pixels, P3/8 .. P6/64
STRIDES = [8.0, 16.0, 32.0, 64.0]


@pytest.fixture(scope="module")
def reference():
    return torch.load(P6_REFERENCE_PATH, weights_only=True)


@pytest.fixture(scope="module", params=P6_CONFIGS)
def built(request):
    """(config name, a freshly built model): each config is built once for this module (x6 takes seconds)."""
    return request.param, Model(f"{request.param}.yaml")


def yolov5_state_dict(rec: dict, seed: int) -> dict:
    """The seeded state dict YOLOv5 ran, rebuilt from its recorded keys and shapes alone (anchors as recorded)."""
    template = {}
    for k, shape in zip(rec["keys"], rec["shapes"]):
        dtype = torch.long if k.endswith("num_batches_tracked") else torch.float32
        template[k] = rec["anchors"] if k.endswith(".anchors") else torch.zeros(shape, dtype=dtype)
    return seeded_state_dict(template, seed=seed)


def test_p6_parameter_counts(built, reference):
    name, model = built
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name] == reference["configs"][name]["num_params"]


def test_p6_layout_equals_yolov5(built, reference):
    name, model = built
    rec = reference["configs"][name]
    state = model.state_dict()
    assert list(state) == rec["keys"]
    assert [list(v.shape) for v in state.values()] == rec["shapes"]
    assert [type(m).__name__ for m in model.model] == rec["module_types"]
    assert model.stride.tolist() == rec["stride"].tolist() == STRIDES
    assert torch.equal(model.model[-1].anchors, rec["anchors"])
    pixels = model.model[-1].anchors * model.stride.view(-1, 1, 1)
    assert pixels.view(4, -1).tolist() == P6_ANCHORS
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert (bn.eps, bn.momentum) == (rec["bn_eps"], rec["bn_momentum"])


def test_p6_yolov5_weights_load_strict_and_give_yolov5_outputs(built, reference):
    name, model = built
    rec = reference["configs"][name]
    x = p6_input(seed=reference["input_seed"])
    assert list(x.shape) == reference["input_shape"] and math.isclose(x.double().sum().item(), reference["input_sum"])
    model.load_state_dict(yolov5_state_dict(rec, reference["seed"]), strict=True)
    model.eval()
    with torch.no_grad():
        out, raw = model(x)
    assert list(out.shape) == rec["output_shape"]
    assert [tuple(r.shape[2:4]) for r in raw] == [(8, 16), (4, 8), (2, 4), (1, 2)]
    assert rel_error(rec["output"], out[..., :reference["columns"]]) < 1e-5


# --- the RepVGG P6 variant and folding ---------------------------------------------------------------

@pytest.fixture(scope="module")
def repvgg_p6():
    return Model("yolov5s6_RepVGG.yaml")


@pytest.fixture(scope="module")
def n6():
    return Model("yolov5n6.yaml", nc=3)


def test_repvgg_p6_layout(repvgg_p6):
    model = repvgg_p6
    detect = model.model[-1]
    assert isinstance(detect, Detect) and detect.nl == 4 and detect.f == [21, 24, 27, 30]
    assert model.stride.tolist() == STRIDES
    assert (detect.anchors * model.stride.view(-1, 1, 1)).view(4, -1).tolist() == P6_ANCHORS
    backbone = [model.model[i] for i in range(10)]
    assert all(isinstance(m, RepVGGBlock) or isinstance(m[0], RepVGGBlock) for m in backbone)
    assert model.model[9].rbr_dense.conv.stride == (2, 2) and model.model[9].rbr_dense.conv.out_channels == 256
    assert sum(p.numel() for p in model.parameters()) == 3_598_204


@pytest.mark.parametrize("name", ["repvgg_p6", "n6"])
def test_p6_models_fold_exactly(name, request):
    model = randomize_batchnorm_(copy.deepcopy(request.getfixturevalue(name)), seed=2).eval()
    x = torch.rand(2, 3, 128, 192)
    with torch.no_grad():
        before = model(x)[0]
    assert model.fuse() is model and model.is_folded
    with torch.no_grad():
        after = model(x)[0]
    assert rel_error(before, after) < 1e-4
    assert (before[..., 4:] - after[..., 4:]).abs().max() < 1e-4  # probabilities: absolute
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    names = "\n".join(model.state_dict())
    for branch in ("rbr_dense", "rbr_1x1", "rbr_identity", ".bn.", "running_var"):
        assert branch not in names
    model.fuse()  # idempotent
    with torch.no_grad():
        assert torch.equal(model(x)[0], after)


def test_folded_p6_model_exports_to_onnx(repvgg_p6, tmp_path):
    model = randomize_batchnorm_(copy.deepcopy(repvgg_p6), seed=3).eval()
    exported = export_onnx_and_compare(model, tmp_path, "p6", imgsz=(128, 192))
    assert exported.shape == (1, 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3), 85)


# --- code that depends on the number of levels -------------------------------------------------------

def loss_hyp() -> dict:
    return {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0}


def test_loss_weights_objectness_of_four_levels_as_yolov5(n6):
    loss = ComputeLoss(n6, loss_hyp())
    assert loss.balance == [4.0, 1.0, 0.25, 0.06]
    assert ComputeLoss(n6, loss_hyp(), autobalance=True).ssi == 1  # the stride-16 level stays at 1
    # no targets and logit z on every cell of level z: level z's objectness BCE is softplus(z), weighted by its balance
    preds = [torch.full((2, 3, 64 // int(s), 64 // int(s), 8), float(z)) for z, s in enumerate(STRIDES)]
    _, (lbox, lobj, lcls) = loss(preds, torch.zeros(0, 6))
    assert lbox == lcls == 0
    expected = sum(b * math.log1p(math.exp(z)) for z, b in enumerate([4.0, 1.0, 0.25, 0.06]))
    assert lobj.item() == pytest.approx(expected, rel=1e-6)


def test_loss_matches_each_target_on_its_own_level(n6):
    """At 1280 px (P6's design size) a 0.95 x 0.9 box is more than 4x every P3-P5 anchor: only P6 takes it; a
    12 x 16 px box only fits P3's anchors."""
    loss = ComputeLoss(n6, loss_hyp())
    preds = [torch.zeros(1, 3, 1280 // int(s), 1280 // int(s), 8) for s in STRIDES]
    for box, level in (([0.95, 0.9], 3), ([12 / 1280, 16 / 1280], 0)):
        matches = loss.assign(preds, torch.tensor([[0, 1, 0.5, 0.5, *box]]), None)
        assert [len(m.b) > 0 for m in matches] == [i == level for i in range(4)]
        assert torch.equal(matches[level].anchors, n6.model[-1].anchors[level][matches[level].a])


def test_tta_drops_p6_of_the_full_scale_and_p3_of_the_smallest(n6):
    model = copy.deepcopy(n6).eval()
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        merged = model(x, augment=True)[0]
        full = model(x)[0]
        small = model(scale_image(x, 0.67, 64))[0]
    p6_rows = 3 * (128 // 64) * (192 // 64)
    p3_rows_small = 3 * (128 // 8) * (128 // 8)  # 0.67 x (128, 192) pads to (128, 128)
    assert merged.shape[1] == (full.shape[1] - p6_rows) + 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3) \
        + (small.shape[1] - p3_rows_small)
    assert torch.allclose(merged[0, : full.shape[1] - p6_rows], full[0, :-p6_rows])
    tail = small[0, p3_rows_small:].clone()
    tail[:, :4] /= 0.67
    assert torch.allclose(merged[0, -tail.shape[0]:], tail)


def test_autoanchor_writes_twelve_evolved_anchors_across_four_strides(n6):
    model = copy.deepcopy(n6)
    rng = np.random.default_rng(0)
    sizes = np.column_stack([rng.uniform(0.2, 0.3, 256), rng.uniform(0.005, 0.01, 256)])  # 128-192 x 3-6 px at 640
    labels = [np.column_stack([np.zeros(4), np.full((4, 2), 0.5), s]) for s in sizes.reshape(64, 4, 2)]
    dataset = SimpleNamespace(labels=labels, shapes=np.full((64, 2), 640))  # no anchor is within 4x of these
    bpr = check_anchors(dataset, model, thr=4.0, imgsz=640, seed=0)
    expected = kmean_anchors(dataset, n=12, img_size=640, thr=4.0, gen=1000, verbose=False, seed=0)  # same search
    detect = model.model[-1]
    assert bpr > 0.98 and detect.anchors.shape == (4, 3, 2)
    pixels = (detect.anchors * detect.stride.view(-1, 1, 1)).view(-1, 2)  # each level's anchors times its stride
    assert torch.allclose(pixels, torch.from_numpy(expected), rtol=1e-6)
    areas = pixels.prod(1)
    assert torch.equal(areas, areas.sort().values)  # smallest on P3/8, largest on P6/64


def test_trainer_scales_loss_gains_by_four_levels(tiny_data, tmp_path):
    from utils.training.train_config import prepare
    from utils.training.trainer import Trainer

    args = ["--data", str(tiny_data), "--cfg", "yolov5n6.yaml", "--imgsz", "96", "--batch-size", "4", "--workers",
            "0", "--project", str(tmp_path), "--name", "exp", "--noplots", "--epochs", "1", "--noautoanchor"]
    config, hyp, data, ckpt = prepare(train.parse_opt(args))
    trainer = Trainer(config, hyp, data, torch.device("cpu"), ckpt)
    assert trainer.gs == 64 and trainer.imgsz == 128  # rounded up to the P6 stride
    gains = trainer.loss_hyp
    assert gains["box"] == pytest.approx(hyp["box"] * 3 / 4)
    assert gains["cls"] == pytest.approx(hyp["cls"] * 3 / 80 * 3 / 4)
    assert gains["obj"] == pytest.approx(hyp["obj"] * (128 / 640) ** 2 * 3 / 4)
    assert trainer.compute_loss.balance == [4.0, 1.0, 0.25, 0.06]
    imgs, targets, _, _ = next(iter(trainer.train_loader))
    loss, items = trainer.forward_loss(imgs.float() / 255, targets)
    assert torch.isfinite(loss) and torch.isfinite(items).all() and items[0] > 0
