"""Model building, YOLOv5 v7.0 compatibility, whole-model folding and config errors."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import assert_reference_outputs, randomize_batchnorm_, rel_error
from models.common import OREPA, QARepVGGBlock, RepVGGBlock
from models.yolo import Detect, Model, resolve_cfg
from utils.torch_utils import count_flops
from yolov5_reference import REFERENCE_PATH, seeded_state_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def yolov5_reference():
    return torch.load(REFERENCE_PATH, weights_only=True)


def test_yolov5s_has_yolov5_v7_layout(yolov5_reference):
    model = Model("yolov5s.yaml")
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == yolov5_reference["num_params"] == 7_235_389
    assert list(state) == yolov5_reference["keys"]
    assert [list(v.shape) for v in state.values()] == yolov5_reference["shapes"]
    types = [type(m[0] if isinstance(m, nn.Sequential) else m).__name__ for m in model.model]
    assert types == yolov5_reference["module_types"]
    assert torch.equal(model.stride, yolov5_reference["stride"])
    assert torch.equal(model.model[-1].anchors, yolov5_reference["anchors"])


def test_yolov5_weights_load_strict_and_give_yolov5_outputs(yolov5_reference):
    model = Model("yolov5s.yaml")
    assert_reference_outputs(model, seeded_state_dict(model.state_dict(), seed=0), yolov5_reference["input"],
                             yolov5_reference["output"], yolov5_reference["raw"])


FUSED_PARAMS = {  # YOLOv5 v7.0's "Fusing layers... summary" counts at nc=80
    "yolov5n.yaml": 1_867_405, "yolov5s.yaml": 7_225_885, "yolov5m.yaml": 21_172_173,
    "yolov5l.yaml": 46_533_693, "yolov5x.yaml": 86_705_005,
}


@pytest.mark.parametrize("cfg", list(FUSED_PARAMS))
def test_yolov5_family_fused_parameter_counts(cfg):
    assert sum(p.numel() for p in Model(cfg).fuse().parameters()) == FUSED_PARAMS[cfg]


def test_yolov5s_gflops_match_published():
    gflops = count_flops(Model("yolov5s.yaml"), 640) / 1e9
    assert 16.0 < gflops < 16.8  # YOLOv5 v7.0 reports 16.5 at 640


@pytest.mark.parametrize("cfg,block", [("yolov5s_RepVGG.yaml", RepVGGBlock), ("yolov5s_QARepVGG.yaml", QARepVGGBlock),
                                       ("yolov5s_OREPA.yaml", OREPA)])
def test_reparam_models_fold_exactly(cfg, block):
    model = randomize_batchnorm_(Model(cfg), seed=1).eval()
    x = torch.rand(2, 3, 160, 128)
    with torch.no_grad():
        before = model(x)[0]
    flops_before = count_flops(model, 320)
    assert not model.is_folded and any(isinstance(m, block) for m in model.modules())
    assert model.fuse() is model
    with torch.no_grad():
        after = model(x)[0]
    assert model.is_folded
    assert rel_error(before, after) < 1e-4
    # objectness/class scores are probabilities: compare them absolutely
    assert (before[..., 4:] - after[..., 4:]).abs().max() < 1e-4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    names = "\n".join(model.state_dict())
    for branch in ("rbr_dense", "rbr_1x1", "rbr_identity", "weight_orepa", "vector", ".bn."):
        assert branch not in names
    assert count_flops(model, 320) < flops_before
    model.fuse()  # idempotent
    with torch.no_grad():
        assert torch.equal(model(x)[0], after)


def test_seed_config_layout():
    model = Model("yolov5s_RepVGG.yaml")
    assert model.yaml["nc"] == 80 and model.yaml["depth_multiple"] == 0.33 and model.yaml["width_multiple"] == 0.50
    assert len(model.model[6]) == 4  # 13 RepVGG blocks x 0.33 depth
    assert model.model[7].rbr_dense.conv.out_channels == 256  # 512 x 0.5 width
    assert isinstance(model.model[-1], Detect)
    assert model.model[-1].f == [15, 18, 21]


def test_bare_names_and_dicts_resolve(tmp_path):
    assert resolve_cfg("yolov5s_RepVGG.yaml") == ROOT / "models" / "yolov5s_RepVGG.yaml"
    assert resolve_cfg("yolov5s_OREPA") == ROOT / "models" / "yolov5s_OREPA.yaml"
    with pytest.raises(FileNotFoundError, match="yolov5s_RepVGG.yaml"):
        resolve_cfg("no_such_model.yaml")
    d = Model("yolov5n.yaml").yaml
    m = Model(d, nc=3)
    assert m.model[-1].no == 8 and m.yaml["nc"] == 3 and d["nc"] == 80  # the caller's dict is not modified


def test_training_and_export_outputs():
    model = Model("yolov5n.yaml")
    x = torch.rand(2, 3, 64, 96)
    raw = model.train()(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 85), (2, 3, 4, 6, 85), (2, 3, 2, 3, 85)]
    model.eval()
    model.model[-1].export = True
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3 * (96 + 24 + 6), 85)


def test_activation_override_through_registry():
    d = copy.deepcopy(Model("yolov5n.yaml").yaml)
    d["activation"] = "nn.LeakyReLU(0.1)"
    model = Model(d)
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.SiLU, nn.LeakyReLU))}
    assert acts == {nn.LeakyReLU}
    assert Model("yolov5n.yaml").model[0].act.__class__ is nn.SiLU  # nothing leaked into later models
    d["activation"] = "os.system('true')"
    with pytest.raises(ValueError, match="unknown activation"):
        Model(d)


# --- config errors -------------------------------------------------------------------------------

def small_cfg(**changes):
    cfg = {
        "nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]],
        "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "RepVGGBlock", [16, 3, 1]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]],
    }
    cfg.update(changes)
    return cfg


def test_small_config_builds():
    assert Model(small_cfg()).stride.tolist() == [2.0]


@pytest.mark.parametrize("backbone,message", [
    ([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Foo", [16]]], r"layer 1 .*unknown module 'Foo'.*RepVGGBlock"),
    ([[-1, 1, "Conv", [16, 3, 2, 1, 1, 1, True, False, 9]]], r"layer 0 .*wrong arguments for Conv"),
    ([[-1, 1, "Conv", [16, 3, 2]], [5, 1, "Conv", [16]]], r"layer 1 .*'from' index 5"),
    ([[-3, 1, "Conv", [16, 3, 2]]], r"layer 0 .*'from' index -3"),
    ([[-1, 0, "Conv", [16]]], r"layer 0 .*'number'"),
    ([[-1, 1, "Conv"]], r"layer 0: expected \[from, number, module, args\]"),
    ([[-1, 1, "Conv", [16, 3, 2, None, 3]]], r"layer 0 .*cannot build Conv"),
])
def test_config_errors_name_the_layer(backbone, message):
    with pytest.raises(ValueError, match=message):
        Model(small_cfg(backbone=backbone))


def test_config_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    for backbone in ([[-1, 1, payload, [16]]], [[-1, 1, "Conv", [16, payload, 1]]]):
        with pytest.raises(ValueError):
            Model(small_cfg(backbone=backbone))
    yaml_file = tmp_path / "evil.yaml"
    yaml_file.write_text(f"nc: 2\nanchors: 1\nbackbone: [[-1, 1, \"{payload}\", [16]]]\nhead: []\n")
    with pytest.raises(ValueError, match="unknown module"):
        Model(yaml_file)
    assert not marker.exists()


def test_info_reports_layers_parameters_and_gflops(caplog):
    import logging
    model = Model("yolov5s_RepVGG.yaml")
    with caplog.at_level(logging.INFO, logger="yolo"):
        summary = model.info()
    text = caplog.text
    assert "RepVGGBlock" in text and "GFLOPs" in text and f"{summary['parameters']} parameters" in text
    folded = model.fuse().info(verbose=False)
    assert folded["gflops"] < summary["gflops"] and folded["parameters"] < summary["parameters"]


def _fresh_grid_forward(model: Model, x: torch.Tensor) -> torch.Tensor:
    """The decoded output with every Detect cache thrown away first."""
    detect = model.model[-1]
    detect.grid = [torch.empty(0) for _ in range(detect.nl)]
    with torch.no_grad():
        return model(x)[0]


def test_decoding_follows_loaded_anchors_at_the_probe_size():
    """Model() probes strides with a 256-px forward; a later 256-px forward must decode with the anchors
    loaded since (a checkpoint's evolved anchors, AutoAnchor's), not with those cached by the probe."""
    model = Model("yolov5n.yaml").eval()
    other = Model("yolov5n.yaml").state_dict()
    other["model.24.anchors"] = other["model.24.anchors"] * torch.linspace(0.5, 2.0, 18).view(3, 3, 2)
    model.load_state_dict(other)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        cached = model(x)[0]
    assert torch.equal(cached, _fresh_grid_forward(model, x))
    with torch.no_grad():  # AutoAnchor edits the buffer in place
        model.model[-1].anchors.mul_(1.3)
        cached = model(x)[0]
    assert torch.equal(cached, _fresh_grid_forward(model, x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decoding_after_precision_change_uses_that_precision(dtype):
    model = Model("yolov5n.yaml").eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)[0]
        model.to(dtype)
        low = model(x.to(dtype))[0]
    assert low.dtype == dtype
    assert torch.equal(low, _fresh_grid_forward(model, x.to(dtype)))
    assert rel_error(ref[..., :4], low[..., :4].float()) < 2e-2
