"""AutoBatch (``train.py --batch-size -1``): the largest batch that fills a fraction of the free CUDA memory.

On CUDA a training step (forward and backward) of a copy of the model is measured at a few batch sizes,
the peak memory is fitted with a line ``memory = intercept + slope * batch`` and the batch whose predicted
memory is ``FRACTION`` of the free memory is taken (YOLOv5's AutoBatch aims at the same 0.8). The fit is
``fit_batch_size``, a pure function of the measured figures; ``probe_memory`` measures them. On the CPU
there is nothing to fit: the default batch size is used, with a line that says so.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from utils.general import LOGGER

FRACTION = 0.8  # of the free memory the chosen batch is predicted to use
PROBE_SIZES = (1, 2, 4, 8, 16)
DEFAULT_BATCH = 16
MAX_BATCH = 1024
GIB = 1 << 30


@dataclass(frozen=True)
class BatchFit:
    """The chosen batch size and how it was chosen (for the log line and the tests)."""
    batch_size: int
    slope_gib: float  # GiB per image
    intercept_gib: float  # GiB at batch 0 (weights, optimizer-free workspace)
    predicted_gib: float  # memory the chosen batch is predicted to use
    reason: str  # "fit", "capped at the first failed size", "fit out of range: default"


def fit_batch_size(batch_sizes, memory_gib, free_gib: float, fraction: float = FRACTION,
                   failed_at: int | None = None, default: int = DEFAULT_BATCH) -> BatchFit:
    """The batch whose fitted memory use is ``fraction`` of ``free_gib``.

    ``memory_gib[i]`` is the peak memory measured at ``batch_sizes[i]`` (sizes that ran out of memory left
    out; ``failed_at`` is the smallest such size). The chosen batch never reaches ``failed_at`` (the largest
    probed size that ran is taken instead), and a fit outside 1..1024 (a flat or falling line: the
    measurements are noise) falls back to ``default``."""
    sizes, mem = np.asarray(batch_sizes, dtype=float), np.asarray(memory_gib, dtype=float)
    if len(sizes) != len(mem):
        raise ValueError(f"fit_batch_size: {len(sizes)} batch sizes but {len(mem)} memory figures")
    if not 0 < fraction <= 1:
        raise ValueError(f"fit_batch_size: fraction must be in (0, 1], got {fraction}")
    if free_gib <= 0:
        raise ValueError(f"fit_batch_size: free memory must be > 0 GiB, got {free_gib}")
    if len(sizes) < 2:
        return BatchFit(default, 0.0, 0.0, float(mem[0]) if len(mem) else 0.0,
                        f"fewer than 2 sizes ran: default {default}")
    slope, intercept = np.polyfit(sizes, mem, deg=1)
    b = int((free_gib * fraction - intercept) / slope) if slope > 0 else 0
    reason = "fit"
    if failed_at is not None and b >= failed_at:
        b, reason = int(sizes.max()), f"capped below the size that ran out of memory ({failed_at})"
    if not 1 <= b <= MAX_BATCH:
        b, reason = default, f"fit out of range 1..{MAX_BATCH}: default {default}"
    return BatchFit(b, float(slope), float(intercept), float(intercept + slope * b), reason)


def probe_memory(model: torch.nn.Module, imgsz: int, device: torch.device, amp: bool,
                 sizes=PROBE_SIZES) -> tuple[list[int], list[float], int | None]:
    """(sizes that ran, their peak GiB, first size that ran out of memory or None): one forward and
    backward of a training-mode copy of ``model`` on random images per size."""
    model = copy.deepcopy(model).to(device).train()
    ran, peaks, failed = [], [], None
    for b in sizes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.rand(b, 3, imgsz, imgsz, device=device)
            with torch.autocast("cuda", enabled=amp):
                out = model(x)
                loss = sum(o.float().sum() for o in out)
            loss.backward()
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            failed = b
            break
        ran.append(b)
        peaks.append(torch.cuda.max_memory_allocated(device) / GIB)
        model.zero_grad(set_to_none=True)
    del model
    torch.cuda.empty_cache()
    return ran, peaks, failed


def autobatch(model: torch.nn.Module, imgsz: int, device: torch.device, amp: bool = True,
              fraction: float = FRACTION) -> int:
    """The training batch size for ``--batch-size -1`` on ``device`` (the default on a CPU)."""
    if device.type != "cuda":
        LOGGER.info(f"AutoBatch: --batch-size -1 needs a CUDA device to measure; using the default batch size "
                    f"{DEFAULT_BATCH} on {device.type}")
        return DEFAULT_BATCH
    free, total = (v / GIB for v in torch.cuda.mem_get_info(device))
    LOGGER.info(f"AutoBatch: {torch.cuda.get_device_name(device)} {total:.2f} GiB total, {free:.2f} GiB free; "
                f"measuring --imgsz {imgsz} at batch sizes {', '.join(map(str, PROBE_SIZES))}")
    sizes, peaks, failed = probe_memory(model, imgsz, device, amp)
    fit = fit_batch_size(sizes, peaks, free, fraction, failed_at=failed)
    LOGGER.info(f"AutoBatch: batch size {fit.batch_size} ({fit.reason}; {fit.slope_gib:.3f} GiB/image + "
                f"{fit.intercept_gib:.2f} GiB, predicted {fit.predicted_gib:.2f} of {free:.2f} GiB free)")
    return fit.batch_size
