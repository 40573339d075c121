"""Small shared helpers: the project logger, path constants and number rounding.

Nothing here runs at import time beyond defining names: logging is configured only when an
entry point asks for it (``setup_logging``), never as a side effect of importing a module.
"""
from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path
from typing import Any, Callable, NamedTuple

from utils.textfiles import decode_text

ROOT = Path(__file__).resolve().parents[1]  # repository root
LOGGER_NAME = "yolo"
LOGGER = logging.getLogger(LOGGER_NAME)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def setup_logging(verbose: bool = True) -> logging.Logger:
    """Give the project logger a console handler unless the application configured logging already.

    Called by entry points (scripts, ``Model.info``); idempotent. An application that set up its
    own handlers (on the root or on this logger) keeps full control.
    """
    if not LOGGER.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)
    return LOGGER


def freeze_long_lived_objects() -> None:
    """For a command's process, once its heavy imports are done: move every object alive now (torch,
    torchvision, OpenCV: ~10^6 of them) out of the garbage collector's reach (``gc.freeze``, as Python's docs
    advise before forking). Collections stop walking them, forked loader workers stop touching (and copying)
    their pages, and the process exits ~0.9 s sooner (1.4 -> 0.5 s after training). Not for library callers:
    their processes are left as they are."""
    import gc

    gc.freeze()


def is_number(x) -> bool:
    """A finite int or float from a config or the Python API (bools are not numbers there; NaN and inf are refused)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_whole(x, minimum: int = 1) -> bool:
    """A whole number (int or numpy integer, not a bool) >= ``minimum``: counts, sizes, class numbers."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= minimum


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= x (channel counts after width scaling)."""
    return int(math.ceil(x / divisor) * divisor)



def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless ``exist_ok`` (YOLOv5's run naming).

    With ``mkdir`` the folder is claimed by creating it: two runs started at the same moment get
    different folders, because only one mkdir of a name can succeed."""
    path = Path(path)
    if exist_ok or (not mkdir and not path.exists()):
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    base, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
    n = 1
    while True:
        candidate = path if n == 1 else Path(f"{base}{sep}{n}{suffix}")
        n += 1
        if not mkdir:
            if not candidate.exists():
                return candidate
            continue
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue


class Rule(NamedTuple):
    """What one option accepts: its type (checked first), a test of its value and the test in words."""
    kind: type | None  # int, float, bool, str, tuple; None: the test alone decides
    test: Callable[[Any], bool]
    wording: str
    optional: bool = False  # None is accepted too (a default decided later, e.g. from the data YAML)


KIND_WORDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string", tuple: "a list"}


def _is_kind(value, kind) -> bool:
    if kind is None:
        return True
    if kind in (int, float):  # numpy scalars count; True and False do not
        return isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    return isinstance(value, kind)


def _sizes(v) -> list:
    return [v] if isinstance(v, int) else list(v)


ANY = lambda v: True  # noqa: E731 (the type check is the whole rule)

# what each option accepts, one table for every script's CLI and run() alike (train adds its own in
# utils/training/train_config.py through the same check)
OPTION_RULES = {
    "conf_thres": Rule(float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "iou_thres": Rule(float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "max_det": Rule(int, lambda v: v >= 1, ">= 1"),
    "batch_size": Rule(int, lambda v: v >= 1, ">= 1"),
    "imgsz": Rule(None, lambda v: all(int(s) >= 32 for s in _sizes(v)) and 1 <= len(_sizes(v)) <= 2,
                  "one or two sizes >= 32"),
    "vid_stride": Rule(int, lambda v: v >= 1, ">= 1"),
    "line_thickness": Rule(int, lambda v: v >= 1, ">= 1"),
    "workers": Rule(int, lambda v: v >= 0, ">= 0"),
    "classes": Rule(None, lambda v: v is None or all(int(c) >= 0 for c in v), "class ids >= 0"),
    "opset": Rule(int, lambda v: v >= 7, ">= 7"),
}


def option_error(name: str, wording: str, value) -> ValueError:
    """The one wording of a rejected option: the flag, what it takes, and the run() keyword with its value."""
    return ValueError(f"--{name.replace('_', '-')} must be {wording}, got {name}={excerpt(value, 60)}")


def check_against(rules: dict[str, Rule], values: dict) -> None:
    """Raise ``option_error`` for the first of ``values`` that its rule in ``rules`` rejects."""
    for name, value in values.items():
        rule = rules[name]
        if value is None and rule.optional:
            continue
        if not _is_kind(value, rule.kind):
            raise option_error(name, KIND_WORDS[rule.kind], value)
        try:
            ok = rule.test(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise option_error(name, rule.wording, value)


def check_options(**values) -> None:
    """Raise ValueError naming the first option whose value its rule in OPTION_RULES rejects."""
    check_against(OPTION_RULES, values)


def check_imgsz(imgsz, stride: int) -> tuple[int, int]:
    """(h, w) from one int or one/two ints, each rounded up to a multiple of ``stride`` (with a warning)."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if len(sizes) not in (1, 2) or not all(is_whole(s) for s in sizes):
        raise ValueError(f"--imgsz takes one or two positive ints (h w), got {excerpt(imgsz, 60)}")
    h, w = sizes * 2 if len(sizes) == 1 else sizes
    new = tuple(max(stride, -(-s // stride) * stride) for s in (h, w))
    if new != (h, w):
        LOGGER.warning(f"WARNING --imgsz {h} {w} must be a multiple of the max stride {stride}: using {new[0]} {new[1]}")
    return new


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem_2.ext``, ``stem_3.ext``... when an earlier file of the same name took it (two
    folders holding 000001.jpg must not overwrite each other's outputs); records the result in ``taken``."""
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    out, n = name, 2
    while out in taken:
        out = f"{stem}_{n}{dot}{ext}"
        n += 1
    taken.add(out)
    return out


MAX_YAML_BYTES = 1 << 20  # configs are a few kB; a larger "config" is a mistake or an attack
MAX_YAML_NODES = 200_000  # values after alias expansion: a 600-byte alias bomb expands to ~10^9
MAX_YAML_DEPTH = 32


def excerpt(obj, limit: int = 160) -> str:
    """A short repr of ``obj`` for error messages: never echo a whole (possibly huge) entry."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 8, 8, 60, 60
    text = r.repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_expanded_size(obj, where: str) -> None:
    """Refuse YAML whose aliases expand past MAX_YAML_NODES values or nest past MAX_YAML_DEPTH."""
    count, stack = 0, [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
            what = f"more than {MAX_YAML_NODES} values" if count > MAX_YAML_NODES else f"nesting deeper than {MAX_YAML_DEPTH}"
            raise ValueError(f"{where}: refused, {what} once its aliases are expanded (a YAML bomb or not a config)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for kv in node.items() for v in kv)
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


def yaml_file_names(name: str | Path) -> list[str]:
    """The file names a bare config name may have: itself when it ends in .yaml/.yml, else with either suffix."""
    p = Path(name)
    return [p.name] if p.suffix in (".yaml", ".yml") else [p.name + ".yaml", p.name + ".yml"]


def load_yaml(path: str | Path, what: str = "YAML file") -> dict:
    """A YAML mapping from a file, safely: data only, size and alias-expansion limits, and errors that name
    the file (missing, too large, binary, invalid YAML, not a mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {size} bytes is too large for a {what} (limit {MAX_YAML_BYTES})")
    raw = path.read_bytes()
    try:
        text = decode_text(raw)  # a BOM and CRLF read as plain UTF-8 (Windows editors)
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw, text.index("\x00"), text.index("\x00") + 1, "NUL byte")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text {what} (binary content; is this the right file?)") from None
    try:
        d = yaml.safe_load(text)  # safe_load: a config is data, never code
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {excerpt(str(e), 400)}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(d).__name__}")
    _check_expanded_size(d, str(path))
    return d
