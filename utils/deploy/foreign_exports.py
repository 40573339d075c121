"""Files written by YOLOv5 v7.0's and YOLOv7's ``export.py``: their metadata, input shapes and output layouts.

``utils.deploy.backends`` reads our own exports from their metadata; a file another project wrote says less or
says it differently, and these helpers fill the gaps from the graph itself:

- YOLOv5 writes ONNX metadata values with ``str()``: names as a Python literal (``{0: 'person', ...}``),
  stride as ``'32'``. ``decode_value`` reads JSON, then Python literals (``ast.literal_eval``, never eval).
- YOLOv5 and YOLOv7 ONNX files have a fixed input and no ``imgsz``: ``shape_from_dims`` reads it from the
  graph's input (symbolic dimensions are dynamic). YOLOv5's TorchScript ``config.txt`` has ``shape``.
- YOLOv7 writes no class names: ``numbered_names`` counts them from the output (decoded ``(b, N, 5 + nc)``).
- ``output_layout`` tells the ONNX output forms apart: decoded predictions, our end2end outputs,
  YOLOv7's ``--end2end --max-wh`` rows ``(n, 7)`` (converted by ``yolov7_rows_to_end2end``), and refuses
  the forms no backend here can use (YOLOv7's raw maps without ``--grid``, TensorRT plugin graphs).
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import torch

from utils.general import LOGGER

DECODED, END2END, YOLOV7_END2END = "decoded", "end2end", "yolov7_end2end"
TENSORRT_DOMAIN = "TRT"  # YOLOv7's --end2end without --max-wh: EfficientNMS_TRT in the "TRT" domain


def decode_value(value):
    """A metadata value as the exporter meant it: JSON, else a Python literal (YOLOv5 writes ``str(dict)``),
    else the plain string (a description)."""
    if not isinstance(value, (str, bytes)):
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    try:
        return ast.literal_eval(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        return value


def shape_from_dims(dims) -> tuple[tuple[int, int] | None, int | None]:
    """((h, w) or None, batch or None) of an NCHW input whose dimensions are ints (fixed) or anything else
    (symbolic names, None, -1: dynamic)."""
    dims = list(dims or [])
    if len(dims) != 4:
        return None, None

    def fixed(d):
        return int(d) if isinstance(d, int) and d > 0 else None

    h, w = fixed(dims[2]), fixed(dims[3])
    return ((h, w) if h and w else None), fixed(dims[0])


def classes_from_output(dims) -> int | None:
    """nc of a decoded ``(b, N, 5 + nc)`` output whose last dimension is fixed, else None."""
    dims = list(dims or [])
    return int(dims[-1]) - 5 if len(dims) == 3 and isinstance(dims[-1], int) and dims[-1] > 5 else None


def check_names(names: list[str], nc: int | None, source) -> list[str]:
    """Names that agree with the output's class count: numbered ones when the file has none (one warning),
    an error when the metadata and the output disagree."""
    if nc is None:
        return names
    if not names:
        LOGGER.warning(f"WARNING {source} has no class names (YOLOv7's export.py writes none): naming its {nc} "
                       f"classes '0'..'{nc - 1}' (pass --data or set names to label them)")
        return [str(i) for i in range(nc)]
    if len(names) != nc:
        raise ValueError(f"{source} lists {len(names)} class names in its metadata but its output has {nc} classes: "
                         "the metadata does not belong to this model (re-export it)")
    return names


def output_layout(outputs: list[tuple[str, list]], source) -> str:
    """DECODED, END2END or YOLOV7_END2END for a graph's (name, dims) outputs; ValueError for forms we cannot run."""
    names = [n for n, _ in outputs]
    if names[:1] == ["num_dets"]:
        return END2END
    if len(outputs) == 1 and len(outputs[0][1]) == 2 and outputs[0][1][-1] == 7:
        return YOLOV7_END2END
    if any(len(d) == 5 for _, d in outputs):
        raise ValueError(f"{source} outputs {len(outputs)} raw feature maps (YOLOv7 export.py without --grid): "
                         "re-export with --grid (decoded boxes) or --grid --end2end --max-wh 640 (NMS inside)")
    return DECODED


def refuse_tensorrt_plugins(path: Path) -> None:
    """One sentence for an ONNX graph ONNX Runtime cannot load because it holds TensorRT plugin ops."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 -- not readable by onnx either: the caller reports its own error
        return
    plugins = sorted({n.op_type for n in graph.node if n.domain == TENSORRT_DOMAIN})
    if plugins:
        raise ValueError(f"{path} holds TensorRT plugin ops ({', '.join(plugins)}; YOLOv7 export.py --end2end without "
                         "--max-wh), which ONNX Runtime cannot run: re-export with --grid --end2end --max-wh 640 "
                         "(NMS for ONNX Runtime) or with --grid alone")


def end2end_classes(path: Path) -> int | None:
    """nc of a YOLOv7 ``--end2end --max-wh`` graph, whose (n, 7) output hides it: the decoded predictions
    its NMS starts from are the widest static (b, N, 5 + nc) tensor inside, N the rows of its (b, N, 4) boxes."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    except Exception:  # noqa: BLE001 -- shape inference is a best effort here
        return None
    shapes = [[d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info]
    shapes = [d for d in shapes if len(d) == 3 and all(isinstance(x, int) and x > 0 for x in d)]
    rows = {d[1] for d in shapes if d[2] == 4}  # the boxes (b, N, 4)
    widths = [classes_from_output(d) for d in shapes if d[1] in rows and d[2] > 5]
    return max(widths) if widths else None


def yolov7_rows_to_end2end(rows: torch.Tensor, batch: int) -> tuple[torch.Tensor, ...]:
    """YOLOv7's ONNX Runtime NMS rows (n, 7) [batch index, x0, y0, x1, y1, class, score] -> our end2end
    outputs (num_dets (b, 1), boxes (b, k, 4), scores (b, k), classes (b, k)), k the most rows of one image."""
    rows = torch.as_tensor(rows).float().reshape(-1, 7)
    index = rows[:, 0].long()
    counts = torch.bincount(index, minlength=batch)[:batch] if len(rows) else torch.zeros(batch, dtype=torch.long)
    k = int(counts.max()) if len(rows) else 0
    boxes, scores, classes = torch.zeros(batch, k, 4), torch.zeros(batch, k), torch.zeros(batch, k)
    for i in range(batch):
        r = rows[index == i]
        boxes[i, :len(r)], classes[i, :len(r)], scores[i, :len(r)] = r[:, 1:5], r[:, 5], r[:, 6]
    return counts.view(batch, 1).int(), boxes, scores, classes
