"""ComputeLossOTA: equal to YOLOv7's own ComputeLossOTA (recorded fixture), and usable in training."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers import load_tool
from models.yolo import Model
from utils.training.loss import ComputeLoss
from utils.training.loss_ota import ComputeLossOTA, batched_box_iou, first_k_cheapest, pixel_boxes
from utils.ops import box_iou

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "yolov7_ota_reference.pt"
MATCH_KEYS = ("b", "a", "gj", "gi", "targets", "anchors")
TOOL = load_tool("make_yolov7_ota_reference")  # the seeded predictions the fixture was made from
REFERENCE = torch.load(FIXTURE, weights_only=True)


def load_hyp(**overrides) -> dict:
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    hyp.update(overrides)
    return hyp


def reference_setup(case: dict):
    """A stand-in model carrying the fixture's Detect geometry and hyp (read from ``model.hyp``, as YOLOv7
    does), the seeded predictions and the images."""
    detect = SimpleNamespace(na=3, nc=TOOL.NC, nl=3, anchors=case["anchors"], stride=case["stride"])
    model = SimpleNamespace(model=[detect], hyp=case["hyp"], gr=1.0)
    preds = TOOL.seeded_predictions(case["seed"], case["bs"], case["imgsz"], case["stride"].tolist())
    imgs = torch.zeros(case["bs"], 3, case["imgsz"], case["imgsz"])
    return model, preds, imgs


def rows(match: tuple, ordered: bool = False) -> list[tuple]:
    """One row per match: image, anchor, gj, gi, target row, anchor wh (sorted unless ``ordered``)."""
    b, a, gj, gi, tgt, anch = match
    out = [(int(b[k]), int(a[k]), int(gj[k]), int(gi[k]), *tgt[k].tolist(), *anch[k].tolist()) for k in range(len(b))]
    return out if ordered else sorted(out)


@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_equals_yolov7(name):
    case = REFERENCE["cases"][name]
    model, preds, imgs = reference_setup(case)
    assert TOOL.fingerprint(preds) == pytest.approx(case["fingerprint"], rel=1e-9)  # same inputs as recorded
    loss_fn = ComputeLossOTA(model)  # hyp from model.hyp
    loss, items = loss_fn(preds, case["targets"], imgs)
    # YOLOv7 returns a (1,) loss and a 4th item, the unscaled total; every loss here a scalar and [box, obj, cls]
    assert case["loss"].shape == (1,) and case["loss_items"].shape == (4,)
    assert loss.shape == () and items.shape == (3,)
    torch.testing.assert_close(loss.view(1), case["loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.cat((items, items.sum().view(1))), case["loss_items"], rtol=1e-5, atol=0)
    assert sum(len(m["b"]) for m in case["matches"]) > 0
    for level, (ours, ref) in enumerate(zip(loss_fn.assign(preds, case["targets"], imgs), case["matches"])):
        # the same matches in the same order (the order decides which of two targets sharing a cell sets tobj)
        assert rows(ours, ordered=True) == rows(tuple(ref[k] for k in MATCH_KEYS), ordered=True), f"level {level}"


def test_fixture_has_shared_cells_and_equal_costs():
    """The crowded case must keep exercising what the batched path treats specially: cells matched to two
    targets (last write wins) and targets whose k-th and (k+1)-th cheapest candidates tie."""
    case = REFERENCE["cases"]["crowded_96"]
    m = case["matches"][0]
    cells = list(zip(m["b"].tolist(), m["a"].tolist(), m["gj"].tolist(), m["gi"].tolist()))
    assert len(set(cells)) < len(cells)
    model, preds, imgs = reference_setup(case)
    _, _, (cand, *_), _ = ComputeLossOTA(model).build_targets(preds, case["targets"])
    assert len(set(zip(*(x.tolist() for x in cand)))) < len(cand[0])  # duplicate candidates, equal costs


def test_batched_assignment_equals_image_by_image():
    """Padding the images into one cost tensor must not let them influence each other."""
    case = REFERENCE["cases"]["focal_smooth_128"]
    model, preds, imgs = reference_setup(case)
    loss_fn = ComputeLossOTA(model)
    together = loss_fn.assign(preds, case["targets"], imgs)
    for img in range(case["bs"]):
        t = case["targets"][case["targets"][:, 0] == img].clone()
        t[:, 0] = 0
        alone = loss_fn.assign([p[img:img + 1] for p in preds], t, imgs[:1])
        for level in range(3):
            keep = together[level][0] == img
            mine = [x[keep] for x in together[level]]
            mine[0] = mine[0] * 0
            mine[4] = mine[4].clone()
            mine[4][:, 0] = 0
            assert rows(tuple(mine)) == rows(alone[level]), (img, level)


def test_fixture_targets_differ_from_plain_loss():
    """The OTA matches are a strict subset of the three-cell candidates, so the loss is not ComputeLoss's."""
    case = REFERENCE["cases"]["tiny_160"]
    model, preds, imgs = reference_setup(case)
    ota = ComputeLossOTA(model)
    _, _, candidates, _ = ota.build_targets(preds, case["targets"])
    for (b, a, gj, gi, _, _), cand in zip(ota.assign(preds, case["targets"], imgs), candidates):
        cells = set(zip(*(x.tolist() for x in cand)))
        assert set(zip(b.tolist(), a.tolist(), gj.tolist(), gi.tolist())) <= cells
        assert len(b) < len(cand[0])
    plain = ComputeLoss(model, case["hyp"])(preds, case["targets"])[1]
    assert (plain - case["loss_items"][:3]).abs().max() > 1e-3


def test_hyp_required():
    detect = SimpleNamespace(na=3, nc=2, nl=3, anchors=torch.ones(3, 3, 2), stride=torch.tensor([8.0, 16.0, 32.0]))
    with pytest.raises(ValueError, match="needs hyp"):
        ComputeLossOTA(SimpleNamespace(model=[detect]))


def test_images_required():
    case = REFERENCE["cases"]["tiny_160"]
    model, preds, _ = reference_setup(case)
    with pytest.raises(ValueError, match="needs the batch images"):
        ComputeLossOTA(model)(preds, case["targets"])


def test_pixel_boxes_use_width_and_height():
    """YOLOv7 scales x and w by the image height too; a 64x128 image shows the difference."""
    t = torch.tensor([[0, 0, 0.5, 0.5, 0.25, 0.5]])
    assert pixel_boxes(t, torch.zeros(1, 3, 64, 128)).tolist() == [[48.0, 16.0, 80.0, 48.0]]


def test_batched_box_iou_is_torchvision_per_image():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 7, 2, generator=g) * 50
    b1 = torch.cat((xy, xy + torch.rand(2, 7, 2, generator=g) * 30 + 1), -1)
    xy = torch.rand(2, 9, 2, generator=g) * 50
    b2 = torch.cat((xy, xy + torch.rand(2, 9, 2, generator=g) * 30 + 1), -1)
    out = batched_box_iou(b1, b2)
    for i in range(2):
        assert torch.equal(out[i], box_iou(b1[i], b2[i]))


def test_first_k_cheapest():
    inf = float("inf")
    cost = torch.tensor([
        [[3.0, 1.0, 2.0, 0.7, 0.5, inf], [2.0, 2.0, 2.0, 2.0, 1.0, inf]],  # image 0: 5 candidates
        [[1.0, 1.0, 1.0, 0.1, inf, inf], [9.0, 8.0, 7.0, 6.0, inf, inf]],  # image 1: 4 candidates
    ])
    k = torch.tensor([[3, 2], [2, 4]])
    chosen = first_k_cheapest(cost, k, torch.tensor([5, 4]))
    assert chosen[0, 0].int().tolist() == [0, 1, 0, 1, 1, 0]  # no tie: the 3 cheapest
    assert chosen[1, 1].int().tolist() == [1, 1, 1, 1, 0, 0]  # k = all candidates, padding never taken
    for b, t, n in ((0, 1, 5), (1, 0, 4)):  # ties at the k-th place: whatever torch.topk keeps on the row
        expected = torch.zeros(6, dtype=torch.bool)
        expected[cost[b, t, :n].topk(int(k[b, t]), largest=False).indices] = True
        assert torch.equal(chosen[b, t], expected) and chosen[b, t].sum() == k[b, t]
    assert not first_k_cheapest(cost, torch.zeros_like(k), torch.tensor([5, 4])).any()


@pytest.fixture(scope="module")
def yolov5s():
    return Model("yolov5s.yaml", nc=3).train()


def test_our_model_trains_through_it(yolov5s):
    torch.manual_seed(0)
    imgs = torch.rand(2, 3, 96, 96)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [0, 2, 0.2, 0.8, 0.1, 0.15], [1, 0, 0.9, 0.1, 0.2, 0.2]])
    yolov5s.zero_grad()
    loss, items = ComputeLossOTA(yolov5s, load_hyp())(yolov5s(imgs), targets, imgs)
    assert torch.isfinite(loss).all() and (items > 0).all()
    assert loss.item() == pytest.approx(items.sum().item() * 2, rel=1e-6)  # total times the batch size
    loss.backward()
    head = yolov5s.model[-1].m
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in head)
    assert yolov5s.model[0].conv.weight.grad.abs().sum() > 0  # through the whole network


def test_empty_targets(yolov5s):
    imgs = torch.rand(2, 3, 64, 64)
    loss, items = ComputeLossOTA(yolov5s, load_hyp())(yolov5s(imgs), torch.zeros(0, 6), imgs)
    lbox, lobj, lcls = items.tolist()
    assert lbox == 0 and lcls == 0 and lobj > 0 and loss.item() == pytest.approx(lobj * 2)
    loss.backward()
    assert yolov5s.model[-1].m[0].bias.grad.abs().sum() > 0


def test_bfloat16_predictions_give_float32_loss(yolov5s):
    imgs = torch.rand(1, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = yolov5s(imgs)
        loss, items = ComputeLossOTA(yolov5s, load_hyp())(preds, targets, imgs)
    assert preds[0].dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(items).all()


def test_train_one_epoch_with_loss_ota(tiny_data, tmp_path, monkeypatch):
    """``loss_ota: 1`` trains with ComputeLossOTA; validation still reports ComputeLoss's losses."""
    import train

    calls = {"ota": 0, "plain": 0}

    def counting(cls, key):
        original = cls.__call__

        def call(self, *args):
            calls[key] += 1
            return original(self, *args)
        monkeypatch.setattr(cls, "__call__", call)

    counting(ComputeLossOTA, "ota")
    counting(ComputeLoss, "plain")
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    hyp["loss_ota"] = 1
    hyp_file = tmp_path / "hyp.ota.yaml"
    hyp_file.write_text(yaml.safe_dump(hyp))
    results = train.run(data=str(tiny_data), cfg="yolov5s_RepVGG.yaml", hyp=str(hyp_file), imgsz=64, batch_size=8,
                        workers=0, epochs=1, project=str(tmp_path), name="exp", noplots=True)
    assert calls["ota"] == 3  # 24 images, batch 8: every training batch
    assert calls["plain"] > 0  # the validation losses
    rows_ = (tmp_path / "exp" / "results.csv").read_text().splitlines()
    train_losses = [float(x) for x in rows_[1].split(",")[1:4]]
    assert all(v > 0 for v in train_losses) and len(results) == 7


@pytest.mark.cuda
def test_on_cuda_under_autocast():
    """On CUDA, with the loss called under fp16 autocast (as the trainer does), the same values as YOLOv7's on
    the CPU. The case has no equal-cost ties, so CUDA's topk picks the same candidates."""
    case = REFERENCE["cases"]["focal_smooth_128"]
    model, preds, imgs = reference_setup(case)
    with torch.autocast("cuda", dtype=torch.float16):
        loss, items = ComputeLossOTA(model)([p.cuda() for p in preds], case["targets"], imgs.cuda())
    assert loss.device.type == "cuda" and loss.dtype == torch.float32
    torch.testing.assert_close(items.cpu(), case["loss_items"][:3], rtol=1e-5, atol=0)


@pytest.mark.skipif(not TOOL.MIRROR.is_dir(), reason="no YOLOv7 mirror to take a working copy from")
def test_reference_tool_loads_yolov7s_own_loss(tmp_path):
    # the tool imports YOLOv7's utils.loss, not this repository's layout (a path rename once rewrote it);
    # in a child process: YOLOv7's utils.general changes print options at import
    import subprocess
    import sys

    code = ("import importlib.util, sys; from pathlib import Path; "
            f"spec = importlib.util.spec_from_file_location('tool', {str(ROOT / 'tools' / 'make_yolov7_ota_reference.py')!r}); "
            "tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool); "
            f"Model, OTA7, hyp = tool.load_yolov7(Path({str(tmp_path / 'yolov7')!r})); "
            "print(OTA7.__module__, OTA7.__name__, 'anchor_t' in hyp); "
            f"_, AUX7, hyp6 = tool.load_yolov7(Path({str(tmp_path / 'yolov7')!r}), 'ComputeLossAuxOTA', 'hyp.scratch.p6.yaml'); "
            "print(AUX7.__module__, AUX7.__name__, hyp6['lrf'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["utils.loss", "ComputeLossOTA", "True", "utils.loss", "ComputeLossAuxOTA", "0.2"]
