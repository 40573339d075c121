"""Helpers for the committed YOLOv5 v7.0 reference fixture.

The fixture ``tests/data/yolov5s_v7_reference.pt`` is produced by
``tools/make_yolov5_reference.py`` with the real ``yolov5==7.0.14`` package
(see that script's docstring for the venv setup). It stores no weights: both
sides regenerate identical weights with :func:`seeded_state_dict`, so tests can
compare state-dict keys/shapes, parameter count and eval outputs without
YOLOv5 installed.

This module must stay importable from both the system python and the YOLOv5
venv, so it depends on torch only.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

REFERENCE_PATH = Path(__file__).parent / 'data' / 'yolov5s_v7_reference.pt'

# The P6 fixture (``tools/make_yolov5_reference.py --p6``): YOLOv5 v7.0's models/hub/yolov5{n,s,m,l,x}6.yaml.
# Its input is regenerated from a seed rather than stored, and of each decoded output row only the first
# P6_COLUMNS values (box, objectness, the first 11 class scores) are kept: five full outputs would be ~0.9 MB.
P6_REFERENCE_PATH = Path(__file__).parent / 'data' / 'yolov5_p6_reference.pt'
P6_CONFIGS = ('yolov5n6', 'yolov5s6', 'yolov5m6', 'yolov5l6', 'yolov5x6')
P6_INPUT_SHAPE = (1, 3, 64, 128)  # non-square, both sides multiples of the 64 stride
P6_COLUMNS = 16


def p6_input(seed: int = 1) -> torch.Tensor:
    return torch.rand(P6_INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def seeded_state_dict(template: dict, seed: int = 0) -> dict:
    """Return a deterministic state dict with ``template``'s keys, shapes and dtypes.

    Values come from ``torch.Generator().manual_seed(seed)`` (CPU, float32, then
    cast), visiting keys in ``sorted()`` order. BatchNorm statistics are made
    random on purpose: the default mean=0/var=1/weight=1/bias=0 would hide
    mistakes in BN folding or eps handling.

    * ``*num_batches_tracked``, ``*anchors`` and non-float tensors: copied unchanged
    * ``*running_mean``: randn * 0.1;  ``*running_var``: rand * 1.5 + 0.5
    * ``*bn.weight``: rand * 0.5 + 0.75;  ``*bn.bias``: randn * 0.1
    * any other float tensor: randn / sqrt(fan_in), fan_in = numel / shape[0]
      (1 for 1-D tensors)
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(template):
        t = template[k]
        if k.endswith(('num_batches_tracked', 'anchors')) or not t.is_floating_point():
            out[k] = t.clone()
            continue
        shape = tuple(t.shape)
        if k.endswith('running_mean'):
            v = torch.randn(shape, generator=g) * 0.1
        elif k.endswith('running_var'):
            v = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif k.endswith('bn.weight'):
            v = torch.rand(shape, generator=g) * 0.5 + 0.75
        elif k.endswith('bn.bias'):
            v = torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = t.numel() // shape[0] if t.dim() > 1 else 1
            v = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        out[k] = v.to(t.dtype)
    return {k: out[k] for k in template}  # keep the template's key order
