"""Tiny helpers shared by the block modules (padding rule and activation choice)."""
from __future__ import annotations

from torch import nn


def autopad(k, p=None, d: int = 1):
    """Padding that keeps the spatial size ('same') for stride 1, for any kernel and dilation."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def make_activation(act) -> nn.Module:
    """``True`` -> SiLU (YOLOv5's default), ``False``/``None`` -> identity, a module -> itself."""
    if act is True:
        return nn.SiLU()
    if act is False or act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    raise TypeError(f"act must be True, False, None or an nn.Module, got {act!r}")
