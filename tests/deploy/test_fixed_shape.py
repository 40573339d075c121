"""Files exported for a fixed input (non-square 160x96, batch 3) in val.py, detect.py and the hub API.

Every path letterboxes images to the file's (h, w) and pads a short batch with zero images whose outputs are
dropped. The detections must be those of the folded PyTorch model run on the same letterboxed image, mapped
back to the original image here with the letterbox arithmetic written out (not through ``scale_boxes``).
The model is test_export's random yolov5s_RepVGG (random BatchNorm statistics, head rescaled so scores
spread over (0, 1)); real ONNX Runtime runs the file, on the real bus.jpg and zidane.jpg.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import detect
import export
import hubconf
import val
from conftest import COCO128_YAML, SHARED
from helpers import rel_error
from test_detect import assert_same_detections
from test_export import NAMES, random_model
from utils.datasets.augmentations import letterbox
from utils.deploy.backends import load_backend
from utils.checkpoint import load_model, save_checkpoint
from utils.datasets.dataloaders import create_dataloader
from utils.deploy.detections import postprocess
from utils.datasets.label_cache import img2label_paths

FIXED = (160, 96)  # (h, w): not square, and portrait while zidane.jpg is landscape
BATCH = 3
CONF = 0.5  # high enough that NMS is not left choosing among hundreds of near-equal boxes
IMAGES = [SHARED / "images" / "bus.jpg", SHARED / "images" / "zidane.jpg"]


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """(checkpoint, ONNX file exported for 3 images of 160x96, folded PyTorch model)."""
    folder = tmp_path_factory.mktemp("fixed")
    weights = folder / "model.pt"
    model = random_model("yolov5s_RepVGG.yaml", seed=2)
    d = model.model[-1]
    with torch.no_grad():  # lower the scores: tens of detections per image at CONF, not max_det of them
        for conv in d.m:
            bias = conv.bias.view(d.na, d.no)
            bias[:, 4] -= 2.0
            bias[:, 5:] -= 2.0
    save_checkpoint(weights, model)
    [result] = export.run(weights=str(weights), include=("onnx",), imgsz=FIXED, batch_size=BATCH)
    assert result.ok, result.error
    return weights, result.file, load_model(weights, fuse=True)


@pytest.fixture(scope="module")
def data80(tmp_path_factory) -> Path:
    """7 coco128 images with their labels (batches of 3, 3 and a padded 1), 80 class names."""
    root = tmp_path_factory.mktemp("data80")
    src = COCO128_YAML.parent
    for sub in ("images", "labels"):
        (root / sub / "val").mkdir(parents=True)
    for f in sorted((src / "images" / "train2017").glob("*.jpg"))[:7]:
        shutil.copy(f, root / "images" / "val" / f.name)
        shutil.copy(src / "labels" / "train2017" / f"{f.stem}.txt", root / "labels" / "val" / f"{f.stem}.txt")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val", "names": NAMES}))
    return data


def reference_detections(model, path: Path) -> np.ndarray:
    """The PyTorch model on ``path`` letterboxed to FIXED; boxes mapped back by the letterbox arithmetic."""
    im0 = cv2.imread(str(path))
    im = letterbox(im0, FIXED, auto=False)[0][..., ::-1].transpose(2, 0, 1)
    x = torch.from_numpy(np.ascontiguousarray(im))[None].float() / 255
    with torch.no_grad():
        det = postprocess(model(x)[0], CONF, 0.45)[0].numpy().astype(np.float64)
    h0, w0 = im0.shape[:2]
    gain = min(FIXED[0] / h0, FIXED[1] / w0)
    pad_w, pad_h = (FIXED[1] - round(w0 * gain)) / 2, (FIXED[0] - round(h0 * gain)) / 2
    det[:, [0, 2]] = ((det[:, [0, 2]] - pad_w) / gain).clip(0, w0)
    det[:, [1, 3]] = ((det[:, [1, 3]] - pad_h) / gain).clip(0, h0)
    return det


def test_fixed_batch_file_takes_any_number_of_images(fixed):
    _, onnx_file, model = fixed
    backend = load_backend(onnx_file)
    assert backend.imgsz == FIXED and backend.batch == BATCH
    x = torch.rand(7, 3, *FIXED)
    with torch.no_grad():
        ref = model(x)[0]
    for n in (1, 2, 3, 4, 7):  # short, exact, and more than one batch with a short last one
        out = backend(x[:n])
        assert out.shape[0] == n
        assert rel_error(ref[:n], out) < 1e-4


def test_val_letterboxes_to_the_fixed_shape_and_reports_it(fixed, data80, tmp_path, yolo_logs):
    weights, onnx_file, model = fixed
    kw = dict(data=str(data80), imgsz=320, batch_size=32, workers=0, conf_thres=CONF, save_json=True, plots=False,
              project=str(tmp_path))
    val.run(weights=str(onnx_file), name="onnx", **kw)
    assert f"at shape {(BATCH, 3, *FIXED)}" in yolo_logs.text  # the shape run, not (32, 3, 320, 320)
    # the PyTorch model on the same letterboxed batches
    (tmp_path / "pt").mkdir()
    loader = create_dataloader(str(data80.parent / "images" / "val"), FIXED, BATCH, 32, workers=0)[0]
    val.run(model=model, dataloader=loader, names=NAMES, conf_thres=CONF, save_json=True, plots=False,
            save_dir=tmp_path / "pt", compute_loss=None, weights=None)
    ours = json.loads((tmp_path / "onnx" / "model_predictions.json").read_text())
    ref = json.loads((tmp_path / "pt" / "model_predictions.json").read_text())
    assert 20 < len(ref) < 7 * 300  # detections, and no image at max_det (its cut would be order-dependent)

    def rows(records, image_id):
        return np.array([[*r["bbox"][:2], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3], r["score"],
                          r["category_id"]] for r in records if r["image_id"] == image_id]).reshape(-1, 6)

    for i in range(1, 8):
        assert_same_detections(rows(ours, i), rows(ref, i), tol=0.05, thres=CONF)
    # labels mapped back through the recorded letterbox land where the label files put them
    gt = json.loads((tmp_path / "onnx" / "ground_truth.json").read_text())
    for image in gt["images"]:
        labels = np.loadtxt(img2label_paths([image["file_name"]])[0], ndmin=2)
        w0, h0 = image["width"], image["height"]
        xyxy = np.c_[labels[:, 1] - labels[:, 3] / 2, labels[:, 2] - labels[:, 4] / 2,
                     labels[:, 1] + labels[:, 3] / 2, labels[:, 2] + labels[:, 4] / 2] * [w0, h0, w0, h0]
        boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image["id"]]
        got = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes])
        np.testing.assert_allclose(got, xyxy, atol=1.0)


def test_detect_letterboxes_to_the_fixed_shape(fixed, tmp_path, yolo_logs):
    _, onnx_file, model = fixed
    results = detect.run(weights=onnx_file, source=[str(p) for p in IMAGES], conf_thres=CONF, nosave=True,
                         project=tmp_path)
    assert [r.shape for r in results] == [(1080, 810), (720, 1280)]
    assert f"at shape {(BATCH, 3, *FIXED)}" in yolo_logs.text
    for r, path in zip(results, IMAGES):
        ref = reference_detections(model, path)
        assert len(ref) >= 3
        assert_same_detections(r.det, ref, thres=CONF, ties_ok=True)


def test_hub_runs_one_two_and_four_images_through_a_fixed_batch_file(fixed):
    _, onnx_file, model = fixed
    hub = hubconf.custom(str(onnx_file), _verbose=False)
    hub.conf = CONF
    refs = [reference_detections(model, p) for p in IMAGES]
    for n in (1, 2, 4):
        paths = [str(IMAGES[i % 2]) for i in range(n)]
        res = hub(paths)
        assert len(res) == n and res.shape[2:] == FIXED
        for i, p in enumerate(res.xyxy):
            assert_same_detections(p.numpy(), refs[i % 2], thres=CONF, ties_ok=True)


@pytest.mark.slow
def test_int8_non_square_batch_3_file_in_val_detect_and_hub(shapes_trained, tmp_path, yolo_logs):
    """The trained default recipe as a 128x160, batch-3 INT8 ONNX file: val, detect and the hub run it (1, 2 and
    4 images), with the mAP of the fp32 file of the same shape."""
    run, _, data = shapes_trained
    weights = tmp_path / "best.pt"
    shutil.copy(run / "weights" / "best.pt", weights)
    shape = (128, 160)  # landscape this time; the shapes images are square
    results = {r.format: r for r in export.run(weights=str(weights), include=("onnx",), imgsz=shape, batch_size=BATCH,
                                               int8=True, data=str(data), calib_images=32)}
    assert results["onnx int8"].ok, results["onnx int8"].error
    maps = {}
    for fmt in ("onnx", "onnx int8"):
        maps[fmt] = val.run(weights=str(results[fmt].file), data=str(data), imgsz=160, batch_size=16, workers=0,
                            plots=False, project=str(tmp_path), name=fmt.replace(" ", "_"))[0][2]
    assert f"at shape {(BATCH, 3, *shape)}" in yolo_logs.text
    assert maps["onnx"] > 0.1 and abs(maps["onnx int8"] - maps["onnx"]) < 0.05, maps  # mAP50
    int8 = results["onnx int8"].file
    val_images = sorted((Path(yaml.safe_load(Path(data).read_text())["path"]) / "images" / "val").iterdir())
    paths = [str(p) for p in val_images[:4]]
    det = detect.run(weights=int8, source=paths, nosave=True, conf_thres=0.05, project=tmp_path)  # any model detects
    assert f": {shape[0]}x{shape[1]} " in yolo_logs.text and sum(len(r.det) for r in det) > 0
    hub = hubconf.custom(str(int8), _verbose=False)
    alone = [hub(p).xyxy[0].numpy() for p in paths]
    for n in (1, 2, 4):  # padding a short batch changes no image's detections
        res = hub(paths[:n])
        for a, b in zip(res.xyxy, alone):
            np.testing.assert_allclose(a.numpy(), b, atol=1e-3)
