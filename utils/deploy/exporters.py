"""One function per export format; ``utils.deploy.export_pipeline`` runs each and has ``utils.deploy.verify`` check it.

Every exporter takes an ``ExportContext`` (the folded model, an example input and the options) and
returns the path it wrote. Each writes stride, class names and image size into its file's metadata
so ``utils.deploy.backends.load_backend`` can run the file without the training code's config.
"""
from __future__ import annotations

import inspect
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
import yaml
from torch import Tensor, nn

from models.yolo import Detect
from utils.atomic import atomic_dir, atomic_file
from utils.deploy.backends import import_tensorrt, write_engine_file
from utils.checkpoint import save_checkpoint
from utils.general import LOGGER
from utils.ops import xywh2xyxy
from utils.deploy.mobile_exporters import (export_executorch, export_executorch_int8, export_tflite,
                                           export_tflite_float16, export_tflite_int8)
from utils.deploy.quantize import Int8Data, head_prefix, quantize_onnx, quantize_openvino
from utils.signals import deferred_signals

NMS_FORMATS = ("onnx", "openvino", "engine")  # formats whose graph can carry NonMaxSuppression


@dataclass
class ExportContext:
    """What every exporter needs: the folded model, an example input and the export options."""

    model: nn.Module  # folded, eval mode, Detect.export set
    im: Tensor  # example input (b, 3, h, w) on the model's device
    weights: Path  # the source checkpoint; outputs go beside it
    names: list[str]
    half: bool = False
    dynamic: bool = False
    simplify: bool = False
    opset: int = 17
    workspace: float = 4.0  # GB, TensorRT builder
    nms: bool = False
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 300  # --nms: detections kept per image (--topk-all)
    topk_per_class: int | None = None  # --nms: the NMS's limit per class (None: max_det)
    agnostic_nms: bool = False  # --nms: one NMS over all classes
    verbose: bool = False
    int8_data: Int8Data | None = None  # with --int8: calibration and verification images
    exported: dict = field(default_factory=dict)  # format -> file written in this run (engine reuses the ONNX)
    intermediates: dict = field(default_factory=dict)  # what a format's variants share (the float32 .tflite bytes)
    out_dir: Path | None = None  # where exporters write; export_pipeline points it at a staging folder until verified

    @property
    def stride(self) -> int:
        return int(max(self.model.stride))

    def file(self, suffix: str) -> Path:
        """``<weights stem><suffix>`` in ``out_dir``, by default beside the weights."""
        return (self.out_dir or self.weights.parent) / (self.weights.stem + suffix)

    def metadata(self, half: bool | None = None, end2end: bool = False, int8: bool = False) -> dict:
        """Plain metadata written into every exported file (read back by ``utils.deploy.backends``)."""
        meta = {
            "description": "yolo-reparam detector (folded)",
            "stride": self.stride,
            "names": list(self.names),
            "nc": len(self.names),
            "imgsz": list(self.im.shape[2:]),
            "batch": int(self.im.shape[0]),
            "dynamic": self.dynamic,
            "half": self.half if half is None else half,
            "end2end": end2end,
        }
        if end2end:
            meta.update(conf_thres=self.conf_thres, iou_thres=self.iou_thres, max_det=self.max_det,
                        topk_per_class=self.topk_per_class or self.max_det, agnostic_nms=self.agnostic_nms)
        if int8:
            meta.update(int8=True, calibration=f"{len(self.int8_data.calibration)} images, {self.int8_data.source}")
        return meta


def set_export_mode(model: nn.Module, dynamic: bool) -> nn.Module:
    """Make ``Detect`` return only the decoded tensor (and rebuild its grids per call when dynamic)."""
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.dynamic = True, dynamic
    return model


def _half_model_and_input(ctx: ExportContext, fmt: str) -> tuple[nn.Module, Tensor]:
    """The model and input in the precision ``fmt`` is traced in: an fp16 copy with ``--half``.

    fp16 tracing works on CUDA and, with torch builds that have CPU half kernels, on the CPU too; where
    the CPU lacks them the probe below fails with a message instead of a deep tracer error."""
    if not ctx.half:
        return ctx.model, ctx.im
    import copy

    model, im = copy.deepcopy(ctx.model).half(), ctx.im.half()
    try:
        with torch.no_grad():
            model(im)  # also builds Detect's grids in fp16 before tracing, as build_context does in fp32
    except RuntimeError as e:
        if im.device.type != "cpu":
            raise
        raise ValueError(f"--half {fmt} export: this torch build cannot run fp16 on the CPU ({e}); export on a "
                         "CUDA device (--device 0), or use openvino or engine for fp16") from None
    return model, im


# ---------------------------------------------------------------------------------------------
# fused checkpoint and TorchScript
# ---------------------------------------------------------------------------------------------

def export_fused(ctx: ExportContext) -> Path:
    """The folded model as a plain-data checkpoint (loads with ``torch.load(weights_only=True)``)."""
    if ctx.half:
        LOGGER.info("fused: --half does not apply (the checkpoint keeps fp32 weights; cast at load time)")
    return save_checkpoint(ctx.file("-fused.pt"), ctx.model)  # build_context set model.names = ctx.names


def export_torchscript(ctx: ExportContext) -> Path:
    """``torch.jit.trace`` of the folded model, metadata as ``config.txt`` in the archive."""
    model, im = _half_model_and_input(ctx, "torchscript")
    f = ctx.file(".torchscript")
    with warnings.catch_warnings():
        # Detect compares grid and feature shapes in Python: constant for a traced fixed-size input, by design
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # deprecated in torch >= 2.10 in favour of torch.export, but TorchScript is the format asked for
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning)
        # check_trace off: utils.deploy.verify.verify_export compares the saved file's output with the model's anyway
        ts = torch.jit.trace(model, im, strict=False, check_trace=False)
        with atomic_file(f) as tmp, deferred_signals(f"the TorchScript file ({f.name})"):
            ts.save(str(tmp), _extra_files={"config.txt": json.dumps(ctx.metadata())})
    return f


# ---------------------------------------------------------------------------------------------
# ONNX (optionally end-to-end with NonMaxSuppression)
# ---------------------------------------------------------------------------------------------

class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` in a traced graph; in PyTorch the same selection via torchvision.

    Returns selected indices (n, 3) rows [batch, class, box], as the ONNX operator does.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_det: int, iou_thres: float, conf_thres: float) -> Tensor:
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = (scores[b, c] > conf_thres).nonzero().view(-1)
                keep = idx[torchvision.ops.nms(boxes[b, idx], scores[b, c, idx], iou_thres)][:max_det]
                rows.append(torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), 1))
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, max_det: int, iou_thres: float, conf_thres: float):
        max_out = g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([iou_thres], dtype=torch.float32))
        conf = g.op("Constant", value_t=torch.tensor([conf_thres], dtype=torch.float32))
        # corner boxes: ONNX reads [y1, x1, y2, x2], and IoU is the same with x and y swapped
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, conf, center_point_box_i=0)


class End2End(nn.Module):
    """Detector plus NMS in one graph, YOLOv5 ``non_max_suppression`` semantics (best class per box).

    Outputs ``num_dets (b, 1) int32``, ``boxes (b, max_det, 4)`` xyxy pixels, ``scores (b, max_det)``
    and ``classes (b, max_det) int32``, sorted by score; padding rows are zero with class -1.
    NMS runs per class (ONNX NonMaxSuppression over a (b, nc, N) score tensor holding each box's
    best-class score only), so classes never suppress each other, keeping at most ``topk_per_class`` boxes
    of each class (default ``max_det``); ``agnostic`` runs one NMS over every box (a (b, 1, N) score tensor),
    so overlapping boxes of different classes suppress each other. At most ``max_det`` boxes come out.
    """

    def __init__(self, model: nn.Module, max_det: int = 300, iou_thres: float = 0.45, conf_thres: float = 0.25,
                 topk_per_class: int | None = None, agnostic: bool = False):
        super().__init__()
        self.model, self.max_det, self.iou_thres, self.conf_thres = model, max_det, iou_thres, conf_thres
        self.topk_per_class, self.agnostic = topk_per_class or max_det, agnostic

    def forward(self, x: Tensor):
        p = self.model(x).float()  # ONNX NonMaxSuppression takes float32 only
        boxes = xywh2xyxy(p[..., :4])
        best, cls = (p[..., 5:] * p[..., 4:5]).max(2)  # score = obj * cls, as non_max_suppression
        # each box's best-class score in its class row, zero elsewhere; a mask, not zeros_like().scatter(),
        # which constant folding would store as a (b, N, nc) initializer in a fixed-shape graph
        if self.agnostic:  # one score row: every box competes with every other
            per_class = best.unsqueeze(1)
        else:
            one_hot = cls.unsqueeze(2) == torch.arange(p.shape[2] - 5, device=p.device)
            per_class = (best.unsqueeze(2) * one_hot).transpose(1, 2)
        sel = _NonMaxSuppression.apply(boxes, per_class, self.topk_per_class, self.iou_thres, self.conf_thres)
        bi, ai = sel[:, 0], sel[:, 2]
        # scatter kept scores into a (b, N + max_det) table of -1 and take the top max_det: a fixed-shape
        # output whatever the count; the max_det extra columns keep topk valid for tiny dynamic inputs
        pad = torch.full_like(best[:, :1], -1.0).expand(-1, self.max_det)
        kept = best.flatten().index_select(0, bi * best.shape[1] + ai)  # a Gather: no advanced-indexing export
        table = torch.cat((torch.full_like(best, -1.0), pad), 1).index_put((bi, ai), kept)
        top, idx = table.topk(self.max_det, 1)
        valid = top >= 0
        boxes = torch.cat((boxes, torch.zeros_like(boxes[:, :1]).expand(-1, self.max_det, -1)), 1)
        cls = torch.cat((cls, torch.zeros_like(cls[:, :1]).expand(-1, self.max_det)), 1)
        out_boxes = boxes.gather(1, idx.unsqueeze(2).expand(-1, -1, 4)) * valid.unsqueeze(2)
        out_cls = torch.where(valid, cls.gather(1, idx), torch.full_like(idx, -1))
        return valid.sum(1, keepdim=True).int(), out_boxes, top * valid, out_cls.int()


def _torch_onnx_export(model: nn.Module, im: Tensor, f: Path, opset: int, output_names: list[str],
                       dynamic_axes: dict | None, verbose: bool) -> None:
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # the TorchScript-based exporter, which torch >= 2.9 no longer picks by default: autograd.Function
        # symbolics (our NonMaxSuppression) and dynamic_axes are features of that exporter
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # see export_torchscript
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")  # chosen on purpose
        torch.onnx.export(model, im, str(f), opset_version=opset, do_constant_folding=True, verbose=verbose,
                          input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes, **kwargs)


def export_onnx(ctx: ExportContext, f: Path | None = None, nms: bool | None = None, half: bool | None = None) -> Path:
    """ONNX at ``ctx.opset``; metadata in ``metadata_props``; checked, optionally slimmed (onnxslim)."""
    nms = ctx.nms if nms is None else nms
    half = ctx.half if half is None else half
    f = f or ctx.file(".onnx")
    if half:
        model, im = _half_model_and_input(ctx, "onnx")
    else:
        model, im = ctx.model, ctx.im
    if nms:
        model = End2End(model, ctx.max_det, ctx.iou_thres, ctx.conf_thres, ctx.topk_per_class, ctx.agnostic_nms).eval()
        outputs = ["num_dets", "boxes", "scores", "classes"]
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{k: {0: "batch"} for k in outputs}}
    else:
        outputs = ["output0"]
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
    # graph, then metadata: the final name only for the finished file; a signal waits for the write to end
    with atomic_file(f) as tmp, deferred_signals(f"the ONNX file {f.name}"):
        _write_onnx(ctx, model, im, tmp, outputs, dynamic_axes, half, nms)
    return f


def _write_onnx(ctx: ExportContext, model, im, f: Path, outputs, dynamic_axes, half: bool, nms: bool) -> None:
    """Trace to ``f``, check, optionally slim, and write the metadata into the same file."""
    import onnx

    _torch_onnx_export(model, im, f, ctx.opset, outputs, dynamic_axes if ctx.dynamic else None, ctx.verbose)
    model_onnx = onnx.load(str(f))
    onnx.checker.check_model(model_onnx)
    if ctx.simplify:
        import onnxslim

        n_before = len(model_onnx.graph.node)
        model_onnx = onnxslim.slim(model_onnx)
        onnx.checker.check_model(model_onnx)
        LOGGER.info(f"onnxslim: {n_before} -> {len(model_onnx.graph.node)} nodes")
    set_onnx_metadata(model_onnx, ctx.metadata(half=half, end2end=nms))
    onnx.save(model_onnx, str(f))


def set_onnx_metadata(model_onnx, meta: dict) -> None:
    del model_onnx.metadata_props[:]
    for k, v in meta.items():
        entry = model_onnx.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)


# ---------------------------------------------------------------------------------------------
# OpenVINO
# ---------------------------------------------------------------------------------------------

def _openvino_model(ctx: ExportContext):
    """An OpenVINO model converted from a fresh fp32 ONNX (OpenVINO compresses to FP16 or quantizes itself)."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        return ov.convert_model(str(export_onnx(ctx, Path(tmp) / f"{ctx.weights.stem}.onnx", half=False)))


def _save_openvino(ov_model, d: Path, ctx: ExportContext, meta: dict, compress_to_fp16: bool) -> Path:
    import openvino as ov

    with atomic_dir(d) as tmp_dir:  # IR and metadata appear together, or not at all
        with deferred_signals(f"the OpenVINO model ({d.name})"):
            ov.save_model(ov_model, str(tmp_dir / f"{ctx.weights.stem}.xml"), compress_to_fp16=compress_to_fp16)
        with open(tmp_dir / "metadata.yaml", "w", encoding="utf-8") as fh:
            yaml.safe_dump(meta, fh, sort_keys=False, allow_unicode=True)
    return d


def export_openvino(ctx: ExportContext) -> Path:
    """OpenVINO IR converted from a fresh fp32 ONNX; ``--half`` stores FP16 weights."""
    return _save_openvino(_openvino_model(ctx), ctx.file("_openvino_model"), ctx, ctx.metadata(end2end=ctx.nms),
                          compress_to_fp16=ctx.half)


# ---------------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------------

def _build_serialized_engine(trt, onnx_file: Path, ctx: ExportContext, int8: bool = False) -> bytes:
    """Parse the ONNX file and build a serialized engine; every TensorRT version difference is here.
    ``int8``: the ONNX file is a QDQ graph (explicit quantization), whose Q/DQ scales TensorRT keeps."""
    logger = trt.Logger(trt.Logger.VERBOSE if ctx.verbose else trt.Logger.INFO)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    workspace = int(ctx.workspace * (1 << 30))
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    major = int(trt.__version__.split(".")[0])
    # explicit batch is the only mode from TensorRT 10 on, where the flag is deprecated
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_file}: {errors}")
    if ctx.dynamic:  # --batch-size and --imgsz are the largest shapes the engine accepts
        b, _, h, w = ctx.im.shape
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            profile.set_shape(name, (1, 3, ctx.stride, ctx.stride), (max(1, b // 2), 3, h, w), (b, 3, h, w))
        config.add_optimization_profile(profile)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if ctx.half:
        if getattr(builder, "platform_has_fast_fp16", True):  # deprecated (always true) in TensorRT 10
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            LOGGER.warning("WARNING this GPU has no fast FP16: building an FP32 engine")
    if hasattr(builder, "build_serialized_network"):  # TensorRT >= 8
        serialized = builder.build_serialized_network(network, config)
    else:
        engine = builder.build_engine(network, config)
        serialized = engine.serialize() if engine is not None else None
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    return bytes(serialized)


def _tensorrt_for(ctx: ExportContext):
    """The ``tensorrt`` module for an engine export of ``ctx``; first, so a missing TensorRT or CUDA, or a model
    on the CPU, fails before any work."""
    trt = import_tensorrt()
    if ctx.im.device.type != "cuda":
        raise ValueError("TensorRT export needs the model on a CUDA device: use --device 0")
    return trt


def export_engine(ctx: ExportContext) -> Path:
    """TensorRT engine built from the ONNX file, with a length-prefixed JSON metadata header."""
    trt = _tensorrt_for(ctx)
    onnx_file = ctx.exported.get("onnx") or export_onnx(ctx)
    LOGGER.info(f"TensorRT {trt.__version__}: building from {onnx_file} (workspace {ctx.workspace} GB)")
    engine = _build_serialized_engine(trt, Path(onnx_file), ctx)
    return write_engine_file(ctx.file(".engine"), ctx.metadata(end2end=ctx.nms), engine)


# ---------------------------------------------------------------------------------------------
# INT8 (calibrated from ctx.int8_data; see utils.deploy.quantize)
# ---------------------------------------------------------------------------------------------

def _quantized_onnx(ctx: ExportContext, out: Path, layout: str) -> None:
    """A QDQ INT8 ONNX of the folded model at ``out``, in ``utils.deploy.quantize.QDQ_LAYOUTS[layout]``."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(ctx, Path(tmp) / "fp32.onnx", nms=False, half=False)
        quantize_onnx(fp32, out, ctx.int8_data.calibration, int(ctx.im.shape[0]), head_prefix(ctx.model),
                      layout=layout)


def export_onnx_int8(ctx: ExportContext) -> Path:
    """``<stem>-int8.onnx``: ONNX Runtime static QDQ quantization of a fresh fp32 ONNX of the folded model."""
    import onnx

    f = ctx.file("-int8.onnx")
    with atomic_file(f) as out:
        _quantized_onnx(ctx, out, "onnxruntime")
        model_onnx = onnx.load(str(out))
        set_onnx_metadata(model_onnx, ctx.metadata(half=False, int8=True))
        onnx.save(model_onnx, str(out))
    return f


def export_openvino_int8(ctx: ExportContext) -> Path:
    """``<stem>_int8_openvino_model/``: NNCF post-training quantization of the fp32 IR."""
    quantized = quantize_openvino(_openvino_model(ctx), ctx.int8_data.calibration, int(ctx.im.shape[0]),
                                  head_prefix(ctx.model))
    return _save_openvino(quantized, ctx.file("_int8_openvino_model"), ctx, ctx.metadata(half=False, int8=True),
                          compress_to_fp16=False)


def export_engine_int8(ctx: ExportContext) -> Path:
    """``<stem>-int8.engine``: TensorRT explicit quantization of a QDQ ONNX (signed, zero point 0)."""
    trt = _tensorrt_for(ctx)
    with tempfile.TemporaryDirectory() as tmp:  # not the -int8.onnx: TensorRT needs its own QDQ layout
        qdq = Path(tmp) / "int8-tensorrt.onnx"
        _quantized_onnx(ctx, qdq, "tensorrt")
        LOGGER.info(f"TensorRT {trt.__version__}: building an INT8 engine from a QDQ ONNX in TensorRT's layout")
        engine = _build_serialized_engine(trt, qdq, ctx, int8=True)
    return write_engine_file(ctx.file("-int8.engine"), ctx.metadata(half=False, int8=True), engine)


INT8_EXPORTERS = {"onnx": export_onnx_int8, "openvino": export_openvino_int8, "engine": export_engine_int8,
                  "tflite": export_tflite_int8, "executorch": export_executorch_int8}
FLOAT16_EXPORTERS = {"tflite": export_tflite_float16}  # formats that write a float16 file beside the float32 one

EXPORTERS = {
    "fused": export_fused,
    "torchscript": export_torchscript,
    "onnx": export_onnx,
    "openvino": export_openvino,
    "engine": export_engine,
    "tflite": export_tflite,  # utils.deploy.mobile_exporters: optional packages, requirements-mobile.txt
    "executorch": export_executorch,
}
