"""YOLOv7 from YAML: the official layout and outputs, folding of RepConv and the implicit head, the
activation syntax of YOLOv7's configs, its hyperparameter files, and ONNX export of the folded model."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import export
from helpers import assert_reference_outputs, randomize_batchnorm_, rel_error
from models.layers import make_activation, parse_activation
from models.yolo import Detect, IDetect, Model
from models.yolov7_blocks import MP, SP, SPPCSPC, ImplicitA, ImplicitM, RepConv
from utils.deploy.backends import load_backend
from utils.checkpoint import load_model, save_checkpoint
from utils.deploy.verify import TOLERANCE, example_input
from yolov7_reference import REFERENCE_PATH, seeded_state_dict

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"yolov7-tiny": 6_228_762, "yolov7": 37_622_682}  # YOLOv7's Model() summary at nc=80, unfused
FUSED_PARAMS = {"yolov7-tiny": 6_219_709, "yolov7": 36_905_341}  # YOLOv7's deploy summaries
ACTIVATION_TYPES = (nn.SiLU, nn.LeakyReLU, nn.ReLU, nn.Hardswish)


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE_PATH, weights_only=True)


@pytest.fixture(scope="module", params=list(PARAMS))
def built(request):
    """(config name, a freshly built model): each config is built once per module."""
    return request.param, Model(f"{request.param}.yaml")


def unfused_types(model: Model) -> list[str]:
    return [type(m[0] if isinstance(m, nn.Sequential) else m).__name__ for m in model.model]


def test_yolov7_parameter_counts(built, reference):
    name, model = built
    n = sum(p.numel() for p in model.parameters())
    assert n == PARAMS[name] == reference["configs"][name]["num_params"]
    assert sum(p.numel() for p in copy.deepcopy(model).fuse().parameters()) == FUSED_PARAMS[name]


def assert_official_layout(model: Model, rec: dict) -> None:
    """State-dict keys (YOLOv7's order) and shapes, module types, strides, anchors and BatchNorm settings of YOLOv7's
    model of the same config (``rec``: its record in the reference fixture)."""
    state = model.state_dict()
    assert list(state) == rec["keys"]
    assert [list(v.shape) for v in state.values()] == rec["shapes"]
    assert unfused_types(model) == rec["module_types"]
    assert torch.equal(model.stride, rec["stride"])
    assert torch.equal(model.model[-1].anchors, rec["anchors"])
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert (bn.eps, bn.momentum) == (rec["bn_eps"], rec["bn_momentum"])


def test_yolov7_layout_equals_official(built, reference):
    name, model = built
    assert_official_layout(model, reference["configs"][name])
    acts = {(type(m), getattr(m, "negative_slope", None)) for m in model.modules() if isinstance(m, ACTIVATION_TYPES)}
    assert acts == ({(nn.LeakyReLU, 0.1)} if name == "yolov7-tiny" else {(nn.SiLU, None)})


def test_yolov7_weights_give_official_outputs(built, reference):
    name, model = built
    rec = reference["configs"][name]
    model = copy.deepcopy(model)
    state = seeded_state_dict(model.state_dict(), seed=reference["seed"])
    assert_reference_outputs(model, state, reference["input"], rec["output"], rec["raw"])


@torch.no_grad()
def randomize_implicit_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Implicit layers far from their zero/one start, so a missing or misplaced fold term shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (ImplicitA, ImplicitM)):
            base = 1.0 if isinstance(m, ImplicitM) else 0.0
            m.implicit.copy_(base + 0.5 * torch.randn(m.implicit.shape, generator=g))
    return model


def assert_nothing_left_to_fold(model: Model) -> None:
    assert model.is_folded
    assert not any(isinstance(m, (nn.BatchNorm2d, ImplicitA, ImplicitM)) for m in model.modules())
    assert all(hasattr(m, "rbr_reparam") and not hasattr(m, "rbr_dense") for m in model.modules() if isinstance(m, RepConv))
    names = "\n".join(model.state_dict())
    for branch in ("rbr_dense", "rbr_1x1", "rbr_identity", "implicit", "running_var"):
        assert branch not in names


def test_fuse_folds_repconv_and_implicit_head(built):
    name, model = built
    model = randomize_implicit_(randomize_batchnorm_(copy.deepcopy(model), seed=3), seed=4).eval()
    assert any(isinstance(m, ImplicitA) for m in model.modules())
    if name == "yolov7":
        assert sum(isinstance(m, RepConv) and m.rbr_identity is None for m in model.modules()) == 3
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        before = model(x)[0]
    assert model.fuse() is model
    assert_nothing_left_to_fold(model)
    with torch.no_grad():
        after = model(x)[0]
    assert rel_error(before, after) < 1e-4
    assert (before[..., 4:] - after[..., 4:]).abs().max() < 1e-4  # probabilities: absolute
    model.fuse()  # idempotent
    with torch.no_grad():
        assert torch.equal(model(x)[0], after)


@pytest.mark.parametrize("c1,c2,s", [(8, 8, 1), (8, 16, 1), (8, 8, 2)])
def test_repconv_matches_yolov7_layout_and_folds(c1, c2, s):
    block = randomize_batchnorm_(RepConv(c1, c2, 3, s, act=nn.LeakyReLU(0.1)), seed=s).eval()
    keys = set(block.state_dict())
    assert {"rbr_dense.0.weight", "rbr_dense.1.running_var", "rbr_1x1.0.weight", "rbr_1x1.1.weight"} <= keys
    assert (block.rbr_identity is not None) == (c1 == c2 and s == 1) == ("rbr_identity.weight" in keys)
    x = torch.randn(2, c1, 9, 11)
    with torch.no_grad():
        before = block(x)
        block.fold()
        after = block(x)
    assert rel_error(before, after) < 1e-5
    deploy = RepConv(c1, c2, 3, s, deploy=True)
    deploy.load_state_dict(block.state_dict(), strict=True)  # the deploy constructor builds the folded layout
    assert list(block.state_dict()) == ["rbr_reparam.weight", "rbr_reparam.bias"]


def test_repconv_refuses_what_its_branches_cannot_represent():
    with pytest.raises(ValueError, match="odd kernel"):
        RepConv(8, 8, 2)
    with pytest.raises(ValueError, match="'same' padding"):
        RepConv(8, 8, 3, p=0)


def test_idetect_is_a_detect_with_yolov7_state_dict_names():
    head = IDetect(80, [[10, 13, 16, 30, 33, 23]] * 2, (16, 32))
    assert isinstance(head, Detect)
    assert list(head.state_dict()) == ["anchors", "anchor_grid", "m.0.weight", "m.0.bias", "m.1.weight", "m.1.bias",
                                       "ia.0.implicit", "ia.1.implicit", "im.0.implicit", "im.1.implicit"]
    folded = IDetect(80, [[10, 13, 16, 30, 33, 23]] * 2, (16, 32)).fold()
    deploy = IDetect(80, [[10, 13, 16, 30, 33, 23]] * 2, (16, 32), deploy=True)
    assert list(deploy.state_dict()) == list(folded.state_dict()) == ["anchors", "anchor_grid", "m.0.weight",
                                                                      "m.0.bias", "m.1.weight", "m.1.bias"]


def test_anchor_grid_follows_anchor_changes(built):
    """YOLOv7 decodes with anchor_grid (pixels): a state dict written here must carry the anchors in use."""
    model = copy.deepcopy(built[1])
    head = model.model[-1]
    with torch.no_grad():
        head.anchors.mul_(1.5)  # what AutoAnchor does
    grid = model.state_dict()[f"model.{head.i}.anchor_grid"]
    torch.testing.assert_close(grid.view(3, 3, 2), head.anchors * head.stride.view(-1, 1, 1))


def test_yolov7_blocks_shapes():
    x = torch.randn(1, 16, 20, 24)
    assert MP()(x).shape == (1, 16, 10, 12)
    assert SP(5)(x).shape == x.shape and torch.equal(SP(1)(x), x)
    assert SPPCSPC(16, 32)(x).shape == (1, 32, 20, 24)


# --- the activation written in YOLOv7's configs -----------------------------------------------------

def tiny_cfg(act_arg):
    return {"nc": 2, "anchors": [[10, 13, 16, 30, 33, 23]],
            "backbone": [[-1, 1, "Conv", [16, 3, 2, None, 1, act_arg]]],
            "head": [[-1, 1, "RepConv", [16, 3, 1, None, 1, act_arg]], [[-1], 1, "IDetect", ["nc", "anchors"]]]}


def test_row_activation_is_the_act_keyword_not_dilation():
    model = Model(tiny_cfg("nn.LeakyReLU(0.1)"))
    conv, rep = model.model[0], model.model[1]
    assert isinstance(conv.act, nn.LeakyReLU) and conv.act.negative_slope == 0.1
    assert conv.conv.dilation == (1, 1)  # YOLOv5 v7.0's Conv has d where YOLOv7's has act
    assert isinstance(rep.nonlinearity, nn.LeakyReLU)
    overridden = Model({**tiny_cfg("nn.LeakyReLU(0.1)"), "activation": "nn.ReLU()"})  # the row's own act wins
    assert isinstance(overridden.model[0].act, nn.LeakyReLU)


@pytest.mark.parametrize("spec", ["__import__('os').system('x')", "os.system('x')", "nn.LeakyReLU(__import__('os'))",
                                  "nn.LeakyReLU(x)", "nn.Softmax2d()", "nn.LeakyReLU(0.1).__class__",
                                  "nn.LeakyReLU(**{})", "lambda: 0"])
def test_activation_parse_refuses_anything_but_known_literal_calls(spec, tmp_path):
    with pytest.raises(ValueError, match="activation"):
        parse_activation(spec)
    with pytest.raises(ValueError, match=r"layer 0 .*activation"):
        Model(tiny_cfg(spec))
    with pytest.raises(ValueError, match="activation"):
        make_activation(spec)


def test_activation_parse_accepts_literal_arguments():
    assert parse_activation("nn.LeakyReLU(0.2)").negative_slope == 0.2
    assert parse_activation("nn.LeakyReLU(negative_slope=0.3)").negative_slope == 0.3
    assert isinstance(parse_activation("SiLU"), nn.SiLU) and isinstance(parse_activation("nn.ReLU()"), nn.ReLU)
    assert parse_activation("nn.LeakyReLU(0.1)") is not parse_activation("nn.LeakyReLU(0.1)")  # a new module each time


def test_yaml_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(f"__import__('os').system('touch {marker}')")))
    with pytest.raises(ValueError, match="unknown activation"):
        Model(cfg)
    assert not marker.exists()


# --- hyperparameters -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,lrf,obj,mixup", [("hyp.scratch.tiny.yaml", 0.01, 1.0, 0.05),
                                                ("hyp.scratch.p5.yaml", 0.1, 0.7, 0.15),
                                                ("hyp.scratch.p6.yaml", 0.2, 0.7, 0.15)])
def test_yolov7_hyperparameters(name, lrf, obj, mixup):
    path = ROOT / "data" / "hyps" / name
    hyp = yaml.safe_load(path.read_text())
    for key in ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "box", "cls", "obj", "anchor_t"):
        assert key in hyp
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in hyp.values())
    assert hyp["loss_ota"] == 1 and (hyp["lrf"], hyp["obj"], hyp["mixup"]) == (lrf, obj, mixup)
    lines = [x for x in path.read_text().splitlines() if x and not x.startswith("#")]
    assert len(lines) == len(hyp) and all("  # " in x for x in lines)  # every key commented


# --- export ----------------------------------------------------------------------------------------

def test_folded_yolov7_tiny_exports_to_onnx_and_openvino(tmp_path):
    model = randomize_implicit_(randomize_batchnorm_(Model("yolov7-tiny.yaml"), seed=5), seed=6).eval()
    path = save_checkpoint(tmp_path / "yolov7-tiny.pt", model)
    imgsz = (96, 128)
    results = export.run(weights=path, include=["onnx", "openvino"], imgsz=imgsz)
    for result in results:
        assert result.ok, result.error
        assert result.error_ratio <= TOLERANCE["fp32"]
    x = example_input(imgsz, 1, "cpu")
    with torch.no_grad():
        unfolded = load_model(path, fuse=False)(x)[0]  # the training layout, implicit layers and all
    assert rel_error(unfolded, load_backend(results[0].file)(x)) < 1e-4


def test_implicit_layers_are_not_weight_decayed():
    """YOLOv7 keeps its implicit layers out of weight decay (decay would pull ImplicitM's multipliers to 0)."""
    from utils.torch_utils import smart_optimizer

    model = Model("yolov7-tiny.yaml", nc=3)
    opt = smart_optimizer(model, "SGD", 0.01, 0.9, 5e-4)
    implicit = {id(p) for n, p in model.named_parameters() if n.endswith(".implicit")}
    assert len(implicit) == 6
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & implicit:
            assert group["weight_decay"] == 0 and implicit <= ids


def test_yolov7_tiny_trains_with_its_hyp_and_ota_and_folds_after(tiny_data, tmp_path):
    """train.py --cfg yolov7-tiny.yaml --hyp hyp.scratch.tiny.yaml (loss_ota: 1): one epoch, then the
    checkpoint loads with weights_only and folds (RepConv-free tiny: Conv+BN and the implicit head)."""
    import train

    hyp = Path(__file__).resolve().parents[1] / "data" / "hyps" / "hyp.scratch.tiny.yaml"
    train.run(cfg="yolov7-tiny.yaml", data=str(tiny_data), hyp=str(hyp), epochs=1, imgsz=64, batch_size=8, workers=0,
              noautoanchor=True, project=str(tmp_path), name="v7", noplots=True)
    last = tmp_path / "v7" / "weights" / "last.pt"
    raw = torch.load(last, weights_only=True)
    assert raw["hyp"]["loss_ota"] == 1 and raw["epoch"] == 0
    folded = load_model(last, fuse=True)
    assert folded.is_folded and not any(isinstance(m, (ImplicitA, ImplicitM, nn.BatchNorm2d)) for m in folded.modules())
