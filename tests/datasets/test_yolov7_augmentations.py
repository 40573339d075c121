"""YOLOv7's augmentations: the 9-image mosaic (hyp ``mosaic9``) and paste-in (hyp ``paste_in``).

Each test runs on the real COCO128 images in ../shared (skipped when absent) and on the generated shapes set (always
there). The training-sample tests also draw their batches with ``plot_images`` into runs/test-plots/ for a reader.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED
from utils.datasets.augmentations import crop_objects, paste_in
from utils.datasets.dataloaders import LoadImagesAndLabels
from utils.datasets.mosaic import compose, mosaic9_corners
from utils.datasets.synthetic import generate_shapes
from utils.ops import xywh2xyxy, xywhn2xyxy
from utils.plots import plot_images

COCO_IMAGES = SHARED / "datasets" / "coco128" / "images" / "train2017"
PLOTS = ROOT / "runs" / "test-plots"
# no warp, colour or flip: what an augmentation did is then visible pixel for pixel
STILL = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0,
         "perspective": 0.0, "flipud": 0.0, "fliplr": 0.0, "mixup": 0.0}


@pytest.fixture(scope="module", params=["coco128", "shapes"])
def source(request, tmp_path_factory):
    """(name, image folder, class count)."""
    if request.param == "coco128":
        if not COCO_IMAGES.is_dir():
            pytest.skip("shared coco128 dataset not present")
        return "coco128", COCO_IMAGES, 80
    root = generate_shapes(tmp_path_factory.mktemp("shapes") / "shapes", n_train=24, n_val=1, imgsz=160, seed=0)
    return "shapes", root / "images" / "train", 3


def dataset(source, imgsz: int = 256, **hyp) -> LoadImagesAndLabels:
    return LoadImagesAndLabels(source[1], imgsz, augment=True, hyp={**STILL, **hyp}, nc=source[2], seed=1)


def inter_over_area(box, boxes: np.ndarray) -> np.ndarray:
    """The share of each of ``boxes`` (n, 4 xyxy) that ``box`` covers."""
    w = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    h = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return w * h / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def check_plot(images, labels, paths, name: str):
    """Draw a batch with the training-batch plot into runs/test-plots/ and check the file is an image."""
    f = plot_images(images, labels, paths, fname=PLOTS / name)
    im = cv2.imread(str(f))
    assert f == PLOTS / name and im is not None and min(im.shape[:2]) >= 256 and im.std() > 10


# ----- paste-in -----

def test_crop_objects_cuts_half_the_boxes_with_their_pixels(source):
    ds = dataset(source)
    i = next(i for i, lb in enumerate(ds.labels) if len(lb) >= 2)
    im, _, (h, w) = ds.load_image(i)
    labels = ds.labels[i].copy()
    labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h)
    samples = crop_objects(im, labels, np.random.default_rng(0))
    assert 0 < len(samples) <= round(len(labels) / 2)
    boxes = np.c_[labels[:, 0], labels[:, [1, 3]].clip(0, w - 1), labels[:, [2, 4]].clip(0, h - 1)].astype(int)
    for cls, crop in samples:  # each is the pixels of one box of its class
        assert any(c == cls and np.array_equal(crop, im[y1:y2, x1:x2]) for c, x1, x2, y1, y2 in boxes)


def test_paste_in_pastes_source_pixels_where_boxes_overlap_little(source):
    ds = dataset(source)
    i = next(i for i, lb in enumerate(ds.labels) if len(lb))
    im, _, _ = ds.load_image(i)
    canvas, labels = compose([im], [ds.labels[i]], [(0, 0)], 256)
    n0, pasted = len(labels), 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        samples = ds._paste_samples(rng)
        assert len(samples) >= (30 if source[0] == "coco128" else 5)
        img = canvas.copy()
        out = paste_in(img, labels, samples, rng)
        assert np.array_equal(out[:n0], labels)  # the image's own labels kept
        covered = np.zeros(img.shape[:2], bool)
        for k in range(len(out) - 1, n0 - 1, -1):  # the last pasted first: a later paste may cover an earlier one
            cls, x1, y1, x2, y2 = out[k]
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            assert (x1, y1, x2, y2) == tuple(out[k, 1:]) and 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
            assert (inter_over_area(out[k, 1:], out[:k, 1:]) < 0.3).all()  # covers < 30% of each box before it
            seen = ~covered[y1:y2, x1:x2]
            assert seen.sum() > 0.5 * seen.size
            assert any(c == cls and np.array_equal(cv2.resize(crop, (x2 - x1, y2 - y1))[seen], img[y1:y2, x1:x2][seen])
                       for c, crop in samples)  # an object's pixels, resized to its box
            covered[y1:y2, x1:x2] = True
        assert np.array_equal(img[~covered], canvas[~covered])  # nothing else changed
        pasted += len(out) - n0
    assert pasted >= 10


def test_paste_in_in_training_samples_keeps_and_clips_labels(source):
    plain, pasting = dataset(source, mosaic=0.0), dataset(source, mosaic=0.0, paste_in=1.0)
    batch, extra = [], 0
    for i in range(8):
        im0, lb0, _, _ = plain[i]
        im1, lb1, path, shapes = pasting[i]
        n0 = len(lb0)
        assert torch.equal(lb1[:n0], lb0)  # the sample's labels kept, the pasted ones after them
        new = xywh2xyxy(lb1[n0:, 2:])
        assert ((new >= 0) & (new <= 1)).all() and (new[:, 2:] > new[:, :2]).all()  # inside the image
        mask = torch.zeros(im1.shape[1:], dtype=torch.bool)
        for x1, y1, x2, y2 in (new * 256).round().int().tolist():
            mask[y1:y2, x1:x2] = True
        assert torch.equal(im1[:, ~mask], im0[:, ~mask])  # pixels change only under the pasted boxes
        assert not torch.equal(im1[:, mask], im0[:, mask]) or not mask.any()
        extra += len(new)
        batch.append((im1, lb1, path, shapes))
    assert extra >= 8
    check_plot(*LoadImagesAndLabels.collate_fn(batch)[:3], f"paste_in_{source[0]}.jpg")


# ----- 9-image mosaic -----

def test_mosaic9_canvas_shows_all_nine_images_under_their_labels(source):
    """The whole 3s x 3s layout shows all 9 images without overlap; the 2s x 2s window kept shows the sample's own
    image whole and, when centred, part of all 9 (a window at an extreme can miss a row or column of the layout when
    the centre image is s wide or high, as in YOLOv7); every box with area lies over its own image's pixels."""
    ds = dataset(source, imgsz=128)
    s, indices = 128, list(range(9))
    images, labels = [ds.load_image(i)[0] for i in indices], [ds.labels[i] for i in indices]
    for size, xc, yc in [(3 * s, 0, 0), (2 * s, s // 2, s // 2), (2 * s, 0, 0), (2 * s, s - 1, s - 1),
                         (2 * s, s // 3, 2 * s // 3)]:
        corners = mosaic9_corners([im.shape[:2] for im in images], s, xc, yc)
        canvas, placed = compose(images, labels, corners, size)
        assert canvas.shape == (size, size, 3) and len(placed) == sum(map(len, labels))
        assert placed[:, 1:].min() >= 0 and placed[:, 1:].max() <= size
        start, shown = 0, 0
        for t, (im, lb, (x, y)) in enumerate(zip(images, labels, corners)):
            h, w = im.shape[:2]
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
            own, start = placed[start:start + len(lb)], start + len(lb)
            if x2 <= x1 or y2 <= y1:
                assert ((own[:, 3] == own[:, 1]) | (own[:, 4] == own[:, 2])).all()  # no box either
                continue
            shown += 1
            assert np.array_equal(canvas[y1:y2, x1:x2], im[y1 - y:y2 - y, x1 - x:x2 - x])  # not covered by another
            assert t or (x1, y1, x2, y2) == (x, y, x + w, y + h)  # the sample's own image whole
            area = (own[:, 3] - own[:, 1]) * (own[:, 4] - own[:, 2]) > 0
            inside = ((own[:, 1] >= x1 - 1e-3) & (own[:, 2] >= y1 - 1e-3) & (own[:, 3] <= x2 + 1e-3)
                      & (own[:, 4] <= y2 + 1e-3))
            assert inside[area].all()
        assert shown == 9 or (size, xc, yc) in [(2 * s, 0, 0), (2 * s, s - 1, s - 1), (2 * s, s // 3, 2 * s // 3)]


def test_load_mosaic9_crops_the_canvas_and_its_labels(source):
    ds = dataset(source, imgsz=128)
    s, companions = 128, list(range(1, 9))
    for seed in range(3):
        img, out = ds.load_mosaic9(0, np.random.default_rng(seed), companions)
        draw = np.random.default_rng(seed)  # the same draws: the window's corner
        xc, yc = (int(draw.uniform(0, s)) for _ in range(2))
        images = [ds.load_image(i)[0] for i in [0, *companions]]
        corners = mosaic9_corners([im.shape[:2] for im in images], s, xc, yc)
        canvas, placed = compose(images, [ds.labels[i] for i in [0, *companions]], corners, 2 * s)
        assert img.shape == (s, s, 3) and np.array_equal(img, canvas[s // 2:s // 2 + s, s // 2:s // 2 + s])
        window = placed.copy()
        window[:, 1:] = (window[:, 1:] - s // 2).clip(0, s)
        assert out[:, 1:].min() >= 0 and out[:, 1:].max() <= s
        rows = {tuple(r) for r in window.round(3).tolist()}
        assert all(tuple(r) in rows for r in out.round(3).tolist())  # every label is a canvas label in the window
        whole = (placed[:, 1:3] >= s // 2).all(1) & (placed[:, 3:5] <= s // 2 + s).all(1)
        big = ((placed[:, 3:5] - placed[:, 1:3]) > 2).all(1)
        assert len(out) >= (whole & big).sum()  # boxes wholly in the window are kept
        assert len(out) <= (((window[:, 3:5] - window[:, 1:3]) > 2).all(1)).sum()  # boxes cut away are dropped


def test_training_samples_use_mosaic9_at_its_share(source):
    ds = dataset(source, imgsz=128, mosaic9=1.0)
    for i in range(3):
        img, labels, _, shapes = ds[(2, i)]
        draw = np.random.default_rng([1, 2, i])  # seed 1, epoch 2, index i: mosaic, then mosaic9's share
        assert draw.random() < 1 and draw.random() < 1
        expected, lb = ds.load_mosaic9(i, draw)
        assert shapes is None and torch.equal(img, torch.from_numpy(expected.transpose(2, 0, 1)[::-1].copy()))
        assert len(labels) == len(lb)
    augmented = dataset(source, mosaic9=1.0, degrees=5.0, translate=0.2, scale=0.9, hsv_h=0.015, hsv_s=0.7,
                        hsv_v=0.4, fliplr=0.5)  # YOLOv7's p5 values
    batch = [augmented[(0, i)] for i in range(8)]
    for _, labels, _, _ in batch:
        xyxy = xywh2xyxy(labels[:, 2:])
        assert ((xyxy >= -1e-6) & (xyxy <= 1 + 1e-6)).all()  # clipped to the image
    check_plot(*LoadImagesAndLabels.collate_fn(batch)[:3], f"mosaic9_{source[0]}.jpg")
