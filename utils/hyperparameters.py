"""The hyperparameters training reads, in one table, and the check of a hyp file against it.

``REQUIRED`` keys are read unconditionally (the optimizer and LR schedule in utils/training/trainer.py, the loss in
utils/training/loss.py and utils/training/loss_ota.py), so a hyp file must set them; ``DEFAULTS`` are read with a default (the
augmentations, the nominal batch size, focal loss, anchors). The readers take their defaults from here and
``tests/test_config_checks.py`` scans the code for every key read, so the table and the code cannot drift.
"""
from __future__ import annotations

from utils.general import excerpt, is_number

LOSS_KEYS = ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t")  # ComputeLoss checks its hyp has these

REQUIRED: dict[str, str] = {
    "lr0": "initial learning rate",
    "lrf": "final learning rate as a fraction of lr0",
    "momentum": "SGD momentum / Adam beta1",
    "weight_decay": "optimizer weight decay",
    "warmup_epochs": "warmup length in epochs",
    "warmup_momentum": "momentum at the start of warmup",
    "warmup_bias_lr": "bias learning rate at the start of warmup",
    "box": "box loss gain",
    "obj": "objectness loss gain",
    "cls": "class loss gain",
    "cls_pw": "class BCE positive weight",
    "obj_pw": "objectness BCE positive weight",
    "anchor_t": "anchor-matching ratio threshold",
}

# YOLOv5 hyp.scratch-low's augmentation values: the dataset uses them for keys a hyp dict leaves out
AUGMENTATION_DEFAULTS: dict[str, float] = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5,
    "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0,
}

DEFAULTS: dict[str, float | None] = {
    **AUGMENTATION_DEFAULTS,
    "nbs": 64,  # nominal batch size: gradients accumulate up to it
    "fl_gamma": 0.0,  # focal loss gamma (0: plain BCE)
    "label_smoothing": 0.0,  # set by train.py's --label-smoothing into the loss's copy
    "loss_ota": 0,  # 1: YOLOv7's OTA assignment
    "anchors": None,  # anchors per level for a config without its own (AutoAnchor computes them)
}


def check_hyp(hyp, source) -> dict:
    """``hyp`` if it is a dict of numbers with every ``REQUIRED`` key, else a ``ValueError`` naming what is
    missing or not a number (``source``: the file, for the message)."""
    if not isinstance(hyp, dict):
        raise ValueError(f"{source}: a hyperparameter file is a mapping of names to numbers, got {excerpt(hyp)}")
    require(hyp, REQUIRED, source)
    not_numbers = [f"{k}: {excerpt(v, 40)}" for k, v in hyp.items() if not is_number(v)]
    if not_numbers:
        raise ValueError(f"{source}: hyperparameters must be numbers; not numbers: {', '.join(not_numbers)}")
    return hyp


def require(hyp: dict, keys, source) -> dict:
    """``hyp`` if it has ``keys``, else a ``ValueError`` naming each missing key with what it does (``source``: the
    file, or the class a library caller built, for the message). The one missing-key check: ``check_hyp``
    applies it to a file with ``REQUIRED``, the losses to the dict they are given with ``LOSS_KEYS``."""
    missing = [k for k in keys if k not in hyp]
    if missing:
        listed = ", ".join(f"{k} ({REQUIRED[k]})" if k in REQUIRED else k for k in missing)
        raise ValueError(f"{source} lacks hyperparameters the training reads: {listed}; add them (the values in "
                         f"data/hyps/hyp.scratch-low.yaml are YOLOv5's defaults)")
    return hyp
