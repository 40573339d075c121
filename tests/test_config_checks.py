"""Malformed model configs and hyperparameter files fail when the model is built (or the run is prepared),
with the layer or key named, before train.py creates a run folder."""
from __future__ import annotations

import ast
import copy
import logging

import numpy as np
import pytest
import yaml

from conftest import ROOT
from models.yolo import Model, check_model_config
from utils.hyperparameters import DEFAULTS, KNOWN, NO_EFFECT, OFF_ONLY, REQUIRED, YOLOV7_MOSAIC9, check_hyp
from utils.training.evolve import MUTATION_BOUNDS, RESULT_COLUMNS, evolvable_keys, mutate

BASE = {
    "nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30], [30, 61, 62, 45]],
    "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]]],
    "head": [[[0, 1], 1, "Detect", ["nc", "anchors"]]],
}


def cfg(**changes) -> dict:
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def backbone(*rows) -> dict:
    """BASE with other backbone rows before its two Conv layers (so the head still reads layers -2 and -1)."""
    head = [[[-2, -1], 1, "Detect", ["nc", "anchors"]]]
    return cfg(backbone=[*rows, [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]]], head=head)


# (config, the message's pattern): every one of these built in the parser and failed in the first forward, or
# trained on nonsense (zero or negative anchors)
MALFORMED = {
    "width 0": (cfg(width_multiple=0), r"'width_multiple' must be a positive number.*got 0"),
    "depth -1": (cfg(depth_multiple=-1), r"'depth_multiple' must be a positive number.*got -1"),
    "anchors []": (cfg(anchors=[]), r"'anchors' must be a non-empty list"),
    "anchors [[]]": (cfg(anchors=[[], []]), r"'anchors': level 0 must be a non-empty list"),
    "anchors count 0": (cfg(anchors=0), r"'anchors' must be an anchor count per level >= 1.*got 0"),
    "negative anchor": (cfg(anchors=[[10, -13, 16, 30], [30, 61, 62, 45]]), r"level 0 has \[-13\].*positive"),
    "zero anchor": (cfg(anchors=[[10, 13, 16, 30], [0, 61, 62, 45]]), r"level 1 has \[0\].*positive"),
    "uneven levels": (cfg(anchors=[[10, 13, 16, 30], [30, 61]]), r"same number of anchors; level 0 has 2, level 1"),
    "fewer anchor levels": (cfg(anchors=[[10, 13, 16, 30]]), r"layer 2 .*Detect.*2 input layers but 1 anchor level;"),
    "more anchor levels": (cfg(head=[[[1], 1, "Detect", ["nc", "anchors"]]]),
                           r"layer 2 .*Detect.*1 input layer but 2 anchor levels;"),
    "MP fed two": (backbone([-1, 1, "Conv", [8, 3, 1]], [-1, 1, "Conv", [8, 3, 1]], [[-1, -2], 1, "MP", []]),
                   r"layer 2 .*'MP'.*MP takes one input, got 'from' \[-1, -2\]"),
    "empty head": (cfg(head=[]), r"last layer must be a head \(Detect or IDetect or IAuxDetect\), but layer 1 is Conv"),
    "head not last": (cfg(head=[[[0, 1], 1, "Detect", ["nc", "anchors"]], [-1, 1, "Conv", [8]]]),
                      r"layer 2 is a Detect before the last layer"),
    "kernel 0": (backbone([-1, 1, "Conv", [8, 0, 1]]), r"layer 0 .*Conv argument 'k' must be positive, got 0"),
    "stride 0": (backbone([-1, 1, "RepVGGBlock", [8, 3, 0]]), r"layer 0 .*RepVGGBlock argument 's' must be positive"),
    "SPPF kernel 0": (backbone([-1, 1, "SPPF", [8, 0]]), r"layer 0 .*SPPF argument 'k' must be positive"),
    "MaxPool kernel 0": (backbone([-1, 1, "nn.MaxPool2d", [0]]), r"layer 0 .*MaxPool2d argument 'kernel_size'"),
    "Upsample scale 0": (backbone([-1, 1, "nn.Upsample", [None, 0, "nearest"]]),
                         r"layer 0 .*'nn.Upsample'.*Upsample argument 'scale_factor' must be positive, got 0"),
    "Upsample no size": (backbone([-1, 1, "nn.Upsample", [None, None, "nearest"]]),
                         r"layer 0 \(nn.Upsample.*fails on inputs of shape \(1, 3, 256, 256\).*size or scale_factor"),
    "Concat of two sizes": (backbone([-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [8, 3, 2]], [[-1, -2], 1, "Concat", [1]]),
                            r"layer 2 \(Concat.*\(1, 8, 64, 64\), \(1, 8, 128, 128\).*Sizes of tensors must match"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_config_is_refused_when_built_with_the_layer_named(name):
    config, message = MALFORMED[name]
    with pytest.raises(ValueError, match=message):
        Model(copy.deepcopy(config))
    with pytest.raises(ValueError, match=message):  # the same check without allocating a model (train.py's)
        check_model_config(copy.deepcopy(config))


def test_valid_configs_pass_the_check():
    for f in sorted((ROOT / "models").glob("*.yaml")):
        check_model_config(f.name)
    assert Model(cfg()).stride.tolist() == [2.0, 4.0]


def _write(tmp_path, name: str, content: dict):
    f = tmp_path / name
    f.write_text(yaml.safe_dump(content))
    return str(f)


@pytest.mark.parametrize("bad", ["width 0", "Concat of two sizes", "hyp without cls_pw"])
def test_train_refuses_a_bad_config_or_hyp_before_creating_a_run_folder(bad, tiny_data, tmp_path):
    import train

    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
    options = {"cfg": "yolov5n.yaml"}
    if bad.startswith("hyp"):
        del hyp["cls_pw"]
        message = r"lacks hyperparameters the training reads: cls_pw \(class BCE positive weight\)"
    else:
        options["cfg"] = _write(tmp_path, "bad.yaml", MALFORMED[bad][0])
        message = MALFORMED[bad][1]
    project = tmp_path / "runs"
    with pytest.raises(ValueError, match=message):
        train.run(data=str(tiny_data), hyp=_write(tmp_path, "hyp.yaml", hyp), epochs=1, imgsz=64, batch_size=4,
                  workers=0, project=str(project), name="exp", noplots=True, **options)
    assert not project.exists()


def test_every_hyp_file_passes_and_missing_keys_are_listed(tmp_path):
    files = sorted((ROOT / "data" / "hyps").glob("*.yaml"))
    assert {"hyp.scratch.p5.yaml", "hyp.scratch.tiny.yaml"} <= {f.name for f in files}  # YOLOv7's too
    for f in files:
        check_hyp(yaml.safe_load(f.read_text()), f.name)
    with pytest.raises(ValueError, match=r"h.yaml lacks hyperparameters the training reads: warmup_bias_lr .*, "
                                         r"obj_pw .*; add them"):
        check_hyp({k: 0.1 for k in REQUIRED if k not in ("obj_pw", "warmup_bias_lr")}, "h.yaml")



@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "true", "'0.01'"])
def test_hyp_values_that_are_not_finite_numbers_are_named(text):
    hyp = {k: 0.1 for k in REQUIRED}
    hyp["lr0"] = yaml.safe_load(text)  # what a hyp file's `lr0: .nan` reads as: training would diverge later
    with pytest.raises(ValueError, match=r"h.yaml: hyperparameters must be numbers; not numbers: lr0: "):
        check_hyp(hyp, "h.yaml")


@pytest.mark.parametrize("nc", [0, -1, 2.5, True])
def test_model_class_count_override_is_checked_not_dropped(nc):
    # nc=0 used to mean "keep the config's 80" and built a model of the wrong size
    with pytest.raises(ValueError, match=r"number of classes must be a whole number >= 1"):
        Model("yolov5n.yaml", nc=nc)

def _hyp_keys_read(path) -> set[str]:
    """Constant keys read from a hyperparameter dict in ``path``: ``hyp["k"]`` / ``self.hyp["k"]`` (loads only)
    and ``hyp.get("k")``."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            owner, key = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            owner, key = node.func.value, node.args[0]
        else:
            continue
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if name.endswith("hyp") and isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
    return keys


def test_hyp_table_matches_what_the_code_reads():
    """Every key the training code reads is in the table (required, or optional with its default), and every
    required key is read somewhere: the check and the readers cannot drift apart."""
    read = set()
    for path in [ROOT / "train.py", *sorted((ROOT / "utils").rglob("*.py"))]:
        read |= _hyp_keys_read(path)
    assert "cls_pw" in read and "degrees" in read  # the scan sees the loss and the augmentations
    assert read - set(REQUIRED) - set(DEFAULTS) == set()
    assert set(REQUIRED) - read == set()


def _code_reads() -> set[str]:
    read = set()
    for path in [ROOT / "train.py", *sorted((ROOT / "utils").rglob("*.py"))]:
        read |= _hyp_keys_read(path)
    return read


def _hyp(name: str) -> dict:
    return yaml.safe_load((ROOT / "data" / "hyps" / name).read_text())


def test_every_key_a_hyp_file_may_set_is_read_or_refused():
    """A key check_hyp accepts is read by the code, or in NO_EFFECT (accepted with a log line; read by nothing,
    really) or OFF_ONLY (refused unless 0): none is taken and silently ignored."""
    read = _code_reads()
    assert set(KNOWN) - read <= set(NO_EFFECT) | set(OFF_ONLY)
    assert not set(NO_EFFECT) & read
    assert {"mosaic9", "paste_in"} <= read


@pytest.mark.parametrize("key,message", [("mosiac", r"'mosiac' \(did you mean 'mosaic'\?\)"),
                                         ("warmup_epoch", r"'warmup_epoch' \(did you mean 'warmup_epochs'\?\)"),
                                         ("zzz", r"'zzz'; nothing reads them")])
def test_unknown_hyp_key_is_refused_naming_it(key, message):
    hyp = {**_hyp("hyp.scratch-low.yaml"), key: 1.0}
    with pytest.raises(ValueError, match=rf"h.yaml: unknown hyperparameters: {message}.*Known: anchor_t, anchors, box"):
        check_hyp(hyp, "h.yaml")


@pytest.mark.parametrize("key", ["copy_paste", "label_smoothing"])
def test_off_only_keys_are_refused_above_zero_and_accepted_at_zero(key):
    hyp = _hyp("hyp.scratch-low.yaml")
    with pytest.raises(ValueError, match=rf"h.yaml: hyperparameters supported only at 0 \(off\): {key}: 0.1 \("):
        check_hyp({**hyp, key: 0.1}, "h.yaml")
    assert check_hyp({**hyp, key: 0}, "h.yaml")[key] == 0


def test_iou_t_is_accepted_with_one_line_saying_it_has_no_effect(yolo_logs):
    check_hyp(_hyp("hyp.scratch-low.yaml"), "low.yaml")
    lines = [r.getMessage() for r in yolo_logs.records if "iou_t" in r.getMessage()]
    assert lines == ["low.yaml: iou_t has no effect: " + NO_EFFECT["iou_t"]]
    yolo_logs.clear()
    check_hyp({k: v for k, v in _hyp("hyp.scratch-low.yaml").items() if k != "iou_t"}, "low.yaml")
    assert not [r for r in yolo_logs.records if "iou_t" in r.getMessage()]


def test_yolov7_hyp_without_mosaic9_gets_yolov7_share(yolo_logs):
    """A YOLOv7 file (paste_in, no mosaic9) gets 0.2 with one info line; ours say 0.2; YOLOv5 files keep 0."""
    v7 = {k: v for k, v in _hyp("hyp.scratch.p5.yaml").items() if k != "mosaic9"}
    checked = check_hyp(v7, "their.yaml")
    assert checked["mosaic9"] == YOLOV7_MOSAIC9 == 0.2 and "mosaic9" not in v7  # the caller's dict unchanged
    lines = [r for r in yolo_logs.records if "mosaic9" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "their.yaml" in lines[0].getMessage()
    yolo_logs.clear()
    for name in ("hyp.scratch.p5.yaml", "hyp.scratch.tiny.yaml"):
        assert _hyp(name)["mosaic9"] == 0.2 and check_hyp(_hyp(name), name)["mosaic9"] == 0.2
    assert "mosaic9" not in check_hyp(_hyp("hyp.scratch-low.yaml"), "low.yaml")  # the dataset's default: 0
    assert DEFAULTS["mosaic9"] == DEFAULTS["paste_in"] == 0.0
    assert not [r for r in yolo_logs.records if "mosaic9" in r.getMessage()]


def test_evolve_mutates_only_keys_the_training_reads():
    hyp = check_hyp(_hyp("hyp.scratch.p5.yaml"), "p5.yaml")
    keys = evolvable_keys(hyp)
    assert {"mosaic9", "paste_in", "mixup", "lr0"} <= set(keys)
    assert not {"iou_t", "copy_paste", "loss_ota"} & set(keys)
    assert set(MUTATION_BOUNDS) <= _code_reads()  # nothing with mutation bounds goes unread
    parents = np.array([[0.5, 0.5, 0.4 + 0.01 * g, 0.3, 0.05, 0.05, 0.01, *(hyp[k] for k in keys)] for g in range(6)])
    assert parents.shape[1] == len(RESULT_COLUMNS) + len(keys)
    changed = set()
    for g in range(12):
        child = mutate(parents, keys, hyp, np.random.default_rng([0, g]))
        assert {k: child[k] for k in hyp if k not in keys} == {k: hyp[k] for k in hyp if k not in keys}
        changed |= {k for k in keys if child[k] != hyp[k]}
    assert {"mosaic9", "paste_in", "lr0"} <= changed
