"""PyTorch helpers: weight initialisation, parameter and FLOP counts, model summaries."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's BatchNorm settings (eps 1e-3, momentum 0.03) and in-place activations."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.eps = 1e-3
            m.momentum = 0.03
        elif type(m) in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU):
            m.inplace = True


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, imgsz=640, channels: int = 3) -> float:
    """Floating-point operations (multiply and add counted separately) of one forward pass.

    Counted by ``torch.utils.flop_counter`` on a batch-1 input in eval mode; the model's mode is
    restored afterwards and no BatchNorm statistic changes.
    """
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    p = next(model.parameters())
    x = torch.zeros(1, channels, h, w, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def model_summary(model: nn.Module, imgsz=640) -> dict:
    """Layer count, parameters, trainable parameters and GFLOPs at ``imgsz`` (YOLOv5's summary line)."""
    return {
        "layers": len(list(model.modules())),
        "parameters": count_parameters(model),
        "gradients": count_parameters(model, trainable_only=True),
        "gflops": count_flops(model, imgsz) / 1e9,
    }


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters, in place.

    Equivalence checks (folding, export) run with these: the default mean 0 / var 1 / weight 1 /
    bias 0 make a missing or misplaced BatchNorm term invisible.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features

            def rand(lo, hi):
                return (torch.rand(n, generator=g) * (hi - lo) + lo).to(m.running_mean)

            m.running_mean.copy_(rand(-0.5, 0.5))
            m.running_var.copy_(rand(0.5, 2.0))
            if m.affine:
                m.weight.copy_(rand(0.5, 1.5))
                m.bias.copy_(rand(-0.3, 0.3))
    return model
