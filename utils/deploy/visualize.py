"""``detect.py --visualize``: the feature maps of every layer of a PyTorch model, saved as images.

``FeatureMaps(model)`` hooks each layer of a ``Model`` except its detection head; after a forward pass,
``save(folder)`` writes one ``stage{i}_{Module}_features.png`` per layer (its first 32 channels, as
``utils.plots.feature_visualization`` draws them) and forgets the maps.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from utils.plots import feature_visualization


class FeatureMaps:
    """Forward hooks on ``model.model[:-1]`` that keep each layer's output of the last pass."""

    def __init__(self, model: nn.Module):
        layers = getattr(model, "model", None)
        if not isinstance(layers, nn.Sequential):
            raise ValueError(f"--visualize needs a PyTorch .pt checkpoint of a YOLO model, not {type(model).__name__}")
        self.maps: list[tuple[int, str, object]] = []
        self.handles = [m.register_forward_hook(self._keep) for m in list(layers)[:-1]]

    def _keep(self, module: nn.Module, inputs, output) -> None:
        self.maps.append((int(getattr(module, "i", len(self.maps))), type(module).__name__, output.detach()))

    def save(self, folder: Path) -> list[Path]:
        """One png per layer of the last forward pass into ``folder``; returns the files written."""
        written = [feature_visualization(x, kind, i, folder) for i, kind, x in self.maps]
        self.maps.clear()
        return [f for f in written if f is not None]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
