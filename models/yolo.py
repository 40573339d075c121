"""Detection model: YAML config -> ``nn.Sequential`` of registered modules, anchor-based ``Detect`` head.

A config is data, never code: module names resolve through the explicit ``MODULES`` registry and
string arguments through a fixed table (``nc``, ``anchors``) or ``ast.literal_eval``. Anything
else is a ``ValueError`` naming the layer and the offending entry.
"""
from __future__ import annotations

import ast
import copy
import inspect
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from models.config_check import check_anchors, check_arguments, check_head, check_inputs, check_layout, check_multiples
from models.common import C3, DWConv, OREPA, SPPF, Bottleneck, Concat, Conv, QARepVGGBlock, RepVGGBlock
from models.layers import parse_activation
from models.reparameterizable import Reparameterizable
from models.yolov7_blocks import MP, SP, SPPCSPC, DownC, ImplicitA, ImplicitM, RepConv, ReOrg, Shortcut
from utils.general import LOGGER, ROOT, excerpt, is_whole, load_yaml, make_divisible, setup_logging, yaml_file_names
from utils.ops import decode_boxes
from utils.reparam import fold_implicit
from utils.torch_utils import initialize_weights, model_summary


class Detect(nn.Module):
    """YOLOv5 detection head: one 1x1 conv per level, sigmoid decode against grid and anchors.

    Training returns the raw per-level maps ``(bs, na, ny, nx, no)``; eval returns
    ``(decoded (bs, N, no), raw maps)``; with ``export = True`` only the decoded tensor, which is
    what exported graphs carry.

    ``heads`` is the number of input maps per anchor level (1; 2 for ``IAuxDetect``'s lead and auxiliary
    maps). ``ch`` holds the input channels, lead levels first.
    """

    heads = 1

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # outputs per anchor: xywh, objectness, classes
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]  # cell offsets per level, see _grid()
        # anchors are in grid units after Model.__init__; a persistent buffer so AutoAnchor's edits travel
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)  # not in YOLOv5's state dict
        if len(ch) not in (self.nl, self.heads * self.nl):
            raise ValueError(f"{type(self).__name__} takes {self.heads} input(s) per anchor level: "
                             f"{self.heads * self.nl} for {self.nl} levels, got {len(ch)}")
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch[:self.nl])
        self._build_aux_convs(ch[self.nl:])  # registered right after m: YOLOv7's state-dict order
        self.inplace = inplace
        self.export = False  # return only the decoded tensor
        self.dynamic = False  # rebuild grids on every call (export with dynamic shapes)

    def forward(self, x: list[Tensor]):
        z = []
        for i in range(self.nl):
            x[i] = self._anchor_map(self._level_conv(i, x[i]))
            bs, _, ny, nx, _ = x[i].shape
            if not self.training:
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                # anchors and stride read now, never cached: a checkpoint load or AutoAnchor changes them in place
                anchors = self.anchors[i].view(1, self.na, 1, 1, 2)
                xy, wh = decode_boxes(xy, wh, anchors, self._grid(nx, ny, i), self.stride[i])
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        if self.training:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def _build_aux_convs(self, ch: list[int]) -> None:
        """Hook for heads with an auxiliary branch (``IAuxDetect``); a plain head has none."""

    def _level_conv(self, i: int, x: Tensor) -> Tensor:
        """The raw prediction map of level ``i`` (subclasses wrap the conv, see IDetect)."""
        return self.m[i](x)

    def _anchor_map(self, x: Tensor) -> Tensor:
        """A conv output (bs, na * no, ny, nx) as (bs, na, ny, nx, no)."""
        bs, _, ny, nx = x.shape
        return x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def prediction_convs(self) -> list[nn.ModuleList]:
        """The output convs per branch (lead first), each one conv per level: what bias priors apply to."""
        return [self.m]

    @property
    def inputs_read(self) -> int:
        """How many of the layers in ``f`` the forward reads (fewer than ``f`` once an auxiliary branch is dropped)."""
        return self.nl

    def _grid(self, nx: int, ny: int, i: int) -> Tensor:
        """Cell offsets (1, na, ny, nx, 2), cached per level. They depend only on the map's size and the
        anchors' device and dtype, which the cache is checked against (a model moved by .half() or
        .to() must not decode with a stale grid)."""
        a = self.anchors
        g = self.grid[i]
        if self.dynamic or g.shape[2:4] != (ny, nx) or g.device != a.device or g.dtype != a.dtype:
            # arange in fp32, then cast: the ONNX exporter cannot type a half-precision Range
            yv, xv = torch.meshgrid(torch.arange(ny, device=a.device, dtype=torch.float32),
                                    torch.arange(nx, device=a.device, dtype=torch.float32), indexing="ij")
            g = torch.stack((xv, yv), 2).expand((1, self.na, ny, nx, 2)).to(a.dtype)
            self.grid[i] = g
        return g


class IDetect(Detect, Reparameterizable):
    """YOLOv7's head: ``Detect`` with YOLOR implicit layers, ``m[i](x + ia[i]) * im[i]`` per level.

    State dict as YOLOv7's (``anchors``, ``anchor_grid``, ``m.*``, ``ia.*.implicit``, ``im.*.implicit``).
    It is re-parameterizable: ``fold()`` merges both implicit layers into each level's 1x1 conv and drops
    them (``deploy=True`` builds that layout directly). Unlike single-conv blocks it folds ``nl`` convs,
    so it implements ``fold()`` itself instead of the one-conv hooks; ``Model.fuse()`` calls it like any
    other block.
    """

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True, deploy=False):
        super().__init__(nc, anchors, ch, inplace)
        self.deploy = deploy
        # YOLOv7 decodes with this pixel-unit copy of the anchors; here it is kept only for YOLOv7's state
        # dict (decoding uses anchors * stride, like Detect) and refreshed whenever a state dict is taken
        self.register_buffer("anchor_grid", self.anchors.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.register_state_dict_pre_hook(IDetect._sync_anchor_grid)
        if not deploy:
            self.ia = nn.ModuleList(ImplicitA(x) for x in ch[:self.nl])  # lead levels only
            self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in range(self.nl))

    def _level_conv(self, i: int, x: Tensor) -> Tensor:
        if self.deploy:
            return self.m[i](x)
        return self.im[i](self.m[i](self.ia[i](x)))

    @staticmethod
    @torch.no_grad()
    def _sync_anchor_grid(module: "IDetect", prefix: str, keep_vars: bool) -> None:
        """Write the current anchors (AutoAnchor may have changed them) into ``anchor_grid`` in pixels."""
        if bool((module.stride > 0).all()):  # strides are known once Model() has probed them
            module.anchor_grid.copy_((module.anchors * module.stride.view(-1, 1, 1)).view_as(module.anchor_grid))

    @torch.no_grad()
    def fold(self) -> "IDetect":
        """Merge ``ia``/``im`` into the output convs in place (in fp32); idempotent."""
        if self.deploy:
            return self
        for conv, ia, im in zip(self.m, self.ia, self.im):
            w, b = fold_implicit(conv.weight.float(), conv.bias.float(), ia.implicit.float(), im.implicit.float())
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        del self.ia, self.im
        self.deploy = True
        return self


class IAuxDetect(IDetect):
    """YOLOv7's P6 head for training with auxiliary supervision: ``IDetect`` on the ``nl`` lead maps plus one
    plain 1x1 conv per level (``m2``) on ``nl`` auxiliary maps (inputs: lead levels first, then auxiliary).

    Training returns the ``2 * nl`` raw maps, lead then auxiliary; eval returns ``(decoded lead, lead raw
    maps)`` like ``IDetect`` (the auxiliary branch only trains). ``fold()`` merges the implicit layers and
    drops ``m2``; ``Model.fuse()`` then drops the layers that fed only the auxiliary maps, which leaves YOLOv7's
    deploy layout (a ``Detect`` on the lead maps). ``deploy=True`` builds the folded head directly.
    """

    heads = 2

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True, deploy=False):
        nl = len(anchors)
        if len(ch) != 2 * nl:
            raise ValueError(f"IAuxDetect takes 2 inputs per anchor level (lead, then auxiliary): {2 * nl} for "
                             f"{nl} levels, got {len(ch)}")
        super().__init__(nc, anchors, ch[:nl] if deploy else ch, inplace, deploy)

    def _build_aux_convs(self, ch: list[int]) -> None:
        if ch:
            self.m2 = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def prediction_convs(self) -> list[nn.ModuleList]:
        return [self.m, self.m2] if hasattr(self, "m2") else [self.m]

    @property
    def inputs_read(self) -> int:
        return 2 * self.nl if hasattr(self, "m2") else self.nl

    def forward(self, x: list[Tensor]):
        lead = super().forward(x[:self.nl])
        if not self.training or not hasattr(self, "m2"):
            return lead
        return lead + [self._anchor_map(conv(xi)) for conv, xi in zip(self.m2, x[self.nl:])]

    @torch.no_grad()
    def fold(self) -> "IAuxDetect":
        """``IDetect.fold()`` and drop the auxiliary convs; idempotent."""
        super().fold()
        if hasattr(self, "m2"):
            del self.m2
        return self


# ---------------------------------------------------------------------------------------------
# Config parsing
# ---------------------------------------------------------------------------------------------

MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "DWConv": DWConv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "Concat": Concat,
    "RepVGGBlock": RepVGGBlock,
    "QARepVGGBlock": QARepVGGBlock,
    "OREPA": OREPA,
    "Detect": Detect,
    "IDetect": IDetect,
    "IAuxDetect": IAuxDetect,
    "MP": MP,
    "SP": SP,
    "SPPCSPC": SPPCSPC,
    "RepConv": RepConv,
    "ReOrg": ReOrg,
    "DownC": DownC,
    "Shortcut": Shortcut,
    "nn.Upsample": nn.Upsample,
    "nn.BatchNorm2d": nn.BatchNorm2d,
    "nn.MaxPool2d": nn.MaxPool2d,
    "nn.Identity": nn.Identity,
}
# args start with c2; c1 is inserted
CHANNEL_MODULES = (Conv, DWConv, Bottleneck, C3, SPPF, RepVGGBlock, QARepVGGBlock, OREPA, RepConv, SPPCSPC, DownC)
REPEAT_INSIDE = (C3, SPPCSPC, DownC)  # the repeat count is an argument, not a stack of copies
JOINS = (Concat, Shortcut)  # modules that take several layers (besides the heads)
NAMED_ARGS = ("nc", "anchors")  # the only names a config's arguments may refer to
HEADS = tuple(name for name, m in MODULES.items() if issubclass(m, Detect))


def resolve_cfg(cfg: str | Path) -> Path:
    """Find a model YAML: an existing path, or a bare name (with or without .yaml) under models/."""
    p = Path(cfg)
    if p.is_file():
        return p
    for name in yaml_file_names(p):
        hits = sorted((ROOT / "models").rglob(name))
        if hits:
            return hits[0]
    available = ", ".join(sorted(x.name for x in (ROOT / "models").rglob("*.yaml")))
    raise FileNotFoundError(f"model config '{cfg}' not found (as a path or under models/); available: {available}")


def load_cfg(cfg: str | Path | dict) -> dict:
    """Model config as a plain dict (a copy when given a dict)."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    path = resolve_cfg(cfg)
    d = load_yaml(path, "model config")
    d["yaml_file"] = path.name
    return d


def _resolve_arg(a, named: dict):
    if not isinstance(a, str):
        return a
    if a in named:
        return named[a]
    try:
        return ast.literal_eval(a)  # 'None', '2', '[1, 2]'
    except (ValueError, SyntaxError):
        return a  # a plain string argument such as 'nearest'


def _check_from(i: int, f, entry) -> list[int]:
    froms = [f] if is_whole(f, minimum=-2**31) else f
    if not isinstance(froms, list) or not froms or not all(is_whole(j, minimum=-2**31) for j in froms):
        raise ValueError(f"layer {i} {entry}: 'from' must be an int or a list of ints, got {excerpt(f)}")
    for j in froms:
        ok = j == -1 if i == 0 else -i <= j < i
        if not ok:
            raise ValueError(f"layer {i} {entry}: 'from' index {j} does not refer to an earlier layer (valid: -1 or {-i}..{i - 1})")
    return froms


def _row_activation(i: int, cls, args: list, entry) -> tuple[list, dict]:
    """YOLOv7 writes a layer's activation as its last argument (``nn.LeakyReLU(0.1)``). For a module that
    takes ``act``, a trailing string argument is that keyword, parsed here through ``ACTIVATIONS``: in
    YOLOv7's Conv the position is ``act``, in YOLOv5 v7.0's (ours) it is ``d``, so it cannot stay positional."""
    if not args or not isinstance(args[-1], str) or "act" not in inspect.signature(cls).parameters:
        return args, {}
    try:
        return args[:-1], {"act": parse_activation(args[-1])}
    except ValueError as e:
        raise ValueError(f"layer {i} {entry}: {e}") from None


def _layer_args(i: int, entry: str, m: type[nn.Module], args: list, c_in: list[int], n: int, make_channels):
    """A row's constructor arguments, output channels and repeat count, from its input channels ``c_in`` (one
    per 'from'); ``make_channels`` applies the width multiple to a row's channel argument."""
    c2 = c_in[0]
    if m in CHANNEL_MODULES:
        if len(c_in) != 1 or not args:
            raise ValueError(f"layer {i} {entry}: {m.__name__} takes one input and at least the output channels")
        if not isinstance(args[0], int):
            raise ValueError(f"layer {i} {entry}: output channels must be an int, got {excerpt(args[0])}")
        c2 = make_channels(args[0])
        args = [c_in[0], c2, *args[1:]]
        if m in REPEAT_INSIDE:
            args.insert(2, n)
            n = 1
    elif m is nn.BatchNorm2d:
        args = [c2]
    elif m is Concat:
        c2 = sum(c_in)
    elif issubclass(m, Detect):
        check_head(i, entry, len(c_in), args[1] if len(args) > 1 else None, m.heads)
        args.append(list(c_in))
        if len(args) > 1 and isinstance(args[1], int):  # anchor count only: placeholders, AutoAnchor fills them
            args[1] = [list(range(args[1] * 2))] * (len(c_in) // m.heads)
    else:
        c2 *= getattr(m, "out_channel_factor", 1)  # ReOrg: 4; pools, upsampling, Shortcut: as the input
    return args, c2, n


def parse_model(d: dict, ch: list[int]):
    """Build the layers of a config dict. Returns (nn.Sequential, indices whose outputs are kept)."""
    for key in ("nc", "backbone", "head"):
        if key not in d:
            raise ValueError(f"model config lacks '{key}'")
    nc, anchors = d["nc"], d.get("anchors", 3)
    if not is_whole(nc):
        raise ValueError(f"model config: 'nc' must be a positive int, got {excerpt(nc)}")
    if not all(isinstance(d[k], list) for k in ("backbone", "head")):
        raise ValueError("model config: 'backbone' and 'head' must be lists of [from, number, module, args] rows")
    gd, gw = check_multiples(d)
    check_anchors(anchors)
    act = parse_activation(d.get("activation"))
    na = len(anchors[0]) // 2 if isinstance(anchors, (list, tuple)) else anchors
    no = na * (nc + 5)
    named = {"nc": nc, "anchors": anchors}
    layers, save, c2 = [], [], ch[-1]
    for i, entry in enumerate(d["backbone"] + d["head"]):
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            raise ValueError(f"layer {i}: expected [from, number, module, args], got {excerpt(entry)}")
        f, n, name, args = entry
        entry = excerpt(entry)  # what error messages echo: never the whole entry (it may be enormous)
        if not isinstance(name, str) or name not in MODULES:
            raise ValueError(f"layer {i} {entry}: unknown module {excerpt(name)}; registered modules: {', '.join(MODULES)}")
        if not is_whole(n):
            raise ValueError(f"layer {i} {entry}: 'number' must be a positive int, got {excerpt(n)}")
        if not isinstance(args, list):
            raise ValueError(f"layer {i} {entry}: 'args' must be a list, got {excerpt(args)}")
        froms = _check_from(i, f, entry)
        m = MODULES[name]
        check_inputs(i, entry, name, froms, multi_input=m in JOINS or issubclass(m, Detect))
        args, kwargs = _row_activation(i, m, [_resolve_arg(a, named) for a in args], entry)
        if act is not None and m in CHANNEL_MODULES:
            kwargs.setdefault("act", act)  # the config-wide activation, unless the row names one
        n = max(round(n * gd), 1) if n > 1 else n
        args, c2, n = _layer_args(i, entry, m, args, [ch[j] for j in froms], n, make_channels=lambda c: c if c == no
                                  else make_divisible(c * gw, 8))
        check_arguments(i, entry, m, args, kwargs)
        try:
            if n > 1:  # later copies take the first copy's output channels
                later = [c2, *args[1:]] if m in CHANNEL_MODULES else args
                module = nn.Sequential(m(*args, **kwargs), *(m(*later, **kwargs) for _ in range(n - 1)))
            else:
                module = m(*args, **kwargs)
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            raise ValueError(f"layer {i} {entry}: cannot build {name}{excerpt(tuple(args))}: {excerpt(str(e))}") from None
        module.i, module.f, module.n, module.type, module.args = i, f, n, name, args
        save.extend(j % i for j in froms if j != -1)
        layers.append(module)
        if i == 0:
            ch = []
        ch.append(c2)
    check_layout([x.type for x in layers], HEADS)
    return nn.Sequential(*layers), sorted(set(save))


def layer_input(m: nn.Module, x, y: list):
    """What layer ``m`` reads: the previous output ``x``, or the saved outputs ``y`` its 'from' names."""
    if m.f == -1:
        return x
    return y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]


def _sources(m: nn.Module) -> list[int]:
    """The absolute indices of the layers ``m`` reads (none for the first layer, which reads the image)."""
    froms = [m.f] if isinstance(m.f, int) else m.f
    return [j % m.i for j in froms] if m.i else []


def prune_layers(layers: nn.Sequential) -> tuple[nn.Sequential, list[int]]:
    """``layers`` without those the last layer does not depend on, renumbered: each kept module's ``i`` and
    ``f`` (relative entries stay relative, absolute ones absolute) and the saved-output list are rewritten."""
    keep, todo = set(), [len(layers) - 1]
    while todo:
        j = todo.pop()
        if j not in keep:
            keep.add(j)
            todo.extend(_sources(layers[j]))
    new = {old: k for k, old in enumerate(sorted(keep))}
    kept, save = [], set()
    for old in sorted(keep):
        m = layers[old]
        if old:  # layer 0 reads the image
            froms = [new[j % old] - new[old] if j < 0 else new[j] for j in ([m.f] if isinstance(m.f, int) else m.f)]
            m.f = froms if isinstance(m.f, list) else froms[0]
            save.update(j % new[old] for j in froms if j != -1)
        m.i = new[old]
        kept.append(m)
    return nn.Sequential(*kept), sorted(save)


def _shapes(x) -> str:
    return ", ".join(str(tuple(t.shape)) for t in x) if isinstance(x, list) else str(tuple(x.shape))


def trace_layers(layers: nn.Sequential, save: list[int], x: Tensor):
    """One forward through ``layers`` that names the layer that fails and the shapes it was given (the
    stride probe and ``check_model_config`` run it; ``Model._forward_once`` is the same loop, unchecked)."""
    y = []
    for m in layers:
        inputs = layer_input(m, x, y)
        try:
            x = m(inputs)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ValueError(f"layer {m.i} ({m.type}{excerpt(tuple(m.args))}, from {m.f}) fails on inputs of shape "
                             f"{_shapes(inputs)}: {excerpt(str(e))}; check its arguments and 'from'") from None
        y.append(x if m.i in save else None)
    return x


def model_config(cfg: str | Path | dict, ch: int = 3, nc: int | None = None, anchors=None, verbose: bool = False) -> dict:
    """The config a Model is built from: the file (or dict) with the input channels, class count and
    anchor count (hyp 'anchors') applied."""
    d = load_cfg(cfg)
    d["ch"] = d.get("ch", ch)
    if nc is not None and not is_whole(nc):  # 0 must not mean "the config's nc"
        raise ValueError(f"the number of classes must be a whole number >= 1, got {excerpt(nc, 60)}")
    if nc is not None and nc != d.get("nc"):
        if verbose:
            LOGGER.info(f"Overriding model.yaml nc={d.get('nc')} with nc={nc}")
        d["nc"] = int(nc)  # a numpy integer would not survive the checkpoint's plain data
    if anchors:
        d["anchors"] = round(anchors)
    return d


def check_model_config(cfg: str | Path | dict, ch: int = 3, nc: int | None = None, anchors=None, s: int = 256) -> None:
    """Every error ``Model(cfg, ch, nc, anchors)`` would raise, without its cost: the layers are built on the
    meta device (shapes only, no memory) and run once at ``s`` x ``s``. train.py calls it before it creates a
    run folder."""
    d = model_config(cfg, ch, nc, anchors)
    with torch.device("meta"):
        layers, save = parse_model(d, ch=[d["ch"]])
        trace_layers(layers.eval(), save, torch.zeros(1, d["ch"], s, s))


def scale_image(img: Tensor, ratio: float, gs: int = 32) -> Tensor:
    """Resize a batch by ``ratio`` and pad to a multiple of ``gs`` with ImageNet-mean grey."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    size = int(h * ratio), int(w * ratio)
    img = torch.nn.functional.interpolate(img, size=size, mode="bilinear", align_corners=False)
    ph, pw = (math.ceil(x / gs) * gs - x for x in size)
    return torch.nn.functional.pad(img, [0, pw, 0, ph], value=0.447)


def check_anchor_order(m: Detect) -> None:
    """Anchors must grow with stride (small anchors on the fine P3 grid); flip them if not."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da, ds = a[-1] - a[0], m.stride[-1] - m.stride[0]
    if da and da.sign() != ds.sign():
        LOGGER.info("Reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class Model(nn.Module):
    """A detector built from a YAML config (path, bare name under models/, or dict)."""

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None, anchors=None):
        super().__init__()
        self.yaml = model_config(cfg, ch, nc, anchors, verbose=True)
        ch = self.yaml["ch"]
        self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch])
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = self.yaml.get("inplace", True)
        detect = self.model[-1]  # a Detect or IDetect (parse_model's check_layout)
        detect.inplace = self.inplace
        detect.stride = self._probe_strides(ch)
        check_anchor_order(detect)
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self._initialize_biases()
        initialize_weights(self)

    @property
    def stride(self) -> Tensor:
        return self.model[-1].stride

    @property
    def is_folded(self) -> bool:
        """True when every re-parameterizable block is in its deploy form."""
        return all(m.deploy for m in self.modules() if isinstance(m, Reparameterizable))

    @torch.no_grad()
    def _probe_strides(self, ch: int, s: int = 256) -> Tensor:
        """Strides from one dummy forward in eval mode (BatchNorm statistics stay untouched)."""
        detect = self.model[-1]
        detect.stride = torch.ones(detect.nl)
        was_training = self.training
        self.eval()
        try:
            _, raw = trace_layers(self.model, self.save, torch.zeros(1, ch, s, s))
        finally:
            self.train(was_training)
        return torch.tensor([s / x.shape[2] for x in raw])

    @torch.no_grad()
    def _initialize_biases(self, class_freq: Tensor | None = None) -> None:
        """YOLOv5's prior: about 8 objects per 640x640 image, classes near-uniform (or by frequency); the same for
        every branch's output convs (IAuxDetect's auxiliary ones too, as YOLOv7 does)."""
        m = self.model[-1]
        for convs in m.prediction_convs():
            for mi, s in zip(convs, m.stride):
                b = mi.bias.view(m.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:5 + m.nc] += (math.log(0.6 / (m.nc - 0.99999)) if class_freq is None
                                     else torch.log(class_freq / class_freq.sum()))

    def forward(self, x: Tensor, augment: bool = False):
        return self._forward_augment(x) if augment else self._forward_once(x)

    def _forward_augment(self, x: Tensor):
        """Test-time augmentation: full size, 0.83 flipped left-right, 0.67; merged before NMS."""
        h, w = x.shape[-2:]
        gs = int(self.stride.max())
        outputs = []
        for scale, flip in ((1.0, False), (0.83, True), (0.67, False)):
            xi = scale_image(x.flip(-1) if flip else x, scale, gs)
            yi = self._forward_once(xi)[0]
            yi[..., :4] /= scale
            if flip:
                yi[..., 0] = w - yi[..., 0]
            outputs.append(yi)
        return torch.cat(self._drop_extreme_levels(outputs), 1), None

    def _drop_extreme_levels(self, outputs: list[Tensor]) -> list[Tensor]:
        """Drop the coarsest level of the largest scale and the finest of the smallest (YOLOv5's TTA clip)."""
        nl = self.model[-1].nl
        cells = sum(4 ** k for k in range(nl))  # level sizes relative to the coarsest
        first, last = outputs[0], outputs[-1]
        outputs[0] = first[:, : first.shape[1] - first.shape[1] // cells]
        outputs[-1] = last[:, (last.shape[1] // cells) * 4 ** (nl - 1):]
        return outputs

    def _forward_once(self, x: Tensor):
        y = []
        for m in self.model:
            x = m(layer_input(m, x, y))
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self) -> "Model":
        """Switch to eval mode and fold every re-parameterizable block in place (idempotent). A head that drops
        its auxiliary branch on folding (IAuxDetect) takes the layers that fed only that branch with it."""
        self.eval()
        blocks = [m for m in self.modules() if isinstance(m, Reparameterizable)]
        for m in reversed(blocks):  # innermost first, should a foldable block ever contain another
            m.fold()
        self._drop_unread_layers()
        return self

    def _drop_unread_layers(self) -> None:
        """Keep only the head's inputs it still reads (``inputs_read``) and the layers those depend on."""
        head = self.model[-1]
        if not isinstance(head.f, list) or len(head.f) <= head.inputs_read:
            return
        head.f = head.f[:head.inputs_read]
        head.args = [*head.args[:-1], head.args[-1][:head.inputs_read]]  # the channel list parse_model appended
        self.model, self.save = prune_layers(self.model)

    def info(self, verbose: bool = True, imgsz: int = 640) -> dict:
        """Log the layer table and the summary line (layers, parameters, gradients, GFLOPs); return the numbers."""
        setup_logging()
        summary = model_summary(self, imgsz)
        if verbose:
            LOGGER.info(f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
            for m in self.model:
                n_params = sum(p.numel() for p in m.parameters())
                LOGGER.info(f"{m.i:>3}{str(m.f):>18}{m.n:>3}{n_params:10.0f}  {m.type:<40}{str(m.args):<30}")
        name = Path(self.yaml.get("yaml_file", "model")).stem
        LOGGER.info(
            f"{name} summary{' (folded)' if self.is_folded else ''}: {summary['layers']} layers, "
            f"{summary['parameters']} parameters, {summary['gradients']} gradients, {summary['gflops']:.1f} GFLOPs"
        )
        return summary
