"""Inference backends: one small class per model format behind one call signature.

    backend = load_backend("best.onnx", device="cpu")      # picks the class by suffix
    pred = backend(im)                                      # im: (b, 3, h, w) float 0..1, any device

Every backend exposes ``stride`` (int), ``names`` (list[str]), ``imgsz`` ((h, w) the file was exported
for, or None when it accepts any size), ``batch`` (fixed batch size or None), ``fp16``, ``device`` and
``end2end``. Calling it returns the decoded predictions ``(b, N, 5 + nc)`` as a float32 tensor on the
input's device, the same tensor ``Model`` returns first in eval mode, so ``non_max_suppression`` takes
it directly. Models exported with ``--nms`` (``end2end = True``) return ``(num_dets (b, 1),
boxes (b, max_det, 4) xyxy, scores (b, max_det), classes (b, max_det))`` instead.

Stride, names and image size come from the metadata each exporter writes into its file (see
``export.py``): TorchScript ``config.txt``, ONNX ``metadata_props``, OpenVINO ``metadata.yaml`` and a
length-prefixed JSON header in front of a TensorRT engine.
Files that YOLOv5's and YOLOv7's export.py wrote say less or say it differently: the gaps are filled from
the graph itself (``utils.deploy.foreign_exports``).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.deploy.foreign_exports import (DECODED, YOLOV7_END2END, check_names, classes_from_output, decode_value,
                                   end2end_classes, output_layout, refuse_tensorrt_plugins, shape_from_dims,
                                   yolov7_rows_to_end2end)
from utils.deploy.backend_base import Backend, BackendUnavailable, parse_metadata
from utils.general import LOGGER, load_yaml

SUPPORTED_FORMATS = {
    ".pt": "PyTorch checkpoint of this project",
    ".torchscript": "TorchScript",
    ".onnx": "ONNX (ONNX Runtime; OpenCV DNN with --dnn)",
    "_openvino_model/ or .xml": "OpenVINO IR",
    ".engine": "TensorRT engine",
    ".tflite": "LiteRT (TFLite) flatbuffer",
    ".pte": "ExecuTorch program (XNNPACK)",
}
ENGINE_HEADER_BYTES = 4  # little-endian int32 length of the JSON metadata in front of an engine
MAX_ENGINE_METADATA = 1 << 20  # a larger "length" means the file has no header (a bare engine)


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------

def write_engine_file(path: str | Path, metadata: dict, engine: bytes) -> Path:
    """TensorRT engine with its metadata in front: int32 length (little-endian), JSON, engine bytes."""
    from utils.atomic import atomic_file

    header = json.dumps(metadata).encode()
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(header).to_bytes(ENGINE_HEADER_BYTES, byteorder="little", signed=True))
        f.write(header)
        f.write(engine)
    return path


def read_engine_file(path: str | Path) -> tuple[dict | None, bytes]:
    """(metadata or None, serialized engine) from a file written by ``write_engine_file`` or a bare engine."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:ENGINE_HEADER_BYTES], byteorder="little", signed=True)
    if 0 < n <= min(MAX_ENGINE_METADATA, len(data) - ENGINE_HEADER_BYTES):
        try:
            meta = json.loads(data[ENGINE_HEADER_BYTES:ENGINE_HEADER_BYTES + n].decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            LOGGER.warning(f"WARNING {path}: no readable metadata header ({e}); reading it as a bare engine")
        else:
            if isinstance(meta, dict):
                return meta, data[ENGINE_HEADER_BYTES + n:]
    return None, data


def import_tensorrt():
    """The ``tensorrt`` module, or ``BackendUnavailable`` naming everything that is missing."""
    missing, trt = [], None
    try:
        import tensorrt as trt
    except ImportError as e:
        missing.append(f"the TensorRT Python package ('import tensorrt' failed: {e})")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if missing:
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU with CUDA and TensorRT installed; missing: " + "; ".join(missing))
    return trt


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------

class PyTorchBackend(Backend):
    """A checkpoint of this project or an in-memory ``Model``; ``fuse`` folds it, ``fp16`` runs it in half.

    An in-memory model is never changed by the backend: folding or a precision change happens on a copy
    (training validates its fp32 EMA through this). Without either, the backend runs the model itself, so
    ``.half()``/``.to()`` on it later (the hub model) are followed: device and precision are read from its
    parameters on every call."""

    def __init__(self, weights, device=None, fp16: bool = False, fuse: bool = True):
        from utils.checkpoint import load_model
        from utils.torch_utils import to_channels_last

        if isinstance(weights, nn.Module):
            model = weights
            copied = (fuse and not getattr(model, "is_folded", True)) or (fp16 and _dtype(model) != torch.float16)
            if copied:
                model = copy.deepcopy(model)
            model = model.to(device or _device(model)).eval()
            model = model.fuse() if fuse and hasattr(model, "fuse") else model
            model = to_channels_last(model) if copied else model
        else:  # our own copy: channels-last runs convolutions faster (benchmarks/README.md)
            model = to_channels_last(load_model(weights, device or "cpu", fuse=fuse))
        self.model = model.half() if fp16 else model
        super().__init__(weights, _device(model), fp16)
        self.stride = int(max(model.stride))
        self.names = [str(n) for n in model.names]

    @property
    def device(self) -> torch.device:
        return _device(self.model)

    @device.setter
    def device(self, value) -> None:  # follows the model's parameters
        pass

    @property
    def fp16(self) -> bool:
        return _dtype(self.model) == torch.float16

    @fp16.setter
    def fp16(self, value) -> None:  # follows the model's parameters
        pass

    def native(self):
        return self.model

    @torch.no_grad()
    def run(self, im: torch.Tensor, augment: bool = False):
        self._check_input(im)
        x = im.to(self.device, _dtype(self.model))
        pred, raw = self.model(x, augment=True) if augment else self.model(x)
        return pred.to(device=im.device, dtype=torch.float32), raw


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


class TorchScriptBackend(Backend):
    """A traced model written by ``export.py --include torchscript`` (metadata in ``config.txt``)."""

    def __init__(self, weights, device="cpu", fp16: bool = False):
        super().__init__(weights, device, fp16)
        extra = {"config.txt": ""}
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; loading it is this class's job
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning)
            self.model = torch.jit.load(str(self.weights), _extra_files=extra, map_location=self.device).eval()
        meta = parse_metadata(decode_value(extra["config.txt"]) if extra["config.txt"] else None, str(weights))
        self._apply_metadata(meta)
        self._warn_if_unnamed()
        self.fp16 = fp16 or meta["half"]
        self.model = self.model.half() if self.fp16 else self.model.float()

    @torch.no_grad()
    def _forward(self, im):
        y = self.model(im.to(self.device, torch.float16 if self.fp16 else torch.float32))
        if isinstance(y, (list, tuple)) and not self.end2end:  # YOLOv5's: (decoded,) or (decoded, raw maps)
            y = y[0]
        return y


class OnnxRuntimeBackend(Backend):
    """An ONNX file run by ONNX Runtime (CUDA provider on a CUDA device when installed)."""

    def __init__(self, weights, device="cpu", fp16: bool = False):
        import onnxruntime as ort

        super().__init__(weights, device, fp16)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
            else:
                LOGGER.warning("WARNING onnxruntime has no CUDAExecutionProvider here: running ONNX on the CPU")
        try:
            self.session = ort.InferenceSession(str(self.weights), providers=providers)
        except Exception:
            refuse_tensorrt_plugins(self.weights)  # one sentence for YOLOv7's TensorRT-NMS graph
            raise
        meta = parse_metadata(self.session.get_modelmeta().custom_metadata_map, str(weights))
        inp, outputs = self.session.get_inputs()[0], self.session.get_outputs()
        self._apply_metadata(_graph_input(meta, inp.shape))
        self.input_name, self.fp16 = inp.name, inp.type == "tensor(float16)"
        self.output_names = [o.name for o in outputs]
        self.layout = output_layout([(o.name, list(o.shape)) for o in outputs], weights)
        self.end2end = self.end2end or self.layout != DECODED
        nc = None  # the class count the outputs imply (ours with NMS inside have names and no count)
        if self.layout == DECODED:
            nc = classes_from_output(outputs[0].shape)
        elif self.layout == YOLOV7_END2END:
            nc = end2end_classes(self.weights)
        self.names = check_names(self.names, nc, weights)
        if not self.names:
            self._warn_if_unnamed()

    def _forward(self, im):
        x = im.detach().cpu().numpy().astype(np.float16 if self.fp16 else np.float32)
        y = self.session.run(self.output_names, {self.input_name: x})
        if self.layout == YOLOV7_END2END:
            return yolov7_rows_to_end2end(torch.from_numpy(y[0]), len(x))
        return [torch.from_numpy(a) for a in y] if self.end2end else torch.from_numpy(y[0])


class OpenCVDNNBackend(Backend):
    """An ONNX file run by OpenCV DNN (``--dnn``), on the CPU. Export with ``--opset 12`` for OpenCV's importer;
    graphs with NMS inside (``--nms``) and fp16 inputs are refused (ONNX Runtime runs them)."""

    def __init__(self, weights, device="cpu", fp16: bool = False):
        import cv2
        import onnx

        super().__init__(weights, "cpu", False)
        if torch.device(device).type != "cpu":
            LOGGER.warning("WARNING --dnn runs OpenCV DNN on the CPU (its CUDA target needs an OpenCV built with CUDA)")
        graph = onnx.load(str(self.weights), load_external_data=False)
        meta = parse_metadata({p.key: p.value for p in graph.metadata_props}, str(weights))
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in graph.graph.input[0].type.tensor_type.shape.dim]
        self._apply_metadata(_graph_input(meta, dims))
        if self.end2end or len(graph.graph.output) != 1:
            raise ValueError(f"--dnn: {weights} has NMS inside (export --nms); OpenCV DNN runs the plain graph: "
                             "export without --nms, or run it without --dnn (ONNX Runtime)")
        if graph.graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ValueError(f"--dnn: {weights} takes fp16 inputs (export --half); OpenCV DNN runs fp32 graphs")
        del graph
        self.net = cv2.dnn.readNetFromONNX(str(self.weights))
        if not self.names:
            self._warn_if_unnamed()

    def _forward(self, im):
        self.net.setInput(im.detach().cpu().float().numpy())
        return torch.from_numpy(self.net.forward())


class OpenVINOBackend(Backend):
    """An OpenVINO IR (``<stem>_openvino_model/`` folder or its ``.xml``), run on the CPU plugin."""

    def __init__(self, weights, device="cpu", fp16: bool = False):
        import openvino as ov

        super().__init__(weights, device, fp16)
        path = Path(weights)
        if path.is_dir():
            xmls = sorted(path.glob("*.xml"))
            if len(xmls) != 1:
                raise FileNotFoundError(f"{path} should hold exactly one OpenVINO .xml model, found {len(xmls)}")
            path = xmls[0]
        # ours: metadata.yaml; YOLOv5's: <stem>.yaml beside the .xml
        meta_file = next((f for f in (path.parent / "metadata.yaml", path.with_suffix(".yaml")) if f.is_file()), None)
        meta = load_yaml(meta_file, "OpenVINO metadata file") if meta_file else None
        core = ov.Core()
        model = core.read_model(str(path))
        meta = parse_metadata(meta, str(weights))
        self._apply_metadata(_graph_input(meta, _ov_dims(model.inputs[0])))
        self.fp16 = fp16 or meta["half"]
        # f32 unless fp16 is asked for: the CPU plugin would otherwise pick bf16 on CPUs that have it
        config = {} if fp16 else {"INFERENCE_PRECISION_HINT": "f32"}
        self.model = core.compile_model(model, "CPU", config)
        self.end2end = self.end2end or len(self.model.outputs) == 4
        if not self.end2end:
            self.names = check_names(self.names, classes_from_output(_ov_dims(model.outputs[0])), weights)

    def _forward(self, im):
        result = self.model(im.detach().cpu().float().numpy())
        y = [torch.from_numpy(np.asarray(result[o])) for o in self.model.outputs]
        return y if self.end2end else y[0]


def _graph_input(meta: dict, dims) -> dict:
    """Metadata with the input size and batch read from the graph's input where the metadata has none
    (YOLOv5's and YOLOv7's ONNX files are fixed-shape without saying so); symbolic dimensions are dynamic."""
    if meta["imgsz"] or meta["dynamic"]:
        return meta
    imgsz, batch = shape_from_dims(dims)
    return {**meta, "imgsz": imgsz, "batch": batch or meta["batch"]}


def _ov_dims(port) -> list:
    """An OpenVINO port's dimensions: ints where static, None where dynamic."""
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


class _TensorRTBindings:
    """TensorRT API differences in one place: named I/O tensors (TRT >= 8.5) or binding indices (older)."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.named = hasattr(engine, "num_io_tensors")
        if self.named:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        else:
            names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
            inputs = [n for i, n in enumerate(names) if engine.binding_is_input(i)]
        if len(inputs) != 1:
            raise ValueError(f"expected an engine with one input, found {inputs}")
        self.names, self.input = names, inputs[0]
        self.outputs = [n for n in names if n not in inputs]

    def dtype(self, name: str) -> torch.dtype:
        e = self.engine
        dt = e.get_tensor_dtype(name) if self.named else e.get_binding_dtype(e.get_binding_index(name))
        return torch.from_numpy(np.empty(0, dtype=self.trt.nptype(dt))).dtype

    def profile_range(self) -> tuple[tuple, tuple]:
        """(min, max) input shape of the engine's first optimization profile."""
        e = self.engine
        if self.named:
            lo, _, hi = e.get_tensor_profile_shape(self.input, 0)
        else:
            lo, _, hi = e.get_profile_shape(0, e.get_binding_index(self.input))
        return tuple(lo), tuple(hi)

    def set_input_shape(self, shape: tuple) -> None:
        """Give the context the input's shape; outside the engine's profile TensorRT returns False and would
        report negative output sizes, so say which shapes the engine takes instead."""
        e, c = self.engine, self.context
        ok = c.set_input_shape(self.input, shape) if self.named else c.set_binding_shape(e.get_binding_index(self.input), shape)
        if not ok:
            lo, hi = self.profile_range()
            raise ValueError(f"input shape {shape} is outside this TensorRT engine's profile: it accepts {lo} to {hi} "
                             "(re-export with --dynamic and a larger --imgsz/--batch-size, or run at a size in range)")

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        e, c = self.engine, self.context
        self.set_input_shape(tuple(x.shape))
        if self.named:
            outs = [torch.empty(tuple(c.get_tensor_shape(n)), dtype=self.dtype(n), device=x.device) for n in self.outputs]
            for name, t in zip([self.input, *self.outputs], [x, *outs]):
                c.set_tensor_address(name, t.data_ptr())
            ok = c.execute_async_v3(torch.cuda.current_stream(x.device).cuda_stream)
        else:
            outs = [torch.empty(tuple(c.get_binding_shape(e.get_binding_index(n))), dtype=self.dtype(n),
                                device=x.device) for n in self.outputs]
            ptrs = dict(zip([self.input, *self.outputs], [t.data_ptr() for t in (x, *outs)]))
            ok = c.execute_v2([ptrs[n] for n in self.names])
        if not ok:
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        torch.cuda.current_stream(x.device).synchronize()
        return outs


class TensorRTBackend(Backend):
    """A TensorRT engine written by ``export.py --include engine`` (needs CUDA and ``tensorrt``)."""

    def __init__(self, weights, device="cuda:0", fp16: bool = False):
        trt = import_tensorrt()
        super().__init__(weights, device, fp16)
        if self.device.type != "cuda":
            raise ValueError(f"TensorRT engines run on a CUDA device, got device={device!r} (use e.g. 'cuda:0')")
        meta, engine_bytes = read_engine_file(self.weights)
        self._apply_metadata(parse_metadata(meta, str(weights)))
        self._warn_if_unnamed()
        self.fp16 = fp16 or bool(meta and meta.get("half"))
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {weights} (built with another TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
        self.io = _TensorRTBindings(trt, self.engine, self.context)
        self.end2end = self.end2end or self.io.outputs[:1] == ["num_dets"]

    def _forward(self, im):
        with torch.cuda.device(self.device):  # the engine's GPU current, whatever device another call left
            x = im.to(self.device, self.io.dtype(self.io.input)).contiguous()
            y = self.io.run(x)
        return y if self.end2end else y[0]


# ---------------------------------------------------------------------------------------------
# Ensemble: several PyTorch checkpoints as one model (--weights a.pt b.pt in val.py and detect.py)
# ---------------------------------------------------------------------------------------------
# Each model runs on the same input and the decoded predictions are concatenated along the box axis, so one
# NMS afterwards merges them (YOLOv5's default "NMS ensemble"). The models must agree on class names and
# stride; exported files are refused (only PyTorch checkpoints give decoded outputs at any input size).

class EnsembleBackend(Backend):
    """The concatenated predictions of several ``PyTorchBackend`` models (one call signature, as any backend)."""

    def __init__(self, members: list[PyTorchBackend]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs 2 or more models, got {len(members)}")
        first = members[0]
        for m in members[1:]:
            if m.names != first.names:
                raise ValueError(f"ensemble: {m.weights} predicts {m.nc} classes {m.names[:5]}... but {first.weights} "
                                 f"predicts {first.nc} {first.names[:5]}...: every --weights must have the same classes")
            if m.stride != first.stride:
                raise ValueError(f"ensemble: {m.weights} has stride {m.stride} but {first.weights} has stride "
                                 f"{first.stride}: every --weights must have the same stride")
        super().__init__(first.weights, first.device, first.fp16)
        self.members = members
        self.weights = " + ".join(str(m.weights) for m in members)
        self.stride, self.names = first.stride, list(first.names)
        self.device, self.fp16 = first.device, first.fp16

    @torch.no_grad()
    def run(self, im: torch.Tensor, augment: bool = False):
        """(concatenated decoded predictions, None): no raw maps, so no validation loss for an ensemble."""
        self._check_input(im)
        return torch.cat([m.run(im, augment)[0] for m in self.members], 1), None

    def __repr__(self) -> str:
        return f"EnsembleBackend({len(self.members)} models: {self.weights}, stride={self.stride}, nc={self.nc})"


def load_ensemble(weights, device=None, fp16: bool = False, fuse: bool = True) -> EnsembleBackend:
    """An ``EnsembleBackend`` of the ``.pt`` checkpoints in ``weights`` (other formats refused with a message)."""
    for w in weights:
        if Path(str(w)).suffix != ".pt":
            raise ValueError(f"an ensemble of several --weights takes PyTorch .pt checkpoints only, not {w}: run "
                             "exported files one at a time, or ensemble their .pt checkpoints")
    return EnsembleBackend([load_backend(w, device, fp16, fuse) for w in weights])


def weights_label(weights) -> str:
    """A file-name stem for ``weights``: the checkpoint's stem, or the stems joined by '+' for an ensemble."""
    if isinstance(weights, (list, tuple)):
        return "+".join(Path(str(w)).stem for w in weights)
    return Path(str(weights)).stem


def load_backend(weights, device=None, fp16: bool = False, fuse: bool = True, augment: bool = False,
                 dnn: bool = False) -> Backend:
    """The one way to get a model to run: a backend for a file (chosen by its suffix), an in-memory
    ``Model`` (``fuse`` folds a copy of it; ``.pt`` files are folded on load likewise) or a backend
    (returned as it is, or as an fp16 copy of a PyTorch one when ``fp16`` asks for it). ``augment`` says
    test-time augmentation will be asked for: only PyTorch models can, and other files are refused unread.
    A list of several ``.pt`` files is an ensemble (``EnsembleBackend``); ``dnn`` runs an ``.onnx`` file
    with OpenCV DNN instead of ONNX Runtime."""
    if isinstance(weights, (list, tuple)):
        if not weights:
            raise ValueError("weights: an empty list; pass one model file, or several .pt files for an ensemble")
        if len(weights) > 1:
            if dnn:
                raise ValueError("--dnn runs one .onnx file; an ensemble of several --weights takes .pt checkpoints")
            return load_ensemble(weights, device, fp16, fuse)
        weights = weights[0]
    if dnn:
        if Path(str(weights)).suffix != ".onnx":
            raise ValueError(f"--dnn (OpenCV DNN) runs .onnx files only, not {weights}")
        if augment:
            raise ValueError(f"augment (test-time augmentation) needs a PyTorch .pt checkpoint, not {weights}")
        if not Path(weights).exists():
            raise FileNotFoundError(f"model not found: {weights}")
        return _open(OpenCVDNNBackend, Path(weights), device or "cpu", fp16)
    if augment and not isinstance(weights, (nn.Module, PyTorchBackend)) and Path(str(weights)).suffix != ".pt":
        raise ValueError(f"augment (test-time augmentation) needs a PyTorch .pt checkpoint, not {weights}")
    if isinstance(weights, PyTorchBackend) and fp16 and not weights.fp16:
        return PyTorchBackend(weights.model, fp16=True, fuse=False)  # a half copy; the original stays fp32
    if isinstance(weights, Backend):
        return weights
    if isinstance(weights, nn.Module):
        return PyTorchBackend(weights, device, fp16, fuse)
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    device = device or "cpu"
    if path.suffix == ".pt":
        return _open(PyTorchBackend, path, device, fp16, fuse=fuse)
    if path.is_dir() and path.name.endswith("_openvino_model") or path.suffix == ".xml":
        return _open(OpenVINOBackend, path, device, fp16)
    backends = {".torchscript": TorchScriptBackend, ".onnx": OnnxRuntimeBackend, ".engine": TensorRTBackend}
    if path.suffix in (".tflite", ".pte"):  # optional runtimes: imported only for these files
        from utils.deploy.mobile_backends import ExecuTorchBackend, LiteRTBackend

        backends.update({".tflite": LiteRTBackend, ".pte": ExecuTorchBackend})
    if path.suffix not in backends:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_FORMATS.items())
        raise ValueError(f"unsupported model format: {path}; supported: {supported}")
    return _open(backends[path.suffix], path, device, fp16)


def _open(cls: type[Backend], path: Path, device, fp16: bool, **kwargs) -> Backend:
    """Construct a backend; a file its runtime cannot read becomes one sentence naming the file."""
    from utils.checkpoint import CheckpointError

    try:
        return cls(path, device, fp16, **kwargs)
    except (BackendUnavailable, CheckpointError, FileNotFoundError, ValueError):
        raise  # already say what is wrong
    except Exception as e:  # noqa: BLE001 -- each runtime has its own error types for a bad file; re-raised
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ValueError(f"{path} could not be loaded by {cls.__name__} (corrupt, truncated or not that format): "
                         f"{type(e).__name__}: {first}") from e
