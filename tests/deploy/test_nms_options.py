"""export.py --topk-per-class, --topk-all and --agnostic-nms: they change what the --nms graph keeps (checked on
its outputs and, by the export's own verification, against non_max_suppression), and need --nms."""
from __future__ import annotations

import shutil

import pytest
import torch

import export
from helpers import detecting_checkpoint
from utils.deploy.backends import load_backend
from utils.ops import box_iou

IMGSZ, CONF = 96, 0.01


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The same 3-class checkpoint exported with --nms four ways: {name: (num, boxes, scores, classes) of 2 images}."""
    d = tmp_path_factory.mktemp("nms_options")
    src = detecting_checkpoint(d / "src.pt", 5)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    outs = {}
    for name, options in {"default": {}, "per_class": dict(topk_per_class=2), "all": dict(topk_all=4),
                          "agnostic": dict(agnostic_nms=True)}.items():
        weights = shutil.copy(src, d / f"{name}.pt")
        (result,) = export.run(weights=weights, include=["onnx"], imgsz=IMGSZ, batch_size=2, nms=True,
                               conf_thres=CONF, iou_thres=0.45, **options)
        assert result.ok, result.error  # verified against non_max_suppression with the same options
        outs[name] = load_backend(result.file)(x)
    return outs


def test_topk_per_class_caps_each_class(exports):
    num, _, _, cls = exports["default"]
    capped_num, _, _, capped_cls = exports["per_class"]
    for i in range(2):
        counts = torch.bincount(cls[i, :int(num[i])].long(), minlength=3)
        capped = torch.bincount(capped_cls[i, :int(capped_num[i])].long(), minlength=3)
        assert counts.max() > 2  # the default keeps more than 2 of some class: the cap has work to do
        assert capped.tolist() == counts.clamp(max=2).tolist()


def test_topk_all_caps_the_image_and_keeps_the_best(exports):
    num, _, scores, _ = exports["default"]
    top_num, top_boxes, top_scores, _ = exports["all"]
    assert top_boxes.shape == (2, 4, 4) and (num > 4).all() and (top_num == 4).all()
    torch.testing.assert_close(top_scores, scores[:, :4])


def test_agnostic_nms_merges_overlapping_boxes_of_different_classes(exports):
    def overlapping_pairs(out, i):
        n = int(out[0][i])
        iou = box_iou(out[1][i, :n], out[1][i, :n]).triu(1)
        other_class = out[3][i, :n, None] != out[3][i, None, :n]
        return int(((iou > 0.45) & other_class).sum()), n

    for i in range(2):
        per_class_pairs, n = overlapping_pairs(exports["default"], i)
        agnostic_pairs, n_agnostic = overlapping_pairs(exports["agnostic"], i)
        assert per_class_pairs > 0 and agnostic_pairs == 0 and n_agnostic < n


@pytest.mark.parametrize("options, message", [
    (dict(topk_all=10), "--topk-all configure the NMS inside the graph: add --nms"),
    (dict(agnostic_nms=True, topk_per_class=5), "add --nms"),
    (dict(nms=True, agnostic_nms=True, topk_per_class=5), "--topk-per-class does not apply with --agnostic-nms"),
    (dict(nms=True, topk_per_class=0), "--topk-per-class must be >= 1, got topk_per_class=0"),
    (dict(nms=True, topk_all=50, max_det=100), "--topk-all 50 and --max-det 100 both set"),
])
def test_nms_options_are_refused_without_nms_or_when_contradictory(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        export.run(weights=tmp_path / "never_read.pt", include=["onnx"], **options)


def test_cli_parses_the_nms_options():
    opt = export.parse_opt(["--weights", "a.pt", "--nms", "--topk-per-class", "7", "--topk-all", "9", "--agnostic-nms"])
    assert (opt.topk_per_class, opt.topk_all, opt.agnostic_nms) == (7, 9, True)
