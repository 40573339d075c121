"""Several PyTorch checkpoints run as one model (``--weights a.pt b.pt`` in val.py and detect.py).

Each model runs on the same input and their decoded predictions are concatenated along the box axis, so a
single NMS afterwards merges them (YOLOv5's default "NMS ensemble"). The models must agree on their class
names and stride (the predictions would otherwise mean different things or come on different grids); any
image size and batch work, as for one checkpoint. Exported files are refused: an ensemble needs the models'
raw decoded outputs, which every PyTorch checkpoint gives at any input size.
"""
from __future__ import annotations

from pathlib import Path

import torch

from utils.deploy.backends import Backend, PyTorchBackend


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
    from utils.deploy.backends import load_backend

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
