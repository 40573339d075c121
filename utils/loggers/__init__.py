"""Loggers on the callback registry: results.csv, TensorBoard and the experiment trackers.

``attach_loggers`` registers them on rank 0's ``Callbacks``. results.csv and TensorBoard always log. An
experiment tracker logs when ``--track NAME`` asks for it, or when its library is installed *and* configured
the way its users configure it (``TRACKER_SETTINGS``):

- ``wandb``: ``WANDB_MODE`` set to online/offline, ``WANDB_API_KEY`` set, or a ``wandb login`` (~/.netrc);
  ``WANDB_MODE=disabled`` (or ``WANDB_DISABLED=true``) keeps it off unless ``--track wandb`` is given.
- ``mlflow``: ``MLFLOW_TRACKING_URI`` set.
- ``comet``: ``COMET_API_KEY`` set, ``COMET_MODE=offline``, or a ~/.comet.config.
- ``clearml``: ``CLEARML_OFFLINE_MODE`` true, ``CLEARML_API_ACCESS_KEY`` or ``CLEARML_CONFIG_FILE`` set, or a
  ~/clearml.conf (``clearml-init``).

Deciding costs no import of the tracker's library (``importlib.util.find_spec`` only); a tracker that is not
enabled is never imported. Each tracker's run id is stored in the checkpoints (plain data under
``trackers``), so ``--resume`` continues the same tracker run.
"""
from __future__ import annotations

import importlib
import importlib.util
import netrc
import os
from pathlib import Path

from utils.general import LOGGER

RESULT_KEYS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
               "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
               "x/lr0", "x/lr1", "x/lr2")
TRACKERS = ("wandb", "mlflow", "comet", "clearml")  # --track choices; module utils/loggers/<name>_logger.py, class Tracker
PIP_NAMES = {"wandb": "wandb", "mlflow": "mlflow-skinny", "comet": "comet_ml", "clearml": "clearml"}
MODULES = {"wandb": "wandb", "mlflow": "mlflow", "comet": "comet_ml", "clearml": "clearml"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module whose __spec__ is None (a stand-in in sys.modules)
        return False


def _wandb_logged_in() -> bool:
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def clearml_offline(env=None) -> bool:
    """Whether ``CLEARML_OFFLINE_MODE`` asks for ClearML's offline mode (the values ClearML reads as true)."""
    env = os.environ if env is None else env
    return env.get("CLEARML_OFFLINE_MODE", "").strip().lower() in ("1", "true", "yes", "on", "y")


def configured(name: str, env=None) -> bool:
    """Whether the user configured tracker ``name`` through its own settings (see the module docstring)."""
    env = os.environ if env is None else env
    if name == "wandb":
        mode = env.get("WANDB_MODE", "").lower()
        if mode == "disabled" or env.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
            return False
        return mode in ("online", "offline") or bool(env.get("WANDB_API_KEY")) or _wandb_logged_in()
    if name == "mlflow":
        return bool(env.get("MLFLOW_TRACKING_URI"))
    if name == "comet":
        return (bool(env.get("COMET_API_KEY")) or env.get("COMET_MODE", "").lower() == "offline"
                or (Path.home() / ".comet.config").is_file())
    if name == "clearml":
        return (clearml_offline(env) or bool(env.get("CLEARML_API_ACCESS_KEY") or env.get("CLEARML_CONFIG_FILE"))
                or (Path.home() / "clearml.conf").is_file())
    raise ValueError(f"unknown tracker {name!r}; trackers are {', '.join(TRACKERS)}")


def check_trackers(requested) -> None:
    """Refuse ``--track NAME`` for a library that is not installed, before any work."""
    for name in requested:
        if not installed(MODULES[name]):
            raise ValueError(f"--track {name}: the {MODULES[name]} package is not installed "
                             f"(pip install {PIP_NAMES[name]})")


def enabled_trackers(requested=()) -> list[str]:
    """The trackers this run logs to: those requested, and those installed and configured."""
    check_trackers(requested)
    return [t for t in TRACKERS if t in requested or (installed(MODULES[t]) and configured(t))]


class Loggers:
    """The loggers of one run (rank 0): what they registered, and the tracker run ids for checkpoints."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def run_ids(self) -> dict:
        return {t.name: t.run_id for t in self.trackers if t.run_id}


def attach_loggers(callbacks, save_dir: Path, params: dict, ckpt: dict | None, requested=()) -> Loggers:
    """Register results.csv, TensorBoard and the enabled trackers on ``callbacks``. ``params`` (options and
    hyperparameters) is what trackers record as the run's configuration; ``ckpt`` is the checkpoint a resumed
    run continues from (its epoch and tracker run ids)."""
    from utils.loggers.files import CSVLogger, TensorBoardLogger

    start_epoch = int(ckpt["epoch"]) + 1 if ckpt is not None else 0
    loggers = [CSVLogger(save_dir, RESULT_KEYS, start_epoch, resumed=ckpt is not None),
               TensorBoardLogger(save_dir, RESULT_KEYS)]
    trackers = []
    resume_ids = dict((ckpt or {}).get("trackers") or {})
    for name in enabled_trackers(requested):
        cls = importlib.import_module(f"utils.loggers.{name}_logger").Tracker
        trackers.append(cls(save_dir, params, RESULT_KEYS, resume_id=resume_ids.get(name)))
        resuming = f" (continuing run {resume_ids[name]})" if name in resume_ids else ""
        LOGGER.info(f"{name}: logging this run{resuming}")
    for logger in loggers + trackers:
        for hook in ("on_train_start", "on_fit_epoch_end", "on_train_end", "teardown"):
            if hasattr(logger, hook):
                callbacks.register_action(hook, type(logger).__name__, getattr(logger, hook))
    return Loggers(trackers)
