"""Building blocks of the detectors: YOLOv5 v7.0 modules plus the re-parameterizable blocks.

Module and attribute names follow YOLOv5 v7.0 (``conv``/``bn``/``act``, ``cv1``..``cv3``, ``m``) and
RepVGG (``rbr_dense``, ``rbr_1x1``, ``rbr_identity``, ``rbr_reparam``) so that their state dicts
load with ``strict=True``.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import autopad, make_activation
from models.orepa import OREPA  # noqa: F401  (re-exported: every block is importable from here)
from models.reparameterizable import Reparameterizable
from utils.reparam import fuse_bn, identity_kernel, pad_to_kernel


class Conv(Reparameterizable):
    """Conv2d + BatchNorm2d + activation; folds into one biased Conv2d (YOLOv5's Conv)."""

    deploy_attr = "conv"

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True, deploy=False):
        super().__init__(deploy)
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=deploy)
        self.bn = nn.Identity() if deploy else nn.BatchNorm2d(c2)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def get_equivalent_kernel_bias(self):
        if self.deploy:
            return self.conv.weight, self.conv.bias
        return fuse_bn(self.conv.weight, self.bn)

    def _new_deploy_conv(self) -> nn.Conv2d:
        c = self.conv
        return nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups, bias=True)

    def _remove_training_branches(self) -> None:
        self.bn = nn.Identity()


class DWConv(Conv):
    """Depth-wise convolution (groups = gcd of the channel counts)."""

    def __init__(self, c1, c2, k=1, s=1, d=1, act=True, deploy=False):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act, deploy=deploy)


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv with an optional residual connection."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5, act=True):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c_, c2, 3, 1, g=g, act=act)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions (YOLOv5 v7.0)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, act=True):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, 1, act=act)
        self.cv3 = Conv(2 * c_, c2, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, act=act) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast form: three chained max-pools (equivalent to SPP k=5,9,13)."""

    def __init__(self, c1, c2, k=5, act=True):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c_ * 4, c2, 1, 1, act=act)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[Tensor]) -> Tensor:
        return torch.cat(x, self.d)


class SEBlock(nn.Module):
    """Squeeze-and-excitation as used by RepVGG (not folded: it is non-linear)."""

    def __init__(self, channels: int, internal: int):
        super().__init__()
        self.down = nn.Conv2d(channels, internal, 1, 1, bias=True)
        self.up = nn.Conv2d(internal, channels, 1, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        w = F.adaptive_avg_pool2d(x, 1)  # global pool; RepVGG's avg_pool2d(k=width) breaks on non-square inputs
        return x * torch.sigmoid(self.up(F.relu(self.down(w))))


def conv_bn(c1, c2, k, s, p, g=1, d=1, names=("conv", "bn")) -> nn.Sequential:
    """Bias-free conv followed by BatchNorm, keyed ``names``: RepVGG's ``conv``/``bn`` or YOLOv7's ``0``/``1``."""
    conv, bn = nn.Conv2d(c1, c2, k, s, p, d, g, bias=False), nn.BatchNorm2d(c2)
    return nn.Sequential(OrderedDict(zip(names, (conv, bn))))


def fuse_conv_bn(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    """(kernel, bias) of a ``conv_bn`` branch, whichever names it is keyed by (read by position)."""
    conv, bn = branch
    return fuse_bn(conv.weight, bn)


class RepVGGBlock(Reparameterizable):
    """RepVGG block: kxk conv-BN + 1x1 conv-BN + identity BN, summed, then (SE and) activation.

    The identity branch exists only when the output can equal the input (c1 == c2, stride 1,
    'same' padding). Folds into one kxk conv with bias (``rbr_reparam``).

    Subclasses with other branches override the factories ``_dense_branch`` (kxk),
    ``_scale_branch`` (1x1, padded to see the kxk branch's centre pixel) and ``_identity_branch``,
    which ``__init__`` calls once each, in RepVGG's slot order ``rbr_identity``, ``rbr_dense``,
    ``rbr_1x1``; ``_branch_sum``/``_branch_kernel_bias`` give the summed output and its fold.
    """

    deploy_attr = "rbr_reparam"

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, d=1, act=True, deploy=False, use_se=False):
        super().__init__(deploy)
        p = autopad(k, p, d)
        self.p1x1 = p - d * (k // 2)  # the 1x1 branch must see the kxk branch's centre pixel
        if self.p1x1 < 0:
            raise ValueError(f"{type(self).__name__}: padding {p} is too small for a {k}x{k} kernel with dilation {d}")
        self.c1, self.c2, self.k, self.s, self.p, self.g, self.d = c1, c2, k, s, p, g, d
        self.nonlinearity = make_activation(act)
        self.se = SEBlock(c2, max(c2 // 16, 1)) if use_se else nn.Identity()
        if deploy:
            self.rbr_reparam = self._new_deploy_conv()
        else:
            same_shape = c1 == c2 and s == 1 and p == autopad(k, None, d)
            self.rbr_identity = self._identity_branch() if same_shape else None
            self.rbr_dense = self._dense_branch()
            self.rbr_1x1 = self._scale_branch()

    def _dense_branch(self) -> nn.Module:
        return conv_bn(self.c1, self.c2, self.k, self.s, self.p, self.g, self.d)

    def _scale_branch(self) -> nn.Module:
        return conv_bn(self.c1, self.c2, 1, self.s, self.p1x1, self.g)

    def _identity_branch(self) -> nn.Module:
        return nn.BatchNorm2d(self.c1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.rbr_reparam(x) if self.deploy else self._branch_sum(x)
        return self.nonlinearity(self.se(y))

    def _branch_sum(self, x: Tensor) -> Tensor:
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return y

    def get_equivalent_kernel_bias(self):
        if self.deploy:
            return self.rbr_reparam.weight, self.rbr_reparam.bias
        return self._branch_kernel_bias()

    def _branch_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """(kernel, bias) of ``_branch_sum``."""
        kernel, bias = fuse_conv_bn(self.rbr_dense)
        k1, b1 = fuse_conv_bn(self.rbr_1x1)
        kernel, bias = kernel + pad_to_kernel(k1, self.k), bias + b1
        if self.rbr_identity is not None:
            kid, bid = fuse_bn(self._identity_kernel(kernel), self.rbr_identity)
            kernel, bias = kernel + kid, bias + bid
        return kernel, bias

    def _identity_kernel(self, like: Tensor) -> Tensor:
        return identity_kernel(self.c1, self.g, self.k, dtype=like.dtype, device=like.device)

    def _new_deploy_conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.c1, self.c2, self.k, self.s, self.p, self.d, self.g, bias=True)

    def _remove_training_branches(self) -> None:
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            delattr(self, name)


class QARepVGGBlock(RepVGGBlock):
    """Quantization-aware RepVGG block (Chu et al. 2022, "Make RepVGG Greater Again"): kxk conv-BN + bias-free
    1x1 conv + plain identity, summed, then one BatchNorm, (SE) and the activation.

    Plain RepVGG's per-branch BatchNorms let the branches' scales drift apart, so the folded kernel's
    per-channel ranges (and the summed output's) grow too wide for one INT8 scale; here only the kxk branch
    is normalised and a shared BatchNorm follows the sum. Folds like RepVGGBlock into ``rbr_reparam``.
    """

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, d=1, act=True, deploy=False, use_se=False):
        super().__init__(c1, c2, k, s, p, g, d, act, deploy, use_se)
        if not deploy:
            self.bn = nn.BatchNorm2d(c2)  # after the branches, as in the state dicts written so far

    def _scale_branch(self) -> nn.Module:
        return nn.Conv2d(self.c1, self.c2, 1, self.s, self.p1x1, groups=self.g, bias=False)

    def _identity_branch(self) -> nn.Module:
        return nn.Identity()

    def _branch_sum(self, x: Tensor) -> Tensor:
        return self.bn(super()._branch_sum(x))

    def _branch_kernel_bias(self) -> tuple[Tensor, Tensor]:
        kernel, bias = fuse_conv_bn(self.rbr_dense)
        kernel = kernel + pad_to_kernel(self.rbr_1x1.weight, self.k)
        if self.rbr_identity is not None:
            kernel = kernel + self._identity_kernel(kernel)
        return fuse_bn(kernel, self.bn, bias)  # the BatchNorm after the sum

    def _remove_training_branches(self) -> None:
        super()._remove_training_branches()
        delattr(self, "bn")
