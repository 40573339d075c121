"""LiteRT (TFLite) and ExecuTorch exports of the folded model; ``utils.deploy.export_pipeline`` runs and verifies each.

- ``tflite``: Google's PyTorch converter (``litert-torch``) on the folded model, (b, 3, h, w) float input and the
  decoded (b, N, 5 + nc) output as every format has them: ``<stem>_float32.tflite``; ``<stem>_float16.tflite`` is
  the same graph with float16 weights (``ai-edge-quantizer``'s float casting; the CPU computes in float32, GPU
  delegates in float16).
- ``tflite`` INT8 (``<stem>_int8.tflite``): ``ai-edge-quantizer`` static quantization of the float32 file, int8
  weights per channel and int8 activations, calibrated by running that file in the LiteRT interpreter on the
  calibration images. The detection head (its output convolutions and the box decode) and the graph's input and
  output stay float, as in our ONNX INT8 (``utils.deploy.quantize``).
- ``executorch``: ``torch.export`` then ``to_edge_transform_and_lower`` with the XNNPACK partitioner: ``<stem>.pte``.
- ``executorch`` INT8 (``<stem>-int8.pte``): PyTorch 2 export quantization (PT2E) with ExecuTorch's
  ``XNNPACKQuantizer`` (per-channel symmetric int8 weights, int8 activations), calibrated on the same images,
  head left float (``HeadInFloat``), then lowered to XNNPACK.

Each file holds the metadata of ``ExportContext.metadata`` (``utils.deploy.mobile_backends`` reads it back). The
packages are optional (``requirements-mobile.txt``) and imported here only when these formats are asked for.
Both files have a fixed input shape: ``--dynamic`` is refused, and so is ``--half`` (the float16 TFLite file is
written anyway; ExecuTorch's XNNPACK runs float32 on x86).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from utils.atomic import atomic_file
from utils.deploy.mobile_backends import METADATA_NAME, add_tflite_metadata, cpu_threads, import_mobile
from utils.deploy.quantize import QuantizationError, batches
from utils.general import LOGGER
from utils.signals import deferred_signals


def _check_options(ctx, fmt: str) -> None:
    """Refuse the options these fixed-shape float files cannot honour, before any work."""
    if ctx.dynamic:
        raise ValueError(f"--dynamic does not apply to {fmt}: its files have a fixed input shape (--imgsz, "
                         "--batch-size); export one per size")
    if ctx.half and fmt == "executorch":
        raise ValueError("--half does not apply to executorch: XNNPACK runs float32 on x86 (export without --half; "
                         "--int8 gives the small, fast file)")


@contextlib.contextmanager
def _quiet(verbose: bool):
    """The converters' and quantizers' progress bars, size tables and debugging-mode warnings (Python-level stdout
    and stderr): shown with --verbose, kept out of export's log otherwise (its handler keeps its own stream)."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _write_bytes(f: Path, data: bytes, what: str) -> Path:
    with atomic_file(f) as tmp, deferred_signals(f"the {what} file {f.name}"):
        tmp.write_bytes(data)
    return f


def head_index(model: nn.Module) -> int:
    """Index of the detection head, the model's last layer (``Model.fuse`` keeps it last)."""
    return len(model.model) - 1


# ---------------------------------------------------------------------------------------------
# LiteRT
# ---------------------------------------------------------------------------------------------

def _tflite_float32(ctx) -> bytes:
    """The folded model converted by litert-torch (float32, no metadata); cached on ``ctx`` for the variants."""
    cached = ctx.intermediates.get("tflite float32")
    if cached is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ INFO lines
        litert_torch = import_mobile("litert_torch", "tflite")
        import_mobile("ai_edge_litert.interpreter", "tflite")  # verification runs it: fail before converting
        litert_torch.config.show_progress = ctx.verbose
        with _quiet(ctx.verbose):
            cached = bytes(litert_torch.convert(ctx.model, (ctx.im,)).model_content())
        ctx.intermediates["tflite float32"] = cached
    return cached


def export_tflite(ctx) -> Path:
    """``<stem>_float32.tflite``."""
    _check_options(ctx, "tflite")
    if ctx.half:
        LOGGER.info("tflite: --half is not needed: the float16 file is written beside the float32 one")
    model = add_tflite_metadata(_tflite_float32(ctx), ctx.metadata(half=False))
    return _write_bytes(ctx.file("_float32.tflite"), model, "TFLite")


def export_tflite_float16(ctx) -> Path:
    """``<stem>_float16.tflite``: the float32 graph with its weights cast to float16."""
    _check_options(ctx, "tflite")
    quantizer, qtyping, algorithms = _ai_edge_quantizer()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "float32.tflite"
        src.write_bytes(_tflite_float32(ctx))
        qt = quantizer.Quantizer(str(src))
        qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=algorithms.AlgorithmName.FLOAT_CASTING)
        with _quiet(ctx.verbose):
            model = bytes(qt.quantize().quantized_model)
    return _write_bytes(ctx.file("_float16.tflite"), add_tflite_metadata(model, ctx.metadata(half=True)), "TFLite")


def _ai_edge_quantizer():
    quantizer = import_mobile("ai_edge_quantizer.quantizer", "tflite")
    qtyping = import_mobile("ai_edge_quantizer.qtyping", "tflite")
    algorithms = import_mobile("ai_edge_quantizer.algorithm_manager", "tflite")
    return quantizer, qtyping, algorithms


def tflite_head_pattern(model: nn.Module) -> str:
    """Regex for the names of the head's tensors in a litert-torch file: the converter names each tensor by its
    module path, ``models.yolo.Model/models.yolo.Detect_22...`` (class, then the index in ``Model.model``); a
    fused tensor joins several such paths with ';'."""
    head = model.model[head_index(model)]
    top = f"{type(model).__module__}.{type(model).__qualname__}"
    return rf"(?:^|;){re.escape(top)}/{re.escape(type(head).__module__ + '.' + type(head).__qualname__)}_" \
           rf"{head_index(model)}(?=[;/]|$)"


def _tensor_names(model: bytes) -> tuple[list[str], list[str]]:
    """(every tensor's name, the graph outputs' names) of a .tflite file's main graph."""
    schema = import_mobile("ai_edge_litert.schema_py_generated", "tflite")
    graph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    names = [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]
    return names, [names[graph.Outputs(i)] for i in range(graph.OutputsLength())]


def export_tflite_int8(ctx) -> Path:
    """``<stem>_int8.tflite``: int8 outside the head, float input, head and output (see the module docstring)."""
    _check_options(ctx, "tflite")
    quantizer, qtyping, algorithms = _ai_edge_quantizer()
    interpreter = import_mobile("ai_edge_litert.interpreter", "tflite")
    float32, ops, skip = _tflite_float32(ctx), qtyping.TFLOperationName, algorithms.AlgorithmName.NO_QUANTIZE
    pattern, (names, outputs) = tflite_head_pattern(ctx.model), _tensor_names(float32)
    if not any(re.search(pattern, name) for name in names):  # the naming this relies on changed
        raise QuantizationError("tflite int8: no tensor of the detection head found in the converted graph (its "
                                f"names do not match {pattern!r}): this litert-torch names tensors differently")
    signature = interpreter.Interpreter(model_content=float32).get_signature_list()
    (key, io_names), = signature.items()
    calibration = {key: [{io_names["inputs"][0]: x} for x in batches(ctx.int8_data.calibration, int(ctx.im.shape[0]))]}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "float32.tflite"
        src.write_bytes(float32)
        qt = quantizer.Quantizer(str(src))
        qt.add_static_config(regex=".*", operation_name=ops.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
        # later entries win: the head in float, with the op writing the graph's output (the converter names that
        # tensor after the signature, not the head: the concatenation of boxes and scores), and float at the
        # graph's input and output. (ai-edge-quantizer matches a regex against an op's output names joined by ';'
        # with a trailing ';'.)
        for regex in (pattern, "^(?:" + "|".join(re.escape(n) for n in outputs) + ");"):
            qt.update_quantization_recipe(regex=regex, operation_name=ops.ALL_SUPPORTED, algorithm_key=skip)
        for op in (ops.INPUT, ops.OUTPUT):
            qt.update_quantization_recipe(regex="^", operation_name=op, algorithm_key=skip)
        with _quiet(ctx.verbose):
            model = bytes(qt.quantize(qt.calibrate(calibration, num_threads=cpu_threads())).quantized_model)
    meta = ctx.metadata(half=False, int8=True)
    return _write_bytes(ctx.file("_int8.tflite"), add_tflite_metadata(model, meta), "TFLite")


# ---------------------------------------------------------------------------------------------
# ExecuTorch
# ---------------------------------------------------------------------------------------------

def _executorch():
    """ExecuTorch's lowering API and XNNPACK partitioner; its runtime too, which verification needs (a missing
    package fails here, before any export work)."""
    exir = import_mobile("executorch.exir", "executorch")
    partitioner = import_mobile("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
    import_mobile("executorch.runtime", "executorch")
    return exir, partitioner


def _lower_to_pte(exported, ctx, int8: bool) -> bytes:
    """An ``ExportedProgram`` lowered to XNNPACK, with the metadata as a constant method."""
    exir, partitioner = _executorch()
    edge = exir.to_edge_transform_and_lower(exported, partitioner=[partitioner.XnnpackPartitioner()],
                                            constant_methods={METADATA_NAME: json.dumps(ctx.metadata(half=False,
                                                                                                   int8=int8))})
    return bytes(edge.to_executorch().buffer)


def export_executorch(ctx) -> Path:
    """``<stem>.pte``: the folded model lowered to ExecuTorch's XNNPACK delegate (float32)."""
    _check_options(ctx, "executorch")
    _executorch()
    with _quiet(ctx.verbose):
        program = _lower_to_pte(torch.export.export(ctx.model, (ctx.im,)), ctx, int8=False)
    return _write_bytes(ctx.file(".pte"), program, "ExecuTorch")


def head_in_float(quantizer, head: str):
    """``quantizer`` (a PT2E ``Quantizer``) annotating nothing inside the module at path ``head`` (``model.22``):
    the head's convolutions and box decode stay float. (ExecuTorch's and litert-torch's quantizers do not take
    ``set_module_name(name, None)``, and their module-type filters compare what this torch records differently.)"""
    base = import_mobile("torchao.quantization.pt2e.quantizer", "executorch").Quantizer

    class HeadInFloat(base):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            quantizer.annotate(model)
            left = 0
            for node in model.graph.nodes:
                paths = [p for p, _ in node.meta.get("nn_module_stack", {}).values()]
                if any(p == head or p.startswith(head + ".") for p in paths):
                    left += node.meta.pop("quantization_annotation", None) is not None
            if not left:
                raise QuantizationError(f"executorch int8: no operation of the head {head} found in the exported "
                                        "graph (nn_module_stack), so it cannot be kept in float")
            return model

        def validate(self, model):
            quantizer.validate(model)

    return HeadInFloat()


def export_executorch_int8(ctx) -> Path:
    """``<stem>-int8.pte``: PT2E int8 (XNNPACKQuantizer) outside the head, calibrated, lowered to XNNPACK."""
    _check_options(ctx, "executorch")
    _executorch()
    xnnpack = import_mobile("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch")
    pt2e = import_mobile("torchao.quantization.pt2e.quantize_pt2e", "executorch")
    inner = xnnpack.XNNPACKQuantizer().set_global(xnnpack.get_symmetric_quantization_config(is_per_channel=True))
    quantizer = head_in_float(inner, f"model.{head_index(ctx.model)}")
    with _quiet(ctx.verbose):
        prepared = pt2e.prepare_pt2e(torch.export.export(ctx.model, (ctx.im,)).module(), quantizer)
        with torch.no_grad():
            for x in batches(ctx.int8_data.calibration, int(ctx.im.shape[0])):
                prepared(torch.from_numpy(x).to(ctx.im.device))
        quantized = pt2e.convert_pt2e(prepared)
        program = _lower_to_pte(torch.export.export(quantized, (ctx.im,)), ctx, int8=True)
    return _write_bytes(ctx.file("-int8.pte"), program, "ExecuTorch")
