"""Checkpoints written by YOLOv5 and YOLOv7 load wherever a weights path is taken, read as data: the files
their own code wrote (tests/data/foreign/checkpoints, tools/make_foreign_checkpoints.py) give the outputs
their code gives, and a pickle that calls anything is refused before it runs."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import detect
import export
import hubconf
import train
import val
from conftest import ROOT
from models.yolo import Model, load_cfg
from utils.checkpoint import CheckpointError, checkpoint_yaml, load_model, load_pretrained, missing_weights
from utils.foreign_checkpoint import ForeignCheckpointError, restricted_load

BUS = ROOT.parent / "shared" / "images" / "bus.jpg"


class _Payload:
    """A pickle whose loading calls ``call(*args)``: what a malicious checkpoint carries."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def payloads(marker: Path) -> dict:
    """Three ways a downloaded .pt runs code, each creating ``marker`` if it ever runs."""
    shell = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, (shell,)),
        "builtins.eval": _Payload(eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": _Payload(subprocess.Popen, (["touch", str(marker)],)),
    }


def release_style(path: Path, payload=None) -> Path:
    """A YOLOv5-release-shaped dict (pickled model, opt dict, git and date keys) with ``payload`` inside."""
    model = Model("yolov5n.yaml", nc=3).half()
    torch.save({"epoch": -1, "best_fitness": None, "model": model, "ema": None, "updates": None, "optimizer": None,
                "opt": {"weights": "yolov5s.pt", "hyp": payload}, "git": {"remote": "x"}, "date": "2026-12-03"}, path)
    return path


@pytest.fixture(scope="module")
def data3(tmp_path_factory) -> Path:
    from helpers import shapes_data

    return shapes_data(tmp_path_factory.mktemp("d3"), "d3", n_train=8, n_val=4, imgsz=64, seed=2)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_a_pickle_that_calls_anything_is_refused_by_every_entry_point(tmp_path, kind, data3):
    marker = tmp_path / "ran"
    evil = release_style(tmp_path / "yolov5s.pt", payloads(marker)[kind])
    refused = kind.replace("os.", "posix.") if os.name == "posix" else kind  # os.system pickles as posix.system
    calls = {
        "val": lambda: val.run(data=str(data3), weights=str(evil), imgsz=64, project=str(tmp_path)),
        "detect": lambda: detect.run(weights=str(evil), source=str(BUS), imgsz=64, project=str(tmp_path)),
        "export": lambda: export.run(weights=str(evil), include=["onnx"], imgsz=64),
        "train": lambda: train.run(weights=str(evil), data=str(data3), epochs=1, imgsz=64, project=str(tmp_path)),
        "hub": lambda: hubconf.custom(path=str(evil), _verbose=False),
        "load_pretrained": lambda: load_pretrained(Model("yolov5n.yaml", nc=3), evil),
    }
    for name, call in calls.items():
        with pytest.raises(CheckpointError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and f"refused to load: its pickle calls {refused}" in message, (name, message)
        assert "nothing was run" in message and str(evil) in message, name
    assert not marker.exists()


def test_refusal_from_the_command_line_is_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    evil = release_style(tmp_path / "yolov5s.pt", payloads(marker)["subprocess.Popen"])
    out = subprocess.run([sys.executable, "val.py", "--weights", str(evil), "--data", "data/shapes.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr + out.stdout, out.stderr[-2000:]
    assert "refused to load: its pickle calls subprocess.Popen" in out.stderr + out.stdout
    assert not marker.exists()


def test_a_refused_global_stops_the_load_before_the_call(tmp_path):
    """The unpickler itself, not the caller, refuses: the error comes from find_class, before any REDUCE."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": payloads(marker)["builtins.eval"]}, path)
    with pytest.raises(ForeignCheckpointError, match=r"calls builtins\.eval"):
        restricted_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_a_broken_file_is_one_line_everywhere(tmp_path, damage, data3):
    good = release_style(tmp_path / "good.pt").read_bytes()
    bad = tmp_path / "yolov5s.pt"
    bad.write_bytes({"truncated": good[: len(good) // 2], "random bytes": np.random.default_rng(0).bytes(5000),
                     "empty": b""}[damage])
    for call in (lambda: load_model(bad), lambda: load_pretrained(Model("yolov5n.yaml", nc=3), bad),
                 lambda: val.run(data=str(data3), weights=str(bad), imgsz=64, project=str(tmp_path))):
        with pytest.raises((CheckpointError, ValueError)) as info:
            call()
        assert "\n" not in str(info.value) and "yolov5s.pt" in str(info.value)


def test_our_own_pickled_model_is_read_as_data_and_matches(tmp_path):
    """A pickled nn.Module of this project's classes (the shape of a YOLOv7 file: models.yolo.Model) imports through
    the same path: stand-ins record the state, the model is rebuilt from its yaml, outputs are the same."""
    torch.manual_seed(3)
    model = Model("yolov5n.yaml", nc=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "pickled.pt"
    torch.save({"model": model, "epoch": 7, "training_results": None}, path)
    loaded = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(pickle.UnpicklingError):  # and it is not a plain file: weights_only refuses it
        torch.load(path, weights_only=True)


def test_a_missing_official_file_says_where_it_is_published_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, url in (("yolov5s.pt", "ultralytics/yolov5/releases/download/v7.0/yolov5s.pt"),
                      ("yolov7-tiny.pt", "WongKinYiu/yolov7/releases/download/v0.1/yolov7-tiny.pt")):
        with pytest.raises(CheckpointError, match=url):
            load_model(name)
        assert not (tmp_path / name).exists()
    with pytest.raises(CheckpointError, match=r"yolov5s\(pretrained=True\).*releases/download/v7.0/yolov5s.pt"):
        hubconf.yolov5s(pretrained=True)
    for own in ("best.pt", "yolov5s_RepVGG.pt", "yolov7_custom.pt"):  # no official file of that name: just "not found"
        assert "published" not in str(missing_weights(Path(own)))


# ------------------------------------------------------------------------ files written by their own code
FIXTURES = ROOT / "tests" / "data" / "foreign" / "checkpoints"
FILES = ("y5_v70_release.pt", "y5_v70_last.pt", "y5_v62_release.pt", "y5_v61_release.pt", "y5_pip_release.pt", "y7_train.pt",
         "y7_deploy.pt", "y7_deploy_fused.pt", "y5_v70_p6_release.pt", "y7_w6_train.pt", "y7_w6_deploy.pt")


@pytest.fixture(scope="module")
def references() -> dict:
    return torch.load(FIXTURES / "references.pt", weights_only=True)


@pytest.fixture(scope="module")
def coco16(tmp_path_factory) -> Path:
    """16 coco128 images (80 classes) as a data YAML: what val/train read for the 80-class fixtures."""
    import yaml

    from conftest import COCO128_YAML

    images = sorted((COCO128_YAML.parent / "images" / "train2017").glob("*.jpg"))[:16]
    folder = tmp_path_factory.mktemp("coco16")
    (folder / "list.txt").write_text("".join(f"{p}\n" for p in images))
    names = yaml.safe_load(COCO128_YAML.read_text())["names"]
    data = folder / "coco16.yaml"
    data.write_text(yaml.safe_dump({"path": str(folder), "train": "list.txt", "val": "list.txt", "names": names}))
    return data


@pytest.mark.parametrize("name", FILES)
def test_their_file_gives_their_outputs_names_stride_and_anchors(name, references, yolo_logs):
    ref = references["files"][name]
    model = load_model(FIXTURES / name)
    out = model(references["x"])[0]
    err = ((out - ref["output"]).abs().max() / ref["output"].abs().max()).item()
    assert err < 1e-5, f"{name}: relative error {err:.2e} against their own code's output"
    names = ref["names"]  # as their model stored them: a dict (v7.0) or a list
    assert model.names == ([names[k] for k in sorted(names)] if isinstance(names, dict) else list(names))
    assert len(model.names) == ref["nc"]
    assert model.stride.tolist() == ref["stride"].tolist()
    detect_layer = model.model[-1]
    torch.testing.assert_close(detect_layer.anchors.float(), ref["anchors"].float().view_as(detect_layer.anchors))
    line = next(r.getMessage() for r in yolo_logs.records if r.getMessage().startswith(f"Imported {name}"))
    project = "YOLOv7" if name.startswith("y7") else "YOLOv5"
    assert project in line and f"{ref['nc']} classes" in line and f"'{ref['which']}' weights" in line


def test_a_training_file_gives_the_ema_weights_as_yolov5_does(references):
    assert references["files"]["y5_v70_last.pt"]["which"] == "ema"  # their loader's choice, recorded by the tool
    from utils.foreign_checkpoint import read_foreign

    found = read_foreign(FIXTURES / "y5_v70_last.pt")
    assert found.taken_from == "ema" and found.epoch == references["files"]["y5_v70_last.pt"]["epoch"]


@pytest.mark.parametrize("name", ["y5_v70_release.pt", "y5_v61_release.pt", "y5_pip_release.pt", "y7_train.pt",
                                  "y7_deploy.pt", "y7_deploy_fused.pt", "y7_w6_train.pt"])
def test_val_detect_export_and_hub_accept_their_files(name, coco16, tmp_path):
    weights = tmp_path / name
    weights.write_bytes((FIXTURES / name).read_bytes())
    metrics = val.run(data=str(coco16), weights=str(weights), imgsz=128, batch_size=8, project=str(tmp_path))[0]
    assert len(metrics) >= 4 and all(np.isfinite(metrics[:4]))
    (found,) = detect.run(weights=str(weights), source=str(BUS), imgsz=128, project=str(tmp_path), name="det")
    assert len(found.det) > 0 and (tmp_path / "det" / "bus.jpg").is_file()
    results = export.run(weights=str(weights), include=["onnx"], imgsz=128)
    assert all(r.ok for r in results), [r.error for r in results]
    hub = hubconf.custom(path=str(weights), _verbose=False)
    assert len(hub.names) == 80 and hub(str(BUS), size=128).xyxy[0].shape[1] == 6


def test_fine_tuning_a_release_file_on_other_classes_reports_the_transfer(tmp_path, yolo_logs):
    """coco128 relabelled to 3 classes (person, bicycle, car; other boxes dropped), one epoch from a YOLOv5 release
    file: the backbone and neck transfer, the head (80 -> 3 classes) does not."""
    import yaml

    from conftest import COCO128_YAML

    root = tmp_path / "coco3"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for img in sorted((COCO128_YAML.parent / "images" / "train2017").glob("*.jpg"))[:16]:
        (root / "images" / img.name).symlink_to(img)
        label = COCO128_YAML.parent / "labels" / "train2017" / f"{img.stem}.txt"
        rows = [r for r in (label.read_text().splitlines() if label.exists() else []) if r.split()[0] in "012"]
        (root / "labels" / f"{img.stem}.txt").write_text("".join(f"{r}\n" for r in rows))
    data = tmp_path / "coco3.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images",
                                    "names": ["person", "bicycle", "car"]}))
    weights = tmp_path / "yolov5s.pt"
    weights.write_bytes((FIXTURES / "y5_v70_release.pt").read_bytes())
    train.run(weights=str(weights), data=str(data), epochs=1, imgsz=96, batch_size=8, workers=0, noplots=True,
              project=str(tmp_path), name="ft")
    line = next(r.getMessage() for r in yolo_logs.records if r.getMessage().startswith("Transferred "))
    loaded, total = map(int, line.split()[1].split("/"))
    head = sum(1 for k in Model(yaml.safe_load(yaml.safe_dump(load_model(weights).yaml)), nc=3).state_dict()
               if k.startswith("model.24.m."))
    assert loaded == total - head and head == 6, line  # everything but the 3 class-dependent convs
    assert (tmp_path / "ft" / "weights" / "best.pt").is_file()


@pytest.mark.parametrize("name, head, new", [("y7_train.pt", "IDetect", 9), ("y7_deploy.pt", "Detect", 6),
                                             ("y5_v61_release.pt", "Detect", 6), ("y5_pip_release.pt", "Detect", 6),
                                             ("y5_v70_p6_release.pt", "Detect", 8), ("y7_w6_train.pt", "IAuxDetect", 20)])
def test_each_layout_fine_tunes_in_its_own_architecture(name, head, new, tmp_path, data3, yolo_logs):
    """No --cfg: the model is built from the file's own YAML, 3 classes instead of 80; only the class-dependent
    head tensors start afresh (IDetect's ImplicitM too)."""
    (tmp_path / name).write_bytes((FIXTURES / name).read_bytes())
    train.run(weights=str(tmp_path / name), data=str(data3), epochs=1, imgsz=64, batch_size=8, workers=0,
              noplots=True, project=str(tmp_path), name="ft")
    line = next(r.getMessage() for r in yolo_logs.records if r.getMessage().startswith("Transferred "))
    loaded, total = map(int, line.split()[1].split("/"))
    assert total - loaded == new, line
    model = load_model(tmp_path / "ft" / "weights" / "last.pt")
    assert type(model.model[-1]).__name__ == head and model.names == ["circle", "square", "triangle"]


def test_their_p6_and_w6_files_hold_the_configs_shipped_here():
    """The configs their Model stored in the files: v7.0's models/hub/yolov5n6.yaml and YOLOv7's
    cfg/training/yolov7-w6.yaml have the layer rows and anchors of models/yolov5n6.yaml and models/yolov7-w6.yaml;
    the notebook's deploy file keeps rows 0-117 and ends in a Detect on the lead maps 114-117."""
    for name, shipped in (("y5_v70_p6_release.pt", "yolov5n6.yaml"), ("y7_w6_train.pt", "yolov7-w6.yaml")):
        theirs, ours = checkpoint_yaml(FIXTURES / name), load_cfg(shipped)
        assert theirs["backbone"] + theirs["head"] == ours["backbone"] + ours["head"], name
        assert theirs["anchors"] == ours["anchors"] and len(ours["anchors"]) == 4, name
    deploy = checkpoint_yaml(FIXTURES / "y7_w6_deploy.pt")
    rows, ours_rows = deploy["backbone"] + deploy["head"], ours["backbone"] + ours["head"]
    assert rows[:118] == ours_rows[:118] and rows[118:] == [[[114, 115, 116, 117], 1, "Detect", ["nc", "anchors"]]]
    assert ours_rows[122][2] == "IAuxDetect" and len(ours_rows) == 123


def test_folding_their_w6_training_file_gives_their_notebooks_deploy_file(references):
    """Model.fuse() on y7_w6_train.pt drops what the notebook's W6 cell drops (the auxiliary rows 118-121 and convs),
    keeps the lead head on 114-117 (their Detect at 118), folds the implicit layers to the head weights of
    y7_w6_deploy.pt (which the notebook saves in fp16: equal within that rounding) and keeps the training outputs."""
    ours = load_model(FIXTURES / "y7_w6_train.pt").fuse()
    theirs = load_model(FIXTURES / "y7_w6_deploy.pt")
    assert len(ours.model) == len(theirs.model) == 119 and ours.model[-1].f == theirs.model[-1].f == [114, 115, 116, 117]
    assert [(type(m), m.f) for m in ours.model[:118]] == [(type(m), m.f) for m in theirs.model[:118]]
    for a, b in zip(ours.model[-1].m, theirs.model[-1].m, strict=True):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-3, atol=1e-7)  # fp16 spacing is 2**-10 relative
        torch.testing.assert_close(a.bias, b.bias, rtol=1e-3, atol=1e-7)
    out = ours(references["x"])[0]
    train_out = references["files"]["y7_w6_train.pt"]["output"]
    assert ((out - train_out).abs().max() / train_out.abs().max()).item() < 1e-5


def test_a_folded_file_cannot_be_fine_tuned_and_says_so(tmp_path, data3):
    with pytest.raises(CheckpointError, match="folded"):
        train.run(weights=str(FIXTURES / "y7_deploy_fused.pt"), data=str(data3), epochs=1, imgsz=64,
                  project=str(tmp_path))


@pytest.mark.parametrize("name", ["y5_v70_release.pt", "y7_train.pt"])
def test_the_converter_writes_a_plain_file_with_the_same_outputs(name, tmp_path, references):
    sys.path.insert(0, str(ROOT / "tools"))
    from convert_checkpoint import main

    src = tmp_path / name
    src.write_bytes((FIXTURES / name).read_bytes())
    assert main([str(src)]) == 0
    plain = src.with_name(f"{src.stem}-plain.pt")
    raw = torch.load(plain, weights_only=True)
    assert raw["converted_from"] == name
    out = load_model(plain)(references["x"])[0]
    torch.testing.assert_close(out, load_model(src)(references["x"])[0], rtol=0, atol=0)
    assert main([str(plain)]) == 1  # already plain: nothing to convert


def test_hub_pretrained_finds_the_official_file_in_the_working_directory(tmp_path, monkeypatch, references):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov5s.pt").write_bytes((FIXTURES / "y5_v70_release.pt").read_bytes())
    model = hubconf.yolov5s(pretrained=True, autoshape=False)
    torch.testing.assert_close(model(references["x"])[0], references["files"]["y5_v70_release.pt"]["output"],
                               rtol=1e-5, atol=1e-4)
    three = hubconf.yolov5s(pretrained=True, classes=3, autoshape=False)  # YOLOv5's hub: what fits transfers
    assert three.yaml["nc"] == 3
    torch.testing.assert_close(three.state_dict()["model.0.conv.weight"], model.state_dict()["model.0.conv.weight"])


def test_a_layout_that_matches_no_config_here_is_named(tmp_path):
    """A YOLOv8-style layer (C2f) in the file's YAML: one line naming the file and the layer, not a deep traceback."""
    model = Model("yolov5n.yaml", nc=3)
    model.yaml["backbone"][2][2] = "C2f"
    path = tmp_path / "v8ish.pt"
    torch.save({"model": model, "epoch": -1}, path)
    with pytest.raises(CheckpointError, match=r"v8ish\.pt .*matches no layer set of this project.*C2f") as info:
        load_model(path)
    assert "\n" not in str(info.value)
