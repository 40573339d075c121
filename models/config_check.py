"""Checks of a model config's values that the parser can see before anything is built.

Each one raises a ``ValueError`` naming the config key or the layer (index, row) and what to change. What
only a forward can show (spatial sizes that do not line up) is found by ``models.yolo.trace_layers``.
"""
from __future__ import annotations

import inspect

from utils.general import excerpt, is_number

# constructor parameters (ours and torch's) that are sizes, counts or factors: 0 or less builds a module
# that fails in its first forward (a 0-channel conv, "non-positive stride", "either size or scale_factor")
POSITIVE_ARGS = ("k", "s", "g", "d", "e", "kernel_size", "stride", "dilation", "groups", "scale_factor", "size",
                 "internal_channels")
NON_NEGATIVE_ARGS = ("p", "padding")


def check_multiples(d: dict) -> tuple[float, float]:
    """``depth_multiple`` and ``width_multiple`` (default 1.0): positive numbers."""
    values = []
    for key in ("depth_multiple", "width_multiple"):
        v = d.get(key, 1.0)
        if not is_number(v) or v <= 0:
            raise ValueError(f"model config: '{key}' must be a positive number (1.0 keeps the layers as written), "
                             f"got {excerpt(v)}")
        values.append(v)
    return values[0], values[1]


def check_anchors(anchors, where: str = "model config: 'anchors'") -> int | None:
    """Anchors as a per-level count (int >= 1, AutoAnchor fills them) or a non-empty list of levels, each an
    equal-length list of positive (w, h) pairs in pixels. Returns the number of levels (None for a count)."""
    if isinstance(anchors, int) and not isinstance(anchors, bool):  # a count; its range is checked next
        if anchors < 1:
            raise ValueError(f"{where} must be an anchor count per level >= 1 or a list of levels, got {anchors}")
        return None
    if not isinstance(anchors, (list, tuple)) or not anchors:
        raise ValueError(f"{where} must be a non-empty list of levels of (w, h) pixel pairs (or a count per "
                         f"level), got {excerpt(anchors)}")
    for j, level in enumerate(anchors):
        if not isinstance(level, (list, tuple)) or not level or len(level) % 2:
            raise ValueError(f"{where}: level {j} must be a non-empty list of (w, h) pairs, got {excerpt(level)}")
        if len(level) != len(anchors[0]):
            raise ValueError(f"{where}: every level needs the same number of anchors; level 0 has "
                             f"{len(anchors[0]) // 2}, level {j} has {len(level) // 2}")
        bad = [x for x in level if not is_number(x) or x <= 0]
        if bad:
            raise ValueError(f"{where}: level {j} has {excerpt(bad)}; anchor widths and heights are positive pixel "
                             f"sizes")
    return len(anchors)


def check_inputs(i: int, entry: str, name: str, froms: list[int], multi_input: bool) -> None:
    """Only modules that join layers (Concat, the heads: ``multi_input``) take several inputs; others take one."""
    if len(froms) != 1 and not multi_input:
        raise ValueError(f"layer {i} {entry}: {name} takes one input, got 'from' {froms}; join several layers "
                         f"with a Concat layer first")


def check_arguments(i: int, entry: str, cls, args: list, kwargs: dict) -> None:
    """The row's arguments bind to ``cls``'s signature; kernel sizes, strides, groups, dilations, expansion and
    scale factors are positive, paddings >= 0."""
    try:
        bound = inspect.signature(cls).bind(*args, **kwargs).arguments
    except TypeError as e:
        raise ValueError(f"layer {i} {entry}: wrong arguments for {cls.__name__}{excerpt(tuple(args))}: "
                         f"{excerpt(str(e))}") from None
    for key, value in bound.items():
        if key not in POSITIVE_ARGS + NON_NEGATIVE_ARGS or value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        zero_ok = key in NON_NEGATIVE_ARGS
        if not values or any(not is_number(v) or v < 0 or (v == 0 and not zero_ok) for v in values):
            need = "at least 0" if zero_ok else "positive"
            raise ValueError(f"layer {i} {entry}: {cls.__name__} argument '{key}' must be {need}, got {excerpt(value)}")


def check_head(i: int, entry: str, n_inputs: int, anchors, heads: int = 1) -> None:
    """A Detect row: its anchors are valid and give one level per input (``heads`` inputs per level for a head
    with an auxiliary branch, IAuxDetect: the lead levels, then the auxiliary ones)."""
    def count(n, what):
        return f"{n} {what}{'' if n == 1 else 's'}"

    levels = check_anchors(anchors, where=f"layer {i} {entry}: anchors")
    if levels is None and n_inputs % heads:
        raise ValueError(f"layer {i} {entry}: {count(n_inputs, 'input layer')}; this head takes {heads} per anchor "
                         f"level (lead levels first, then auxiliary)")
    if levels is not None and levels * heads != n_inputs:
        per_level = "one level of anchors per input layer" if heads == 1 else \
            f"one level of anchors per {heads} input layers (lead levels first, then auxiliary)"
        raise ValueError(f"layer {i} {entry}: {count(n_inputs, 'input layer')} but {count(levels, 'anchor level')}; "
                         f"give {per_level}")


def check_layout(names: list[str], heads: tuple[str, ...]) -> None:
    """The head is the last layer and appears once: training and the stride probe read ``model[-1]``."""
    early = [j for j, n in enumerate(names[:-1]) if n in heads]
    if early:
        raise ValueError(f"model config: layer {early[0]} is a {names[early[0]]} before the last layer; a model has "
                         f"one head, as its last layer")
    if not names or names[-1] not in heads:
        last = f"layer {len(names) - 1} is {names[-1]}" if names else "it has no layers"
        raise ValueError(f"model config: the last layer must be a head ({' or '.join(heads)}), but {last}; "
                         f"is the 'head' section empty?")
