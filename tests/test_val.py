"""val.py end to end on a real checkpoint and real images (coco128), and on the tiny shapes set."""
from __future__ import annotations

import json

import pytest
import torch

import utils.ops
import val
from conftest import COCO128_YAML
from utils.checkpoint import load_model, save_checkpoint
from utils.ops import non_max_suppression, realtime_nms_budget


@pytest.mark.slow
def test_val_cli_path_with_json_txt_and_plots(coco128_run, tmp_path, yolo_logs):
    best = coco128_run / "weights" / "best.pt"
    # one epoch leaves scores near their prior (~1e-4): a low threshold still gives pycocotools detections
    results, maps, times = val.run(data=str(COCO128_YAML), weights=str(best), imgsz=96, batch_size=32, workers=2, conf_thres=1e-5,
                                   save_json=True, save_txt=True, save_conf=True, project=str(tmp_path), name="v")
    out = tmp_path / "v"
    assert len(results) == 7 and maps.shape == (80,) and len(times) == 3
    text = yolo_logs.text
    assert "mAP50-95" in text and "Speed:" in text and "pycocotools" in text and "Average Precision" in text
    for f in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png",
              "val_batch0_labels.jpg", "val_batch0_pred.jpg", "ground_truth.json"):
        assert (out / f).is_file(), f
    preds = json.loads((out / "best_predictions.json").read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])
    gt = json.loads((out / "ground_truth.json").read_text())
    assert len(gt["images"]) == 128 and len(gt["annotations"]) == 929
    txt = sorted((out / "labels").glob("*.txt"))
    assert txt and all(len(line.split()) == 6 for line in txt[0].read_text().splitlines())


@pytest.mark.slow
def test_folded_checkpoint_validates_like_unfolded(coco128_run, tmp_path):
    best = coco128_run / "weights" / "best.pt"
    folded = tmp_path / "best-fused.pt"
    save_checkpoint(folded, load_model(best, fuse=True))
    kw = dict(data=str(COCO128_YAML), imgsz=96, batch_size=32, workers=2, project=str(tmp_path), plots=False)
    r1, m1, _ = val.run(weights=str(best), name="a", **kw)
    r2, m2, _ = val.run(weights=str(folded), name="b", **kw)
    assert torch.load(folded, weights_only=True)["folded"]
    assert r1[:4] == pytest.approx(r2[:4], abs=1e-4)
    assert m1 == pytest.approx(m2, abs=1e-4)


class _BusyClock:
    """Stands in for utils.ops' ``time`` module: 10 s pass between any two readings, as if the machine were
    so loaded that NMS's time budget (0.5 + 0.05 * batch size seconds) always runs out."""

    def __init__(self):
        self.now = 0.0

    def time(self) -> float:
        self.now += 10.0
        return self.now


@pytest.mark.slow
def test_validation_metrics_do_not_depend_on_machine_load(coco128_run, tmp_path, monkeypatch):
    """YOLOv5's val gives up on a batch's remaining images when NMS is slow; ours scores every image."""
    kw = dict(data=str(COCO128_YAML), weights=str(coco128_run / "weights" / "best.pt"), imgsz=96, batch_size=32,
              workers=0, conf_thres=1e-5, plots=False, project=str(tmp_path))
    calm = val.run(name="calm", **kw)[0]
    monkeypatch.setattr(utils.ops, "time", _BusyClock())
    candidates = torch.cat([torch.rand(4, 20, 4) * 50 + 10, torch.full((4, 20, 2), 0.9)], 2)
    budget = realtime_nms_budget(len(candidates))  # detect.py's, as YOLOv5's val had it too
    assert [len(x) > 0 for x in non_max_suppression(candidates, time_limit=budget)] == [True, False, False, False]
    busy = val.run(name="busy", **kw)[0]
    assert calm[2] > 0 and busy == calm


def test_val_rejects_bad_cli_values():
    with pytest.raises(SystemExit):
        val.parse_opt(["--weights", "x.pt", "--conf-thres", "1.5"])
    with pytest.raises(SystemExit):
        val.parse_opt(["--weights", "x.pt", "--task", "nope"])


def test_output_to_target_shapes():
    preds = [torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.9, 2.0]]), torch.zeros((0, 6))]
    t = val.output_to_target(preds)
    assert t.shape == (1, 7)
    assert t[0].tolist() == pytest.approx([0, 2, 20, 40, 20, 40, 0.9])


@pytest.mark.slow
def test_val_runs_exported_onnx_like_the_checkpoint(coco128_run, tmp_path):
    """val.py --weights best.onnx: a dynamic export validates like the .pt; a fixed one at its own size."""
    import shutil

    import export

    best = tmp_path / "best.pt"
    shutil.copy(coco128_run / "weights" / "best.pt", best)
    kw = dict(data=str(COCO128_YAML), imgsz=96, batch_size=32, workers=2, project=str(tmp_path), plots=False,
              conf_thres=1e-5)
    ref, _, _ = val.run(weights=str(best), name="pt", **kw)
    [dynamic] = export.run(weights=str(best), include=("onnx",), imgsz=(96, 96), dynamic=True)
    assert dynamic.ok, dynamic.error
    got, _, _ = val.run(weights=str(dynamic.file), name="onnx", **kw)
    # mAPs only: P and R sit at the best-F1 threshold, which jumps between near-tied scores of this barely
    # trained model; the exported outputs themselves are compared numerically in test_export.py
    assert got[2:4] == pytest.approx(ref[2:4], abs=1e-3)
    fixed_dir = tmp_path / "fixed"
    fixed_dir.mkdir()
    shutil.copy(best, fixed_dir / "best.pt")
    [fixed] = export.run(weights=str(fixed_dir / "best.pt"), include=("onnx",), imgsz=(96, 96))
    assert fixed.ok, fixed.error
    results, _, _ = val.run(weights=str(fixed.file), name="fixed", **kw)  # batch 1 at 96x96, no error
    assert len(results) == 7
