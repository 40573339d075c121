"""INT8 post-training quantization of folded models (``export.py --int8``): the quantizers and their images.

Calibration images come from the data YAML's train split (its val split if train is absent), evenly spaced
over it and letterboxed exactly as export and inference do (``letterbox(..., auto=False)`` to the export
size, RGB, 0-1). The convolutions are quantized; the detection head (its output convolutions and the
decoding after them: sigmoid, grid and anchor arithmetic, the concatenated boxes-and-scores output) stays in
floating point, since one INT8 scale cannot hold pixel coordinates and probabilities together.

- ONNX: ONNX Runtime static quantization, QDQ format, per-channel symmetric 7-bit weights (``QDQ_LAYOUTS``:
  without VNNI, u8 x s8 pairs add in int16, which 8-bit weights can saturate; 7-bit cannot, so the file computes
  the same on every x86 CPU), unsigned 8-bit activations, every op ONNX Runtime
  quantizes outside the head (so it fuses them into integer kernels), on the fp32 graph after
  ``quant_pre_process`` (shape inference and graph optimisation). The calibration method was chosen by
  measurement (benchmarks/README.md, "INT8"): ``CALIBRATION_METHOD``.
- OpenVINO: NNCF post-training quantization of the IR converted from the fp32 ONNX (``OPENVINO_OVERFLOW_FIX``,
  ``OPENVINO_ACTIVATION_RANGES``).
- TensorRT: built from a second QDQ ONNX in TensorRT's layout (signed INT8 activations with zero point 0 at
  the convolutions' inputs; explicit quantization), see ``utils.deploy.exporters``.

Verification images (the data's val split, else its train split) are read here with the calibration images,
before any export starts; ``utils.deploy.verify`` compares each INT8 file's detections with the fp32 model's on them.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.datasets.augmentations import letterbox
from utils.datasets.dataloaders import list_image_files
from utils.datasets.dataset_config import check_dataset
from utils.general import LOGGER
from utils.datasets.sources import read_image

# ONNX Runtime calibration methods compared in benchmarks/bench_int8.py (name: (method, its options))
CALIBRATIONS = {
    "MinMax": ("MinMax", {}),
    "MinMax, moving average": ("MinMax", {"CalibMovingAverage": True}),
    "Entropy": ("Entropy", {}),
    "Percentile 99.999": ("Percentile", {"CalibPercentile": 99.999}),
    "Percentile 99.99": ("Percentile", {"CalibPercentile": 99.99}),
}
# the only one that kept all four models within 1 mAP50-95 point: benchmarks/README.md, "INT8"
CALIBRATION_METHOD = "MinMax, moving average"
# QDQ layout per runtime. ONNX Runtime on x86 runs a QDQ group as one integer kernel only when the op's
# output is quantized too, and is fastest with unsigned activations (S8 activations, or Conv alone, ran
# 2x slower than fp32 here). Its u8 x s8 kernels on CPUs without VNNI (AVX2, AVX-512 before VNNI) add each
# pair of u8*s8 products into int16 with saturation (VPMADDUBSW): with 8-bit weights 255 * (127 + 127) = 64770
# overflows, and such a CPU computes another model than the one verified on a VNNI CPU (76% of detections
# kept on an AVX2 EPYC). ``reduce_range`` gives 7-bit weights (-64..64): a pair is at most 255 * 128 = 32640,
# so the file computes the same on every x86 CPU (tests/deploy/test_int8.py proves it from the file's integers).
# TensorRT's explicit quantization takes signed INT8 with zero point 0 only and float biases, with Q/DQ at
# the convolutions' inputs (it chooses the output precision while fusing); its kernels have no such pairs.
QDQ_LAYOUTS = {
    "onnxruntime": dict(op_types=None, activation="QUInt8", reduce_range=True, options={"ActivationSymmetric": False}),
    "tensorrt": dict(op_types=["Conv"], activation="QInt8", reduce_range=False,
                     options={"ActivationSymmetric": True, "QuantizeBias": False,
                              "OpTypesToExcludeOutputQuantization": ["Conv"]}),
}
# NNCF's fix for the same saturation in OpenVINO's u8 x s8 kernels: 7-bit weights in every convolution
# ("enable"), not only in the first one (NNCF's default, "first_layer_only")
OPENVINO_OVERFLOW_FIX = "enable"
# activation ranges from histograms (clipping rare outliers), not min/max: with 7-bit weights the min/max
# ranges cost yolov5s_RepVGG 0.6-1.1 mAP50-95 points depending on the calibration subset, histograms
# 0.15-0.5 (benchmarks/README.md, "INT8 on CPUs without VNNI")
OPENVINO_ACTIVATION_RANGES = "HISTOGRAM"
VERIFY_IMAGES = 64  # images utils.deploy.verify compares INT8 and fp32 detections on
MIN_INT8_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (their axis attribute)
QDQ_FORMATS = ("onnx", "engine")  # INT8 from a QDQ ONNX of the --opset graph (OpenVINO's NNCF quantizes the IR)


class QuantizationError(RuntimeError):
    """INT8 export cannot start (arguments, images) or cannot quantize (utils.deploy.verify judges the result)."""


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def _evenly_spaced(files: list[str], n: int) -> list[str]:
    if len(files) <= n:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def _load_letterboxed(files: list[str], hw: tuple[int, int], what: str) -> list[np.ndarray]:
    """uint8 RGB CHW images letterboxed to ``hw``; unreadable files are counted in a warning and skipped."""
    images = []
    for f in files:
        im0 = read_image(f)
        if im0 is not None:
            images.append(np.ascontiguousarray(letterbox(im0, hw, auto=False)[0][:, :, ::-1].transpose(2, 0, 1)))
    if not images:
        raise QuantizationError(f"none of the {len(files)} {what} images could be read (e.g. {files[0]})")
    if len(images) < len(files):
        LOGGER.warning(f"WARNING {len(files) - len(images)} of {len(files)} {what} images could not be read and are "
                       "skipped")
    return images


@dataclass
class Int8Data:
    """Calibration and verification images, loaded before any export starts."""

    calibration: list[np.ndarray]
    verification: list[np.ndarray]
    source: str  # where the calibration images came from, for the log


def check_int8_args(data, n_calib: int, opset: int = MIN_INT8_OPSET, formats=QDQ_FORMATS) -> None:
    """The --int8 arguments for ``formats`` (those with an INT8 variant), checked before a model loads."""
    if not data:
        raise QuantizationError("--int8 needs --data: a dataset YAML whose train (or val) images calibrate "
                                "the INT8 scales, e.g. --data data/shapes.yaml")
    if n_calib < 1:
        raise QuantizationError(f"--calib-images must be >= 1, got {n_calib}")
    if opset < MIN_INT8_OPSET and set(formats) & set(QDQ_FORMATS):
        raise QuantizationError(f"--int8 onnx/engine needs --opset {MIN_INT8_OPSET} or later (per-channel INT8 "
                                f"weights are QuantizeLinear/DequantizeLinear with an axis, new in opset 13), got "
                                f"--opset {opset}: leave --opset at its default (17) for INT8")


def load_int8_data(data, n_calib: int, hw: tuple[int, int]) -> Int8Data:
    """Read calibration images (train split, else val) and verification images (val split, else train)."""
    check_int8_args(data, n_calib)
    cfg = check_dataset(data, required=())  # either split serves for both (calibration and verification)
    splits = [s for s in ("train", "val") if cfg.get(s)]
    if not splits:
        raise QuantizationError(f"{data} names neither a train nor a val split")
    calib_split, verify_split = splits[0], splits[-1]
    files = list_image_files(cfg[calib_split])
    if not files:
        raise QuantizationError(f"no images in the {calib_split} split of {data}")
    calibration = _load_letterboxed(_evenly_spaced(files, n_calib), hw, f"{calib_split} (calibration)")
    vfiles = files if verify_split == calib_split else list_image_files(cfg[verify_split])
    verification = _load_letterboxed(_evenly_spaced(vfiles, VERIFY_IMAGES), hw, f"{verify_split} (verification)")
    LOGGER.info(f"INT8: {len(calibration)} calibration images from the {calib_split} split, {len(verification)} "
                f"verification images from the {verify_split} split of {data}")
    return Int8Data(calibration, verification, f"{calib_split} split of {data}")


def batches(images: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """float32 0-1 batches of exactly ``batch`` images, as a fixed-batch graph's calibration reader needs them
    (the last one padded by repeating images)."""
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        chunk = chunk + [chunk[j % len(chunk)] for j in range(batch - len(chunk))]
        out.append(np.stack(chunk).astype(np.float32) / 255)
    return out


# ---------------------------------------------------------------------------------------------
# Quantizers
# ---------------------------------------------------------------------------------------------

def head_prefix(model: torch.nn.Module) -> str:
    """ONNX node-name prefix of the detection head (TorchScript-based exporter: '/model.24/...')."""
    return f"/model.{len(model.model) - 1}/"


def quantize_onnx(fp32_onnx: Path, out: Path, images: list[np.ndarray], batch: int, head: str,
                  method: str = CALIBRATION_METHOD, layout: str = "onnxruntime") -> Path:
    """ONNX Runtime static INT8 (QDQ, per-channel symmetric weights) of ``fp32_onnx`` outside ``head``.
    ``method``: a key of ``CALIBRATIONS``; ``layout``: a key of ``QDQ_LAYOUTS`` (the runtime it is for)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.name, self.items = name, iter(batches(images, batch))

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {self.name: x}

    calibration, options = CALIBRATIONS[method]
    qdq = QDQ_LAYOUTS[layout]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        excluded = [n.name for n in graph.node if n.name.startswith(head)]
        if not excluded:
            raise QuantizationError(f"no node of the detection head ({head}*) in {fp32_onnx}: cannot keep it in float")
        quantize_static(str(pre), str(out), Reader(graph.input[0].name), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=qdq["op_types"], per_channel=True, reduce_range=qdq["reduce_range"],
                        activation_type=getattr(QuantType, qdq["activation"]), weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, calibrate_method=getattr(CalibrationMethod, calibration),
                        extra_options={"WeightSymmetric": True, **qdq["options"], **options})
    return out


def quantize_openvino(ov_model, images: list[np.ndarray], batch: int, head: str,
                      activation_ranges: str = OPENVINO_ACTIVATION_RANGES):
    """NNCF post-training INT8 of an OpenVINO model's convolutions outside ``head``; ``activation_ranges``: a
    member name of NNCF's ``RangeEstimatorParametersSet`` (MINMAX, HISTOGRAM, ...)."""
    try:
        import nncf
    except ImportError as e:
        raise QuantizationError("OpenVINO INT8 needs NNCF: pip install nncf") from e
    items = batches(images, batch)
    ignored = nncf.IgnoredScope(patterns=[f"^{head.replace('.', '[.]')}.*"], validate=False)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = nncf.AdvancedQuantizationParameters(
        overflow_fix=nncf.OverflowFix(OPENVINO_OVERFLOW_FIX),
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, activation_ranges))
    return nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items), preset=nncf.QuantizationPreset.MIXED,
                         ignored_scope=ignored, advanced_parameters=advanced)
