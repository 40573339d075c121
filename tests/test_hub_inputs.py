"""The hub API (hubconf.py, utils/deploy/detections.py) on inputs a user really passes: 16-bit PIL images, images that
share a file name, arrays holding NaN, tensors of any size, URLs and class counts. Each gets the right result or
one clear sentence."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import hubconf
from conftest import SHARED
from models.yolo import Model
from utils.deploy.backends import load_backend
from utils.deploy.detections import AutoShape

BUS = SHARED / "images" / "bus.jpg"


@pytest.fixture(scope="module")
def hub():
    torch.manual_seed(0)
    return AutoShape(Model("yolov5n.yaml", nc=3).eval())


def test_16_bit_pil_image_is_scaled_like_the_same_file(hub, tmp_path):
    png = tmp_path / "gray16.png"
    cv2.imwrite(str(png), cv2.imread(str(BUS), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257)
    pil = Image.open(png)
    assert pil.mode.startswith("I")  # PIL's 16-bit grey
    from_pil = hub(pil, size=160).ims[0].astype(np.int16)
    from_file = hub(str(png), size=160).ims[0].astype(np.int16)
    assert abs(from_pil.mean() - from_file.mean()) < 0.5, (from_pil.mean(), from_file.mean())  # was 254.8 vs 116.4
    assert np.abs(from_pil - from_file).max() <= 1  # 65535 / 257 against OpenCV's >> 8: at most one level apart


def test_save_writes_one_file_per_image_when_names_repeat(hub, tmp_path, yolo_logs):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(BUS, other / "bus.jpg")
    flipped = cv2.flip(cv2.imread(str(BUS)), 1)
    cv2.imwrite(str(other / "bus.png"), flipped)  # a third image saved as bus.jpg too
    res = hub([str(BUS), str(other / "bus.jpg"), str(other / "bus.png"), str(BUS)], size=160)
    out = res.save(save_dir=tmp_path / "hub")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bus.jpg", "bus_2.jpg", "bus_3.jpg", "bus_4.jpg"]
    third = cv2.imread(str(out / "bus_3.jpg"))
    assert third.shape == flipped.shape and np.abs(third.astype(int) - flipped).mean() < 10  # the flipped one, kept
    assert f"Saved 4 images to {out}" in yolo_logs.text


def test_float_array_with_nan_or_inf_is_refused_with_a_count(hub):
    im = np.random.default_rng(0).random((64, 96, 3), dtype=np.float32)
    im[0, :5, 0] = np.nan
    im[1, 0, :2] = np.inf
    with pytest.raises(ValueError, match=r"image 0: float array holds 7 NaN or infinite value\(s\)"):
        hub(im)


def test_tensor_of_a_size_off_the_stride_is_refused_with_the_multiple(hub):
    with pytest.raises(ValueError, match=r"100x90 is not a multiple of the model's stride 32.*multiples of 32"):
        hub(torch.zeros(1, 3, 100, 90))
    assert hub(torch.zeros(1, 3, 96, 64)).shape[0] == 1  # multiples run
    backend = load_backend(hub.model, fuse=False)
    with pytest.raises(ValueError, match="multiple of the model's stride 32"):
        backend(torch.zeros(2, 3, 33, 64))


def test_custom_refuses_a_url_without_touching_the_network():
    with pytest.raises(ValueError, match=r"custom\(path='https://example\.invalid/best\.pt'\).*never downloaded.*"
                                         r"local path"):
        hubconf.custom(path="https://example.invalid/best.pt", _verbose=False)


@pytest.mark.parametrize("classes", [0, -3])
def test_class_count_below_one_is_refused(classes):
    with pytest.raises(ValueError, match=rf"yolov5n\(classes={classes}\).*>= 1"):
        hubconf.yolov5n(classes=classes, autoshape=False, device="cpu")
    assert hubconf.yolov5n(classes=np.int64(2), autoshape=False, device="cpu").model[-1].nc == 2
