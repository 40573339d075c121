"""Validate a detector on a YOLO-format dataset.

    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --imgsz 160

``run(**kwargs)`` is importable: training calls it every epoch with its in-memory model and
dataloader.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.general import LOGGER, ROOT, increment_path, setup_logging
from utils.metric_plots import plot_metric_curves
from utils.metrics import ConfusionMatrix, evaluate_detections
from utils.ops import non_max_suppression, scale_boxes, xywh2xyxy
from utils.torch_utils import de_parallel, select_device


def _collect(preds, targets, im, shapes, single_cls, all_preds, all_targets):
    """Move one batch's detections and labels back to original-image pixels."""
    for si, pred in enumerate(preds):
        labels = targets[targets[:, 0] == si, 1:]
        shape0, ratio_pad = shapes[si][0], shapes[si][1]
        predn = pred.clone()
        if single_cls:
            predn[:, 5] = 0
        scale_boxes(im.shape[2:], predn[:, :4], shape0, ratio_pad)
        tbox = xywh2xyxy(labels[:, 1:5])
        scale_boxes(im.shape[2:], tbox, shape0, ratio_pad)
        all_preds.append(predn.float().cpu().numpy())
        all_targets.append(torch.cat((labels[:, :1], tbox), 1).float().cpu().numpy())


def log_table(results: dict, names, n_images: int, n_instances: int, verbose: bool) -> None:
    LOGGER.info(("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"))
    fmt = "%22s" + "%11i" * 2 + "%11.3g" * 4
    LOGGER.info(fmt % ("all", n_images, n_instances, results["precision"], results["recall"], results["map50"], results["map"]))
    if n_instances == 0:
        LOGGER.warning("no labels found in the validation set: metrics cannot be computed")
    if verbose and len(names) > 1:
        for i, c in enumerate(results["classes"]):
            LOGGER.info(fmt % (names[int(c)], n_images, results["nt"][i], results["p"][i], results["r"][i],
                               results["ap50"][i], results["ap"][i].mean()))


@torch.no_grad()
def run(
    data=None, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300,
    task="val", device="", workers=8, single_cls=False, verbose=False, project=ROOT / "runs/val", name="exp",
    exist_ok=False, half=True, model=None, dataloader=None, save_dir=Path(""), plots=True, compute_loss=None,
    names=None,
):
    """Returns ((P, R, mAP50, mAP50-95, box, obj, cls losses), per-class mAP array, (pre, inf, nms) ms/img)."""
    training = model is not None
    if training:
        device = next(model.parameters()).device
        half &= device.type != "cpu"
        model = de_parallel(model)
        model.half() if half else model.float()
    else:
        from utils.checkpoint import load_model
        from utils.dataloaders import create_dataloader
        from utils.dataset_config import check_dataset

        device = select_device(device, batch_size)
        half &= device.type != "cpu"
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        save_dir.mkdir(parents=True, exist_ok=True)
        model = load_model(weights, device)
        model.half() if half else model.float()
        data = check_dataset(data)
        names = data["names"]
        stride = int(model.stride.max())
        dataloader = create_dataloader(data[task if task in ("train", "val", "test") else "val"], imgsz, batch_size, stride,
                                       single_cls, pad=0.5, rect=True, workers=workers, prefix=f"{task}: ", nc=data["nc"])[0]
    model.eval()
    nc = 1 if single_cls else int(model.yaml["nc"])
    names = list(names or getattr(model, "names", None) or range(nc))
    loss = torch.zeros(3, device=device)
    dt = [0.0, 0.0, 0.0]
    all_preds, all_targets, seen = [], [], 0
    for im, targets, _paths, shapes in tqdm(dataloader, desc="validating", leave=False, disable=not LOGGER.isEnabledFor(20)):
        t0 = time.perf_counter()
        im = im.to(device, non_blocking=True)
        im = (im.half() if half else im.float()) / 255
        targets = targets.to(device)
        t1 = time.perf_counter()
        preds, train_out = model(im)
        t2 = time.perf_counter()
        if compute_loss:
            loss += compute_loss(train_out, targets)[1]
        targets[:, 2:] *= torch.tensor((im.shape[3], im.shape[2]) * 2, device=device)
        preds = non_max_suppression(preds, conf_thres, iou_thres, multi_label=True, agnostic=single_cls, max_det=max_det)
        t3 = time.perf_counter()
        dt[0], dt[1], dt[2] = dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + t3 - t2
        _collect(preds, targets, im, shapes, single_cls, all_preds, all_targets)
        seen += im.shape[0]
    results = evaluate_detections(all_preds, all_targets, nc)
    if plots:
        confusion = ConfusionMatrix(nc=nc)
        for pred, target in zip(all_preds, all_targets):
            confusion.process_batch(pred, target)
        confusion.plot(save_dir, names)
        plot_metric_curves(results, save_dir, names)
    n_instances = int(sum(len(t) for t in all_targets))
    log_table(results, names, seen, n_instances, verbose or (not training and nc < 50))
    times = tuple(x / max(seen, 1) * 1e3 for x in dt)
    if not training:
        LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image" % times)
    maps = np.zeros(nc) + results["map"]
    for i, c in enumerate(results["classes"]):
        maps[int(c)] = results["ap"][i].mean()
    model.float()
    metrics = (results["precision"], results["recall"], results["map50"], results["map"])
    return (*metrics, *(loss.cpu() / max(len(dataloader), 1)).tolist()), maps, times


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset YAML")
    p.add_argument("--weights", type=str, required=True, help="checkpoint path")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--task", default="val", choices=("train", "val", "test"))
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1 or cpu")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--single-cls", action="store_true")
    p.add_argument("--verbose", action="store_true", help="per-class table")
    p.add_argument("--project", default=ROOT / "runs/val")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    return p.parse_args(argv)


def main(opt):
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    main(parse_opt())
