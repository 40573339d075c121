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


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major (NCHW) strides; ``contiguous()`` keeps channels-last strides where they are
    ambiguous (a 1x1 kernel, a 1x1 map), which oneDNN then reads as channels-last."""
    return t if t.stride() == torch.empty(t.shape, device="meta").stride() else t.clone(memory_format=torch.contiguous_format)


def _nchw_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(_nchw(a) if isinstance(a, torch.Tensor) else a for a in args)


def _channels_last_unsafe(m: nn.Module) -> bool:
    """Convolutions whose channels-last weight gradient corrupts the heap on CPU (oneDNN in torch 2.14:
    1x1, stride > 1, fewer than 16 input channels per group, e.g. RepVGG's first 1x1 branch on RGB)."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
            and m.in_channels // m.groups < 16)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model`` in place to the channels-last (NHWC) memory format, where convolutions run
    faster on CPU (oneDNN) and on CUDA tensor cores. Values and parameter names do not change, only
    strides. The few convolutions that cannot train in it stay NCHW and get NCHW inputs."""
    model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if _channels_last_unsafe(m):
            m.weight.data = _nchw(m.weight.data)
            m.register_forward_pre_hook(_nchw_inputs)
    return model


def synced_time(device) -> float:
    """``time.perf_counter()`` after the device's queued work finished (CUDA runs asynchronously, so an
    unsynchronised timestamp after a forward pass measures only the kernel launches)."""
    import time

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------------------------

def select_device(device: str = "", batch_size: int = 0) -> torch.device:
    """'cpu', '' (first CUDA device if any), '0' or '0,1,2' (CUDA ids). Unknown values are an error."""
    import os

    spec = str(device).strip().lower().replace("cuda:", "").replace(" ", "")
    if spec == "cpu":
        return torch.device("cpu")
    if spec and not all(part.isdigit() for part in spec.split(",")):
        raise ValueError(f"--device {device!r}: expected 'cpu', '' or CUDA ids like '0' or '0,1'")
    if spec:
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device!r} requested but CUDA is not available (use --device cpu)")
        ids = [int(x) for x in spec.split(",")]
        bad = [i for i in ids if i >= torch.cuda.device_count()]
        if bad:
            raise ValueError(f"--device {device!r}: CUDA device(s) {bad} do not exist ({torch.cuda.device_count()} visible)")
        if len(ids) > 1 and batch_size and batch_size % len(ids):
            raise ValueError(f"--batch-size {batch_size} is not a multiple of the {len(ids)} devices")
        return torch.device("cuda", ddp_device_index(ids, int(os.environ.get("LOCAL_RANK", -1)), device))
    return torch.device("cuda", max(int(os.environ.get("LOCAL_RANK", 0)), 0)) if torch.cuda.is_available() else torch.device("cpu")


def ddp_device_index(ids: list[int], local_rank: int, device: str = "") -> int:
    """The CUDA id this process uses from ``--device`` ids: its own under DDP (one device per process)."""
    if local_rank < 0:
        return ids[0]
    if local_rank >= len(ids):  # two processes on one GPU: NCCL refuses it deep inside ("Duplicate GPU")
        raise ValueError(f"--device {device!r} lists {len(ids)} CUDA device(s) but this is DDP process {local_rank}: "
                         f"give one device per process on this node, e.g. --device {','.join(map(str, range(local_rank + 1)))}")
    return ids[local_rank]


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed every RNG; with ``deterministic`` also force deterministic kernels."""
    import os
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        os.environ["PYTHONHASHSEED"] = str(seed)


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel."""
    return model.module if isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)) else model


class ModelEMA:
    """Exponential moving average of a model's state (YOLOv5): decay ramps up as 1 - exp(-updates / tau)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        import copy

        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_max, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self) -> float:
        import math

        return self.decay_max * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:  # integer buffers (num_batches_tracked) follow the model
                v.copy_(msd[k])


def smart_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.001, momentum: float = 0.9, decay: float = 1e-5):
    """Three parameter groups (YOLOv5): weights with decay, BatchNorm weights (and the weights of modules that
    set ``no_weight_decay``, such as YOLOv7's implicit layers) and biases without."""
    decayed, bn_weights, biases = [], [], []
    bn_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for p_name, p in module.named_parameters(recurse=False):
            if p_name == "bias":
                biases.append(p)
            elif (p_name == "weight" and isinstance(module, bn_types)) or getattr(module, "no_weight_decay", False):
                bn_weights.append(p)
            else:
                decayed.append(p)
    if name == "Adam":
        optimizer = torch.optim.Adam(bn_weights, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(bn_weights, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "SGD":
        optimizer = torch.optim.SGD(bn_weights, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"unknown optimizer {name!r}: use SGD, Adam or AdamW")
    optimizer.add_param_group({"params": decayed, "weight_decay": decay})
    optimizer.add_param_group({"params": biases, "weight_decay": 0.0})
    return optimizer


class EarlyStopping:
    """Stop when fitness has not improved for ``patience`` epochs (0 disables)."""

    def __init__(self, patience: int = 30):
        self.best_fitness, self.best_epoch = 0.0, 0
        self.patience = patience if patience > 0 else float("inf")

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        return epoch - self.best_epoch >= self.patience
