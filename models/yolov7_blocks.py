"""YOLOv7's building blocks, with YOLOv7's names, signatures and state-dict layout.

A state dict saved by the official YOLOv7 code loads into these with ``strict=True``: ``MP``/``SP``
(parameter-free pools), ``ReOrg`` (space-to-depth) and ``Shortcut`` (sum of two layers), ``DownC``
(``cv1``..``cv3``: the P6 models' two-branch down-sampling), ``SPPCSPC`` (``cv1``..``cv7``, ``m``),
``RepConv`` (``rbr_dense``/``rbr_1x1`` as ``Sequential(conv, bn)`` keyed ``0``/``1``, ``rbr_identity``,
folded ``rbr_reparam``) and the YOLOR implicit layers (``implicit``). The ``IDetect`` and ``IAuxDetect`` heads
that use the implicit layers live with ``Detect`` in ``models/yolo.py``; their fold is
``utils.reparam.fold_implicit``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.common import Conv, RepVGGBlock, conv_bn
from models.layers import autopad

YOLOV7_CONV_BN = ("0", "1")  # RepConv's conv-BN keys: YOLOv7 writes nn.Sequential(conv, bn), RepVGG names them


class MP(nn.Module):
    """Max-pool with kernel = stride = ``k`` (YOLOv7's down-sampling branch)."""

    def __init__(self, k=2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: Tensor) -> Tensor:
        return self.m(x)


class SP(nn.Module):
    """Max-pool that keeps the size at stride 1 ('same' padding ``k // 2``), as in YOLOv7-tiny's SPP."""

    def __init__(self, k=3, s=1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.m(x)


class ReOrg(nn.Module):
    """Space-to-depth: each 2x2 patch becomes 4 channels, (b, c, h, w) -> (b, 4c, h/2, w/2) (the P6 models' stem).

    Channel order as YOLOv7's: the (even row, even column) samples, then (odd, even), (even, odd), (odd, odd).
    """

    out_channel_factor = 4  # parse_model: output channels = 4 x input channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)


class Shortcut(nn.Module):
    """The sum of two layers of equal shape (YOLOv7-E6E's residual joins). ``d`` is unused, kept for the
    configs' ``[1]`` argument."""

    def __init__(self, d=0):
        super().__init__()
        self.d = d

    def forward(self, x: list[Tensor]) -> Tensor:
        return x[0] + x[1]


class DownC(nn.Module):
    """Down-sampling by ``k`` in two branches, concatenated: a 1x1 then a strided 3x3 conv (``cv1``, ``cv2``)
    beside a max-pool then a 1x1 conv (``mp``, ``cv3``); each gives half of ``c2`` (YOLOv7's P6 models).

    ``n`` is unused (kept so the repeat-inside rule applies, as in YOLOv7); ``act`` is an addition, as in
    ``SPPCSPC``.
    """

    def __init__(self, c1, c2, n=1, k=2, act=True):
        super().__init__()
        self.cv1 = Conv(c1, c1, 1, 1, act=act)
        self.cv2 = Conv(c1, c2 // 2, 3, k, act=act)
        self.cv3 = Conv(c1, c2 // 2, 1, 1, act=act)
        self.mp = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.cv2(self.cv1(x)), self.cv3(self.mp(x))), 1)


class SPPCSPC(nn.Module):
    """YOLOv7's CSP spatial-pyramid-pooling block: a 1-3-1 conv stack, parallel max-pools (5, 9, 13),
    a 1-3 conv stack, concatenated with a 1x1 shortcut branch and merged by a last 1x1 conv.

    ``n`` and ``shortcut`` are unused, kept so YOLOv7's configs and the repeat-inside rule apply;
    ``act`` is an addition (YOLOv7 always uses the default SiLU) so a config-wide activation reaches it.
    """

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13), act=True):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, 1, act=act)
        self.cv3 = Conv(c_, c_, 3, 1, act=act)
        self.cv4 = Conv(c_, c_, 1, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1, act=act)
        self.cv6 = Conv(c_, c_, 3, 1, act=act)
        self.cv7 = Conv(2 * c_, c2, 1, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1, *(m(x1) for m in self.m)], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


class RepConv(RepVGGBlock):
    """YOLOv7's RepConv: a RepVGG block (kxk conv-BN + 1x1 conv-BN + identity BN when c1 == c2 and s == 1)
    with YOLOv7's signature and branch layout. Folds, like ``RepVGGBlock``, into ``rbr_reparam``.

    YOLOv7 only allows k=3 with 'same' padding; any odd k with 'same' padding works here.
    """

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, act=True, deploy=False):
        if k % 2 == 0 or autopad(k, p) != k // 2:
            raise ValueError(f"RepConv needs an odd kernel with 'same' padding {k // 2}, got k={k}, p={p}")
        super().__init__(c1, c2, k, s, p, g, 1, act, deploy)

    def _dense_branch(self) -> nn.Module:
        return conv_bn(self.c1, self.c2, self.k, self.s, self.p, self.g, names=YOLOV7_CONV_BN)

    def _scale_branch(self) -> nn.Module:
        return conv_bn(self.c1, self.c2, 1, self.s, self.p1x1, self.g, names=YOLOV7_CONV_BN)


class _Implicit(nn.Module):
    """A learned per-channel tensor (1, c, 1, 1) initialised around ``mean`` (YOLOR's implicit knowledge)."""

    no_weight_decay = True  # smart_optimizer: decay would pull ImplicitM towards 0 (YOLOv7 does not decay it)

    def __init__(self, channel, mean, std=0.02):
        super().__init__()
        self.channel, self.mean, self.std = channel, mean, std
        self.implicit = nn.Parameter(torch.empty(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)


class ImplicitA(_Implicit):
    """YOLOR's learned per-channel offset, added to the input of a detection conv."""

    def __init__(self, channel, mean=0.0, std=0.02):
        super().__init__(channel, mean, std)

    def forward(self, x: Tensor) -> Tensor:
        return self.implicit + x


class ImplicitM(_Implicit):
    """YOLOR's learned per-channel scale, multiplied onto the output of a detection conv."""

    def __init__(self, channel, mean=1.0, std=0.02):
        super().__init__(channel, mean, std)

    def forward(self, x: Tensor) -> Tensor:
        return self.implicit * x
