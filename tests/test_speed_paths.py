"""The speed-ups of training and validation compute the same function: channels-last memory format (and
no oneDNN heap corruption with it), folded validation, and the default recipe's mAP unchanged."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load_model
from utils.datasets.dataloaders import create_dataloader
from utils.datasets.dataset_config import check_dataset
from utils.evaluation.evaluator import validate
from utils.general import load_yaml
from utils.training.loss import ComputeLoss

ROOT = Path(__file__).resolve().parents[1]

# Runs in a subprocess: the oneDNN bug this guards against corrupts the heap and aborts the interpreter,
# which would take pytest down with it instead of failing one test.
STEP_SCRIPT = r"""
import copy, sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
from helpers import randomize_batchnorm_, rel_error
from models.yolo import Model
from utils.torch_utils import to_channels_last

torch.manual_seed(0)
ref = randomize_batchnorm_(Model({cfg!r}, nc=80)).train()
fast = to_channels_last(copy.deepcopy(ref))
assert sum(not p.is_contiguous() for p in fast.parameters()) > 10  # really converted
x = torch.rand(8, 3, 320, 320)
for model in (ref, fast):
    for _ in range(2):  # the corruption needed more than one backward to surface
        model.zero_grad()
        sum(o.float().square().mean() for o in model(x)).backward()
pairs = [(a.grad, b.grad) for a, b in zip(ref.parameters(), fast.parameters()) if a.grad is not None]
worst = max(((a - b).norm() / a.norm().clamp_min(1e-12)).item() for a, b in pairs)  # per tensor, in norm
outs = max(rel_error(a, b) for a, b in zip(ref(x), fast(x)))
print(f"max relative gradient difference {{worst:.2e}}, output difference {{outs:.2e}}")
assert worst < 1e-2 and outs < 1e-4, (worst, outs)  # oneDNN accumulates channels-last weight gradients in another order
"""


@pytest.mark.parametrize("cfg", ["yolov5s.yaml", "yolov5s_RepVGG.yaml", "yolov5s_OREPA.yaml"])
def test_channels_last_training_step_equals_nchw(cfg):
    """RepVGG's first block has a 1x1 stride-2 conv on RGB, whose channels-last weight gradient
    corrupts the heap in oneDNN; to_channels_last keeps it NCHW and every gradient matches NCHW's."""
    code = STEP_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), cfg=cfg)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-1500:]}"
    print(r.stdout)


def test_ambiguous_strides_are_made_nchw():
    """A 1x1 kernel converted to channels-last still reports is_contiguous(); the guard must give it
    row-major strides, which is what oneDNN looks at."""
    from utils.torch_utils import _nchw

    w = torch.rand(32, 3, 1, 1).to(memory_format=torch.channels_last)
    assert w.is_contiguous() and w.stride() != (3, 1, 1, 1)
    assert _nchw(w).stride() == (3, 1, 1, 1) and torch.equal(_nchw(w), w)


def test_folded_validation_scores_as_the_unfolded_model(shapes_trained):
    """Training validates a folded channels-last copy of the EMA: same metrics and losses as the model itself."""
    run, _, data_yaml = shapes_trained
    data = check_dataset(str(data_yaml))
    model = load_model(run / "weights" / "last.pt")
    loader = create_dataloader(data["val"], 160, 16, 32, rect=True, pad=0.5, workers=0, nc=data["nc"])[0]
    loss = ComputeLoss(model, load_yaml(ROOT / "data/hyps/hyp.shapes.yaml", "hyp"))
    plain = validate(model, loader, names=model.names, fuse=False, compute_loss=loss)
    folded = validate(model, loader, names=model.names, fuse=True, compute_loss=loss)
    assert not model.is_folded  # the caller's model is untouched
    assert plain.metrics[3] > 0.1  # real detections
    for a, b in zip(plain.metrics, folded.metrics):
        assert abs(a - b) < 2e-3, (plain.metrics, folded.metrics)
