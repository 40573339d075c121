"""utils/evaluation/metrics.py against the real pycocotools on coco128's labels, plus edge cases and speed."""
from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COCO128_YAML
from utils.general import LOGGER
from utils.evaluation.metric_plots import plot_confusion_matrix, plot_metric_curves
from utils.evaluation.metrics import ConfusionMatrix, evaluate_detections, fitness

COCO128 = COCO128_YAML.parent
NC = 80


def _load_coco128() -> list[np.ndarray]:
    """coco128 train labels as pixel rows [cls, x1, y1, x2, y2], one array per image (sorted by name).

    Images without a label file are kept as images without objects.
    """
    out = []
    for img in sorted((COCO128 / "images" / "train2017").glob("*.jpg")):
        w, h = Image.open(img).size
        lbl = COCO128 / "labels" / "train2017" / (img.stem + ".txt")
        a = np.loadtxt(lbl, ndmin=2).reshape(-1, 5) if lbl.exists() else np.zeros((0, 5))
        xyxy = np.stack([(a[:, 1] - a[:, 3] / 2) * w, (a[:, 2] - a[:, 4] / 2) * h,
                         (a[:, 1] + a[:, 3] / 2) * w, (a[:, 2] + a[:, 4] / 2) * h], 1)
        out.append(np.concatenate([a[:, :1], xyxy], 1))
    return out


@pytest.fixture(scope="module")
def gts() -> list[np.ndarray]:
    if not COCO128.exists():
        pytest.skip("coco128 not available")
    return _load_coco128()


def _jitter(rng, boxes: np.ndarray, sigma: float) -> np.ndarray:
    """Move corners by noise proportional to box size; keep boxes valid."""
    wh = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, 1)
    out = boxes + rng.normal(0, sigma, boxes.shape) * wh
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1.0)
    return out


def _fake_predictions(gts, seed: int, quantize: bool = False) -> list[np.ndarray]:
    """Noisy detector: jitter, drops, duplicates, class swaps and random false boxes with random scores.

    At most 100 detections per image, so pycocotools' default maxDets=100 keeps them all.
    """
    rng = np.random.default_rng(seed)
    preds = []
    for t in gts:
        keep = t[rng.random(len(t)) > 0.15]  # ~15% missed
        boxes = _jitter(rng, keep[:, 1:5], 0.08)
        cls = keep[:, 0].copy()
        swap = rng.random(len(cls)) < 0.07
        cls[swap] = rng.integers(0, NC, swap.sum())
        conf = rng.uniform(0.2, 1.0, len(cls))
        dup = rng.random(len(keep)) < 0.15  # duplicates compete for the same GT
        d_boxes, d_cls, d_conf = _jitter(rng, boxes[dup], 0.05), cls[dup], rng.uniform(0.05, 0.9, dup.sum())
        n_false = rng.poisson(3)
        x1y1 = rng.uniform(0, 500, (n_false, 2))
        f_boxes = np.concatenate([x1y1, x1y1 + rng.uniform(5, 200, (n_false, 2))], 1)
        f_cls, f_conf = rng.integers(0, NC, n_false).astype(float), rng.uniform(0.0, 0.8, n_false)
        p = np.concatenate([np.column_stack([b, s, c]) for b, s, c in
                            ((boxes, conf, cls), (d_boxes, d_conf, d_cls), (f_boxes, f_conf, f_cls))])
        if quantize:  # many exact score ties, within and across images
            p[:, 4] = np.round(p[:, 4], 1)
        p = p[rng.permutation(len(p))]
        preds.append(p[np.argsort(-p[:, 4], kind="stable")[:100]] if len(p) > 100 else p)  # like NMS max_det
    return preds


def _pycocotools(gts, preds):
    """COCOeval bbox stats on the same boxes, default params (the inputs have <= 100 detections per image).
    Imported here: the module's other tests (and its collection, on a machine without pycocotools) need none."""
    COCO = pytest.importorskip("pycocotools.coco").COCO
    COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    images = [{"id": i + 1, "width": 1000, "height": 1000} for i in range(len(gts))]
    anns, dets = [], []
    for i, (t, p) in enumerate(zip(gts, preds)):
        for c, x1, y1, x2, y2 in t:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for x1, y1, x2, y2, s, c in p:
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(NC)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _coco_per_class_ap(ev) -> np.ndarray:
    """(classes with GT, thresholds) AP from pycocotools' precision array (area 'all', maxDets 100)."""
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    present = (prec > -1).all((0, 1))
    return prec[:, :, present].mean(1).T


@pytest.mark.parametrize("seed,quantize", [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_matches_pycocotools(gts, seed, quantize):
    preds = _fake_predictions(gts, seed, quantize)
    ours = evaluate_detections(preds, gts, NC)
    ev = _pycocotools(gts, preds)
    stats = ev.stats
    d50, d = abs(ours["map50"] - stats[1]), abs(ours["map"] - stats[0])
    LOGGER.info(f"seed {seed}: map50 {ours['map50']:.6f} vs {stats[1]:.6f}, map {ours['map']:.6f} vs {stats[0]:.6f}")
    assert 0.2 < stats[0] < 0.95  # the fake detector is neither useless nor perfect
    assert d50 < 0.01 and d < 0.01
    assert d50 < 1e-9 and d < 1e-9, (d50, d)  # in practice the implementations agree to rounding
    np.testing.assert_allclose(ours["ap"], _coco_per_class_ap(ev), rtol=0, atol=1e-9)  # every class, every IoU
    assert abs(ours["map75"] - stats[2]) < 1e-9


def test_chunked_matching_gives_the_same_result(gts, monkeypatch):
    """Images are matched in padded chunks; tiny chunks must not change anything."""
    import utils.evaluation.metrics as metrics_mod

    preds = _fake_predictions(gts, 11)
    whole = evaluate_detections(preds, gts, NC)
    monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMENTS", 64)
    chunked = evaluate_detections(preds, gts, NC)
    np.testing.assert_array_equal(whole["ap"], chunked["ap"])


def test_matches_pycocotools_on_tensors_with_empty_images(gts):
    """Tensors in, images without labels or without detections, and classes nobody predicted."""
    preds = _fake_predictions(gts, 7)
    gts = [g.copy() for g in gts]
    for i in range(0, len(gts), 9):
        gts[i] = np.zeros((0, 5))  # image without labels (detections there are false positives)
    for i in range(3, len(preds), 11):
        preds[i] = np.zeros((0, 6))
    ours = evaluate_detections([torch.from_numpy(p).float() for p in preds], [torch.from_numpy(g) for g in gts], NC)
    stats = _pycocotools(gts, [p.astype(np.float32).astype(np.float64) for p in preds]).stats
    assert abs(ours["map50"] - stats[1]) < 1e-9 and abs(ours["map"] - stats[0]) < 1e-9


def test_perfect_predictions_give_exactly_one(gts):
    preds = [np.column_stack([g[:, 1:5], np.linspace(0.9, 0.5, len(g)), g[:, 0]]) for g in gts]
    r = evaluate_detections(preds, gts, NC)
    assert r["map"] == 1.0 and r["map50"] == 1.0 and r["map75"] == 1.0
    assert r["precision"] == pytest.approx(1.0) and r["recall"] == pytest.approx(1.0)
    assert np.all(r["ap"] == 1.0)
    assert r["nt"].sum() == sum(len(g) for g in gts)
    assert set(r["classes"]) == set(np.concatenate(gts)[:, 0].astype(int))


def test_no_predictions_give_zero(gts):
    r = evaluate_detections([np.zeros((0, 6))] * len(gts), gts, NC)
    assert r["map"] == 0.0 and r["map50"] == 0.0 and r["precision"] == 0.0 and r["recall"] == 0.0
    assert r["ap"].shape == (len(r["classes"]), 10)


def test_no_ground_truth_at_all():
    preds = [np.array([[0, 0, 10, 10, 0.9, 1]])]
    r = evaluate_detections(preds, [np.zeros((0, 5))], nc=3)
    assert r["map"] == 0.0 and len(r["classes"]) == 0 and r["ap"].shape == (0, 10)


def test_class_without_ground_truth_is_not_counted():
    gt = [np.array([[0, 10, 10, 50, 50]], dtype=float)]
    good = np.array([[10, 10, 50, 50, 0.9, 0]])
    other_class = np.array([[100, 100, 150, 150, 0.95, 2]])  # class 2 has no GT anywhere
    r = evaluate_detections([np.concatenate([good, other_class])], gt, nc=3)
    assert r["map"] == 1.0 and list(r["classes"]) == [0]


def test_duplicate_is_false_positive_and_tie_break():
    """Two detections on one GT: the higher score is TP, the other FP; precision envelope handles it."""
    gt = [np.array([[0, 0, 0, 100, 100]], dtype=float)]
    pred = [np.array([[0, 0, 100, 100, 0.8, 0], [0, 0, 100, 100, 0.9, 0]])]
    r = evaluate_detections(pred, gt, nc=1)
    assert r["map"] == 1.0  # TP ranked first: recall 1 reached at precision 1
    pred = [np.array([[0, 0, 100, 100, 0.8, 0], [200, 200, 300, 300, 0.9, 0]])]  # FP ranked first
    r = evaluate_detections(pred, gt, nc=1)
    assert r["map"] == pytest.approx(0.5)


def test_iou_threshold_boundaries():
    """A box with IoU 0.6 counts for thresholds 0.5..0.6 only: AP 3/10 of the thresholds."""
    gt = [np.array([[0, 0, 0, 100, 100]], dtype=float)]
    pred = [np.array([[0, 0, 100, 60, 0.9, 0]])]  # IoU exactly 0.6
    r = evaluate_detections(pred, gt, nc=1)
    assert r["ap"][0].tolist() == [1.0, 1.0, 1.0] + [0.0] * 7
    assert r["map50"] == 1.0 and r["map75"] == 0.0 and r["map"] == pytest.approx(0.3)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="class ids"):
        evaluate_detections([np.array([[0, 0, 1, 1, 0.5, 5]])], [np.zeros((0, 5))], nc=3)
    with pytest.raises(ValueError, match="entries"):
        evaluate_detections([np.zeros((0, 6))], [], nc=3)
    with pytest.raises(ValueError, match="iou_thresholds"):
        evaluate_detections([np.zeros((0, 6))], [np.zeros((0, 5))], nc=3, iou_thresholds=[1.5])


def test_curves_and_plots(gts, tmp_path):
    r = evaluate_detections(_fake_predictions(gts, 0), gts, NC)
    n = len(r["classes"])
    assert r["p_curve"].shape == r["r_curve"].shape == r["f1_curve"].shape == (n, 1000)
    assert r["pr_curve"].shape == (n, 101) and r["ap50"].shape == (n,)
    np.testing.assert_allclose(r["pr_curve"].mean(1), r["ap50"])  # AP50 is the mean of the PR samples
    assert 0 < r["conf_threshold"] < 1 and 0 < r["f1"] <= 1
    paths = plot_metric_curves(r, tmp_path, names={i: f"c{i}" for i in range(NC)})
    assert sorted(p.name for p in paths) == ["F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_speed_5000_images():
    """5,000 images x 100 detections x ~7 GT over 80 classes must take seconds."""
    rng = np.random.default_rng(0)
    preds, targets = [], []
    for _ in range(5000):
        n_gt = rng.integers(1, 14)
        xy = rng.uniform(0, 560, (n_gt, 2))
        g = np.column_stack([rng.integers(0, NC, n_gt), xy, xy + rng.uniform(10, 80, (n_gt, 2))])
        near = g[rng.integers(0, n_gt, 60)]
        near_boxes = _jitter(rng, near[:, 1:5], 0.1)
        xy = rng.uniform(0, 560, (40, 2))
        far_boxes = np.concatenate([xy, xy + rng.uniform(10, 80, (40, 2))], 1)
        boxes = np.concatenate([near_boxes, far_boxes])
        cls = np.concatenate([near[:, 0], rng.integers(0, NC, 40)])
        preds.append(np.column_stack([boxes, rng.random(100), cls]))
        targets.append(g)
    t0 = time.perf_counter()
    r = evaluate_detections(preds, targets, NC)
    dt = time.perf_counter() - t0
    LOGGER.info(f"evaluate_detections: 5000 images x 100 detections in {dt:.2f} s")
    assert dt < 30
    assert 0 < r["map"] < 1


def test_confusion_matrix_hand_case(tmp_path):
    cm = ConfusionMatrix(nc=3, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [2, 50, 50, 60, 60]], dtype=torch.float32)
    dets = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],  # correct class 0
        [20, 20, 30, 31, 0.8, 2],  # on the class-1 label, predicted 2
        [0, 0, 10, 9, 0.7, 0],  # duplicate of the first: background FP
        [80, 80, 90, 90, 0.6, 1],  # nothing there: background FP
        [50, 50, 60, 60, 0.1, 2],  # below conf: ignored, so label 2 is missed
    ])
    cm.process_batch(dets, labels)
    expected = np.zeros((4, 4))
    expected[0, 0] = 1
    expected[2, 1] = 1
    expected[0, 3] = 1
    expected[1, 3] = 1
    expected[3, 2] = 1
    np.testing.assert_array_equal(cm.matrix, expected)
    cm.process_batch(None, labels[:1])  # no detections: every label missed
    cm.process_batch(dets[3:4], torch.zeros((0, 5)))  # no labels: every detection a false alarm
    expected[3, 0] += 1
    expected[1, 3] += 1
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    np.testing.assert_array_equal(tp, [1, 0, 0])
    np.testing.assert_array_equal(fp, [1, 2, 1])
    path = plot_confusion_matrix(cm.matrix, tmp_path, names=["a", "b", "c"])
    assert path.name == "confusion_matrix.png" and path.stat().st_size > 0


def test_fitness():
    x = np.array([[0.5, 0.4, 0.6, 0.3], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(fitness(x), [0.1 * 0.6 + 0.9 * 0.3, 1.0])
    assert fitness([0.9, 0.9, 0.5, 0.2]) == pytest.approx(0.23)
