"""Backends for the mobile formats: LiteRT (``.tflite``) and ExecuTorch (``.pte``), run on this machine's CPU.

Both runtimes are optional packages (``requirements-mobile.txt``); they are imported only when such a file is
opened, and a missing one is a ``BackendUnavailable`` with the install line. Each file carries the metadata
``utils.deploy.exporters`` writes for every format (stride, names, image size, batch): in a LiteRT file as a
flatbuffer metadata entry named ``METADATA_NAME``, in an ExecuTorch program as a constant method of that name.
Both take the fixed (b, 3, h, w) float input they were exported for and return the decoded (b, N, 5 + nc)
predictions, like every other backend (``utils.deploy.backends``).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import torch

from utils.deploy.backend_base import Backend, BackendUnavailable, parse_metadata
from utils.deploy.foreign_exports import check_names, classes_from_output
from utils.general import LOGGER

METADATA_NAME = "yolo_reparam_metadata"  # LiteRT metadata entry / ExecuTorch constant method holding the JSON
MOBILE_REQUIREMENTS = "requirements-mobile.txt"
# what each format needs, for the one-line hint: module -> PyPI package
MOBILE_PACKAGES = {
    "tflite": {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert", "ai_edge_quantizer": "ai-edge-quantizer"},
    "executorch": {"executorch": "executorch"},
}


def import_mobile(module: str, fmt: str):
    """``importlib.import_module(module)``, or ``BackendUnavailable`` with the line that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = MOBILE_PACKAGES[fmt].get(module.split(".")[0], module)
        raise BackendUnavailable(f"{fmt} needs the '{package}' package ({e}): pip install -r {MOBILE_REQUIREMENTS}"
                                 ) from None


# ---------------------------------------------------------------------------------------------
# LiteRT metadata: one entry in the flatbuffer's metadata table (the interpreter ignores unknown entries)
# ---------------------------------------------------------------------------------------------

def add_tflite_metadata(model: bytes, meta: dict) -> bytes:
    """``model`` (a .tflite flatbuffer) with ``meta`` as JSON under ``METADATA_NAME`` (replacing an older one)."""
    import flatbuffers

    schema = import_mobile("ai_edge_litert.schema_py_generated", "tflite")
    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    for b in m.buffers:  # data stored after the flatbuffer (offset, size) moves inside it: repacking shifts offsets
        if b.offset > 1:
            b.data, b.offset, b.size = np.frombuffer(model[b.offset:b.offset + b.size], dtype=np.uint8), 0, 0
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    m.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(m.buffers) - 1
    m.metadata = [e for e in (m.metadata or []) if _text(e.name) != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(model: bytes) -> dict | None:
    """The JSON metadata ``add_tflite_metadata`` wrote, or None for a file without it."""
    schema = import_mobile("ai_edge_litert.schema_py_generated", "tflite")
    root = schema.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if _text(entry.Name()) == METADATA_NAME:
            return json.loads(root.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode())
    return None


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _require_metadata(meta: dict | None, weights) -> dict:
    if meta is None:
        raise ValueError(f"{weights} has no {METADATA_NAME}: it was not written by this project's export.py "
                         "(YOLOv5's TFLite files, NHWC with normalised boxes, are not read); export the .pt with "
                         "export.py --include tflite executorch")
    return meta


def _cpu_only(device, runtime: str) -> None:
    """These runtimes run on the CPU here: say so once when another device was asked for (outputs still come back
    on the input's device)."""
    if torch.device(device or "cpu").type != "cpu":
        LOGGER.warning(f"WARNING {runtime} files run on the CPU here (this backend uses no GPU delegate), not on "
                       f"{device}")


def cpu_threads() -> int:
    """Threads for the LiteRT interpreter and calibrator: torch's intra-op count, what the other CPU backends use."""
    return max(1, torch.get_num_threads())


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------

class LiteRTBackend(Backend):
    """A ``.tflite`` file written by ``export.py --include tflite`` (float32, float16 or INT8 with float input and
    output), run by the LiteRT interpreter (``ai-edge-litert``) with its XNNPACK CPU delegate."""

    def __init__(self, weights, device="cpu", fp16: bool = False):
        interpreter = import_mobile("ai_edge_litert.interpreter", "tflite")
        _cpu_only(device, "LiteRT")
        super().__init__(weights, "cpu", False)
        model = Path(weights).read_bytes()
        meta = _require_metadata(read_tflite_metadata(model), weights)
        self._apply_metadata(parse_metadata(meta, str(weights)))
        self.interpreter = interpreter.Interpreter(model_content=model, num_threads=cpu_threads())
        self.interpreter.allocate_tensors()
        inp, out = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        if inp["dtype"] != np.float32 or tuple(inp["shape"][1:2]) != (3,):
            raise ValueError(f"{weights} takes {inp['dtype'].__name__} input of shape {tuple(inp['shape'])}; this "
                             "backend runs the (b, 3, h, w) float32 files export.py writes")
        self.input_index, self.output_index = inp["index"], out["index"]
        self.names = check_names(self.names, classes_from_output([int(d) for d in out["shape"]]), weights)

    def _forward(self, im):
        self.interpreter.set_tensor(self.input_index, im.detach().cpu().float().contiguous().numpy())
        self.interpreter.invoke()
        return torch.from_numpy(self.interpreter.get_tensor(self.output_index).copy())


class ExecuTorchBackend(Backend):
    """A ``.pte`` program written by ``export.py --include executorch`` (XNNPACK-delegated, fp32 or INT8), run by
    ExecuTorch's Python runtime on the CPU."""

    def __init__(self, weights, device="cpu", fp16: bool = False):
        runtime = import_mobile("executorch.runtime", "executorch")
        _cpu_only(device, "ExecuTorch")
        super().__init__(weights, "cpu", False)
        self.program = runtime.Runtime.get().load_program(Path(weights))
        meta = None
        if METADATA_NAME in self.program.method_names:
            meta = json.loads(self.program.load_method(METADATA_NAME).execute([])[0])
        self._apply_metadata(parse_metadata(_require_metadata(meta, weights), str(weights)))
        self.method = self.program.load_method("forward")

    def _forward(self, im):
        return self.method.execute([im.detach().cpu().float().contiguous()])[0]
