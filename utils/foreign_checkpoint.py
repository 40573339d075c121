"""Checkpoints written by YOLOv5 and YOLOv7, read as data: their pickled modules never run.

Their ``.pt`` files pickle whole ``nn.Module`` trees (``models.yolo.DetectionModel``, ``IDetect``,
``argparse.Namespace``, numpy scalars...): ``torch.load(weights_only=True)`` refuses them, and
``weights_only=False`` lets the file call any function it names. ``RestrictedUnpickler`` sits between
the two. Its ``find_class`` returns real objects only for what tensors and containers need
(``SAFE_GLOBALS``: torch's tensor rebuild functions, ``OrderedDict``, numpy scalars and arrays); a
class of the model families (``FAMILIES``: YOLOv5's and YOLOv7's ``models``/``utils`` packages, the pip
package ``yolov5``, ``torch.nn``, ``argparse``, ``pathlib``) becomes an ``Inert`` stand-in that only
records the state the pickle gives it; any other global (``os.system``, ``builtins.eval``,
``subprocess.Popen``...) stops the load with ``ForeignCheckpointError`` before anything is called.

From the recorded tree, ``read_foreign`` takes what the original code would use (``ema`` over
``model``, as YOLOv5's loader does): the model's ``yaml`` dict, ``names``, ``stride`` and the tensors
of every parameter and persistent buffer (the Detect layer's ``anchors`` in grid units among them).
``utils.checkpoint`` turns that into our model through the config registry (no eval).
"""
from __future__ import annotations

import _compat_pickle
import codecs
import pickle
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray

# what a tensor, a container or a numpy scalar needs to be rebuilt: constructors of data, nothing else
SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): codecs.encode,  # protocol 2 stores bytes as encode(str, 'latin1')
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}
NUMPY_REBUILD = ("scalar", "_reconstruct")  # numpy scalars and arrays (YOLOv5's best_fitness)
NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 2.0 renamed numpy.core: files name either
# packages whose classes a YOLOv5/YOLOv7 checkpoint pickles: read as inert records of their state
FAMILIES = ("models", "utils", "yolov5", "torch.nn", "argparse", "pathlib")


class ForeignCheckpointError(RuntimeError):
    """A YOLOv5/YOLOv7 file that cannot be read as data (refused global, unknown layout, broken file)."""


class Inert:
    """A pickled object of a class that is never imported: the arguments and state the pickle gave it."""

    origin = "?"

    def __init__(self, *args, **kwargs):  # a REDUCE of the class (pathlib paths): arguments recorded
        self.__dict__["_args"] = args

    def __setstate__(self, state):  # BUILD: a module's __dict__, or (dict, slots)
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self):
        return f"<inert {self.origin}>"


def _is_family(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FAMILIES)


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` of data only (see the module docstring); ``source`` names the file in errors."""

    source = "checkpoint"
    _stand_ins: dict

    def find_class(self, module: str, name: str):
        # protocol 2 files name Python 2 modules (__builtin__, commands...): judge the Python 3 name
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module in NUMPY_CORE and name in NUMPY_REBUILD:
            return getattr(_np_multiarray, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "copyreg" and name == "_reconstructor":
            return _reconstruct_inert
        if _is_family(module):
            return self._inert(module, name)
        raise ForeignCheckpointError(
            f"{self.source}: refused to load: its pickle calls {module}.{name}, which no YOLOv5/YOLOv7 checkpoint "
            "needs (only tensors, containers and model classes, read as data, are allowed); nothing was run")

    def _inert(self, module: str, name: str) -> type:
        key = f"{module}.{name}"
        cache = self.__dict__.setdefault("_stand_ins", {})
        if key not in cache:
            cache[key] = type(name, (Inert,), {"origin": key, "__module__": "inert." + module})
        return cache[key]


def _reconstruct_inert(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects), for stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, Inert)) or base is not object or state is not None:
        raise ForeignCheckpointError(f"refused copyreg._reconstructor({cls!r}, {base!r}): not a plain object")
    return cls.__new__(cls)


def _pickle_module(source: str) -> types.ModuleType:
    """A stand-in for the ``pickle`` module that ``torch.load`` unpickles with (``pickle_module=``)."""
    mod = types.ModuleType("restricted_pickle")
    mod.Unpickler = type("Unpickler", (RestrictedUnpickler,), {"source": source})
    mod.load = lambda f, **kw: mod.Unpickler(f, **kw).load()  # the legacy (non-zip) format
    mod.__name__ = "restricted_pickle"
    return mod


def restricted_load(path: str | Path):
    """The object a torch ``.pt`` file holds, unpickled by ``RestrictedUnpickler`` (stand-ins for classes)."""
    path = Path(path)
    try:
        # weights_only=False hands unpickling to pickle_module: ours, which calls nothing but SAFE_GLOBALS
        return torch.load(path, map_location="cpu", pickle_module=_pickle_module(str(path)), weights_only=False)
    except ForeignCheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, IndexError) as e:
        size = path.stat().st_size if path.exists() else 0
        raise ForeignCheckpointError(f"{path} ({size} bytes) is not a readable checkpoint: truncated, corrupt or not "
                                     f"a PyTorch file ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                                     ) from None


# ---------------------------------------------------------------------------------------------
# What the original code would use from the recorded tree
# ---------------------------------------------------------------------------------------------

@dataclass
class ForeignModel:
    """A YOLOv5/YOLOv7 model read from a file: its config, tensors (float32) and metadata."""

    source: str  # e.g. "YOLOv5 (models.yolo.DetectionModel)"
    yaml: dict
    state_dict: dict
    names: list[str]
    stride: list[float]
    epoch: int | None
    taken_from: str  # "ema" or "model"
    head: str = ""
    extra: dict = field(default_factory=dict)


def module_tensors(obj: Inert, prefix: str = "") -> dict:
    """The state dict an ``nn.Module`` would give: parameters and persistent buffers, recursively."""
    d = obj.__dict__
    out = {}
    for k, v in (d.get("_parameters") or {}).items():
        if v is not None:
            out[prefix + k] = v
    skip = d.get("_non_persistent_buffers_set") or set()
    for k, v in (d.get("_buffers") or {}).items():
        if v is not None and k not in skip:
            out[prefix + k] = v
    for k, child in (d.get("_modules") or {}).items():
        if isinstance(child, Inert):
            out.update(module_tensors(child, f"{prefix}{k}."))
    return out


def _layers(obj: Inert) -> list:
    seq = (obj.__dict__.get("_modules") or {}).get("model")
    return list(((seq.__dict__.get("_modules") or {}) if isinstance(seq, Inert) else {}).values())


def _family(model: Inert, ckpt: dict, layers: list) -> str:
    kinds = {type(m).__name__ for m in layers}
    if model.origin.startswith("yolov5."):
        project = "YOLOv5 (pip package yolov5)"
    elif kinds & {"IDetect", "IAuxDetect", "IBin", "IKeypoint", "RepConv", "SPPCSPC"} or "training_results" in ckpt:
        project = "YOLOv7"
    else:
        project = "YOLOv5"
    return f"{project}, {model.origin}"


def _names(value, nc: int) -> list[str]:
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value)]
    if isinstance(value, (list, tuple)) and value:
        return [str(v) for v in value]
    return [str(i) for i in range(nc)]


def read_foreign(path: str | Path) -> ForeignModel:
    """The model a YOLOv5/YOLOv7 checkpoint holds (``ema`` when present, else ``model``), as data."""
    path = Path(path)
    ckpt = restricted_load(path)
    if not isinstance(ckpt, dict):
        raise ForeignCheckpointError(f"{path} holds a {type(ckpt).__name__}, not a YOLOv5/YOLOv7 checkpoint dict")
    taken = "ema" if isinstance(ckpt.get("ema"), Inert) else "model"
    model = ckpt.get(taken)
    if not isinstance(model, Inert) or not isinstance(model.__dict__.get("yaml"), dict):
        found = type(model).__name__ if model is not None else "nothing"
        raise ForeignCheckpointError(f"{path}: '{taken}' holds {found}, not a YOLOv5/YOLOv7 model with its yaml config")
    layers = _layers(model)
    if not layers:
        raise ForeignCheckpointError(f"{path}: {model.origin} has no layer list ('model' Sequential)")
    state = {k: v.float() if v.is_floating_point() else v for k, v in module_tensors(model).items()}
    yaml_cfg = dict(model.__dict__["yaml"])
    stride = model.__dict__.get("stride")
    epoch = ckpt.get("epoch")
    return ForeignModel(source=_family(model, ckpt, layers), yaml=yaml_cfg, state_dict=state,
                        names=_names(model.__dict__.get("names"), int(yaml_cfg.get("nc", 80))),
                        stride=[float(s) for s in stride] if isinstance(stride, torch.Tensor) else [],
                        epoch=int(epoch) if isinstance(epoch, (int, np.integer)) else None,
                        taken_from=taken, head=type(layers[-1]).__name__)
