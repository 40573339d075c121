"""Small assertions shared by the tests."""
from __future__ import annotations

import torch


def rel_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Max absolute difference relative to the largest magnitude of ``reference``."""
    return ((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
