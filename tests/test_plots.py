"""utils/plots.py on real COCO128 images and labels: files written, readable, sized, and boxes really drawn."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import COCO128_YAML
from utils.general import LOGGER
from utils.plots import PALETTE, Annotator, colors, plot_images, plot_labels, plot_results, smooth

COCO128 = COCO128_YAML.parent
IMG_DIR, LBL_DIR = COCO128 / "images" / "train2017", COCO128 / "labels" / "train2017"
SIZE = 256

pytestmark = pytest.mark.skipif(not IMG_DIR.is_dir(), reason="coco128 not available")


def _letterbox(im: np.ndarray, labels: np.ndarray, size: int = SIZE):
    """Resize the long side to ``size``, pad to a gray square; labels (cls, x, y, w, h) stay normalized."""
    h0, w0 = im.shape[:2]
    r = size / max(h0, w0)
    w1, h1 = round(w0 * r), round(h0 * r)
    px, py = (size - w1) // 2, (size - h1) // 2
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    out[py:py + h1, px:px + w1] = cv2.resize(im, (w1, h1), interpolation=cv2.INTER_AREA)
    lb = labels.copy()
    lb[:, 1] = (labels[:, 1] * w1 + px) / size
    lb[:, 2] = (labels[:, 2] * h1 + py) / size
    lb[:, 3] = labels[:, 3] * w1 / size
    lb[:, 4] = labels[:, 4] * h1 / size
    return out, lb


def _load_batch(n: int):
    """First ``n`` COCO128 images with labels: (n, 3, S, S) uint8 RGB tensor, (m, 6) targets, paths."""
    files = sorted(IMG_DIR.glob("*.jpg"))
    ims, targets, paths = [], [], []
    for f in files:
        lbl_file = LBL_DIR / f"{f.stem}.txt"
        if not lbl_file.is_file() or not lbl_file.read_text().strip():
            continue
        labels = np.loadtxt(lbl_file, ndmin=2)
        im, lb = _letterbox(cv2.imread(str(f))[:, :, ::-1], labels)
        targets.append(np.concatenate([np.full((len(lb), 1), len(ims)), lb], 1))
        ims.append(im.transpose(2, 0, 1))
        paths.append(str(f))
        if len(ims) == n:
            break
    return torch.from_numpy(np.stack(ims)), torch.from_numpy(np.concatenate(targets)).float(), paths


@pytest.fixture(scope="module")
def batch4():
    return _load_batch(4)


@pytest.fixture
def yolo_caplog(caplog, monkeypatch):
    """caplog for the 'yolo' logger, which setup_logging() may have detached from the root logger."""
    monkeypatch.setattr(LOGGER, "propagate", True)
    caplog.set_level(logging.WARNING, logger="yolo")
    return caplog


@pytest.fixture(scope="module")
def coco_names():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COCO128_YAML.read_text())["names"]


def _box_border_mask(targets: np.ndarray, ns: int, tile: int, shape, band: int = 2) -> np.ndarray:
    """True on a thin band along the left and bottom edges of every target box in the mosaic.

    Left/bottom edges avoid the label tab, which sits above the box's top edge.
    """
    mask = np.zeros(shape[:2], dtype=bool)
    for b, _, x, y, w, h in targets[:, :6]:
        ox, oy = (int(b) % ns) * tile, (int(b) // ns) * tile
        x1, x2 = int((x - w / 2) * tile) + ox, int((x + w / 2) * tile) + ox
        y1, y2 = int((y - h / 2) * tile) + oy, int((y + h / 2) * tile) + oy
        x1, y2 = np.clip(x1, ox, ox + tile - 1), np.clip(y2, oy, oy + tile - 1)
        mask[y1 + band:y2 - band, max(x1 - band, 0):x1 + band + 1] = True
        mask[max(y2 - band, 0):y2 + band + 1, x1 + band:max(x2 - band, x1 + band)] = True
    return mask


def _outside_boxes_mask(targets: np.ndarray, ns: int, tile: int, shape, tab_w: int = 200, tab_h: int = 25):
    """True outside every target box grown by a few pixels and by room for its label tab (above/right)."""
    inside = np.zeros(shape[:2], dtype=bool)
    for b, _, x, y, w, h in targets[:, :6]:
        ox, oy = (int(b) % ns) * tile, (int(b) // ns) * tile
        x1, x2 = int((x - w / 2) * tile) + ox, int((x + w / 2) * tile) + ox
        y1, y2 = int((y - h / 2) * tile) + oy, int((y + h / 2) * tile) + oy
        inside[max(y1 - tab_h, 0):y2 + 4, max(x1 - 4, 0):max(x2, x1 + tab_w) + 4] = True
    return ~inside


def test_colors_palette():
    assert len(PALETTE) == 20 and len(set(PALETTE)) == 20
    assert colors(0) == PALETTE[0] and colors(20) == PALETTE[0]
    assert colors(3, bgr=True) == PALETTE[3][::-1]


def test_annotator_draws_box_and_label():
    im = np.zeros((200, 300, 3), dtype=np.uint8)
    ann = Annotator(im, line_width=2)
    ann.box_label((50, 60, 150, 160), "person 0.91", color=(255, 0, 0))
    out = ann.result()
    assert (out[60:160, 49:52] == (255, 0, 0)).all(axis=-1).mean() > 0.9  # left edge in the box color
    assert out[:60, 50:150].any()  # label tab above the box
    assert not out[170:, :].any() and not out[:, 200:].any()  # nothing far from the box
    with pytest.raises(TypeError):
        Annotator(np.zeros((10, 10, 3), dtype=np.float32))


def test_plot_images_draws_labels(tmp_path, batch4, coco_names):
    ims, targets, paths = batch4
    with_boxes = cv2.imread(str(plot_images(ims, targets, paths, tmp_path / "with.png", names=coco_names)))
    without = cv2.imread(str(plot_images(ims, None, paths, tmp_path / "without.png", names=coco_names)))
    assert with_boxes is not None and without is not None
    assert with_boxes.shape == without.shape == (2 * SIZE, 2 * SIZE, 3)  # 4 images -> 2x2 grid, no resize

    changed = np.abs(with_boxes.astype(int) - without.astype(int)).max(-1) > 30
    border = _box_border_mask(targets.numpy(), ns=2, tile=SIZE, shape=with_boxes.shape)
    assert changed[border].mean() > 0.6  # box edges were drawn
    # nothing is drawn away from the boxes: outside every box (widened for its label tab) pixels are identical
    outside = _outside_boxes_mask(targets.numpy(), ns=2, tile=SIZE, shape=with_boxes.shape)
    assert outside.mean() > 0.1 and not changed[outside].any()

    jpg = plot_images(ims, targets, paths, tmp_path / "train_batch0.jpg", names=coco_names)
    assert jpg == tmp_path / "train_batch0.jpg"
    assert cv2.imread(str(jpg)).shape == (2 * SIZE, 2 * SIZE, 3)


def test_plot_images_predictions_skip_low_conf(tmp_path, batch4):
    ims, targets, _ = batch4
    t = targets.numpy()
    conf = np.where(t[:, 0] == 1, 0.1, 0.9)[:, None]  # image 1: all below the 0.25 threshold
    preds = np.concatenate([t, conf], 1)
    pred = cv2.imread(str(plot_images(ims, preds, fname=tmp_path / "pred.png")))  # names=None -> ids
    base = cv2.imread(str(plot_images(ims, None, fname=tmp_path / "base.png")))
    diff = np.abs(pred.astype(int) - base.astype(int)).max(-1)
    tile = lambda a, i: a[(i // 2) * SIZE:(i // 2 + 1) * SIZE, (i % 2) * SIZE:(i % 2 + 1) * SIZE]  # noqa: E731
    assert tile(diff, 1).max() == 0  # low-confidence predictions are not drawn
    assert (tile(diff, 0) > 30).mean() > 0.01  # confident ones are


def test_plot_images_float_input_and_max_size(tmp_path):
    ims, targets, paths = _load_batch(16)
    as_uint8 = cv2.imread(str(plot_images(ims, targets, paths, tmp_path / "u8.png")))
    as_float = cv2.imread(str(plot_images(ims.float() / 255, targets, paths, tmp_path / "f32.png")))
    assert as_uint8.shape == (4 * SIZE, 4 * SIZE, 3)  # 16 images -> 4x4 grid
    assert np.abs(as_uint8.astype(int) - as_float.astype(int)).max() <= 1
    small = cv2.imread(str(plot_images(ims, targets, paths, tmp_path / "small.jpg", max_size=512)))
    assert small.shape == (512, 512, 3)
    capped = cv2.imread(str(plot_images(ims, targets, paths, tmp_path / "cap.png", max_subplots=9)))
    assert capped.shape == (3 * SIZE, 3 * SIZE, 3)


def test_plot_images_pixel_targets_match_normalized(tmp_path, batch4):
    """Predictions in input pixels (as after NMS) land where the same normalized boxes do."""
    ims, targets, _ = batch4
    t = targets.numpy().copy()
    t = t[t[:, 4:6].min(1) > 0.05]  # skip tiny boxes, whose rounding may differ by a pixel
    norm = np.concatenate([t, np.full((len(t), 1), 0.9)], 1)
    pix = norm.copy()
    pix[:, 2:6] *= SIZE
    a = cv2.imread(str(plot_images(ims, norm, fname=tmp_path / "n.png")))
    b = cv2.imread(str(plot_images(ims, pix, fname=tmp_path / "p.png")))
    assert (np.abs(a.astype(int) - b.astype(int)).max(-1) > 30).mean() < 0.005


def test_plot_labels(tmp_path, coco_names):
    labels = np.concatenate([np.loadtxt(f, ndmin=2) for f in sorted(LBL_DIR.glob("*.txt")) if f.read_text().strip()])
    path = plot_labels(labels, names=coco_names, save_dir=tmp_path)
    assert path == tmp_path / "labels.jpg"
    im = cv2.imread(str(path))
    assert im is not None and abs(im.shape[0] - 1600) < 50 and abs(im.shape[1] - 1600) < 50  # 8x8 in @ 200 dpi
    assert im.std() > 20  # not a blank canvas
    corr = cv2.imread(str(tmp_path / "labels_correlogram.jpg"))
    assert corr is not None and corr.shape[0] > 1000


def test_plot_labels_empty_warns(tmp_path, yolo_caplog):
    assert plot_labels(np.zeros((0, 5)), save_dir=tmp_path) is None
    assert "no labels" in yolo_caplog.text
    assert not (tmp_path / "labels.jpg").exists()


def _write_results_csv(path: Path, rows: int) -> Path:
    """results.csv in the YOLOv5 v7.0 layout, names right-aligned in 20-wide fields like train.py does."""
    keys = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
            "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
            "x/lr0", "x/lr1", "x/lr2"]
    lines = [",".join(f"{k:>20s}" for k in keys)]
    for e in range(rows):
        vals = [e] + [math.exp(-0.1 * e) * (i + 1) / 10 for i in range(len(keys) - 1)]
        lines.append(",".join(f"{v:>20.5g}" for v in vals))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("rows", [1, 3, 12])
def test_plot_results(tmp_path, rows):
    """1 row (no smoothing), 3 rows, 12 rows (with the smoothed line); save_dir defaults to the CSV's folder."""
    csv = _write_results_csv(tmp_path / "results.csv", rows)
    save_dir = tmp_path / "other" if rows == 12 else None
    had_pyplot = "matplotlib.pyplot" in sys.modules
    path = plot_results(csv, save_dir=save_dir)
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot  # Figure + Agg canvas, no pyplot/global backend
    assert path == (save_dir or tmp_path) / "results.png"
    im = cv2.imread(str(path))
    assert im is not None and abs(im.shape[1] - 2400) < 50 and abs(im.shape[0] - 1200) < 50  # 12x6 in @ 200 dpi
    assert im.std() > 20  # curves, axes and titles, not a blank canvas


def test_plot_results_missing_or_empty_warns(tmp_path, yolo_caplog):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("epoch, train/box_loss\n")
    assert plot_results(tmp_path / "nope.csv") is None
    assert plot_results(empty) is None
    assert plot_results(header_only) is None
    warnings = [r for r in yolo_caplog.records if r.levelno == logging.WARNING and r.name == "yolo"]
    assert len(warnings) == 3 and "not found" in warnings[0].getMessage()
    assert not (tmp_path / "results.png").exists()


def test_smooth_keeps_length_and_constants():
    assert np.allclose(smooth(np.full(7, 2.5)), 2.5)
    y = np.r_[np.zeros(10), np.ones(10)]
    s = smooth(y)
    assert s.shape == y.shape and s[0] < 0.01 and s[-1] > 0.99 and 0.3 < s[10] < 0.7


def test_import_does_not_load_matplotlib():
    """matplotlib is imported lazily inside the plotting functions (checked in a fresh interpreter)."""
    import subprocess

    code = "import sys; import utils.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True, timeout=60)
