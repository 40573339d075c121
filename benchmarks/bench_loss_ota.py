"""Benchmark the OTA loss: one training step of the loss (forward + backward into the predictions).

Run from the repository root::

    python benchmarks/bench_loss_ota.py [--imgsz 320] [--batch 16] [--targets 160] [--runs 15] [--warmup 3]
                                        [--threads N] [--device cpu|cuda] [--no-yolov7] [--out FILE]

Times, on the same seeded predictions (80 classes, YOLOv7-tiny's anchors, strides 8/16/32) and targets
(a varying number per image, sizes log-uniform, some at the borders): our ``ComputeLoss`` (YOLOv5),
our ``ComputeLossOTA`` and, unless ``--no-yolov7``, YOLOv7's own ``ComputeLossOTA`` run from the mirror's
code (tools/make_yolov7_ota_reference.py's ``load_yolov7``). The three are stepped round-robin and the
median of ``--runs`` steps is reported, beside the median time of the target assignment alone
(no autograd), and the largest relative difference of our OTA loss items from
YOLOv7's on these inputs. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils.training.loss import ComputeLoss  # noqa: E402
from utils.training.loss_ota import ComputeLossOTA  # noqa: E402

from machine import cpu_name, emit  # noqa: E402  (benchmarks/machine.py: the script's folder is on sys.path)

LOGGER = logging.getLogger("bench_loss_ota")


def reference_tool():
    spec = importlib.util.spec_from_file_location("make_yolov7_ota_reference", ROOT / "tools" / "make_yolov7_ota_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def seeded_targets(bs: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` targets over ``bs`` images (uneven counts), centres anywhere, sides log-uniform in 2-60%."""
    g = torch.Generator().manual_seed(seed)
    img = torch.sort(torch.randint(0, bs, (n,), generator=g)).values.float()
    cls = torch.randint(0, 80, (n,), generator=g).float()
    wh = torch.exp(torch.empty(n, 2).uniform_(float(torch.log(torch.tensor(0.02))), float(torch.log(torch.tensor(0.6))), generator=g))
    xy = torch.rand(n, 2, generator=g)
    xy = torch.minimum(torch.maximum(xy, wh / 2), 1 - wh / 2)  # inside the image, many touching a border
    return torch.cat((img[:, None], cls[:, None], xy, wh), 1)


def step_time(fn, preds: list[torch.Tensor], targets, imgs) -> tuple[float, torch.Tensor]:
    for p in preds:
        p.grad = None
    if preds[0].is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss, items = fn(preds, targets, imgs)  # every loss here, and YOLOv7's OTA, takes the images
    loss.sum().backward()  # YOLOv7's loss has shape (1,), ours is a scalar
    if preds[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, items.detach()[:3]  # YOLOv7's 4th item is the unscaled total


def assign_time(fn, preds: list[torch.Tensor], targets, imgs) -> float:
    """The target assignment alone: ``assign`` for ours, ``build_targets`` for YOLOv7's."""
    if preds[0].is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        (fn.assign if hasattr(fn, "assign") else fn.build_targets)(preds, targets, imgs)
    if preds[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def build_losses(opt, tool):
    """[(name, loss)] and the Detect geometry, on YOLOv7-tiny's own model when available."""
    if opt.no_yolov7:
        anchors = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                               dtype=torch.float32).view(3, 3, 2)
        stride = torch.tensor([8.0, 16.0, 32.0])
        det = SimpleNamespace(na=3, nc=tool.NC, nl=3, anchors=anchors / stride.view(3, 1, 1), stride=stride)
        hyp = dict(box=0.05, cls=0.5, cls_pw=1.0, obj=(opt.imgsz / 640) ** 2, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0)
        losses = []
    else:
        Model, OTA7, base_hyp = tool.load_yolov7(Path(opt.yolov7))
        logging.getLogger("models.yolo").setLevel(logging.WARNING)
        model = tool.yolov7_model(Model, Path(opt.yolov7), base_hyp, opt.imgsz).to(opt.device)
        det, hyp = model.model[-1], model.hyp
        losses = [("YOLOv7 ComputeLossOTA (mirror)", OTA7(model))]
    ours = SimpleNamespace(model=[det], hyp=hyp, gr=1.0)
    return [("ComputeLoss (YOLOv5)", ComputeLoss(ours, hyp)), ("ComputeLossOTA (ours)", ComputeLossOTA(ours))] + losses, det


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--targets", type=int, default=160)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--yolov7", default="/tmp/yolov7_b", help="YOLOv7 working copy (made from the mirror if absent)")
    ap.add_argument("--no-yolov7", action="store_true")
    ap.add_argument("--out", default=None)
    opt = ap.parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    tool = reference_tool()
    losses, det = build_losses(opt, tool)
    device = torch.device(opt.device)
    preds = [p.to(device).requires_grad_() for p in
             tool.seeded_predictions(0, opt.batch, opt.imgsz, [float(s) for s in det.stride], det.na, det.nc)]
    targets = seeded_targets(opt.batch, opt.targets).to(device)
    imgs = torch.zeros(opt.batch, 3, opt.imgsz, opt.imgsz, device=device)
    times = {name: [] for name, _ in losses}
    assign_times = {name: [] for name, _ in losses}
    items = {}
    for r in range(opt.warmup + opt.runs):
        for name, fn in losses:  # round-robin: drift on a shared machine hits all alike
            dt, items[name] = step_time(fn, preds, targets, imgs)
            da = assign_time(fn, preds, targets, imgs)
            if r >= opt.warmup:
                times[name].append(dt)
                assign_times[name].append(da)
        LOGGER.info(f"run {r + 1}/{opt.warmup + opt.runs}")
    base = statistics.median(times["ComputeLoss (YOLOv5)"])
    lines = [f"Loss step (forward + backward into the predictions), batch {opt.batch}, {opt.imgsz} px, 80 classes, "
             f"{opt.targets} targets, median of {opt.runs}; {cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             "| loss | step median ms | vs ComputeLoss | assignment alone, median ms |", "|---|---:|---:|---:|"]
    for name, _ in losses:
        med = statistics.median(times[name])
        lines.append(f"| {name} | {med * 1e3:.1f} | {med / base:.2f}x | {statistics.median(assign_times[name]) * 1e3:.1f} |")
    ref = items.get("YOLOv7 ComputeLossOTA (mirror)")
    if ref is not None:
        ours = items["ComputeLossOTA (ours)"]
        diff = ((ours - ref).abs() / ref.abs().clamp(min=1e-12)).max().item()
        lines += ["", f"Largest relative difference of our OTA loss items from YOLOv7's on these inputs: {diff:.2e}"]
    emit(lines, opt.out)


if __name__ == "__main__":
    main()
