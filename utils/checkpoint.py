"""Checkpoints as plain data: tensors, dicts, lists, strings and numbers only.

A file written here loads with ``torch.load(path, weights_only=True)`` (no pickled classes, so a
downloaded checkpoint cannot run code), and the model is rebuilt from the YAML dict stored in it.
Writes are atomic: a crash mid-save leaves the previous file intact, never a truncated one.

YOLOv5's and YOLOv7's own ``.pt`` files (pickled modules) are read as data by
``utils.foreign_checkpoint`` and rebuilt the same way, from their YAML dict through the registry:
``load_model``, ``load_pretrained`` and ``checkpoint_yaml`` accept both.
"""
from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.atomic import atomic_file
from utils.signals import deferred_signals

FORMAT = "yolo-reparam-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "yaml", "state_dict", "folded")


class CheckpointError(ValueError):
    """A file that is missing, unreadable, truncated or not one of our checkpoints."""


class PickledObjectsError(CheckpointError):
    """A PyTorch file that pickles classes (YOLOv5's and YOLOv7's own files): ``utils.foreign_checkpoint`` reads it."""


# the official release files (names as published) and where: a missing --weights yolov5s.pt is explained, never
# downloaded
OFFICIAL_WEIGHTS = (
    (re.compile(r"yolov5[nsmlx]6?\.pt"), "https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}"),
    (re.compile(r"yolov7(-tiny|x|-w6|-e6|-d6|-e6e)?(_training)?\.pt"),
     "https://github.com/WongKinYiu/yolov7/releases/download/v0.1/{name}"),
)


def to_plain(obj, where: str = "checkpoint"):
    """Convert ``obj`` to types ``torch.load(weights_only=True)`` accepts, or raise naming the culprit.

    Namespaces become dicts, paths strings, numpy scalars Python numbers and numpy arrays tensors.
    """
    if isinstance(obj, np.generic):  # first: np.float64 subclasses float but pickles as a numpy global
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {str(k) if isinstance(k, Path) else k: to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in a plain-data checkpoint")


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A write that fails (full disk, quota, permissions) raises ``CheckpointError`` saying so; the previous
    file at ``path`` is untouched and no temporary file is left behind."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp, open(tmp, "wb") as f, deferred_signals(path.name):
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError (PytorchStreamWriter)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise CheckpointError(f"could not write {path}: {reason}{kept}") from e
    return path


def model_record(model: nn.Module) -> dict:
    """The plain-data description of a model: its YAML dict, weights and metadata."""
    from models.yolo import Model  # local: checkpoint I/O should not require building models at import

    model = getattr(model, "module", model)  # unwrap DDP / DataParallel
    if not isinstance(model, Model):
        raise TypeError(f"save_checkpoint expects a models.yolo.Model, got {type(model).__name__}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "yaml": to_plain(model.yaml, "model.yaml"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "names": [str(n) for n in model.names],
        "nc": int(model.yaml["nc"]),
        "stride": [float(s) for s in model.stride],
        "folded": bool(model.is_folded),
    }


def save_checkpoint(path: str | Path, model: nn.Module, **extra) -> Path:
    """Write ``model`` plus ``extra`` plain data (epoch, optimizer state, options, ...) atomically."""
    record = model_record(model)
    clash = set(extra) & set(record)
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} would overwrite the model record")
    record.update(to_plain(extra, "extra"))
    return atomic_torch_save(record, path)


def _load_plain(path: Path):
    """``torch.load(weights_only=True)`` with errors that say what the file is and what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = ("global", "unsupported class")  # torch >= 2.4 / 2.3 wording for a pickled class it refuses
        if not any(w in str(e).lower() for w in refused):  # garbage or a cut file, not a module pickle
            raise CheckpointError(f"{path} ({path.stat().st_size} bytes) is not a readable checkpoint: truncated, "
                                  f"corrupt or not a PyTorch file (UnpicklingError: {str(e)[:200]})") from e
        # a real PyTorch file that holds pickled classes, which weights_only refuses
        raise PickledObjectsError(f"{path} holds pickled Python objects, not a plain checkpoint of this project") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        size = path.stat().st_size
        raise CheckpointError(f"{path} ({size} bytes) is not a readable checkpoint: truncated, corrupt or not a "
                              f"PyTorch file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def missing_weights(path: Path, what: str = "checkpoint") -> CheckpointError:
    """The error for a weights file that is not there; for an official file's name, where it is published."""
    for pattern, url in OFFICIAL_WEIGHTS:
        if pattern.fullmatch(path.name):
            return CheckpointError(f"{what} not found: {path}. Nothing is downloaded here: the official {path.name} is "
                                   f"published at {url.format(name=path.name)}; download it to {path} (or give its path)")
    return CheckpointError(f"{what} not found: {path}")


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely (weights_only) with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise missing_weights(path)
    ckpt = _load_plain(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (it looks like a bare state dict: build the Model from its YAML and load_state_dict it)" if (
            isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())) else ""
        raise CheckpointError(f"{path} is not a checkpoint of this project{hint}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return ckpt


def model_from_record(ckpt: dict, source: str = "checkpoint"):
    """Rebuild the model a checkpoint dict describes (folded first when the weights are folded)."""
    from models.yolo import Model

    model = Model(ckpt["yaml"])
    if ckpt["folded"]:
        model.fuse()
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not match the model its YAML builds: {e}") from None
    model.names = list(ckpt.get("names") or model.names)
    return model


def load_model(path: str | Path, device="cpu", fuse: bool = False):
    """Model from a checkpoint file (ours, or YOLOv5's/YOLOv7's read as data), in eval mode on ``device``;
    ``fuse=True`` folds it for deployment."""
    try:
        model = model_from_record(read_checkpoint(path), str(path))
    except PickledObjectsError:
        model = model_from_foreign(path)
    model = model.to(device).eval()
    return model.fuse() if fuse else model


def checkpoint_yaml(path: str | Path) -> dict:
    """The model config a weights file was trained with (ours or YOLOv5's/YOLOv7's)."""
    try:
        return read_checkpoint(path)["yaml"]
    except PickledObjectsError:
        from utils.foreign_checkpoint import read_foreign

        return _foreign(read_foreign, path).yaml


def _foreign(reader, path):
    """``reader(path)`` with its errors as ``CheckpointError`` (one line, naming the file)."""
    from utils.foreign_checkpoint import ForeignCheckpointError

    try:
        return reader(path)
    except ForeignCheckpointError as e:
        raise CheckpointError(str(e)) from None


def _fold_to_match(model: nn.Module, keys: set) -> None:
    """Fold exactly the blocks stored folded (YOLOv7's deploy files fold RepConv but keep Conv+BN)."""
    from models.reparameterizable import Reparameterizable

    for name, m in list(model.named_modules()):
        if isinstance(m, Reparameterizable) and not m.deploy:
            own = {f"{name}.{k}" for k in m.state_dict()}
            if not own <= keys and f"{name}.{m.deploy_attr}.weight" in keys:
                m.fold()


def _drop_derived_anchor_grid(state: dict, model: nn.Module, path: Path) -> dict:
    """YOLOv7's Detect stores ``anchor_grid`` (anchors in pixels), which our Detect derives from ``anchors`` and the
    strides: dropped once it is checked to say the same thing."""
    own = model.state_dict()
    for key in [k for k in state if k.endswith(".anchor_grid") and k not in own]:
        anchors = state.get(key.replace(".anchor_grid", ".anchors"))
        pixels = None if anchors is None else anchors * model.stride.view(-1, 1, 1).to(anchors)
        if pixels is None or not torch.allclose(state[key].reshape(pixels.shape), pixels, rtol=1e-3):
            raise CheckpointError(f"{path}: {key} disagrees with the anchors and strides stored beside it")
        state = {k: v for k, v in state.items() if k != key}
    return state


def model_from_foreign(path: str | Path):
    """Our model from a YOLOv5/YOLOv7 checkpoint: its YAML through the registry, its tensors loaded strict."""
    from models.yolo import Model
    from utils.foreign_checkpoint import read_foreign
    from utils.general import LOGGER

    path = Path(path)
    found = _foreign(read_foreign, path)
    try:
        model = Model(found.yaml)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} ({found.source}): its model config matches no layer set of this project: {e}"
                              ) from None
    _fold_to_match(model, set(found.state_dict))
    try:
        model.load_state_dict(_drop_derived_anchor_grid(found.state_dict, model, path), strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:3]]
        raise CheckpointError(f"{path} ({found.source}): its tensors do not fit the model its config builds here: "
                              f"{' '.join(lines)[:300]}") from None
    if found.stride and [float(s) for s in model.stride] != found.stride:
        raise CheckpointError(f"{path}: strides {found.stride} stored, {model.stride.tolist()} built from its config")
    if len(found.names) != model.yaml["nc"]:
        raise CheckpointError(f"{path}: {len(found.names)} class names for nc={model.yaml['nc']}")
    model.names = found.names
    epoch = "a release file" if found.epoch in (None, -1) else f"epoch {found.epoch}"
    LOGGER.info(f"Imported {path.name}: {found.source} checkpoint, {len(found.names)} classes, {epoch}, "
                f"'{found.taken_from}' weights; read as data (no code from the file ran)")
    return model


def _state_dict_from_file(path: Path) -> tuple[dict, bool]:
    """(state dict, folded) from one of our checkpoints, a YOLOv5/YOLOv7 checkpoint or a plain state dict file."""
    try:
        obj = _load_plain(path)
    except PickledObjectsError:
        from utils.foreign_checkpoint import read_foreign

        state = _foreign(read_foreign, path).state_dict
        return state, any(".rbr_reparam." in k for k in state)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["state_dict"], bool(obj.get("folded"))
    for key in ("state_dict", "model", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, False
    raise CheckpointError(f"{path} holds neither a checkpoint of this project nor a state dict")


def load_pretrained(model: nn.Module, path: str | Path, exclude: tuple[str, ...] = ()) -> int:
    """Copy every tensor of ``path`` whose name and shape match ``model`` (transfer learning).

    Reports what was transferred and what was not; returns the number of tensors loaded.
    """
    from utils.general import LOGGER

    path = Path(path)
    if not path.is_file():
        raise missing_weights(path, "weights")
    state, folded = _state_dict_from_file(path)
    if folded:
        raise CheckpointError(f"{path} is folded (deployment form) and cannot be trained: use the unfolded checkpoint")
    own = model.state_dict()
    matched = {k: v for k, v in state.items()
               if k in own and v.shape == own[k].shape and not any(x in k for x in exclude)}
    model.load_state_dict(matched, strict=False)
    skipped = sorted(set(own) - set(matched))
    LOGGER.info(f"Transferred {len(matched)}/{len(own)} items from {path}")
    if skipped:
        shown = ", ".join(skipped[:8]) + (f" and {len(skipped) - 8} more" if len(skipped) > 8 else "")
        LOGGER.warning(f"{len(skipped)} model tensors not in {path.name} (or of another shape), left as initialised: {shown}")
    return len(matched)


TRAINING_ONLY_KEYS = ("optimizer", "scaler", "train_state_dict")


def strip_checkpoint(path: str | Path) -> Path:
    """Drop optimizer and other resume-only state from a finished run's checkpoint (atomic rewrite)."""
    ckpt = read_checkpoint(path)
    for k in TRAINING_ONLY_KEYS:
        ckpt.pop(k, None)
    ckpt["final"] = True
    return atomic_torch_save(ckpt, path)
