"""Plain-data checkpoints: weights_only round trips, atomic writes, clear errors for bad files."""
import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import randomize_batchnorm_
from models.yolo import Model
from utils import checkpoint as ckpt_mod
from utils.checkpoint import CheckpointError, load_model, save_checkpoint


@pytest.fixture(scope="module")
def orepa_model():
    return randomize_batchnorm_(Model("yolov5s_OREPA.yaml", nc=3), seed=2).eval()


def outputs(model, x):
    with torch.no_grad():
        return model(x)[0]


def test_round_trip_training_form(tmp_path, orepa_model):
    x = torch.rand(1, 3, 96, 64)
    opt = argparse.Namespace(epochs=np.int64(3), lr=np.float32(0.01), momentum=np.float64(0.9), save_dir=Path("runs/x"))
    path = save_checkpoint(tmp_path / "last.pt", orepa_model, epoch=2, opt=opt, hist=np.arange(3))
    raw = torch.load(path, weights_only=True)  # no pickled classes inside
    assert raw["folded"] is False and raw["epoch"] == 2 and raw["nc"] == 3
    assert raw["opt"] == {"epochs": 3, "lr": pytest.approx(0.01), "momentum": 0.9, "save_dir": "runs/x"}
    assert type(raw["opt"]["momentum"]) is float
    assert torch.equal(raw["hist"], torch.arange(3))
    model = load_model(path)
    assert not model.is_folded and not model.training
    assert torch.equal(outputs(model, x), outputs(orepa_model, x))


def test_round_trip_folded_form(tmp_path, orepa_model):
    x = torch.rand(1, 3, 64, 96)
    reference = outputs(orepa_model, x)
    folded = Model(orepa_model.yaml)
    folded.load_state_dict(orepa_model.state_dict())
    folded.names = ["a", "b", "c"]
    folded.fuse()
    path = save_checkpoint(tmp_path / "best-fused.pt", folded)
    raw = torch.load(path, weights_only=True)
    assert raw["folded"] is True and not any("weight_orepa" in k for k in raw["state_dict"])
    model = load_model(path)
    assert model.is_folded and model.names == ["a", "b", "c"]
    assert torch.equal(outputs(model, x), outputs(folded, x))
    assert (outputs(model, x) - reference).abs().max() < 1e-3 * reference.abs().max()


def test_load_with_fuse_folds(tmp_path, orepa_model):
    path = save_checkpoint(tmp_path / "a.pt", orepa_model)
    assert load_model(path, fuse=True).is_folded


def test_unsupported_extra_is_rejected(tmp_path, orepa_model):
    with pytest.raises(TypeError, match=r"extra\['optimizer'\]"):
        save_checkpoint(tmp_path / "x.pt", orepa_model, optimizer=torch.optim.SGD(orepa_model.parameters(), lr=0.1))
    assert not (tmp_path / "x.pt").exists()


def test_truncated_file_is_a_clear_error(tmp_path, orepa_model):
    path = save_checkpoint(tmp_path / "full.pt", orepa_model)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt .*truncated"):
        load_model(cut)


@pytest.mark.parametrize("content,message", [
    (b"definitely not a checkpoint", "not a readable checkpoint"),
    (None, "not found"),
])
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert "weights.pt" in str(info.value)


def test_bare_state_dict_gets_a_hint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(Model("yolov5n.yaml").state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state dict"):
        load_model(path)


def test_crash_mid_save_keeps_the_previous_file(tmp_path, orepa_model, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", orepa_model, epoch=1)
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, orepa_model, epoch=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
