"""Convert a YOLOv5 or YOLOv7 ``.pt`` into this project's plain checkpoint, once, so a team shares a safe file.

    python tools/convert_checkpoint.py yolov5s.pt                 # writes yolov5s-plain.pt beside it
    python tools/convert_checkpoint.py yolov7.pt --out weights/yolov7-plain.pt

The file is read as data (``utils.foreign_checkpoint``: a restricted unpickler, nothing from the file runs)
and the model rebuilt from its YAML; the output holds tensors and plain types only, so it loads with
``torch.load(path, weights_only=True)`` and gives the same outputs. A checkpoint of this project is
refused (there is nothing to convert). To go straight to ONNX, OpenVINO or TensorRT, give the original
file to ``export.py --weights``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def convert(source: str | Path, out: str | Path | None = None) -> Path:
    """Write the plain checkpoint of ``source`` (a YOLOv5/YOLOv7 file) to ``out`` (default ``<stem>-plain.pt``)."""
    from utils.checkpoint import CheckpointError, PickledObjectsError, model_from_foreign, read_checkpoint, save_checkpoint

    source = Path(source)
    try:
        read_checkpoint(source)
    except PickledObjectsError:
        pass
    else:
        raise CheckpointError(f"{source} is already a plain checkpoint of this project: nothing to convert")
    model = model_from_foreign(source)
    out = Path(out) if out else source.with_name(f"{source.stem}-plain.pt")
    return save_checkpoint(out, model, converted_from=source.name)


def main(argv=None) -> int:
    from utils.checkpoint import CheckpointError
    from utils.general import LOGGER, setup_logging

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", help="a YOLOv5 or YOLOv7 .pt file")
    p.add_argument("--out", default=None, help="output file (default: <stem>-plain.pt beside the input)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        out = convert(args.weights, args.out)
    except CheckpointError as e:
        LOGGER.error(f"convert_checkpoint: {e}")
        return 1
    LOGGER.info(f"Wrote {out} (plain data: loads with torch.load(weights_only=True))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
