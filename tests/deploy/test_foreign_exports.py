"""Files written by YOLOv5 v7.0's and YOLOv7's own export code run in val, detect and the hub API.

The files (tests/data/foreign, made by tools/make_foreign_exports.py) are tiny models of each project's
own code with random weights, exported by each project's export.py at a fixed 128x128 input. Detections
are compared with the ones each project's own PyTorch model and NMS gave on the same input
(references.json) and with the file run directly by its runtime.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import hubconf
import val
from conftest import SHARED
from utils.deploy.backends import load_backend
from utils.deploy.detections import postprocess
from utils.general import ROOT, load_yaml
from utils.ops import scale_boxes
from utils.datasets.sources import prepare

FOREIGN = ROOT / "tests" / "data" / "foreign"
REFS = json.loads((FOREIGN / "references.json").read_text())
IMGSZ, CONF, IOU = 128, 0.25, 0.45
FILES = {  # id: (path, project)
    "yolov5-onnx": ("yolov5/y5.onnx", "yolov5"),
    "yolov5-torchscript": ("yolov5/y5.torchscript", "yolov5"),
    "yolov5-openvino": ("yolov5/y5_openvino_model", "yolov5"),
    "yolov7-grid-onnx": ("yolov7/y7_grid.onnx", "yolov7"),
    "yolov7-end2end-onnx": ("yolov7/y7_end2end_ort.onnx", "yolov7"),
}
COCO128 = SHARED / "datasets" / "coco128"


def coco_names() -> list[str]:
    names = load_yaml(ROOT / "data" / "coco128.yaml")["names"]
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def expected_names(project: str) -> list[str]:
    return coco_names() if project == "yolov5" else [str(i) for i in range(80)]  # YOLOv7 stores no names


def bus_square() -> np.ndarray:
    """The central square of bus.jpg, the image the references were made on (as the tool crops it)."""
    im = cv2.imread(str(SHARED / "images" / "bus.jpg"))
    s = min(im.shape[:2])
    y, x = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
    return np.ascontiguousarray(im[y:y + s, x:x + s])


def reference(project: str, shape0=None) -> torch.Tensor:
    """The exporter's own detections (n, 6) in input pixels, or scaled to an image of ``shape0``."""
    d = torch.tensor(REFS[project][f"{IMGSZ}x{IMGSZ}"], dtype=torch.float32).reshape(-1, 6)
    if shape0 is not None:
        scale_boxes((IMGSZ, IMGSZ), d[:, :4], shape0)
    return d


def assert_same(det, ref, box_atol=0.02):
    """The same detections in any order. A tie is allowed: random weights give some neighbouring cells the
    same score to 1e-5 and the same box size, and NMS keeps whichever comes first (float rounding decides),
    so a reference box may come back as an equal-score, equal-size box of the next cell."""
    det = torch.as_tensor(det, dtype=torch.float32).reshape(-1, 6)
    assert len(det) == len(ref) > 5, (len(det), len(ref))

    def wh(b):
        return torch.stack((b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]), -1)

    unmatched, ties = list(range(len(det))), 0
    for r in ref:
        same = [i for i in unmatched if det[i, 5] == r[5] and abs(det[i, 4] - r[4]) <= 2e-4
                and (wh(det[i, :4]) - wh(r[:4])).abs().max() <= box_atol]
        exact = [i for i in same if (det[i, :4] - r[:4]).abs().max() <= box_atol]
        assert exact or same, f"no detection matches the reference {r.tolist()}"
        ties += not exact
        unmatched.remove((exact or same)[0])
    assert ties <= 2, f"{ties} reference boxes matched only by a tie"


@pytest.fixture(scope="module")
def square(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("foreign_images") / "bus_square.jpg"
    cv2.imwrite(str(path), bus_square(), [cv2.IMWRITE_JPEG_QUALITY, 100])
    return path


@pytest.fixture(scope="module")
def coco4(tmp_path_factory) -> Path:
    """Four coco128 images with labels and COCO's names."""
    import shutil

    import yaml

    root = tmp_path_factory.mktemp("coco4")
    images = sorted((COCO128 / "images" / "train2017").glob("*.jpg"))[:4]
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for im in images:
        shutil.copy(im, root / "images" / im.name)
        label = COCO128 / "labels" / "train2017" / f"{im.stem}.txt"
        if label.is_file():
            shutil.copy(label, root / "labels" / label.name)
    data = root / "coco4.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": coco_names()}))
    return data


# ------------------------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("key", list(FILES))
def test_foreign_file_names_size_and_numbers(key, yolo_logs):
    """Names (YOLOv5's Python-literal metadata; numbered for YOLOv7), the graph's fixed input, and the
    exporter's own detections from our backend."""
    path, project = FILES[key]
    backend = load_backend(FOREIGN / path)
    assert backend.names == expected_names(project)
    assert backend.stride == 32 and backend.imgsz == (IMGSZ, IMGSZ) and backend.batch == 1
    if project == "yolov7":
        assert yolo_logs.text.count("has no class names") == 1
    x = torch.from_numpy(prepare(bus_square(), IMGSZ, 32, auto=False))[None].float() / 255
    det = postprocess(backend(x), CONF, IOU, end2end=backend.end2end)[0]
    assert_same(det, reference(project))


@pytest.mark.parametrize("key", [k for k in FILES if k.endswith("onnx")])
def test_foreign_onnx_output_equals_onnxruntime(key):
    """Our backend returns what ONNX Runtime computes from the file (decoded outputs as they are)."""
    import onnxruntime as ort

    path, _ = FILES[key]
    backend = load_backend(FOREIGN / path)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    direct = ort.InferenceSession(str(FOREIGN / path)).run(None, {"images": x.numpy()})[0]
    y = backend(x)
    if backend.end2end:  # YOLOv7's rows [batch, x0, y0, x1, y1, class, score] in our (num, boxes, scores, classes)
        n = int(y[0][0, 0])
        assert n == len(direct)
        got = torch.cat((y[1][0, :n], y[3][0, :n, None], y[2][0, :n, None]), 1).numpy()
        np.testing.assert_array_equal(got, direct[:, 1:])
    else:
        np.testing.assert_array_equal(y.numpy(), direct)


def test_yolov5_torchscript_output_equals_torch_jit():
    backend = load_backend(FOREIGN / FILES["yolov5-torchscript"][0])
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    direct = torch.jit.load(str(FOREIGN / FILES["yolov5-torchscript"][0]))(x)[0]  # YOLOv5's returns a tuple
    torch.testing.assert_close(backend(x), direct, atol=0, rtol=0)


# ------------------------------------------------------------------------------------- val / detect / hub
@pytest.mark.parametrize("key", list(FILES))
def test_foreign_file_in_detect_and_hub(key, square, tmp_path):
    path, project = FILES[key]
    weights = FOREIGN / path
    ref = reference(project, bus_square().shape[:2])
    (r,) = detect.run(weights=weights, source=square, imgsz=IMGSZ, conf_thres=CONF, iou_thres=IOU, nosave=True,
                      project=tmp_path)
    assert_same(r.det, ref, box_atol=0.2)  # 810 px image: 128 px input scaled 6.3x
    model = hubconf.custom(path=weights, _verbose=False)
    assert model.names == expected_names(project)
    results = model(str(square), size=IMGSZ)
    assert_same(results.xyxy[0], ref, box_atol=0.2)
    assert results.pandas().xyxy[0]["name"].tolist() == [expected_names(project)[int(c)] for c in results.xyxy[0][:, 5]]


@pytest.mark.parametrize("key", list(FILES))
def test_foreign_file_in_val(key, coco4, tmp_path, yolo_logs):
    path, _ = FILES[key]
    metrics, maps, _ = val.run(data=coco4, weights=FOREIGN / path, imgsz=640, batch_size=4, workers=0,
                               project=tmp_path, plots=False)
    assert len(maps) == 80 and all(np.isfinite(metrics))
    assert f"fixed input {IMGSZ}x{IMGSZ}, batch 1" in yolo_logs.text
    assert f"at shape (1, 3, {IMGSZ}, {IMGSZ})" in yolo_logs.text  # the file's size was run, not --imgsz 640
    if "end2end" in key:  # its own NMS thresholds, not ours: said, not silently ignored
        assert "--iou-thres does not apply" in yolo_logs.text


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("path, match", [
    ("yolov7/y7_raw.onnx", r"raw feature maps \(YOLOv7 export.py without --grid\): re-export with --grid"),
    ("yolov7/y7_end2end_trt.onnx", r"TensorRT plugin ops \(EfficientNMS_TRT.*re-export with --grid --end2end --max-wh"),
])
def test_unusable_yolov7_forms_say_which_export_option(path, match):
    with pytest.raises(ValueError, match=match) as e:
        load_backend(FOREIGN / path)
    assert "\n" not in str(e.value)



def test_torchscript_without_metadata_is_refused_in_val_with_the_reason(coco4, tmp_path):
    # YOLOv7's export.py saves its trace without config.txt: no names, no class count before a forward
    bare = tmp_path / "y7_like.torchscript"
    torch.jit.save(torch.jit.load(str(FOREIGN / FILES["yolov5-torchscript"][0])), str(bare))
    with pytest.raises(ValueError, match=r"y7_like.torchscript has no class names or class count in its metadata.*"
                                         r"re-export it with this project's export.py") as e:
        val.run(data=coco4, weights=bare, imgsz=IMGSZ, batch_size=4, workers=0, project=tmp_path, plots=False)
    assert "predicts 0 classes" not in str(e.value)

def _edited_copy(tmp_path, edit) -> Path:
    """y5.onnx with ``edit(model)`` applied (metadata or input dims changed), saved under tmp_path."""
    import onnx

    model = onnx.load(str(FOREIGN / FILES["yolov5-onnx"][0]))
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return path


def _set_names(value):
    def edit(model):
        (p,) = [p for p in model.metadata_props if p.key == "names"]
        p.value = value
    return edit


def test_names_that_disagree_with_the_output_are_refused(tmp_path):
    path = _edited_copy(tmp_path, _set_names("{0: 'person', 1: 'bicycle', 2: 'car'}"))
    with pytest.raises(ValueError, match="lists 3 class names in its metadata but its output has 80 classes"):
        load_backend(path)


def test_metadata_is_never_run_as_code(tmp_path):
    marker = tmp_path / "ran"
    path = _edited_copy(tmp_path, _set_names(f"__import__('pathlib').Path({str(marker)!r}).touch()"))
    with pytest.raises(ValueError, match="'names' metadata is not a list or {id: name} dict"):
        load_backend(path)
    assert not marker.exists()


def test_symbolic_input_dims_are_dynamic(tmp_path):
    def edit(model):
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[0].dim_param, dims[2].dim_param = "batch", "height"
    backend = load_backend(_edited_copy(tmp_path, edit))
    assert backend.imgsz is None and backend.batch is None


def test_yolov5_onnx_fixed_input_in_detect_on_a_portrait_image(tmp_path, yolo_logs):
    """YOLOv5's ONNX has a fixed input and no imgsz metadata: detect letterboxes an 810x1080 image to it
    (before: letterboxed to 480x640 by default and ONNX Runtime failed with 'Got invalid dimensions')."""
    (r,) = detect.run(weights=FOREIGN / FILES["yolov5-onnx"][0], source=SHARED / "images" / "bus.jpg", nosave=True,
                      project=tmp_path)
    assert f"exported for ({IMGSZ}, {IMGSZ}) inputs" in yolo_logs.text
    assert f"bus.jpg: {IMGSZ}x{IMGSZ} " in yolo_logs.text
    assert r.shape == (1080, 810)


def test_yolov7_rows_of_several_images_go_to_their_image():
    """YOLOv7's --end2end rows carry the image index: an image without rows gets none, the others theirs."""
    from utils.deploy.foreign_exports import yolov7_rows_to_end2end

    rows = torch.tensor([[2, 1, 2, 3, 4, 5, 0.9], [0, 5, 6, 7, 8, 1, 0.5], [2, 2, 2, 3, 4, 6, 0.8]])
    dets = postprocess(yolov7_rows_to_end2end(rows, 3), 0.25, 0.45, end2end=True)
    assert [len(d) for d in dets] == [1, 0, 2]
    assert dets[0].tolist() == [[5, 6, 7, 8, 0.5, 1]]
    torch.testing.assert_close(dets[2], torch.tensor([[1, 2, 3, 4, 0.9, 5], [2, 2, 3, 4, 0.8, 6]]))


def test_yolov7_end2end_file_takes_several_images_with_different_counts():
    """The batch-1 end2end file runs image by image; images with different numbers of detections come back
    together, each with its own detections, as when given alone."""
    backend = load_backend(FOREIGN / FILES["yolov7-end2end-onnx"][0])
    noise = [torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(s)) for s in (0, 3, 4)]
    x = torch.cat(noise)  # seed 3 gives 26 rows, the others 27 (random weights: most boxes pass)
    raw = [backend(x[i:i + 1]) for i in range(3)]
    assert len({int(r[0]) for r in raw}) > 1  # the case: chunks with different numbers of rows
    alone = [postprocess(r, CONF, IOU, end2end=True)[0] for r in raw]
    together = postprocess(backend(x), CONF, IOU, end2end=True)
    for a, t in zip(alone, together):
        torch.testing.assert_close(t, a)
