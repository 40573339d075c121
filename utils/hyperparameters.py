"""The hyperparameters training reads, in one table, and the check of a hyp file against it.

``REQUIRED`` keys are read unconditionally (the optimizer and LR schedule in utils/training/trainer.py, the loss in
utils/training/loss.py and utils/training/loss_ota.py), so a hyp file must set them; ``DEFAULTS`` are read with a default (the
augmentations, the nominal batch size, focal loss, anchors). ``check_hyp`` refuses any other key, but for
``NO_EFFECT``'s (read by nothing; YOLOv5's and YOLOv7's files carry them) and ``OFF_ONLY``'s at 0. The readers
take their defaults from here and ``tests/test_config_checks.py`` scans the code for every key read, so the table
and the code cannot drift.
"""
from __future__ import annotations

import difflib

from utils.general import LOGGER, excerpt, is_number

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

# YOLOv5 hyp.scratch-low's augmentation values: the dataset uses them for keys a hyp dict leaves out. YOLOv7's two
# are off, as in YOLOv5: mosaic9 (the share of mosaics made of 9 images) and paste_in (its paste-in probability)
AUGMENTATION_DEFAULTS: dict[str, float] = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5,
    "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0,
    "mosaic9": 0.0, "paste_in": 0.0,
}

DEFAULTS: dict[str, float | None] = {
    **AUGMENTATION_DEFAULTS,
    "nbs": 64,  # nominal batch size: gradients accumulate up to it
    "fl_gamma": 0.0,  # focal loss gamma (0: plain BCE)
    "label_smoothing": 0.0,  # set by train.py's --label-smoothing into the loss's copy
    "loss_ota": 0,  # 1: YOLOv7's OTA assignment
    "anchors": None,  # anchors per level for a config without its own (AutoAnchor computes them)
}


# Keys YOLOv5's and YOLOv7's hyp files carry that nothing here reads: accepted with a log line that they do nothing
NO_EFFECT: dict[str, str] = {
    "iou_t": "no loss reads it (nor in YOLOv5 v7.0 or YOLOv7): targets match anchors by anchor_t",
}
# Keys accepted only at 0 (off), with why any other value is refused
OFF_ONLY: dict[str, str] = {
    "copy_paste": "segment copy-paste needs polygon (segment) labels, which this project does not load",
    "label_smoothing": "train.py sets it from --label-smoothing; a hyp file's value would be overridden",
}
YOLOV7_MOSAIC9 = 0.2  # YOLOv7's share of 9-image mosaics, for its hyp files (with paste_in) that do not say mosaic9
KNOWN = {**REQUIRED, **DEFAULTS, **NO_EFFECT, **OFF_ONLY}


def check_hyp(hyp, source) -> dict:
    """A copy of ``hyp`` if it is a dict of numbers with every ``REQUIRED`` key and no other key than ``KNOWN``
    ones, else a ``ValueError`` naming what is unknown, missing, not a number or not supported (``source``: the
    file, for the message). A YOLOv7 file (it sets paste_in) without mosaic9 gets YOLOv7's ``YOLOV7_MOSAIC9``."""
    if not isinstance(hyp, dict):
        raise ValueError(f"{source}: a hyperparameter file is a mapping of names to numbers, got {excerpt(hyp)}")
    unknown = [k for k in hyp if k not in KNOWN]
    if unknown:
        raise ValueError(f"{source}: unknown hyperparameters: {', '.join(map(_with_nearest, unknown))}; nothing "
                         f"reads them. Known: {', '.join(sorted(KNOWN))}")
    require(hyp, REQUIRED, source)
    not_numbers = [f"{k}: {excerpt(v, 40)}" for k, v in hyp.items() if not is_number(v)]
    if not_numbers:
        raise ValueError(f"{source}: hyperparameters must be numbers; not numbers: {', '.join(not_numbers)}")
    refused = [f"{k}: {hyp[k]} ({OFF_ONLY[k]})" for k in OFF_ONLY if hyp.get(k, 0) != 0]
    if refused:
        raise ValueError(f"{source}: hyperparameters supported only at 0 (off): {'; '.join(refused)}")
    for k in NO_EFFECT:
        if k in hyp:
            LOGGER.info(f"{source}: {k} has no effect: {NO_EFFECT[k]}")
    hyp = dict(hyp)
    if "paste_in" in hyp and "mosaic9" not in hyp:
        hyp["mosaic9"] = YOLOV7_MOSAIC9
        LOGGER.info(f"{source}: a YOLOv7 hyp file (it sets paste_in) without mosaic9: using YOLOv7's "
                    f"mosaic9 {YOLOV7_MOSAIC9} (the share of 9-image mosaics); set mosaic9 to choose")
    return hyp


def _with_nearest(key) -> str:
    """``key``, and the known key it is likely a misspelling of, if any."""
    near = difflib.get_close_matches(str(key), KNOWN, n=1)
    return f"{key!r} (did you mean {near[0]!r}?)" if near else repr(key)


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
