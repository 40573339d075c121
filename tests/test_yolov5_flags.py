"""YOLOv5's inference flags on real checkpoints and the generated shapes images: several --weights (an
ensemble), val.py --task study, detect.py --visualize and --dnn (OpenCV DNN) in val.py and detect.py."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

import detect
import export
import val
from helpers import detecting_checkpoint
from utils.deploy.backends import load_backend
from utils.datasets.sources import prepare
from utils.ops import non_max_suppression, scale_boxes

IMGSZ = 96
CONF, IOU = 0.25, 0.45


@pytest.fixture(scope="module")
def ckpts(tiny_data, tmp_path_factory):
    """Two 3-class yolov5n checkpoints with different detections on the shapes images, and two that do not fit
    with them."""
    from models.yolo import Model
    from utils.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("flags_weights")
    files = sorted((tiny_data.parent / "shapes" / "images" / "val").iterdir())
    calib = torch.stack([torch.from_numpy(prepare(cv2.imread(str(f)), IMGSZ, 32, False)) for f in files]).float() / 255
    other_names = detecting_checkpoint(d / "four.pt", 3, names=("a", "b", "c", "d"))
    p6 = Model("yolov5n6.yaml", nc=3)
    p6.names = ["circle", "square", "triangle"]
    save_checkpoint(d / "p6.pt", p6)
    a, b = (detecting_checkpoint(d / f"{k}.pt", seed, calib=calib) for k, seed in (("a", 1), ("b", 2)))
    return a, b, other_names, d / "p6.pt"


@pytest.fixture(scope="module")
def image(tiny_data, tmp_path_factory):
    src = sorted((tiny_data.parent / "shapes" / "images" / "val").iterdir())[3]  # both checkpoints detect here
    folder = tmp_path_factory.mktemp("flags_image")
    shutil.copy(src, folder / src.name)
    return folder / src.name


def _raw(weights, im0):
    """The decoded predictions of ``weights`` on ``im0`` letterboxed as detect.py does."""
    backend = load_backend(weights)
    x = torch.from_numpy(prepare(im0, IMGSZ, backend.stride, auto=True))[None].float() / 255
    return backend(x), x.shape[2:]


# ------------------------------------------------------------------------------------------------ ensemble
def test_ensemble_detections_are_nms_of_the_concatenated_predictions(ckpts, image, tmp_path):
    a, b = ckpts[:2]
    (res,) = detect.run(weights=[a, b], source=image, imgsz=IMGSZ, conf_thres=CONF, iou_thres=IOU, nosave=True,
                        project=tmp_path)
    im0 = cv2.imread(str(image))
    (ya, shape), (yb, _) = _raw(a, im0), _raw(b, im0)
    det = non_max_suppression(torch.cat((ya, yb), 1), CONF, IOU, max_det=1000)[0]
    scale_boxes(shape, det[:, :4], im0.shape[:2])
    np.testing.assert_allclose(res.det, det.numpy(), atol=1e-4)
    singles = [detect.run(weights=w, source=image, imgsz=IMGSZ, conf_thres=CONF, iou_thres=IOU, nosave=True,
                          project=tmp_path)[0].det for w in (a, b)]
    # a box NMS keeps from the union is kept by its own model too; both models contribute
    from_a = [any(np.allclose(r, s, atol=1e-4) for s in singles[0]) for r in res.det]
    from_b = [any(np.allclose(r, s, atol=1e-4) for s in singles[1]) for r in res.det]
    assert all(x or y for x, y in zip(from_a, from_b)) and any(from_a) and any(from_b)


def test_ensemble_refuses_other_classes_strides_and_exported_files(ckpts, image, tmp_path):
    a, _, four, p6 = ckpts
    with pytest.raises(ValueError, match="must have the same classes"):
        load_backend([a, four])
    with pytest.raises(ValueError, match="must have the same stride"):
        load_backend([a, p6])
    onnx = tmp_path / "a.onnx"
    onnx.write_bytes(b"not read")
    with pytest.raises(ValueError, match="takes PyTorch .pt checkpoints only, not .*a.onnx"):
        detect.run(weights=[a, str(onnx)], source=image, project=tmp_path)


def test_val_ensemble_of_a_model_with_itself_scores_as_the_model(ckpts, tiny_data, tmp_path):
    a = str(ckpts[0])
    opt = val.parse_opt(["--weights", a, a, "--data", str(tiny_data)])
    assert opt.weights == [a, a] and opt.imgsz == 640
    kw = dict(data=str(tiny_data), imgsz=IMGSZ, batch_size=8, workers=0, plots=False, project=tmp_path)
    single, _, _ = val.run(weights=a, **kw)
    double, _, _ = val.run(weights=[a, a], **kw)  # every box twice: NMS keeps one of each pair
    assert single[2] > 0  # the checkpoint finds something, so the comparison means something
    np.testing.assert_allclose(double[:4], single[:4], atol=1e-9)


# --------------------------------------------------------------------------------------------------- study
def test_study_writes_a_row_per_size_and_the_plot(ckpts, tiny_data, tmp_path):
    a, b = ckpts[:2]
    files = val.run_study([a, b], data=str(tiny_data), sizes=[64, 96], batch_size=8, workers=0, project=tmp_path,
                          name="s", conf_thres=0.01)
    assert [f.name for f in files] == ["study_tiny_a.txt", "study_tiny_b.txt"]
    for f in files:
        rows = np.loadtxt(f, ndmin=2)
        assert rows.shape == (2, 10)
        assert ((rows[:, :4] >= 0) & (rows[:, :4] <= 1)).all() and (rows[:, 7:] >= 0).all()
    single, _, _ = val.run(weights=a, data=str(tiny_data), imgsz=96, batch_size=8, workers=0, plots=False,
                           project=tmp_path, conf_thres=0.01)
    np.testing.assert_allclose(np.loadtxt(files[0], ndmin=2)[1, :4], single[:4], atol=1e-4)  # the 96 px row
    assert (tmp_path / "s" / "study.png").stat().st_size > 10_000
    assert val.parse_opt(["--weights", "x.pt", "--task", "study"]).imgsz == list(range(256, 1537, 128))
    with pytest.raises(ValueError, match="call val.run_study"):
        val.run(weights=a, task="study")


# ----------------------------------------------------------------------------------------------- visualize
def test_visualize_writes_a_png_per_layer(ckpts, image, tmp_path):
    from utils.checkpoint import load_model

    a = ckpts[0]
    detect.run(weights=a, source=image, imgsz=IMGSZ, visualize=True, nosave=True, project=tmp_path, name="v")
    folder = tmp_path / "v" / "features" / image.stem
    files = sorted(folder.glob("*.png"), key=lambda f: int(f.name.split("_")[0][5:]))
    layers = load_model(a, fuse=True).model[:-1]
    assert [f.name for f in files] == [f"stage{i}_{type(m).__name__}_features.png" for i, m in enumerate(layers)]
    first = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    assert first is not None and first.std() > 5  # maps drawn, not a blank canvas
    with pytest.raises(ValueError, match="--visualize needs one PyTorch .pt checkpoint"):
        detect.run(weights=[a, ckpts[1]], source=image, visualize=True, project=tmp_path)


# ----------------------------------------------------------------------------------------------------- dnn
def test_dnn_runs_onnx_like_onnxruntime_in_val_and_detect(ckpts, tiny_data, image, tmp_path):
    weights = shutil.copy(ckpts[0], tmp_path / "a.pt")
    (result,) = export.run(weights=weights, include=["onnx"], imgsz=IMGSZ, opset=12)
    assert result.ok, result.error
    dnn, ort = load_backend(result.file, dnn=True), load_backend(result.file)
    assert type(dnn).__name__ == "OpenCVDNNBackend" and dnn.names == ort.names and dnn.imgsz == (IMGSZ, IMGSZ)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    torch.testing.assert_close(dnn(x), ort(x), atol=1e-4, rtol=1e-4)
    kw = dict(data=str(tiny_data), batch_size=8, workers=0, plots=False, project=tmp_path, conf_thres=0.01)
    with_dnn, maps_dnn, _ = val.run(weights=str(result.file), dnn=True, **kw)
    with_ort, maps_ort, _ = val.run(weights=str(result.file), **kw)
    np.testing.assert_allclose(with_dnn[:4], with_ort[:4], atol=1e-3)
    np.testing.assert_allclose(maps_dnn, maps_ort, atol=1e-3)
    folder = image.parent.parent / "val_images"
    shutil.copytree(tiny_data.parent / "shapes" / "images" / "val", folder, dirs_exist_ok=True)
    by_dnn, by_ort = (detect.run(weights=str(result.file), source=folder, dnn=flag, nosave=True, project=tmp_path)
                      for flag in (True, False))
    assert len(by_dnn) == len(by_ort) == 8 and sum(len(r.det) for r in by_ort) > 8
    for d1, d2 in zip(by_dnn, by_ort):  # equal scores may come in either order: compare sorted rows
        np.testing.assert_allclose(*(d[np.lexsort(np.round(d, 1).T[::-1])] for d in (d1.det, d2.det)), atol=1e-2)
    with pytest.raises(ValueError, match="--dnn .* runs .onnx files only"):
        load_backend(weights, dnn=True)
