"""OREPA: online convolutional re-parameterization (Hu et al., CVPR 2022).

Six linear branches, each scaled per output channel by a row of ``vector``, are summed into ONE
kernel before the convolution on every training step, followed by one post-BatchNorm: the feature
map is convolved once, so training costs stay close to a plain conv. Parameter and buffer names,
shapes and the branch algebra match the reference implementation, so its state dicts load with
``strict=True`` and compute the same function.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from models.layers import autopad, make_activation
from models.reparameterizable import Reparameterizable
from utils.reparam import compose_1x1_kxk, depthwise_pointwise_kernel, fuse_bn, pad_to_kernel

EXPAND_RATIO = 8  # depthwise-pointwise branch: depthwise channels per input channel

# vector rows, in the reference's order
ORIGIN, AVG, PRIOR, ONE_KXK, ONE, DWPW = range(6)
_INIT_SCALE = {ORIGIN: 0.25, AVG: 0.25, PRIOR: 0.0, ONE_KXK: 0.5, ONE: 1.0, DWPW: 0.5}

_TRAINING_TENSORS = (
    "weight_orepa_origin", "weight_orepa_avg_conv", "weight_orepa_pfir_conv", "weight_orepa_avg_avg",
    "weight_orepa_1x1", "weight_orepa_1x1_kxk_idconv1", "id_tensor", "weight_orepa_1x1_kxk_conv2",
    "weight_orepa_gconv_dw", "weight_orepa_gconv_pw", "vector", "weight_orepa_prior", "bn",
)


def frequency_prior(channels: int, k: int) -> Tensor:
    """DCT-style prior filters ``(channels, k, k)``: the first half vary along rows, the rest along columns.

    Channel i of the first half is cos(pi (h + 1/2) (i + 1) / k); equal to the reference for k = 3,
    which hard-codes 3 and so is wrong for other kernel sizes.
    """
    half = channels / 2
    i = torch.arange(channels, dtype=torch.float64).view(-1, 1, 1)
    pos = torch.arange(k, dtype=torch.float64) + 0.5
    rows = torch.cos(math.pi * pos.view(1, k, 1) * (i + 1) / k).expand(channels, k, k)
    cols = torch.cos(math.pi * pos.view(1, 1, k) * (i + 1 - half) / k).expand(channels, k, k)
    return torch.where(i < half, rows, cols).float()


class OREPA(Reparameterizable):
    """OREPA block with ``Conv``'s signature: ``OREPA(c1, c2, k=3, s=1, p=None, g=1, d=1, act=True)``.

    ``internal_channels`` sizes the 1x1-kxk branch (reference default: c1, or 2*c1 when g > 4);
    ``init_hyper_para``/``init_hyper_gamma``/``single_init`` are the reference's initialisation knobs.
    """

    deploy_attr = "orepa_reparam"

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, d=1, act=True, deploy=False,
                 internal_channels=None, init_hyper_para=1.0, init_hyper_gamma=1.0, single_init=False):
        super().__init__(deploy)
        if c1 % g or c2 % g:
            raise ValueError(f"OREPA: channels {c1}->{c2} are not divisible by groups={g}")
        self.c1, self.c2, self.k, self.s, self.p, self.g, self.d = c1, c2, k, s, autopad(k, p, d), g, d
        self.act = make_activation(act)
        if deploy:
            self.orepa_reparam = self._new_deploy_conv()
            return
        cg = c1 // g
        t = internal_channels or (c1 if g <= 4 else 2 * c1)
        # Registration order follows the reference so state dicts list keys the same way.
        self.weight_orepa_origin = nn.Parameter(torch.empty(c2, cg, k, k))
        self.weight_orepa_avg_conv = nn.Parameter(torch.empty(c2, cg, 1, 1))
        self.weight_orepa_pfir_conv = nn.Parameter(torch.empty(c2, cg, 1, 1))
        self.register_buffer("weight_orepa_avg_avg", torch.full((k, k), 1.0 / (k * k)))
        self.weight_orepa_1x1 = nn.Parameter(torch.empty(c2, cg, 1, 1))
        self.weight_orepa_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(t, cg, 1, 1))
        ident = torch.zeros(t, cg, 1, 1)
        ident[torch.arange(t), torch.arange(t) % cg] = 1  # identity-initialised 1x1 (learns a residual)
        self.register_buffer("id_tensor", ident)
        self.weight_orepa_1x1_kxk_conv2 = nn.Parameter(torch.empty(c2, t // g, k, k))
        self.weight_orepa_gconv_dw = nn.Parameter(torch.empty(c1 * EXPAND_RATIO, 1, k, k))
        self.weight_orepa_gconv_pw = nn.Parameter(torch.empty(c2, c1 * EXPAND_RATIO // g, 1, 1))
        self.vector = nn.Parameter(torch.empty(6, c2))
        self.bn = nn.BatchNorm2d(c2)
        self.register_buffer("weight_orepa_prior", frequency_prior(c2, k))
        self._init_weights(init_hyper_para, init_hyper_gamma, single_init)

    @torch.no_grad()
    def _init_weights(self, hyper_para: float, hyper_gamma: float, single_init: bool) -> None:
        for w in (self.weight_orepa_origin, self.weight_orepa_avg_conv, self.weight_orepa_pfir_conv,
                  self.weight_orepa_1x1, self.weight_orepa_1x1_kxk_conv2):
            init.kaiming_uniform_(w, a=0.0)
            w.mul_(hyper_para)
        for w in (self.weight_orepa_gconv_dw, self.weight_orepa_gconv_pw):
            init.kaiming_uniform_(w, a=0.0)
            w.mul_(math.sqrt(hyper_para))
        for row, scale in _INIT_SCALE.items():
            self.vector[row].fill_(scale * math.sqrt(hyper_gamma))
        if single_init:  # start as a plain conv: only the origin branch contributes
            self.vector.zero_()
            self.vector[ORIGIN].fill_(1.0)

    def weight_gen(self) -> Tensor:
        """The combined kxk kernel of the six scaled branches (before the post-BN)."""
        v = self.vector
        k, g = self.k, self.g
        origin = self.weight_orepa_origin
        avg = self.weight_orepa_avg_conv * self.weight_orepa_avg_avg  # 1x1 conv then kxk average pool
        pfir = self.weight_orepa_pfir_conv * self.weight_orepa_prior.unsqueeze(1)  # 1x1 then fixed prior filter
        one_kxk = compose_1x1_kxk(self.weight_orepa_1x1_kxk_idconv1 + self.id_tensor, self.weight_orepa_1x1_kxk_conv2, g)
        one = pad_to_kernel(self.weight_orepa_1x1, k)
        # The reference reads the pointwise rows group-interleaved (row oo*g + c feeds output c*(o/g) + oo);
        # reorder them so its state dicts compute the same function. A no-op when g == 1.
        pw = self.weight_orepa_gconv_pw
        pw = pw.reshape(self.c2 // g, g, -1).transpose(0, 1).reshape(pw.shape)
        dwpw = depthwise_pointwise_kernel(self.weight_orepa_gconv_dw, pw, self.c1, g)
        branches = (origin, avg, pfir, one_kxk, one, dwpw)
        rows = (ORIGIN, AVG, PRIOR, ONE_KXK, ONE, DWPW)
        return sum(b * v[r].view(-1, 1, 1, 1) for b, r in zip(branches, rows))

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.act(self.orepa_reparam(x))
        y = F.conv2d(x, self.weight_gen(), None, self.s, self.p, self.d, self.g)
        return self.act(self.bn(y))

    def get_equivalent_kernel_bias(self):
        if self.deploy:
            return self.orepa_reparam.weight, self.orepa_reparam.bias
        return fuse_bn(self.weight_gen(), self.bn)

    def _new_deploy_conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.c1, self.c2, self.k, self.s, self.p, self.d, self.g, bias=True)

    def _remove_training_branches(self) -> None:
        for name in _TRAINING_TENSORS:
            delattr(self, name)
