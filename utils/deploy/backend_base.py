"""The common part of every inference backend: the ``Backend`` interface and its input checks, the metadata
parser every format's reader shares, and ``BackendUnavailable``. ``utils.deploy.backends`` has the format classes
and ``load_backend``; ``utils.deploy.mobile_backends`` the optional mobile ones (both import this, not each other).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.deploy.foreign_exports import decode_value, shape_from_dims
from utils.general import LOGGER


class BackendUnavailable(RuntimeError):
    """A backend's runtime (package or hardware) is missing on this machine."""


def parse_metadata(raw: dict[str, Any] | None, source: str) -> dict:
    """Normalise a format's metadata dict: stride int, names list, imgsz (h, w) tuple, flags bool.

    Values may be JSON or Python literals (YOLOv5 writes ``str(names)``); YOLOv5's TorchScript gives the
    input as ``shape`` (b, 3, h, w). A file without names gets them numbered from its output by the backend."""
    raw = {k: decode_value(v) for k, v in (raw or {}).items()}
    if "stride" not in raw:
        LOGGER.warning(f"WARNING {source} has no stride metadata: assuming stride 32")
    names = raw.get("names") or []
    if isinstance(names, dict):  # {id: name} as YOLOv5 data files write it
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{source}: its 'names' metadata is not a list or {{id: name}} dict ({str(names)[:60]!r}); "
                         "re-export the model")
    imgsz, batch = raw.get("imgsz"), raw.get("batch")
    if not imgsz and raw.get("shape"):  # YOLOv5's TorchScript config.txt
        imgsz, batch = shape_from_dims(raw["shape"])
    return {
        "stride": int(raw.get("stride", 32)),
        "names": [str(n) for n in names],
        "imgsz": tuple(int(x) for x in imgsz) if imgsz else None,
        "batch": int(batch) if batch else None,
        "dynamic": bool(raw.get("dynamic", False)),
        "end2end": bool(raw.get("end2end", False)),
        "half": bool(raw.get("half", False)),
    }


class Backend:
    """Common interface and input checks; subclasses implement ``_forward``.

    ``backend(im)`` returns the decoded predictions; ``backend.run(im)`` returns them with the raw per-level
    maps a validation loss needs (None where the format has none). ``augment`` (test-time augmentation)
    needs a PyTorch model: other formats refuse it with a message."""

    def __init__(self, weights, device="cpu", fp16: bool = False):
        self.weights = weights if isinstance(weights, nn.Module) else Path(weights)
        self.device = torch.device(device)
        self.fp16 = fp16
        self.stride, self.names, self.imgsz, self.batch = 32, [], None, None
        self.end2end = False

    @property
    def nc(self) -> int:
        return len(self.names)

    def _apply_metadata(self, meta: dict) -> None:
        self.stride, self.names = meta["stride"], meta["names"]
        self.imgsz = None if meta["dynamic"] else meta["imgsz"]
        self.batch = None if meta["dynamic"] else meta["batch"]
        self.end2end = meta["end2end"]

    def _check_input(self, im: torch.Tensor) -> None:
        if not isinstance(im, torch.Tensor) or im.ndim != 4 or im.shape[1] != 3:
            got = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
            raise ValueError(f"{type(self).__name__} expects a (b, 3, h, w) tensor, got {got}")
        if self.imgsz is not None and tuple(im.shape[2:]) != tuple(self.imgsz):
            raise ValueError(f"{self.weights} was exported for {self.imgsz[0]}x{self.imgsz[1]} images, got "
                             f"{im.shape[2]}x{im.shape[3]}: letterbox the images to that size (val.py, detect.py "
                             "and the hub API do) or export with --dynamic for any size")
        if self.imgsz is None and (im.shape[2] % self.stride or im.shape[3] % self.stride):
            raise ValueError(f"input size {im.shape[2]}x{im.shape[3]} is not a multiple of the model's stride "
                             f"{self.stride}: pad or letterbox the images to multiples of {self.stride}")
        if im.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} got an empty batch (0 images)")

    def __call__(self, im: torch.Tensor, augment: bool = False):
        return self.run(im, augment)[0]

    def run(self, im: torch.Tensor, augment: bool = False):
        """(decoded predictions as float32 on ``im``'s device, raw maps or None).

        A file exported for a fixed batch size takes any number of images: they run in chunks of that size,
        the last one padded with zero images whose outputs are dropped."""
        if augment:
            raise ValueError(f"augment (test-time augmentation) needs a PyTorch .pt model, not {self.weights}")
        self._check_input(im)
        b = self.batch or len(im)
        outs = []
        for chunk in im.split(b):
            k = len(chunk)  # images of this chunk; the rest of a short last chunk is zero padding
            y = self._forward(torch.cat((chunk, chunk.new_zeros((b - k, *chunk.shape[1:])))) if k < b else chunk)
            outs.append([torch.as_tensor(t)[:k] for t in y] if self.end2end else torch.as_tensor(y)[:k])
        if self.end2end:
            return tuple(_cat_padded(ts).to(im.device) for ts in zip(*outs)), None
        return torch.cat(outs).to(device=im.device, dtype=torch.float32), None

    def _forward(self, im: torch.Tensor):
        raise NotImplementedError

    def _warn_if_unnamed(self) -> None:
        """Formats whose class count cannot be read before a forward pass: say so once, instead of nc = 0."""
        if not self.names:
            LOGGER.warning(f"WARNING {self.weights} has no class names in its metadata, and its class count cannot "
                           "be read without running it: re-export it with this project's export.py (it writes them)")

    def native(self):
        """What a user holds: the ``Model`` for PyTorch (trainable, ``.half()``-able), the backend otherwise."""
        return self

    def warmup(self, imgsz=(1, 3, 640, 640)) -> None:
        """One forward pass on zeros (at the exported shape when the model has a fixed one)."""
        b = self.batch or imgsz[0]
        h, w = self.imgsz or imgsz[2:]
        self(torch.zeros(b, 3, h, w, device=self.device))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.weights}, stride={self.stride}, nc={len(self.names)}, "
                f"imgsz={self.imgsz}, fp16={self.fp16}, end2end={self.end2end})")


def _cat_padded(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate end2end outputs of several chunks along the batch; a chunk's detections (dim 1) may be fewer
    than another's (YOLOv7's rows give each chunk as many as its fullest image), the rest padded with zeros,
    which ``num_dets`` already marks as unused."""
    k = max(t.shape[1] for t in chunks) if chunks[0].ndim > 1 else None
    if k is not None:
        chunks = [torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, k - t.shape[1])) for t in chunks]
    return torch.cat(chunks)
