"""Small shared helpers: the project logger, path constants and number rounding.

Nothing here runs at import time beyond defining names: logging is configured only when an
entry point asks for it (``setup_logging``), never as a side effect of importing a module.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

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


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= x (channel counts after width scaling)."""
    return int(math.ceil(x / divisor) * divisor)



def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless ``exist_ok`` (YOLOv5's run naming)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        base, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{base}{sep}{n}{suffix}").exists():
            n += 1
        path = Path(f"{base}{sep}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, with a clear error naming the file otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, encoding="utf-8") as f:
        try:
            d = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(d).__name__}")
    return d
