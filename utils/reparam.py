"""Kernel algebra for structural re-parameterization.

Small pure functions shared by every foldable block: each takes and returns tensors, keeps
autograd intact (OREPA calls them on every training step) and never mutates its inputs.
Kernels use PyTorch's layout ``(out_channels, in_channels // groups, kh, kw)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fuse_bn(kernel: Tensor, bn: nn.BatchNorm2d, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv into (kernel, bias).

    ``bias`` is the conv's own bias (``None``: bias-free), e.g. the summed branch biases that
    QARepVGG's BatchNorm after the sum sees.
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    mean = bn.running_mean if bias is None else bn.running_mean - bias  # what the BN subtracts, net of the conv's bias
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - mean * scale


def pad_to_kernel(kernel: Tensor, k: int) -> Tensor:
    """Zero-pad a centred smaller kernel (e.g. 1x1) to k x k.

    Exact when the smaller conv used padding ``p - (k - kernel_size) // 2`` so both convs see
    the same centre pixel.
    """
    kh, kw = kernel.shape[-2:]
    if (k - kh) % 2 or (k - kw) % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {k}x{k}: sizes must differ by an even number")
    ph, pw = (k - kh) // 2, (k - kw) // 2
    return F.pad(kernel, [pw, pw, ph, ph])


def identity_kernel(channels: int, groups: int, k: int, *, dtype=None, device=None) -> Tensor:
    """Kernel of a k x k (grouped) conv that returns its input unchanged."""
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, k, k, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx % in_per_group, k // 2, k // 2] = 1
    return kernel


def compose_1x1_kxk(k1: Tensor, k2: Tensor, groups: int = 1) -> Tensor:
    """Kernel of a 1x1 conv ``k1 (t, c/g, 1, 1)`` followed by a kxk conv ``k2 (o, t/g, k, k)``.

    Both convs share ``groups``; the 1x1 conv has no bias (or its bias was handled separately)
    and the kxk conv zero-pads, so the composition is exact.
    """
    t, cg = k1.shape[:2]
    o, tg, kh, kw = k2.shape
    a = k1.reshape(groups, t // groups, cg)
    b = k2.reshape(groups, o // groups, tg, kh, kw)
    return torch.einsum("gti,gothw->goihw", a, b).reshape(o, cg, kh, kw)


def depthwise_pointwise_kernel(dw: Tensor, pw: Tensor, in_channels: int, groups: int = 1) -> Tensor:
    """Kernel of a depthwise kxk conv (``dw (c*m, 1, k, k)``, groups=c) followed by a grouped 1x1 conv.

    ``pw`` is ``(o, c*m/groups, 1, 1)``; output channel ``o`` of group ``G`` reads the depthwise
    outputs of the input channels of group ``G``. Returns ``(o, c/groups, k, k)``.
    """
    m = dw.shape[0] // in_channels
    o = pw.shape[0]
    cg = in_channels // groups
    kh, kw = dw.shape[-2:]
    d = dw.reshape(groups, cg, m, kh, kw)
    p = pw.reshape(groups, o // groups, cg, m)
    return torch.einsum("gcmhw,gocm->gochw", d, p).reshape(o, cg, kh, kw)


def fold_implicit(weight: Tensor, bias: Tensor, add: Tensor, mul: Tensor) -> tuple[Tensor, Tensor]:
    """(kernel, bias) of ``mul * conv(x + add)`` for a 1x1 ``conv`` with ``weight``/``bias`` (YOLOR's
    implicit layers around a detection conv).

    ``conv(x + add) = conv(x) + W @ add`` (exact for 1x1 kernels only: a padded kxk conv would see
    the offset at the borders differently), then the per-output-channel ``mul`` scales both terms.
    """
    if weight.shape[-2:] != (1, 1):
        raise ValueError(f"implicit layers fold into 1x1 convolutions only, got a {tuple(weight.shape[-2:])} kernel")
    bias = bias + weight.flatten(1) @ add.flatten()
    scale = mul.flatten()
    return weight * scale.view(-1, 1, 1, 1), bias * scale
