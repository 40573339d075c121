"""Export round trips: every format, run through ``load_backend``, reproduces the folded PyTorch model.

Models have random weights (OREPA's zero-initialised branches included) and random BatchNorm
statistics, so a dropped or misplaced term shows; the head is rescaled so scores spread over (0, 1)
and NMS has real work to do. Real ONNX Runtime, OpenVINO and OpenCV run the files.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import onnx
import pytest
import torch
from torch import nn

import export
from helpers import randomize_batchnorm_, rel_error
from models.yolo import Model
from utils.deploy.backends import (BackendUnavailable, OnnxRuntimeBackend, TensorRTBackend, load_backend, read_engine_file,
                            write_engine_file)
from utils.checkpoint import load_model, save_checkpoint
from utils.ops import non_max_suppression
from utils.deploy.verify import TOLERANCE, example_input

ROOT = Path(__file__).resolve().parents[1]
IMGSZ = (192, 160)  # h, w: not square on purpose (bus.jpg is portrait)
BATCH = 2
CFGS = ["yolov5s_RepVGG.yaml", "yolov5s_QARepVGG.yaml", "yolov5s_OREPA.yaml"]
NAMES = [f"thing{i}" for i in range(80)]
FP32_RTOL = 1e-4  # max |difference| / max |reference| (tests/helpers.rel_error); measured: about 2e-6
FP16_RTOL = 1e-2  # OpenVINO FP16 weights; measured: about 1e-3


def random_model(cfg: str, seed: int = 0) -> Model:
    """Random weights and BatchNorm statistics; head rescaled to logits of std ~1.5 on bus.jpg."""
    torch.manual_seed(seed)
    model = Model(cfg)
    model.names = list(NAMES)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.any():  # OREPA's zero-initialised 1x1-kxk branch
                p.normal_(0, 0.1)
            elif "vector" in name:  # OREPA's branch weights, including the prior row that starts at zero
                p.add_(torch.randn_like(p) * 0.3)
    randomize_batchnorm_(model, seed).eval()
    detect = model.model[-1]
    inputs = []
    hooks = [conv.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for conv in detect.m]
    with torch.no_grad():
        model(example_input(IMGSZ, 1, "cpu"))
        for conv, x in zip(detect.m, inputs):  # the default bias prior keeps random scores near 2e-4
            conv.weight.normal_(0, 1.5 / (x.std().item() * conv.in_channels ** 0.5))
            conv.bias.zero_()
    for h in hooks:
        h.remove()
    return model


@pytest.fixture(scope="module", params=CFGS, ids=["RepVGG", "QARepVGG", "OREPA"])
def checkpoint(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp(Path(request.param).stem) / "model.pt"
    save_checkpoint(path, random_model(request.param))
    return path


@pytest.fixture(scope="module")
def repvgg_checkpoint(tmp_path_factory) -> Path:
    """For checks of export options that do not depend on the block type."""
    path = tmp_path_factory.mktemp("options") / "model.pt"
    save_checkpoint(path, random_model(CFGS[0], seed=1))
    return path


@pytest.fixture(scope="module")
def exported(checkpoint) -> dict:
    results = export.run(weights=checkpoint, include=["fused", "torchscript", "onnx", "openvino"], imgsz=IMGSZ,
                         batch_size=BATCH)
    return {r.format: r for r in results}


@pytest.fixture(scope="module")
def im() -> torch.Tensor:
    return example_input(IMGSZ, BATCH, "cpu")


@pytest.fixture(scope="module")
def folded(checkpoint):
    """The folded PyTorch model: every export is compared with it."""
    return load_model(checkpoint, fuse=True)


@pytest.fixture(scope="module")
def reference(folded, im) -> torch.Tensor:
    with torch.no_grad():
        return folded(im)[0]


def private_copy(checkpoint: Path, tmp_path: Path) -> Path:
    """The checkpoint in a folder of its own, so this test's exports do not overwrite the shared ones."""
    dst = tmp_path / checkpoint.name
    shutil.copyfile(checkpoint, dst)
    return dst


@pytest.mark.parametrize("fmt", ["fused", "torchscript", "onnx", "openvino"])
def test_export_reproduces_folded_model(exported, reference, im, fmt):
    result = exported[fmt]
    assert result.ok, result.error
    assert result.error_ratio <= TOLERANCE["fp32"]
    backend = load_backend(result.file)
    assert (backend.stride, backend.names) == (32, NAMES)
    assert backend.imgsz == (None if fmt == "fused" else IMGSZ)
    out = backend(im)
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert rel_error(reference, out) < FP32_RTOL


def test_onnx_matches_unfolded_training_model(exported, checkpoint, im):
    """The exported graph computes what the multi-branch model it came from computes."""
    with torch.no_grad():
        ref = load_model(checkpoint, fuse=False)(im)[0]
    assert rel_error(ref, load_backend(exported["onnx"].file)(im)) < FP32_RTOL


def test_onnx_graph_has_no_training_branches(exported, folded):
    ops = [n.op_type for n in onnx.load(str(exported["onnx"].file)).graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == sum(isinstance(m, nn.Conv2d) for m in folded.modules())


def test_fused_checkpoint_is_plain_data_in_deploy_layout(exported):
    ckpt = torch.load(exported["fused"].file, map_location="cpu", weights_only=True)
    assert ckpt["folded"] is True and ckpt["names"] == NAMES
    assert not any(k.endswith(("running_mean", "running_var")) or ".bn." in k for k in ckpt["state_dict"])
    model = Model(ckpt["yaml"]).fuse()
    model.load_state_dict(ckpt["state_dict"], strict=True)  # the deploy layout, nothing missing or extra
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_onnx_dynamic_simplified_accepts_other_shapes(checkpoint, folded, tmp_path):
    weights = private_copy(checkpoint, tmp_path)
    (result,) = export.run(weights=weights, include=["onnx"], imgsz=IMGSZ, batch_size=BATCH, dynamic=True,
                           simplify=True)
    assert result.ok, result.error
    assert {p.key for p in onnx.load(str(result.file)).metadata_props} >= {"stride", "names", "imgsz"}
    backend = load_backend(result.file)
    assert backend.imgsz is None and backend.batch is None
    for b, hw in ((1, (96, 192)), (3, IMGSZ)):
        x = example_input(hw, b, "cpu")
        with torch.no_grad():
            assert rel_error(folded(x)[0], backend(x)) < FP32_RTOL


def separated_threshold(scores: torch.Tensor, lo: int = 30, hi: int = 150) -> float:
    """A confidence threshold in the widest gap between ranks lo..hi: no score sits on the edge."""
    s = scores.flatten().sort(descending=True).values
    k = lo + int((s[lo:hi] - s[lo + 1:hi + 1]).argmax())
    return float(s[k] + s[k + 1]) / 2


def test_onnx_nms_matches_non_max_suppression(checkpoint, reference, im, tmp_path):
    weights = private_copy(checkpoint, tmp_path)
    conf = separated_threshold((reference[..., 5:] * reference[..., 4:5]).amax(2))
    (result,) = export.run(weights=weights, include=["onnx"], imgsz=IMGSZ, batch_size=BATCH, nms=True,
                           conf_thres=conf, iou_thres=0.45, max_det=100)
    assert result.ok, result.error
    backend = load_backend(result.file)
    assert backend.end2end
    num, boxes, scores, classes = backend(im)
    assert num.shape == (BATCH, 1) and boxes.shape == (BATCH, 100, 4) and scores.shape == classes.shape == (BATCH, 100)
    assert num.dtype == classes.dtype == torch.int32
    for i, ref in enumerate(non_max_suppression(reference, conf, 0.45, max_det=100)):
        n = int(num[i])
        assert 3 <= n == len(ref) < 100  # something kept, nothing cut at max_det
        order = scores[i, :n].argsort(descending=True)  # ties may come in any order: compare sorted
        got = torch.cat((boxes[i, :n], scores[i, :n, None], classes[i, :n, None].float()), 1)[order]
        torch.testing.assert_close(got, ref[ref[:, 4].argsort(descending=True)], rtol=1e-5, atol=1e-3)
        assert (classes[i, n:] == -1).all() and (scores[i, n:] == 0).all() and (boxes[i, n:] == 0).all()


def test_onnx_opset12_runs_in_opencv_dnn(checkpoint, reference, im, tmp_path):
    weights = private_copy(checkpoint, tmp_path)
    (result,) = export.run(weights=weights, include=["onnx"], imgsz=IMGSZ, batch_size=1, opset=12)
    assert result.ok, result.error
    assert onnx.load(str(result.file)).opset_import[0].version == 12
    net = cv2.dnn.readNetFromONNX(str(result.file))
    net.setInput(im[:1].numpy())
    assert rel_error(reference[:1], torch.from_numpy(net.forward())) < FP32_RTOL


def test_openvino_half(repvgg_checkpoint):
    (result,) = export.run(weights=repvgg_checkpoint, include=["openvino"], imgsz=IMGSZ, half=True)
    assert result.ok, result.error
    model = load_model(repvgg_checkpoint, fuse=True)
    fp32_mb = 4 * sum(p.numel() for p in model.parameters()) / 1e6
    assert result.size_mb < 0.6 * fp32_mb  # FP16 weights stored
    x = example_input(IMGSZ, 1, "cpu")
    with torch.no_grad():
        assert rel_error(model(x)[0], load_backend(result.file)(x)) < FP16_RTOL


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_half_onnx_and_torchscript_run_in_fp16(repvgg_checkpoint, tmp_path, fmt):
    """--half traced on the CPU: an fp16 graph (fp16 input, as a CUDA export makes it) that ONNX Runtime
    or TorchScript runs, within the fp16 tolerance of the fp32 folded model."""
    weights = private_copy(repvgg_checkpoint, tmp_path)
    (result,) = export.run(weights=weights, include=[fmt], imgsz=IMGSZ, half=True)
    assert result.ok, result.error
    assert result.error_ratio <= TOLERANCE["fp16"]
    backend = load_backend(result.file)
    assert backend.fp16
    if fmt == "onnx":
        assert OnnxRuntimeBackend(result.file).session.get_inputs()[0].type == "tensor(float16)"
    model = load_model(repvgg_checkpoint, fuse=True)
    x = example_input(IMGSZ, 1, "cpu")
    with torch.no_grad():
        ref = model(x)[0]
    out = backend(x)
    assert out.dtype == torch.float32 and 0 < rel_error(ref, out) < FP16_RTOL  # not fp32 in disguise


def test_nms_refused_for_formats_without_it(repvgg_checkpoint):
    (result,) = export.run(weights=repvgg_checkpoint, include=["torchscript"], imgsz=64, nms=True)
    assert not result.ok and "--nms is supported for onnx" in result.error and result.file is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the engine may build; this checks the failure path")
def test_engine_failure_is_clear_and_other_formats_still_export(repvgg_checkpoint, tmp_path):
    weights = private_copy(repvgg_checkpoint, tmp_path)
    cmd = [sys.executable, "export.py", "--weights", str(weights), "--include", "onnx", "engine", "--imgsz", "64"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert "engine: export failed" in log and "TensorRT" in log and "CUDA" in log
    assert "onnx: saved" in log and weights.with_suffix(".onnx").is_file()
    assert not weights.with_suffix(".engine").exists()


# --- backends without exports -------------------------------------------------------------------

def test_load_backend_rejects_unknown_suffix(tmp_path):
    f = tmp_path / "model.pb"  # a TensorFlow GraphDef, which YOLOv5 exports and nothing here reads
    f.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"unsupported model format.*\.onnx.*\.engine.*\.tflite.*\.pte"):
        load_backend(f)


def test_fixed_shape_backend_rejects_other_sizes(exported):
    """Another size is refused (boxes could not be mapped back); another batch size runs (tests/deploy/test_fixed_shape.py)."""
    backend = load_backend(exported["onnx"].file)
    assert isinstance(backend, OnnxRuntimeBackend)
    with pytest.raises(ValueError, match=f"exported for {IMGSZ[0]}x{IMGSZ[1]} images, got 320x320: letterbox"):
        backend(torch.zeros(BATCH, 3, 320, 320))


def test_engine_metadata_header_round_trip(tmp_path):
    meta = {"stride": 32, "names": ["a", "b"], "imgsz": [320, 256]}
    f = write_engine_file(tmp_path / "m.engine", meta, b"serialized-engine")
    assert read_engine_file(f) == (meta, b"serialized-engine")
    bare = tmp_path / "bare.engine"
    bare.write_bytes(b"\xff\xff\xff\x7fnot json")  # no header: the whole file is the engine
    assert read_engine_file(bare) == (None, bare.read_bytes())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA or TensorRT is missing")
def test_tensorrt_backend_names_what_is_missing(tmp_path):
    f = write_engine_file(tmp_path / "m.engine", {"stride": 32, "names": []}, b"x")
    with pytest.raises(BackendUnavailable, match="TensorRT.*missing:.*CUDA"):
        TensorRTBackend(f)


class _StandInTensorRT:
    """The few TensorRT API calls _TensorRTBindings makes, behaving as TensorRT 10 does for a dynamic engine
    with one profile (TensorRT itself cannot be installed on a machine without CUDA). Outside the profile,
    set_input_shape returns False and output shapes come back with -1 dimensions."""

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    @staticmethod
    def nptype(dtype):
        return dtype

    class Engine:
        num_io_tensors = 2
        profile = ((1, 3, 32, 32), (1, 3, 640, 640), (4, 3, 640, 640))

        def get_tensor_name(self, i):
            return ["images", "output0"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "images" else "out"

        def get_tensor_profile_shape(self, name, profile_index):
            return self.profile

        def get_tensor_dtype(self, name):
            import numpy as np

            return np.float32

    class Context:
        def __init__(self, engine):
            self.engine, self.shape = engine, None

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.profile
            self.shape = shape if all(a <= s <= b for a, s, b in zip(lo, shape, hi)) else None
            return self.shape is not None

        def get_tensor_shape(self, name):
            if self.shape is None:
                return (-1, -1, 85)
            b, _, h, w = self.shape
            return (b, 3 * (h * w // 64 + h * w // 256 + h * w // 1024), 85)


def test_tensorrt_input_outside_the_profile_says_which_shapes_it_takes():
    from utils.deploy.backends import _TensorRTBindings

    trt = _StandInTensorRT
    engine = trt.Engine()
    io = _TensorRTBindings(trt, engine, trt.Context(engine))
    assert io.input == "images" and io.outputs == ["output0"]
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\) to \(4, 3, 640, 640\)"):
        io.run(torch.zeros(1, 3, 1280, 1280))
