"""Tiny helpers shared by the block modules (padding rule and activation choice)."""
from __future__ import annotations

import ast
import re

from torch import nn

from utils.general import excerpt

#: activations a config may name, as ``SiLU`` or ``nn.LeakyReLU(0.1)``; nothing else is ever looked up
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: getattr(nn, name)
    for name in ("SiLU", "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Mish", "GELU", "Sigmoid", "Identity")
}
# an optional 'nn.' prefix, a bare name, optional parentheses without nested ones (arguments are literals)
_ACTIVATION_SPEC = re.compile(r"\s*(?:nn\.)?(\w+)\s*(?:\(([^()]*)\))?\s*")


def autopad(k, p=None, d: int = 1):
    """Padding that keeps the spatial size ('same') for stride 1, for any kernel and dilation."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def parse_activation(spec) -> nn.Module | None:
    """``'nn.LeakyReLU(0.1)'`` or ``'SiLU'`` -> a new module (``None`` -> ``None``), never through eval.

    The name must be in ``ACTIVATIONS``; the arguments go through ``ast.literal_eval``, so only
    Python literals are accepted, positional or by keyword (``nn.LeakyReLU(0.1)``,
    ``nn.LeakyReLU(negative_slope=0.1)``, ``nn.SiLU()``).
    """
    if spec is None:
        return None
    match = _ACTIVATION_SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if not match or match.group(1) not in ACTIVATIONS:
        raise ValueError(f"unknown activation {excerpt(spec)}: expected nn.<Name>(<literal arguments>) "
                         f"with Name one of {', '.join(ACTIVATIONS)}")
    try:
        # parsed, never run: every argument node must be a literal for ast.literal_eval
        call = ast.parse(f"f({match.group(2) or ''})", mode="eval").body
        if any(k.arg is None for k in call.keywords):
            raise ValueError("'**' arguments are not allowed")
        args = [_literal(a) for a in call.args]
        kwargs = {k.arg: _literal(k.value) for k in call.keywords}
        return ACTIVATIONS[match.group(1)](*args, **kwargs)
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"bad activation arguments in {excerpt(spec)}: {excerpt(str(e))}") from None


def _literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"arguments must be Python literals, got {excerpt(ast.unparse(node))}") from None


def make_activation(act) -> nn.Module:
    """``True`` -> SiLU (YOLOv5's default), ``False``/``None`` -> identity, a module -> itself,
    a string such as ``'nn.LeakyReLU(0.1)'`` (YOLOv7's configs) -> ``parse_activation(act)``."""
    if act is True:
        return nn.SiLU()
    if act is False or act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        return parse_activation(act)
    raise TypeError(f"act must be True, False, None, an nn.Module or an activation name, got {act!r}")
