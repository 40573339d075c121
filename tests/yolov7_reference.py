"""Helpers for the committed YOLOv7 reference fixture.

``tests/data/yolov7_reference.pt`` is produced by ``tools/make_yolov7_reference.py`` with the official
YOLOv7 code (see that script's docstring). It stores no weights: both sides regenerate the same state
dict with :func:`seeded_state_dict`, so the tests compare keys, shapes, parameter counts and eval
outputs without YOLOv7 installed.

Importable from the system python and from the YOLOv7 environment alike: depends on torch and
``yolov5_reference`` (same folder) only.
"""
from __future__ import annotations

from pathlib import Path

import torch

from yolov5_reference import seeded_state_dict as _seeded_common

REFERENCE_PATH = Path(__file__).parent / 'data' / 'yolov7_reference.pt'
CONFIGS = ('yolov7-tiny', 'yolov7', 'yolov7x', 'yolov7-w6', 'yolov7-e6', 'yolov7-d6', 'yolov7-e6e')
P6_CONFIGS = ('yolov7-w6', 'yolov7-e6', 'yolov7-d6', 'yolov7-e6e')  # stride 64, IAuxDetect; also recorded: cfg/deploy
DECODED_ONLY = ('yolov7-e6', 'yolov7-d6', 'yolov7-e6e')  # W6's head: raw maps not stored (fixture size)
INPUT_SHAPE = (1, 3, 64, 96)  # non-square, so a transposed grid or anchor cannot pass
INPUT_SHAPE_P6 = (1, 3, 64, 128)  # the P6 models need sides that are multiples of 64


def reference_input(seed: int = 1, shape: tuple = INPUT_SHAPE) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def input_key(name: str) -> str:
    """The fixture's key of the input ``name``'s outputs were recorded on."""
    return 'input_p6' if name in P6_CONFIGS else 'input'


def seeded_state_dict(template: dict, seed: int = 0) -> dict:
    """``yolov5_reference.seeded_state_dict`` plus YOLOv7's own tensors, made realistic:

    * ``*anchor_grid`` (YOLOv7's pixel-unit anchors, a derived buffer): copied from ``template``;
    * BatchNorm affine tensors not named ``bn.*`` (RepConv's ``rbr_dense.1``, ``rbr_identity``),
      recognised by a sibling ``running_var``: weight rand * 0.5 + 0.75, bias randn * 0.1;
    * ``ia.*.implicit``: randn * 0.1; ``im.*.implicit``: 1 + randn * 0.1 (the generic rule would
      scale every output by ~0.06 and hide the head).

    The extra values come from a second generator seeded ``seed + 1``, visiting keys in sorted order.
    """
    out = _seeded_common(template, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for k in sorted(template):
        t, shape = template[k], tuple(template[k].shape)
        prefix, _, leaf = k.rpartition('.')
        is_bn = prefix + '.running_var' in template and not prefix.endswith('.bn')
        if k.endswith('anchor_grid'):
            out[k] = t.clone()
        elif is_bn and leaf == 'weight':
            out[k] = (torch.rand(shape, generator=g) * 0.5 + 0.75).to(t.dtype)
        elif is_bn and leaf == 'bias':
            out[k] = (torch.randn(shape, generator=g) * 0.1).to(t.dtype)
        elif k.endswith('implicit') and '.ia.' in k:
            out[k] = (torch.randn(shape, generator=g) * 0.1).to(t.dtype)
        elif k.endswith('implicit') and '.im.' in k:
            out[k] = (1 + torch.randn(shape, generator=g) * 0.1).to(t.dtype)
    return out
