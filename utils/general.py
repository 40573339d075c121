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

