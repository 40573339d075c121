"""detect.py, utils/datasets/sources.py and the hub API on the real bus.jpg and zidane.jpg, with a real checkpoint.

The checkpoint: why not the ``coco128_run`` fixture? One epoch at 96 px leaves the model at its bias
prior: its best score on bus.jpg is 1.7e-4, the same on zidane.jpg, so no threshold gives detections
that depend on the image. Instead ``weights`` saves a yolov5s_RepVGG whose weights are random, with
random BatchNorm statistics (so folding changes every kernel) and a Detect head rescaled so that its
objectness and class logits vary over each image (std 1.5 around -7 and -3): about 20 detections per
image at conf 0.25, different for each image, with boxes of ordinary sizes.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import hubconf
from conftest import SHARED
from utils.checkpoint import load_model, save_checkpoint
from utils.deploy.detections import AutoShape
from utils.general import ROOT, load_yaml
from utils.datasets.sources import LoadImages, LoadStreams, SourceUnavailable, call_with_timeout

SHARED_IMAGES = SHARED / "images"
IMAGE_DIR = SHARED_IMAGES if (SHARED_IMAGES / "bus.jpg").is_file() else ROOT / "data" / "images"
IMGSZ = 320
CONF = 0.25
HUB_BUILT = ("yolov5n6", "yolov7-tiny", "yolov7-w6")  # one per family the hub test builds (the rest: name only)


# ---------------------------------------------------------------------------------------------- fixtures
def _coco_names() -> list[str]:
    names = load_yaml(ROOT / "data" / "coco128.yaml")["names"]
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An unfolded yolov5s_RepVGG checkpoint with image-dependent detections (see the module docstring)."""
    from helpers import randomize_batchnorm_
    from models.yolo import Model
    from utils.datasets.sources import prepare

    torch.manual_seed(0)
    model = Model("yolov5s_RepVGG.yaml", nc=80)
    randomize_batchnorm_(model)
    model.names = _coco_names()
    model.eval()
    x = torch.from_numpy(prepare(cv2.imread(str(IMAGE_DIR / "bus.jpg")), IMGSZ, 32, True))[None].float() / 255
    d = model.model[-1]
    with torch.no_grad():
        _, raw = model(x)
        for conv, r in zip(d.m, raw):
            z = r[0].permute(0, 3, 1, 2).reshape(d.na, d.no, -1)  # (anchors, outputs, positions)
            mu, sd = z.mean(-1), z.std(-1).clamp_min(1e-6)
            w, b = conv.weight.view(d.na, d.no, -1), conv.bias.view(d.na, d.no)
            # xywh near the cell centre and anchor size; objectness and classes spread over the image
            for sl, std, mean in ((slice(0, 4), 0.3, 0.0), (slice(4, 5), 1.5, -7.0), (slice(5, None), 1.5, -3.0)):
                scale = std / sd[:, sl]
                w[:, sl] *= scale[..., None]
                b[:, sl] = (b[:, sl] - mu[:, sl]) * scale + mean
    path = tmp_path_factory.mktemp("weights") / "rand.pt"
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copy(IMAGE_DIR / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """12 frames of bus.jpg (320x432, sliding 8 px a frame) at 10 FPS, mp4v."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    im = cv2.resize(cv2.imread(str(IMAGE_DIR / "bus.jpg")), (320, 432))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 432))
    for i in range(12):
        writer.write(np.roll(im, 8 * i, axis=1))
    writer.release()
    return path


@pytest.fixture(scope="module")
def pt_results(weights, images, tmp_path_factory):
    return detect.run(weights=weights, source=images, imgsz=IMGSZ, conf_thres=CONF, nosave=True,
                      project=tmp_path_factory.mktemp("runs"))


# ----------------------------------------------------------------------------------------------- helpers
def count_frames(path: Path) -> tuple[int, int, float, tuple[int, int]]:
    """(frames read, CAP_PROP_FRAME_COUNT, fps, (w, h)) of a video file."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    info = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS), (int(cap.get(3)), int(cap.get(4)))
    cap.release()
    return (n, *info)


def _tied(x: np.ndarray, margin: float) -> np.ndarray:
    """Rows with a same-class, overlapping neighbour of (nearly) equal confidence: NMS keeps one of such a
    pair by processing order alone, so two correct implementations may keep different ones."""
    tied = np.zeros(len(x), dtype=bool)
    for i, r in enumerate(x):
        ix = np.minimum(x[:, 2], r[2]) - np.maximum(x[:, 0], r[0])
        iy = np.minimum(x[:, 3], r[3]) - np.maximum(x[:, 1], r[1])
        near = (x[:, 5] == r[5]) & (np.abs(x[:, 4] - r[4]) <= margin) & (ix > 0) & (iy >= 0)
        tied[i] = near.sum() > 1  # itself and at least one other
    return tied


def assert_same_detections(a, b, tol: float = 1.0, margin: float = 1e-3, thres: float = CONF, ties_ok: bool = False):
    """Every detection of one clearly above the threshold has a twin in the other: same class, box
    corners within ``tol`` px and confidence within ``margin``. Detections whose confidence lies within
    ``margin`` of the threshold may appear on one side only (rounding decides them), and with
    ``ties_ok`` so may those NMS had to choose between by order (``_tied``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    checked = 0
    for x, y in ((a, b), (b, a)):
        rows = x[(x[:, 4] > thres + margin) & ~(_tied(x, 1e-4) if ties_ok else False)]
        for row in rows:
            twins = (y[:, 5] == row[5]) & (np.abs(y[:, :4] - row[:4]).max(1) <= tol) & (np.abs(y[:, 4] - row[4]) <= margin)
            assert twins.any(), f"no match for {row.round(3).tolist()}"
        checked += len(rows)
    assert checked >= (len(a) + len(b)) // 2, "too few detections compared"


def export(weights: Path, folder: Path, **kw) -> dict[str, Path]:
    """Export a copy of ``weights`` in ``folder``; returns {format: file}."""
    export_mod = pytest.importorskip("export")
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / weights.name
    shutil.copy(weights, src)
    results = export_mod.run(weights=str(src), imgsz=(IMGSZ, IMGSZ), **kw)
    files = {r.format: r.file for r in results if r.file is not None and Path(r.file).exists()}
    missing = [r.format for r in results if r.format not in files]
    assert not missing, f"export wrote no file for {missing}: {[r.error for r in results]}"
    return files


# --------------------------------------------------------------------------------------------- detect.py
def test_pt_detections_are_real_and_logged(weights, images, tmp_path, yolo_logs):
    results = detect.run(weights=weights, source=images, imgsz=IMGSZ, project=tmp_path, name="exp")
    assert [Path(r.path).name for r in results] == ["bus.jpg", "zidane.jpg"]
    assert all(len(r.det) >= 5 for r in results), [len(r.det) for r in results]
    assert results[0].shape == (1080, 810) and results[1].shape == (720, 1280)
    for r in results:
        d = r.det
        h, w = r.shape
        assert (d[:, 4] > CONF).all() and (d[:, 4] <= 1).all() and (np.diff(d[:, 4]) <= 0).all()
        assert (d[:, [0, 2]] >= 0).all() and (d[:, [0, 2]] <= w).all() and (d[:, [1, 3]] <= h).all()
        assert (d[:, 2] > d[:, 0]).all() and (d[:, 3] > d[:, 1]).all()
    assert not np.array_equal(results[0].det[:, 5], results[1].det[:, 5]) or len(results[0].det) != len(results[1].det)
    text = "\n".join(yolo_logs.messages)
    # "image 1/2 /path/bus.jpg: 320x256 2 horses, 1 tv, 12.3ms"
    line = next(x for x in yolo_logs.messages if x.startswith("image 1/2 "))
    assert str(images / "bus.jpg") in line and ": 320x256 " in line and line.endswith("ms")
    assert any(f"{n} {name}" in line for name in _coco_names() for n in range(1, 30))
    assert "Speed:" in text and f"Results saved to {tmp_path / 'exp'}" in text
    for r in results:  # annotated copies, same size as the originals
        out = cv2.imread(str(tmp_path / "exp" / Path(r.path).name))
        assert out is not None and out.shape[:2] == r.shape


@pytest.mark.slow
def test_fused_onnx_openvino_give_same_detections(weights, images, pt_results, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    fused = tmp_path / "rand-fused.pt"
    save_checkpoint(fused, load_model(weights, fuse=True))
    files = export(weights, tmp_path / "export", include=("onnx", "openvino"), dynamic=True)
    for w in (fused, files["onnx"], files["openvino"]):
        results = detect.run(weights=w, source=images, imgsz=IMGSZ, conf_thres=CONF, nosave=True, project=tmp_path)
        assert [r.path for r in results] == [r.path for r in pt_results]
        for a, b in zip(pt_results, results):
            assert_same_detections(a.det, b.det)


@pytest.mark.slow
def test_fixed_shape_and_end2end_exports(weights, images, tmp_path, yolo_logs):
    """A static ONNX export gets its own input size; one with NMS inside gives the detections of our NMS."""
    pytest.importorskip("onnxruntime")
    plain = export(weights, tmp_path / "plain", include=("onnx",))["onnx"]
    e2e = export(weights, tmp_path / "e2e", include=("onnx",), nms=True, conf_thres=CONF, iou_thres=0.45)["onnx"]
    detect.run(weights=plain, source=images / "zidane.jpg", imgsz=256, nosave=True, project=tmp_path)
    assert "exported for (320, 320) inputs" in yolo_logs.text
    assert "zidane.jpg: 320x320 " in yolo_logs.text  # letterboxed to the exported square, not the minimum rectangle
    # square crops: the flat grey letterbox padding would give many equal-score boxes that NMS picks by order
    square = tmp_path / "square"
    square.mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        im = cv2.imread(str(images / name))
        s = min(im.shape[:2])
        cv2.imwrite(str(square / name), im[:s, (im.shape[1] - s) // 2:(im.shape[1] + s) // 2])
    r1 = detect.run(weights=plain, source=square, imgsz=IMGSZ, nosave=True, project=tmp_path)
    r2 = detect.run(weights=e2e, source=square, imgsz=IMGSZ, nosave=True, project=tmp_path)
    for a, b in zip(r1, r2):
        assert len(a.det) >= 5
        assert_same_detections(a.det, b.det, ties_ok=True)


def test_video_frame_counts_and_stride(weights, video, tmp_path):
    for stride, expected in ((1, 12), (2, 6)):
        results = detect.run(weights=weights, source=video, imgsz=IMGSZ, vid_stride=stride, save_txt=True,
                             project=tmp_path, name=f"s{stride}")
        assert [r.frame for r in results] == list(range(1, expected + 1))
        n, n_prop, fps, size = count_frames(tmp_path / f"s{stride}" / "clip.mp4")
        assert n == expected and n_prop == expected and fps == pytest.approx(10) and size == (320, 432)
        labels = sorted((tmp_path / f"s{stride}" / "labels").glob("clip_*.txt"))
        assert len(labels) == sum(len(r.det) > 0 for r in results)


def test_save_txt_conf_crop(weights, images, pt_results, tmp_path):
    results = detect.run(weights=weights, source=images, imgsz=IMGSZ, save_txt=True, save_conf=True, save_crop=True,
                         nosave=True, project=tmp_path, name="exp")
    out = tmp_path / "exp"
    assert not list(out.glob("*.jpg"))  # --nosave: no annotated images
    names = _coco_names()
    for r, ref in zip(results, pt_results):
        assert_same_detections(r.det, ref.det)
        rows = np.loadtxt(out / "labels" / f"{Path(r.path).stem}.txt", ndmin=2)
        assert rows.shape == (len(r.det), 6)
        h, w = r.shape
        xywhn = np.stack(((r.det[:, 0] + r.det[:, 2]) / 2 / w, (r.det[:, 1] + r.det[:, 3]) / 2 / h,
                          (r.det[:, 2] - r.det[:, 0]) / w, (r.det[:, 3] - r.det[:, 1]) / h), 1)
        np.testing.assert_allclose(rows[:, 1:5], xywhn, atol=2e-6)
        np.testing.assert_array_equal(rows[:, 0], r.det[:, 5])
        np.testing.assert_allclose(rows[:, 5], r.det[:, 4], atol=2e-6)
    crops = list((out / "crops").rglob("*.jpg"))
    assert len(crops) == sum(len(r.det) for r in results)
    assert {c.parent.name for c in crops} == {names[int(c)] for r in results for c in r.det[:, 5]}
    assert all(cv2.imread(str(c)) is not None for c in crops)
    # without --save-conf: 5 columns
    detect.run(weights=weights, source=images / "bus.jpg", imgsz=IMGSZ, save_txt=True, nosave=True, project=tmp_path,
               name="noconf")
    assert np.loadtxt(tmp_path / "noconf" / "labels" / "bus.txt", ndmin=2).shape[1] == 5


def test_unreadable_files_are_reported_and_skipped(weights, tmp_path, yolo_logs):
    src = tmp_path / "mixed"
    src.mkdir()
    shutil.copy(IMAGE_DIR / "bus.jpg", src / "bus.jpg")
    (src / "broken.jpg").write_bytes(b"this is not a JPEG" * 10)
    (src / "empty.png").write_bytes(b"")
    (src / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    (src / "notes.md").write_text("not an image")
    results = detect.run(weights=weights, source=src, imgsz=IMGSZ, project=tmp_path)
    assert [Path(r.path).name for r in results] == ["bus.jpg"] and len(results[0].det)
    warnings = [r.getMessage() for r in yolo_logs.records if r.levelno == logging.WARNING]
    for name in ("broken.jpg", "empty.png", "bad.mp4"):
        assert any(f"skipping {src / name}" in w for w in warnings), name
    assert any("notes.md" in w and "ignored" in w for w in warnings)
    assert any("3 of 4 sources skipped" in w for w in warnings)


def test_path_list_glob_and_errors(weights, images, tmp_path):
    (tmp_path / "list.txt").write_text(f"{images / 'zidane.jpg'}\n# a comment\n\nbus.jpg\n")
    shutil.copy(images / "bus.jpg", tmp_path / "bus.jpg")
    assert [Path(f).name for f in LoadImages(tmp_path / "list.txt").files] == ["zidane.jpg", "bus.jpg"]
    assert [Path(f).name for f in LoadImages(str(images / "*.jpg")).files] == ["bus.jpg", "zidane.jpg"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect.run(weights=weights, source=tmp_path / "nope.jpg", project=tmp_path)
    with pytest.raises(ValueError, match="augment"):
        detect.run(weights=tmp_path / "model.onnx", source=images, augment=True, project=tmp_path)


def test_augment_classes_data_half_and_view_img(weights, images, monkeypatch, tmp_path, yolo_logs):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    data = tmp_path / "names.yaml"
    data.write_text("names:\n" + "".join(f"  {i}: thing{i}\n" for i in range(80)))
    results = detect.run(weights=weights, source=images / "bus.jpg", imgsz=IMGSZ, augment=True, view_img=True,
                         half=True, device="cpu", nosave=True, project=tmp_path, data=data, classes=[17, 14],
                         agnostic_nms=True)
    assert len(results) == 1 and len(results[0].det) and set(results[0].det[:, 5]) <= {17, 14}
    assert "--half needs CUDA" in yolo_logs.text and "--view-img: no display" in yolo_logs.text
    assert any(m.startswith("image 1/1 ") and "thing1" in m for m in yolo_logs.messages)
    assert not list(tmp_path.glob("exp*/*.jpg"))


def test_cli_values():
    opt = detect.parse_opt(["--weights", "w.pt", "--imgsz", "640", "480", "--classes", "0", "2"])
    assert opt.imgsz == [640, 480] and opt.classes == [0, 2] and opt.source.endswith("images")
    assert detect.parse_opt(["--weights", "w.pt", "--img", "320"]).imgsz == [320, 320]
    for bad in (["--conf-thres", "1.5"], ["--iou-thres", "-0.1"], ["--max-det", "0"], ["--vid-stride", "0"],
                ["--imgsz", "640", "480", "320"], ["--classes", "-1"], ["--line-thickness", "0"], ["--conf-thres", "x"]):
        with pytest.raises(SystemExit):
            detect.parse_opt(["--weights", "w.pt", *bad])
    with pytest.raises(ValueError, match="conf_thres"):
        detect.run(weights="w.pt", conf_thres=2)


# ------------------------------------------------------------------------------------------------ sources
def test_url_sources_fail_fast_with_clear_message(weights, tmp_path):
    t0 = time.time()
    for url, what in (("http://detect-test.invalid/live.mjpg", "cannot open stream"),
                      ("https://detect-test.invalid/bus.jpg", "cannot fetch")):
        with pytest.raises(SourceUnavailable, match=what) as e:
            detect.run(weights=weights, source=url, project=tmp_path)
        assert url in str(e.value)
    with pytest.raises(SourceUnavailable, match="cannot fetch https://detect-test.invalid/zidane.jpg"):
        hubconf.custom(weights, _verbose=False)("https://detect-test.invalid/zidane.jpg")
    assert time.time() - t0 < 40
    t0 = time.time()  # a call that never answers (a black-holed address) is cut off at the timeout
    with pytest.raises(SourceUnavailable, match="no answer within 0.2s"):
        call_with_timeout(lambda: time.sleep(10), 0.2, "cannot open stream http://10.255.255.1/x")
    assert time.time() - t0 < 2


def test_stream_loader_reads_in_a_thread(video):
    """LoadStreams on a local video file (no network here): frames arrive, iteration ends, threads stop."""
    loader = LoadStreams(str(video), img_size=IMGSZ)
    items = list(loader)
    assert 1 <= len(items) <= 12 and loader.fps == [pytest.approx(10)]
    path, im, im0, cap, s = items[0]
    assert path == str(video) and im.shape[0] == 3 and im0.shape == (432, 320, 3) and cap is None and s == "0: "
    assert not any(t.is_alive() for t in loader.threads)
    with pytest.raises(SourceUnavailable, match="cannot open"):
        LoadStreams(str(video.parent / "missing.mp4"))


@pytest.fixture
def mjpeg_server(video):
    """An MJPEG-over-HTTP stream (what IP cameras serve) on localhost: the 12 frames of ``video``, then it ends."""
    import http.server
    import socketserver
    import threading

    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, im = cap.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", im)[1].tobytes())

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for f in frames:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(f) + f + b"\r\n")
                time.sleep(0.05)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/live.mjpg"
    server.shutdown()
    server.server_close()


def test_http_stream_end_to_end(weights, mjpeg_server, tmp_path, yolo_logs):
    results = detect.run(weights=weights, source=mjpeg_server, imgsz=IMGSZ, save_txt=True, project=tmp_path)
    assert 1 <= len(results) <= 12 and [r.frame for r in results] == list(range(1, len(results) + 1))
    assert all(r.path == mjpeg_server and r.shape == (432, 320) for r in results)
    n, _, _, size = count_frames(tmp_path / "exp" / "live.mp4")
    assert n == len(results) and size == (320, 432)
    assert any(m.startswith("0: 320x256 ") for m in yolo_logs.messages)
    assert any("ended or stopped answering" in m for m in yolo_logs.messages)


# ------------------------------------------------------------------------------------------------ hub API
def test_hub_custom_matches_detect(weights, images, pt_results):
    model = hubconf.custom(weights, _verbose=False)
    assert model.conf == 0.25 and model.iou == 0.45 and model.model.is_folded
    assert not hubconf.custom(weights, autoshape=False, _verbose=False).is_folded  # trainable as saved
    unfolded = AutoShape(load_model(weights))  # folding must not change what is detected
    for r in pt_results:
        res = model(r.path, size=IMGSZ)
        assert_same_detections(res.xyxy[0].numpy(), r.det)
        assert_same_detections(unfolded(r.path, size=IMGSZ).xyxy[0].numpy(), r.det)
        rgb = cv2.imread(r.path)[..., ::-1]  # numpy inputs are RGB, as in YOLOv5
        np.testing.assert_allclose(model(rgb, size=IMGSZ).xyxy[0].numpy(), res.xyxy[0].numpy(), atol=1e-4)
    both = model([str(images / "bus.jpg"), str(images / "zidane.jpg")], size=IMGSZ)
    assert len(both) == 2 and both.files == ["bus.jpg", "zidane.jpg"]
    model.classes, model.max_det = [int(pt_results[0].det[0, 5])], 1
    one = model(pt_results[0].path, size=IMGSZ).xyxy[0]
    assert len(one) == 1 and int(one[0, 5]) == model.classes[0]
    raw = model(torch.zeros(1, 3, 64, 64))  # tensors go straight to the model: raw predictions back
    assert isinstance(raw, torch.Tensor) and raw.shape[0] == 1 and raw.shape[2] == 85


def test_detections_object(weights, images, tmp_path, yolo_logs):
    model = hubconf.custom(weights, _verbose=False)
    from PIL import Image

    res = model([str(images / "bus.jpg"), Image.open(images / "zidane.jpg")], size=IMGSZ)
    assert len(res) == 2 and [len(x) for x in res.tolist()] == [1, 1]
    df = res.pandas().xyxy[0]
    assert list(df.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert len(df) == len(res.xyxy[0]) > 0 and set(df["name"]) <= set(_coco_names())
    assert list(res.pandas().xywh[1].columns) == ["xcenter", "ycenter", "width", "height", "confidence", "class", "name"]
    h, w = res.ims[0].shape[:2]
    np.testing.assert_allclose(res.xyxyn[0][:, :4].numpy(), (res.xyxy[0][:, :4] / torch.tensor([w, h, w, h])).numpy())
    assert ((res.xywhn[1][:, :4] >= 0) & (res.xywhn[1][:, :4] <= 1)).all()
    res.print()
    assert "image 1/2: 1080x810 " in yolo_logs.text and "Speed:" in yolo_logs.text
    rendered = res.render()
    assert rendered[0].shape == (1080, 810, 3) and not np.array_equal(rendered[0], res._raw[0])
    saved = res.save(save_dir=tmp_path / "hub")
    assert cv2.imread(str(saved / "bus.jpg")).shape == (1080, 810, 3) and (saved / "zidane.jpg").is_file()
    crops = res.crop(save_dir=tmp_path / "crop")
    assert len(crops) == sum(len(p) for p in res.pred) and crops[0]["im"].ndim == 3
    assert len(list((tmp_path / "crop" / "crops").rglob("*.jpg"))) == len(crops)


def test_hub_constructors():
    m = hubconf.yolov5n(device="cpu")
    res = m(np.full((100, 200, 3), 114, dtype=np.uint8))  # untrained, any size works
    assert len(res) == 1 and res.xyxy[0].shape[1] == 6 and m.names[0] == "person"
    assert not hubconf.yolov5s_RepVGG(autoshape=False, classes=3, device="cpu").is_folded
    with pytest.raises(ValueError, match="custom"):
        hubconf.yolov5s_OREPA(pretrained=True)


@pytest.mark.parametrize("cfg", sorted(p.stem for p in (ROOT / "models").glob("*.yaml")))
def test_every_shipped_config_has_a_hub_entry_that_builds_it(cfg, tmp_path, monkeypatch):
    entry = getattr(hubconf, cfg.replace("-", "_"), None)
    assert callable(entry), f"hubconf has no entry for models/{cfg}.yaml"
    monkeypatch.chdir(tmp_path)  # pretrained=True looks for <cfg>.pt here and in the repo root: neither has it
    with pytest.raises((FileNotFoundError, ValueError), match=re.escape(f"{cfg}.pt")):
        entry(pretrained=True)
    model = entry(autoshape=False, classes=2, device="cpu") if cfg in HUB_BUILT else None
    if model is not None:  # the entry builds models/<cfg>.yaml (a few, to keep the suite short)
        assert model.yaml["yaml_file"] == f"{cfg}.yaml" and model.model[-1].nc == 2
