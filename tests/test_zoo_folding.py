"""Every shipped config folds exactly: at a narrow width (every block and head of the full config, a fraction of
its cost), with random weights, random BatchNorm statistics and random implicit layers, ``Model.fuse()`` leaves
nothing foldable (no BatchNorm, implicit layer, training branch or auxiliary head) and the eval outputs stay
within 1e-4. The full-width folds of the reference models are in tests/test_p6.py and tests/test_yolov7_zoo.py."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_batchnorm_, rel_error
from models.yolo import Model, load_cfg
from test_yolov7 import assert_nothing_left_to_fold, randomize_implicit_
from utils.general import ROOT

CONFIGS = sorted(p.stem for p in (ROOT / "models").glob("*.yaml"))
TRAINING_ONLY = ("rbr_dense", "rbr_1x1", "rbr_identity", "weight_orepa", "implicit", "running_var", ".m2.")


def narrow(cfg: str) -> dict:
    """The config at 1/8 of its width (channels rounded up to 8) and at most YOLOv5s's depth."""
    d = load_cfg(f"{cfg}.yaml")
    d["width_multiple"] = d.get("width_multiple", 1.0) / 8
    d["depth_multiple"] = min(d.get("depth_multiple", 1.0), 0.33)
    return d


@pytest.mark.parametrize("cfg", CONFIGS)
@torch.no_grad()
def test_every_config_folds_exactly_and_completely(cfg):
    torch.manual_seed(0)
    model = randomize_implicit_(randomize_batchnorm_(Model(narrow(cfg), nc=3), seed=1), seed=2).eval()
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(3))
    before = model(x)[0]
    model.fuse()
    assert_nothing_left_to_fold(model)
    keys = "\n".join(model.state_dict())
    assert not [k for k in TRAINING_ONLY if k in keys], f"{cfg}: training-only tensors left after fuse()"
    after = model(x)[0]
    assert after.shape == before.shape and rel_error(before, after) < 1e-4
