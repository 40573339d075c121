"""AutoAnchor: BPR of YOLOv5's default anchors on coco128, and re-fitting on a dataset they miss."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COCO128_YAML
from models.yolo import Model
from utils.training.autoanchor import anchor_stats, check_anchors, kmean_anchors, label_wh

COCO128 = COCO128_YAML.parent
DEFAULT_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
# Five stride-2 convs, Detect on strides 8, 16, 32: the anchor layout of yolov5s without its weight
TINY_P3_P5 = {
    "nc": 80, "anchors": DEFAULT_ANCHORS,
    "backbone": [[-1, 1, "Conv", [8, 3, 2]]] * 5,
    "head": [[[2, 3, 4], 1, "Detect", ["nc", "anchors"]]],
}


def pixel_anchors(model) -> torch.Tensor:
    det = model.model[-1]
    return (det.anchors * det.stride.view(-1, 1, 1)).view(-1, 2)


@pytest.fixture(scope="module")
def coco128():
    """labels and image (w, h) read straight from the files, as the dataloader would hold them."""
    images = sorted((COCO128 / "images" / "train2017").glob("*.jpg"))
    if not images:
        pytest.skip(f"coco128 not found under {COCO128}")
    labels, shapes = [], []
    for p in images:
        f = COCO128 / "labels" / "train2017" / f"{p.stem}.txt"
        labels.append(np.loadtxt(f, ndmin=2).reshape(-1, 5) if f.exists() else np.zeros((0, 5)))
        with Image.open(p) as im:
            shapes.append(im.size)
    return SimpleNamespace(labels=labels, shapes=np.array(shapes, dtype=np.float64))


def elongated_dataset(n_images=60, seed=0):
    """Thin horizontal and vertical bars (aspect ~10-50): the default anchors recall under half (BPR ~0.46)."""
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(n_images):
        n = 4
        long_side = rng.uniform(0.5, 0.9, n)
        short_side = rng.uniform(0.02, 0.04, n)
        wh = np.stack((long_side, short_side), 1) if i % 2 else np.stack((short_side, long_side), 1)
        xy = rng.uniform(0.3, 0.7, (n, 2))
        labels.append(np.concatenate((np.zeros((n, 1)), xy, wh), 1))
    return SimpleNamespace(labels=labels, shapes=np.tile([640.0, 480.0], (n_images, 1)))


def test_coco128_default_anchors_bpr(coco128):
    assert sum(len(x) for x in coco128.labels) == 929
    model = Model(TINY_P3_P5)
    before = model.model[-1].anchors.clone()
    assert pixel_anchors(model).flatten().tolist() == [float(v) for row in DEFAULT_ANCHORS for v in row]
    # without jitter: 924 of the 929 labels have an anchor within 4x on both sides
    bpr, aat = anchor_stats(label_wh(coco128, 640), pixel_anchors(model).numpy(), thr=4.0)
    assert bpr == pytest.approx(924 / 929)
    assert aat == pytest.approx(4.258, abs=1e-3)
    # with YOLOv5's 0.9-1.1 scale jitter (seed 0); YOLOv5 logs 0.994-0.995 for coco128
    bpr = check_anchors(coco128, model, thr=4.0, imgsz=640, seed=0)
    assert 0.993 <= bpr <= 0.996
    assert torch.equal(model.model[-1].anchors, before)  # a good fit is left alone


def test_check_anchors_refits_elongated_boxes():
    data = elongated_dataset()
    model = Model(TINY_P3_P5)
    original = pixel_anchors(model).numpy()
    old_bpr, _ = anchor_stats(label_wh(data, 640), original)
    assert old_bpr < 0.98

    wrapped = SimpleNamespace(module=model)  # stands in for DDP: check_anchors unwraps .module
    bpr = check_anchors(data, wrapped, thr=4.0, imgsz=640, seed=0)
    assert bpr >= 0.98
    new = pixel_anchors(model)
    assert not np.allclose(new.numpy(), original)
    # the returned BPR is the new anchors' on the same jittered labels; unjittered it is as good
    assert anchor_stats(label_wh(data, 640), new.numpy())[0] >= 0.98
    # sorted small -> large: areas grow over all nine, so the stride-8 level holds the smallest three
    areas = new.prod(1)
    assert (areas[1:] >= areas[:-1]).all()

    # same seed, fresh model, anchors buffer in float64: identical anchors, dtype kept
    again = Model(TINY_P3_P5).double()
    assert check_anchors(data, again, seed=0) == bpr
    assert again.model[-1].anchors.dtype == torch.float64
    assert torch.equal(again.model[-1].anchors.float(), model.model[-1].anchors)


def test_kmean_anchors_on_plain_array():
    """Three tight clusters of (w, h): three anchors land on them, and a seed fixes the result."""
    rng = np.random.default_rng(1)
    centres = np.array([[12.0, 20.0], [80.0, 40.0], [200.0, 300.0]])
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (100, 2)) for c in centres]).astype(np.float32)
    k = kmean_anchors(wh, n=3, thr=4.0, gen=200, verbose=False, seed=3)
    assert k.shape == (3, 2) and k.dtype == np.float32
    np.testing.assert_allclose(k, centres, rtol=0.1)  # sorted by area, like the centres
    np.testing.assert_array_equal(k, kmean_anchors(wh, n=3, thr=4.0, gen=200, verbose=False, seed=3))
    assert anchor_stats(wh, k)[0] == 1.0


def test_no_labels_leaves_anchors():
    data = SimpleNamespace(labels=[np.zeros((0, 5))] * 3, shapes=np.tile([640.0, 640.0], (3, 1)))
    model = Model(TINY_P3_P5)
    before = model.model[-1].anchors.clone()
    assert np.isnan(check_anchors(data, model))
    assert torch.equal(model.model[-1].anchors, before)


@pytest.mark.cuda
def test_check_anchors_on_cuda_model():
    data = elongated_dataset()
    cpu_model = Model(TINY_P3_P5)
    check_anchors(data, cpu_model, seed=0)
    model = Model(TINY_P3_P5).cuda()
    assert check_anchors(data, model, seed=0) >= 0.98
    assert model.model[-1].anchors.device.type == "cuda"
    torch.testing.assert_close(model.model[-1].anchors.cpu(), cpu_model.model[-1].anchors)
