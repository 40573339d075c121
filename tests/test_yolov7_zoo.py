"""The rest of YOLOv7's model zoo: YOLOv7-X and the P6 models W6, E6, D6, E6E (ReOrg, DownC, Shortcut, the
IAuxDetect head). Official layout and outputs (fixture recorded with YOLOv7's code), folding to YOLOv7's deploy
layout (the auxiliary branch dropped), checkpoints of the folded models, YOLOv7's deploy files and ONNX export.

Each big model is built once, in one test; the checkpoint, deploy-file and export tests use W6 at a quarter of
the width (every layer, a fraction of the time)."""
from __future__ import annotations

import copy

import pytest
import torch

from helpers import assert_reference_outputs, export_onnx_and_compare, randomize_batchnorm_, rel_error
from models.yolo import Detect, IAuxDetect, IDetect, Model, load_cfg, prune_layers
from models.yolov7_blocks import DownC, ReOrg, Shortcut
from test_yolov7 import assert_nothing_left_to_fold, assert_official_layout, randomize_implicit_
from utils.checkpoint import load_model, save_checkpoint
from yolov7_reference import P6_CONFIGS, REFERENCE_PATH, input_key, seeded_state_dict

# YOLOv7's Model() summary at nc=80 (training configs, unfused)
PARAMS = {"yolov7x": 71_347_394, "yolov7-w6": 82_312_436, "yolov7-e6": 111_898_292, "yolov7-d6": 154_709_364,
          "yolov7-e6e": 166_408_884}
FOLD_CHECKED = ("yolov7-w6", "yolov7-e6e")


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE_PATH, weights_only=True)


@pytest.fixture(scope="module")
def small_w6():
    """(YOLOv7-W6 at a quarter of the width, random weights, BatchNorm statistics and implicit layers, in eval
    mode; its folded copy): every layer, ReOrg and the auxiliary branch of W6 at a fraction of the build time."""
    cfg = {**load_cfg("yolov7-w6.yaml"), "width_multiple": 0.25}
    model = randomize_implicit_(randomize_batchnorm_(Model(cfg), seed=3), seed=4).eval()
    return model, copy.deepcopy(model).fuse()


def keys_and_shapes(state: dict) -> list:
    return [(k, list(v.shape)) for k, v in state.items()]


def assert_zoo_layout(name: str, model: Model, rec: dict) -> None:
    """Parameter count, heads and levels, and the layout of YOLOv7's model of the same training config."""
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name] == rec["num_params"]
    head = model.model[-1]
    assert head.heads == (2 if name in P6_CONFIGS else 1) and head.nl == len(rec["stride"])
    assert_official_layout(model, rec)


def assert_folds_to_deploy_layout(model: Model, x: torch.Tensor, before: torch.Tensor, deploy: dict) -> None:
    """Folded against unfolded outputs; nothing foldable left; the auxiliary branch and the layers that fed only it
    gone, renumbered to the keys and shapes of YOLOv7's deploy model after YOLOv7's own fuse(); idempotent."""
    n_layers, head_inputs = len(model.model), model.model[-1].f
    with torch.no_grad():
        after = model.fuse()(x)[0]
    assert rel_error(before, after) < 1e-4
    assert (before[..., 4:] - after[..., 4:]).abs().max() < 1e-4  # probabilities: absolute
    assert_nothing_left_to_fold(model)
    head = model.model[-1]
    assert isinstance(head, IAuxDetect) and not hasattr(head, "m2") and "m2" not in "".join(model.state_dict())
    assert head.i == n_layers - 5 and head.f == head_inputs[:4] == list(range(head.i - 4, head.i))
    assert [m.i for m in model.model] == list(range(len(model.model))) and model.save == sorted(set(model.save))
    assert keys_and_shapes(model.state_dict()) == list(zip(deploy["fused_keys"], deploy["fused_shapes"]))
    assert sum(p.numel() for p in model.parameters()) == deploy["fused_num_params"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", list(PARAMS))
def test_zoo_model_equals_yolov7(name, reference):
    """Each config builds YOLOv7's model (layout); the seeded state dict (random weights, BatchNorm statistics and
    implicit layers) loads strict and gives YOLOv7's outputs; W6 and E6E (every new block: ReOrg, DownC, Shortcut,
    IAuxDetect) then fold to YOLOv7's deploy layout with the same outputs. One test per model: each is built and
    run once (E6 and D6 are E6E's blocks and W6's head; X has no block yolov7.yaml lacks, folded in test_yolov7)."""
    rec = reference["configs"][name]
    model = Model(f"{name}.yaml")
    assert_zoo_layout(name, model, rec)
    x = reference[input_key(name)]
    assert_reference_outputs(model, seeded_state_dict(model.state_dict(), seed=reference["seed"]), x, rec["output"],
                             rec["raw"])
    if name in FOLD_CHECKED:
        assert_folds_to_deploy_layout(model, x, rec["output"], reference["deploy"][name])


def test_iauxdetect_training_output_is_lead_then_auxiliary_maps():
    anchors = [[10, 13, 16, 30, 33, 23]] * 2
    head = IAuxDetect(3, anchors, (16, 32, 8, 24))
    assert head.heads == 2 and head.nl == 2 and isinstance(head, IDetect) and IDetect.heads == Detect.heads == 1
    assert list(head.state_dict()) == ["anchors", "anchor_grid", "m.0.weight", "m.0.bias", "m.1.weight", "m.1.bias",
                                       "m2.0.weight", "m2.0.bias", "m2.1.weight", "m2.1.bias", "ia.0.implicit",
                                       "ia.1.implicit", "im.0.implicit", "im.1.implicit"]
    head.stride = torch.tensor([8.0, 16.0])
    x = [torch.randn(2, 16, 8, 12), torch.randn(2, 32, 4, 6), torch.randn(2, 8, 8, 12), torch.randn(2, 24, 4, 6)]
    maps = head([t.clone() for t in x])
    assert [tuple(t.shape) for t in maps] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8)] * 2
    aux = head.m2[1](x[3]).view(2, 3, 8, 4, 6).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(maps[3], aux)
    lead = head.im[0](head.m[0](head.ia[0](x[0]))).view(2, 3, 8, 8, 12).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(maps[0], lead)
    out, raw = head.eval()([t.clone() for t in x])  # eval: decoded lead levels, lead raw maps
    assert out.shape == (2, 3 * (96 + 24), 8) and len(raw) == 2
    torch.testing.assert_close(raw[0], lead)
    deploy = IAuxDetect(3, anchors, (16, 32, 8, 24), deploy=True)
    assert list(deploy.state_dict()) == list(copy.deepcopy(head).fold().state_dict()) == [
        "anchors", "anchor_grid", "m.0.weight", "m.0.bias", "m.1.weight", "m.1.bias"]


def test_iauxdetect_needs_two_inputs_per_level():
    with pytest.raises(ValueError, match="2 inputs per anchor level"):
        IAuxDetect(3, [[10, 13, 16, 30, 33, 23]] * 2, (16, 32))
    cfg = {"nc": 2, "anchors": [[10, 13, 16, 30, 33, 23]] * 2,
           "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
           "head": [[[0, 1, 0], 1, "IAuxDetect", ["nc", "anchors"]]]}
    with pytest.raises(ValueError, match=r"layer 2 .*3 input layers but 2 anchor levels.*per 2 input layers"):
        Model(cfg)
    with pytest.raises(ValueError, match=r"layer 2 .*3 input layers; this head takes 2 per anchor level"):
        Model({**cfg, "anchors": 3})


def test_aux_biases_get_the_prior_like_the_lead():
    """YOLOv7's _initialize_aux_biases: the auxiliary convs start from the same objectness/class prior."""
    cfg = {"nc": 4, "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
           "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]]],
           "head": [[-2, 1, "Conv", [8, 1, 1]], [2, 1, "Conv", [8, 1, 1]],
                    [[1, 2, 3, 4], 1, "IAuxDetect", ["nc", "anchors"]]]}
    head = Model(cfg).model[-1]
    assert head.stride.tolist() == [4.0, 8.0]
    for convs in (head.m, head.m2):
        for conv, s in zip(convs, head.stride):
            b = conv.bias.view(3, -1)
            assert (b[:, 4] < -5).all() and (b[:, 5:] < -1).all()  # log(8 / (640 / s)^2), log(0.6 / (nc - 1))
            assert abs(b[:, 4].mean().item() - torch.log(8 / (640 / s) ** 2).item()) < 0.2


def test_prune_layers_renumbers_from_and_save():
    cfg = {"nc": 2, "anchors": [[10, 13, 16, 30, 33, 23]],
           "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [8, 3, 2]], [0, 1, "Conv", [8, 3, 2]],
                        [-2, 1, "Conv", [8, 1, 1]], [[-1, 3], 1, "Concat", [1]]],
           "head": [[-1, 1, "Conv", [16, 1, 1]], [[5], 1, "Detect", ["nc", "anchors"]]]}
    model = Model(cfg).eval()  # layer 2 feeds nothing (layer 3 reads -2: layer 1)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)[0]
    layers, save = prune_layers(model.model)  # renumbers the modules in place
    assert [m.i for m in layers] == list(range(6)) and [m.type for m in layers][2:4] == ["Conv", "Concat"]
    assert [m.f for m in layers] == [-1, -1, -1, [-1, 2], -1, [4]] and save == [2, 4]
    with torch.no_grad():
        model.model, model.save = layers, save
        torch.testing.assert_close(model(x)[0], before)


def test_folded_w6_checkpoint_reloads_with_the_same_outputs(small_w6, tmp_path):
    """A folded W6 saved by this project rebuilds from its (training) YAML, folds, drops the auxiliary layers and
    loads strict, with the same outputs."""
    _, folded = small_w6
    x = torch.rand(1, 3, 64, 128)
    path = save_checkpoint(tmp_path / "w6_folded.pt", folded)
    reloaded = load_model(path)
    assert reloaded.is_folded and len(reloaded.model) == 119 and reloaded.model[-1].f == [114, 115, 116, 117]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x)[0], folded(x)[0], rtol=0, atol=0)


def test_yolov7_deploy_file_of_w6_loads_through_the_foreign_path(small_w6, reference, tmp_path):
    """YOLOv7's deploy file: cfg/deploy/yolov7-w6.yaml (a plain Detect at 118, with anchor_grid) and folded weights
    (its fuse(): convs with biases, no BatchNorm), pickled as a module tree. It loads as data and gives the outputs
    of our folded training model."""
    _, folded = small_w6
    rec = reference["deploy"]["yolov7-w6"]
    cfg = {**rec["yaml"], "width_multiple": 0.25}
    own = {k for k in rec["keys"] if not k.endswith("anchor_grid")}  # our Detect derives it from anchors, strides
    deploy = Model(cfg)
    assert set(deploy.state_dict()) == own  # the unfolded deploy config: YOLOv7's keys
    deploy.fuse()
    head = deploy.model[-1]
    assert type(head) is Detect and head.i == 118
    head.register_buffer("anchor_grid", folded.model[-1].anchor_grid.clone())  # as YOLOv7's Detect stores it
    deploy.load_state_dict(folded.state_dict(), strict=True)
    assert list(deploy.state_dict()) == rec["fused_keys"]
    path = tmp_path / "yolov7-w6.pt"
    torch.save({"model": deploy, "epoch": -1, "training_results": None}, path)
    loaded = load_model(path)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        assert rel_error(folded(x)[0], loaded(x)[0]) < 1e-6


def test_folded_w6_exports_to_onnx(small_w6, tmp_path):
    model, _ = small_w6
    export_onnx_and_compare(model, tmp_path, "yolov7-w6", imgsz=(128, 192))


# --- blocks ------------------------------------------------------------------------------------------

def test_reorg_is_space_to_depth_in_yolov7_order():
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).view(2, 2, 4, 6)
    y = ReOrg()(x)
    assert y.shape == (2, 8, 2, 3)
    torch.testing.assert_close(y[:, 0:2], x[..., ::2, ::2])
    torch.testing.assert_close(y[:, 2:4], x[..., 1::2, ::2])  # odd rows, even columns second
    torch.testing.assert_close(y[:, 6:8], x[..., 1::2, 1::2])
    assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())  # a permutation: nothing lost


def test_downc_and_shortcut_shapes():
    x = torch.randn(2, 16, 12, 20)
    block = DownC(16, 32)
    assert block(x).shape == (2, 32, 6, 10)
    assert list(block.state_dict())[:2] == ["cv1.conv.weight", "cv1.bn.weight"] and block.cv1.conv.out_channels == 16
    assert DownC(16, 24, k=4)(x).shape == (2, 24, 3, 5)
    a, b = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(Shortcut(1)([a, b]), a + b)


def test_parse_model_gives_reorg_downc_and_shortcut_their_channels():
    cfg = {"nc": 2, "anchors": [[10, 13, 16, 30, 33, 23]],
           "backbone": [[-1, 1, "ReOrg", []], [-1, 1, "Conv", [16, 3, 1]], [-1, 1, "DownC", [32]],
                        [-1, 1, "Conv", [32, 1, 1]], [[-1, -2], 1, "Shortcut", [1]]],
           "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}
    model = Model(cfg)
    assert model.model[1].conv.in_channels == 12 and model.model[2].cv2.conv.out_channels == 16
    assert model.model[-1].m[0].in_channels == 32 and model.stride.tolist() == [4.0]
    with pytest.raises(ValueError, match="Shortcut takes one input|fails on inputs"):
        Model({**cfg, "backbone": cfg["backbone"][:3] + [[-1, 1, "Conv", [16, 1, 1]], [[-1, -2], 1, "Shortcut", [1]]]})
