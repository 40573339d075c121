"""What a hostile but realistic user does: copied run folders, clashing file names, YAML bombs, corrupt
checkpoints and exports, full disks, runs started at the same moment. Each case ends in the right
result or in one clear sentence, never a traceback from deep inside or silent data loss."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import detect
import export
import train
import val
from conftest import COCO128_YAML, ROOT
from models.yolo import Model
from utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from utils.datasets.dataset_config import check_dataset
from utils.deploy.detections import AutoShape
from utils.evaluation.evaluator import Collector
from utils.general import increment_path, load_yaml
from utils.evaluation.metrics import evaluate_detections
from helpers import shapes_data
from utils.datasets.synthetic import generate_shapes

COCO_IMAGES = COCO128_YAML.parent / "images" / "train2017"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return shapes_data(tmp_path_factory.mktemp("tiny"), "tiny", n_train=16, n_val=8, imgsz=96, seed=5)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, Model("yolov5s_RepVGG.yaml", nc=3))
    return path


# ------------------------------------------------------------------------------------ resume and run folders
def test_resume_from_a_copied_run_continues_in_the_copy(tiny_data, tmp_path, yolo_logs):
    common = dict(data=str(tiny_data), cfg="yolov5s_RepVGG.yaml", imgsz=64, batch_size=8, workers=0, noplots=True,
                  noautoanchor=True)
    train.run(**common, epochs=2, save_period=1, project=str(tmp_path / "orig"), name="exp")
    orig = tmp_path / "orig" / "exp"
    before = {p: p.read_bytes() for p in orig.rglob("*") if p.is_file()}
    copy = tmp_path / "copy" / "exp"
    shutil.copytree(orig, copy)
    resume_from = copy / "weights" / "epoch0.pt"  # keeps optimizer state: a run cut after epoch 0
    assert read_checkpoint(resume_from)["epoch"] == 0

    train.run(resume=str(resume_from), epochs=5)  # --epochs is ignored on resume, and says so
    assert "ignoring --epochs" in yolo_logs.text
    assert read_checkpoint(copy / "weights" / "last.pt")["epoch"] == 1
    rows = (copy / "results.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [0, 1]
    assert {p: p.read_bytes() for p in orig.rglob("*") if p.is_file()} == before  # the original is untouched
    assert not (tmp_path / "orig" / "exp2").exists()

    loose = tmp_path / "loose.pt"
    shutil.copyfile(resume_from, loose)
    with pytest.raises(CheckpointError, match="weights/ folder"):
        train.run(resume=str(loose))


def test_runs_started_together_get_different_folders(tmp_path):
    got, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(increment_path(tmp_path / "exp", mkdir=True))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and all(p.is_dir() for p in got)


# --------------------------------------------------------------------------------------------- COCO JSON
def _two_folder_dataset(root: Path) -> list[str]:
    """cam1/000001.jpg and cam2/000001.jpg (one name, two images) and a text stem beside numeric ones."""
    src = sorted(COCO_IMAGES.glob("*.jpg"))[:3]
    files = [root / "cam1" / "000001.jpg", root / "cam2" / "000001.jpg", root / "cam2" / "frame_a.jpg"]
    for s, f in zip(src, files):
        f.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s, f)
    return [str(f) for f in files]


def test_save_json_ids_are_unique_and_pycocotools_agrees(tmp_path):
    """A hit in cam1/000001 and a miss plus a false positive in cam2/000001: with stem ids pycocotools
    merged the two images and scored AP50 1.0. Each image gets its own id; both evaluators agree."""
    paths = _two_folder_dataset(tmp_path)
    collector = Collector(False, False, False, True, None, tmp_path)
    box = torch.tensor([[10.0, 10.0, 110.0, 110.0]])
    truths = [torch.tensor([[0, 60.0, 60.0, 100.0, 100.0]]), torch.tensor([[0, 60.0, 60.0, 100.0, 100.0]]),
              torch.tensor([[1, 300.0, 200.0, 80.0, 60.0]])]
    preds = [torch.cat((box, torch.tensor([[0.9, 0]])), 1),  # a hit
             torch.tensor([[400.0, 300.0, 480.0, 380.0, 0.8, 0]]),  # a false positive where nothing is
             torch.tensor([[260.0, 170.0, 340.0, 230.0, 0.7, 1]])]
    im = torch.zeros(1, 3, 640, 640)
    for p, t, path in zip(preds, truths, paths):
        targets = torch.cat((torch.zeros(1, 1), t), 1)
        collector.add_batch([p], targets, im, [path], [((640, 640), ((1.0, 1.0), (0.0, 0.0)))])
    assert collector.ids == [1, 2, 3]
    ours = evaluate_detections(collector.preds, collector.targets, 2)
    coco = val.evaluate_with_pycocotools(collector, ["a", "b"], {}, tmp_path, "w.pt")
    assert ours["map50"] < 1.0
    assert abs(coco["AP50"] - ours["map50"]) < 1e-9 and abs(coco["AP"] - ours["map"]) < 1e-9
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert len({im["id"] for im in gt["images"]}) == 3 and len({im["file_name"] for im in gt["images"]}) == 3


@pytest.mark.slow
def test_val_save_json_and_txt_on_repeated_and_mixed_stems(coco128_run, tmp_path):
    root = tmp_path / "ds"
    _two_folder_dataset(root / "images")
    for f in (root / "images").rglob("*.jpg"):
        label = root / "labels" / f.relative_to(root / "images").with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("0 0.5 0.5 0.3 0.3\n")
    names = yaml.safe_load(COCO128_YAML.read_text())["names"]
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": names}))
    val.run(data=str(data), weights=str(coco128_run / "weights" / "best.pt"), imgsz=96, batch_size=4, workers=0,
            conf_thres=1e-5, save_json=True, save_txt=True, project=str(tmp_path), name="v", plots=False)
    preds = json.loads(next((tmp_path / "v").glob("*_predictions.json")).read_text())
    assert {p["image_id"] for p in preds} == {1, 2, 3}
    assert len(list((tmp_path / "v" / "labels").glob("*.txt"))) == 3  # 000001.txt and 000001_2.txt


# ------------------------------------------------------------------------------------------- config files
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + \
    "nc: 80\nbackbone: [[-1, 1, *i, [64]]]\nhead: [[-1, 1, Detect, [nc, 3]]]\n"


@pytest.mark.parametrize("loader", ["model", "data", "hyp"])
def test_yaml_bomb_is_refused_fast_with_a_short_message(tmp_path, loader):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 700
    load = {"model": lambda: Model(bomb), "data": lambda: check_dataset(bomb),
            "hyp": lambda: load_yaml(bomb, "hyperparameter file")}[loader]
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as info:
        load()
    assert time.perf_counter() - t0 < 1.0
    assert len(str(info.value)) < 1000 and "bomb.yaml" in str(info.value)


def test_config_errors_echo_short_excerpts(tmp_path):
    cfg = {"nc": 3, "backbone": [[-1, 1, "Conv", [64, 3, 2, "x" * 100_000]]], "head": [[-1, 1, "Detect", ["nc", 3]]]}
    with pytest.raises(ValueError) as info:
        Model(cfg)
    assert "layer 0" in str(info.value) and len(str(info.value)) < 1000


@pytest.mark.parametrize("content,where", [(b"\x89PNG\r\n\x1a\n\x00\x00binary", "model"), (b"nc: eighty\n", "data"),
                                           (b"\x00\x01\x02", "data")])
def test_bad_config_files_name_the_file(tmp_path, content, where):
    f = tmp_path / "weird.yaml"
    f.write_bytes(content)
    with pytest.raises(ValueError, match="weird.yaml") as info:
        Model(f) if where == "model" else check_dataset(f)
    assert "Traceback" not in str(info.value)


def test_non_numeric_hyperparameter_is_named(tiny_data, tmp_path):
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
    hyp["lr0"] = "fast"
    f = tmp_path / "hyp.yaml"
    f.write_text(yaml.safe_dump(hyp))
    with pytest.raises(ValueError, match=r"lr0: 'fast'"):
        train.run(data=str(tiny_data), hyp=str(f), epochs=1, imgsz=64, project=str(tmp_path), noplots=True)


def test_dataset_without_any_label_fails_before_training(tmp_path):
    root = tmp_path / "nolabels"
    generate_shapes(root, n_train=8, n_val=4, imgsz=64, seed=1)
    shutil.rmtree(root / "labels")
    data = tmp_path / "d.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="no labels in"):
        train.run(data=str(data), cfg="yolov5s_RepVGG.yaml", epochs=1, imgsz=64, workers=0, project=str(tmp_path),
                  noplots=True)


# ------------------------------------------------------------------------------------- model files
@pytest.mark.parametrize("suffix", [".onnx", ".torchscript"])
def test_corrupt_export_is_one_sentence(tmp_path, tiny_data, suffix):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    for call in (lambda: detect.run(weights=str(bad), source=str(COCO_IMAGES), project=str(tmp_path)),
                 lambda: val.run(weights=str(bad), data=str(tiny_data), project=str(tmp_path))):
        with pytest.raises(ValueError, match=rf"model{suffix} could not be loaded"):
            call()


def test_val_checks_classes_before_the_pass(random_checkpoint, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="predicts 3 classes but .* nc=80"):
        val.run(weights=str(random_checkpoint), data=str(COCO128_YAML), imgsz=64, project=str(tmp_path))
    assert time.perf_counter() - t0 < 20


def test_cli_scripts_end_in_one_line_not_a_traceback(tmp_path):
    corrupt = tmp_path / "yolov5s.pt"
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    for args in (["export.py", "--weights", str(tmp_path / "missing.pt")], ["export.py", "--weights", str(corrupt)]):
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr and "ERROR:" in done.stderr, done.stderr[-500:]


# --------------------------------------------------------------------------------------------- writes
def test_killed_export_leaves_no_file_without_metadata(random_checkpoint, tmp_path, monkeypatch):
    import onnx

    weights = tmp_path / random_checkpoint.name
    shutil.copyfile(random_checkpoint, weights)
    (good,) = export.run(weights=weights, include=["onnx"], imgsz=64)
    before = good.file.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process stopped after the graph, before the metadata was written

    monkeypatch.setattr(onnx, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        export.run(weights=weights, include=["onnx"], imgsz=64)
    assert good.file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([weights.name, good.file.name])


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 12 MiB file system (tmpfs), so 'disk full' comes from the kernel; skipped where mount is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_while_saving_keeps_the_old_checkpoint(tiny_disk):
    path = save_checkpoint(tiny_disk / "last.pt", Model("yolov5n.yaml"))  # ~7.6 MB of 12
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="could not write .*last.pt.*previous last.pt is intact"):
        save_checkpoint(path, Model("yolov5n.yaml"))  # a second copy does not fit beside the first
    assert path.read_bytes() == before
    assert [p.name for p in tiny_disk.iterdir()] == ["last.pt"]  # no temporary file left


# ---------------------------------------------------------------------------------------------- inference
@pytest.fixture(scope="module")
def extreme_images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("extreme")
    rng = np.random.default_rng(0)
    for name, shape in (("wide.jpg", (12, 4000)), ("tall.jpg", (4000, 12)), ("line.png", (1, 3000)),
                        ("normal.jpg", (300, 400))):
        cv2.imwrite(str(d / name), rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    return d


def test_detect_processes_every_extreme_aspect_image(random_checkpoint, extreme_images, tmp_path):
    results = detect.run(weights=str(random_checkpoint), source=str(extreme_images), imgsz=(160, 160),
                         project=str(tmp_path))
    assert sorted(Path(r.path).name for r in results) == ["line.png", "normal.jpg", "tall.jpg", "wide.jpg"]
    hub = AutoShape(load_random(random_checkpoint))
    out = hub([str(p) for p in sorted(extreme_images.iterdir())], size=160)
    assert len(out) == 4


def load_random(path: Path):
    from utils.checkpoint import load_model

    return load_model(path)


def test_detect_with_nothing_readable_fails(random_checkpoint, tmp_path):
    src = tmp_path / "broken"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"not a jpeg")
    (src / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="no image or video frame could be read"):
        detect.run(weights=str(random_checkpoint), source=str(src), project=str(tmp_path))


def test_hub_inputs_empty_zero_size_and_16_bit(random_checkpoint):
    model = AutoShape(load_random(random_checkpoint))
    for bad, message in (([], "no images given"), (np.zeros((0, 0, 3), np.uint8), "empty array"),
                         (np.zeros((5, 5, 3, 2), np.uint8), "HxW or HxWx3")):
        with pytest.raises(ValueError, match=message):
            model(bad, size=64)
    rgb8 = cv2.imread(str(COCO_IMAGES / "000000000009.jpg"))[..., ::-1]
    rgb16 = rgb8.astype(np.uint16) * 257  # the same picture in 16 bits (255 * 257 = 65535)
    a = model(np.ascontiguousarray(rgb8), size=160)
    b = model(np.ascontiguousarray(rgb16), size=160)
    np.testing.assert_array_equal(a.ims[0], b.ims[0])  # scaled, not clipped to 255
    np.testing.assert_allclose(a.xyxy[0].numpy(), b.xyxy[0].numpy())
