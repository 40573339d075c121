"""The evaluation loop shared by ``val.py`` and the trainer: batches -> NMS -> matched, scored detections.

``validate(model, dataloader, ...)`` runs a model over a YOLO dataloader and returns the metrics that
``utils.evaluation.metrics.evaluate_detections`` computes, the mean validation losses and per-stage timings. It
takes the precision it is given (``half``) on any device: the scripts decide where half applies
(YOLOv5 refuses it on CPU), while tests can run the fp16 branches on a CPU. Models run through
``utils.deploy.backends`` like every other inference; the caller's model is never modified (a half-precision
pass runs on a copy, so training's fp32 EMA weights are not rounded).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.deploy.backends import load_backend
from utils.evaluation.coco import coco_image_id, detections_to_json
from utils.general import LOGGER, unique_name
from utils.evaluation.metric_plots import plot_confusion_matrix, plot_metric_curves
from utils.evaluation.metrics import ConfusionMatrix, evaluate_detections
from utils.ops import filter_end2end, label_lines, non_max_suppression, scale_boxes, xywh2xyxy, xyxy2xywh
from utils.plots import plot_images
from utils.torch_utils import synced_time


class Collector:
    """Detections and labels of every image, in original-image pixels, plus optional txt/json output."""

    def __init__(self, single_cls: bool, save_txt: bool, save_conf: bool, save_json: bool, class_map, save_dir: Path):
        self.single_cls, self.save_txt, self.save_conf = single_cls, save_txt, save_conf
        self.save_json, self.class_map, self.save_dir = save_json, class_map, save_dir
        self.preds, self.targets, self.paths, self.shapes, self.ids, self.json = [], [], [], [], [], []
        self.txt_names: set[str] = set()

    def next_image_id(self, path) -> int:
        """COCO image id: COCO's own for COCO (matched against the official annotations), otherwise the
        image's position in the pass, unique even where two folders hold files of one name."""
        return coco_image_id(path) if self.class_map else len(self.paths) + 1

    def add_batch(self, preds, targets, im, paths, shapes) -> None:
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:].float()
            shape0, ratio_pad = shapes[si][0], shapes[si][1]
            predn = pred.float().clone()  # scaled in fp32 whatever precision the model ran in
            if self.single_cls:
                predn[:, 5] = 0
            scale_boxes(im.shape[2:], predn[:, :4], shape0, ratio_pad)
            tbox = xywh2xyxy(labels[:, 1:5])
            scale_boxes(im.shape[2:], tbox, shape0, ratio_pad)
            predn = predn.cpu().numpy()
            img_id = self.next_image_id(paths[si])
            self.ids.append(img_id)
            self.preds.append(predn)
            self.targets.append(torch.cat((labels[:, :1], tbox), 1).cpu().numpy())
            self.paths.append(str(paths[si]))
            self.shapes.append(tuple(int(x) for x in shape0))
            if self.save_txt:
                self.write_txt(predn, shape0, Path(paths[si]))
            if self.save_json:
                self.json.extend(detections_to_json(predn, img_id, self.class_map))

    def write_txt(self, predn: np.ndarray, shape0, path: Path) -> None:
        lines = label_lines(predn, shape0, self.save_conf)
        out = self.save_dir / "labels" / unique_name(f"{path.stem}.txt", self.txt_names)
        out.write_text("".join(line + "\n" for line in lines))


def output_to_target(preds) -> torch.Tensor:
    """NMS output list -> (n, 7) [batch, cls, x, y, w, h, conf] in pixels, for plot_images."""
    rows = []
    for i, p in enumerate(preds):
        p = p[:, :6].detach().cpu().float()
        rows.append(torch.cat((torch.full((len(p), 1), float(i)), p[:, 5:6], xyxy2xywh(p[:, :4]), p[:, 4:5]), 1))
    return torch.cat(rows, 0) if rows else torch.zeros((0, 7))


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


@dataclass
class Validation:
    """One validation pass: YOLOv5's result tuple pieces plus everything behind them."""

    metrics: tuple  # (P, R, mAP50, mAP50-95, box, obj, cls losses)
    maps: np.ndarray  # mAP50-95 per class id
    times: tuple  # (pre-process, inference, NMS) ms per image
    results: dict  # utils.evaluation.metrics.evaluate_detections output
    collector: Collector
    input_shapes: tuple = ()  # (b, 3, h, w) of every distinct input the model ran, padded batches as run

    def shape_text(self) -> str:
        """The input shapes run, for the speed line: 'shape (3, 3, 160, 96)' or 'shapes (...), (...)'."""
        shapes = [str(tuple(s)) for s in self.input_shapes]
        if len(shapes) > 4:
            shapes = shapes[:3] + [f"and {len(shapes) - 3} more"]
        return f"shape{'s' * (len(self.input_shapes) > 1)} {', '.join(shapes) or '()'}"


def validate(model, dataloader, *, names, single_cls=False, half=False, fuse=False, conf_thres=0.001, iou_thres=0.6,
             max_det=300, augment=False, compute_loss=None, plots=False, save_dir=Path(""), verbose=False,
             save_txt=False, save_conf=False, save_json=False, class_map=None, callbacks=None,
             batch_plots=None) -> Validation:
    """Validate ``model`` (an in-memory ``Model``, any file ``load_backend`` reads, or a backend) on a YOLO
    dataloader: detections, YOLOv5's table, optional plots and txt/json output. ``half`` runs an fp16 copy,
    ``fuse`` a folded copy (the same function, faster: training validates that way). ``callbacks`` (a
    ``utils.callbacks.Callbacks``) get the on_val_* hooks. ``plots`` draws the first batches' labels and
    detections and the confusion matrix and curves; ``batch_plots`` (default: ``plots``) the batches alone."""
    backend = load_backend(model, fp16=half, fuse=fuse)
    nc = 1 if single_cls else backend.nc
    collector = Collector(single_cls, save_txt, save_conf, save_json, class_map, Path(save_dir))
    loss, dt, shapes = evaluate(backend, dataloader, collector, conf_thres=conf_thres, iou_thres=iou_thres,
                                max_det=max_det, augment=augment, compute_loss=compute_loss,
                                plots=plots if batch_plots is None else batch_plots, save_dir=save_dir, names=names,
                                callbacks=callbacks)
    results = score(collector, nc, names, verbose=verbose, plots=plots, save_dir=save_dir)
    if callbacks is not None:
        callbacks.run("on_val_end", results)
    times = tuple(x / max(len(collector.preds), 1) * 1e3 for x in dt)
    metrics = (results["precision"], results["recall"], results["map50"], results["map"], *loss.cpu().tolist())
    return Validation(metrics, per_class_map(results, nc), times, results, collector, shapes)


@torch.no_grad()
def evaluate(backend, dataloader, collector: Collector, *, conf_thres=0.001, iou_thres=0.6, max_det=300,
             augment=False, compute_loss=None, plots=False, save_dir=Path(""), names=(), callbacks=None):
    """Run a backend over ``dataloader`` into ``collector``; return (mean losses (3,), seconds, input shapes):
    the shapes are every distinct batch shape as the backend ran it (a fixed batch size pads), in first-run order.

    NMS and everything after it work in fp32 whatever precision the backend runs in. Losses need the raw
    maps, which PyTorch backends give. Seconds are (pre-process, inference, NMS) summed over the pass.
    """
    device = backend.device
    loss = torch.zeros(3, device=device)
    dt = [0.0, 0.0, 0.0]
    input_shapes: dict[tuple, None] = {}  # an ordered set
    hook = callbacks.run if callbacks is not None else (lambda *args: None)
    hook("on_val_start")
    for batch_i, (im, targets, paths, shapes) in enumerate(tqdm(dataloader, desc="validating", leave=False)):
        hook("on_val_batch_start")
        t0 = time.perf_counter()
        im = im.to(device, non_blocking=True).float() / 255
        targets = targets.to(device)
        t1 = synced_time(device)
        preds, raw = backend.run(im, augment)
        input_shapes[(backend.batch or im.shape[0], *im.shape[1:])] = None
        t2 = synced_time(device)
        if compute_loss and raw is not None:
            loss += compute_loss([x.float() for x in raw], targets)[1]
        targets[:, 2:] *= torch.tensor((im.shape[3], im.shape[2]) * 2, device=device)
        # no NMS time budget (YOLOv5's val drops a batch's remaining images past 0.5 + 0.05 * bs seconds,
        # which lowers mAP on a loaded machine)
        if backend.end2end:  # NMS inside the file: its (num, boxes, scores, classes) filtered by conf and max_det
            preds = filter_end2end(preds, conf_thres, max_det=max_det)
        else:
            preds = non_max_suppression(preds, conf_thres, iou_thres, multi_label=True, agnostic=collector.single_cls,
                                        max_det=max_det)
        t3 = synced_time(device)
        dt = [dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + t3 - t2]
        collector.add_batch(preds, targets, im, paths, shapes)
        hook("on_val_batch_end", batch_i, im, targets, paths, shapes, preds)
        if plots and batch_i < 3:
            plot_images(im, targets, paths, Path(save_dir) / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds), paths, Path(save_dir) / f"val_batch{batch_i}_pred.jpg", names)
    return loss / max(len(dataloader), 1), dt, tuple(input_shapes)


def score(collector: Collector, nc: int, names, *, verbose=False, plots=False, save_dir=Path("")) -> dict:
    """Metrics of everything collected; logs YOLOv5's table, draws the confusion matrix and curves."""
    results = evaluate_detections(collector.preds, collector.targets, nc)
    n_instances = int(sum(len(t) for t in collector.targets))
    log_table(results, names, len(collector.preds), n_instances, verbose)
    if plots:
        confusion = ConfusionMatrix(nc=nc)
        for pred, target in zip(collector.preds, collector.targets):
            confusion.process_batch(pred, target)
        plot_confusion_matrix(confusion.matrix, save_dir, names)
        plot_metric_curves(results, save_dir, names)
    return results


def per_class_map(results: dict, nc: int) -> np.ndarray:
    """mAP50-95 per class id; classes absent from the data get the overall mAP (YOLOv5's convention)."""
    maps = np.zeros(nc) + results["map"]
    for i, c in enumerate(results["classes"]):
        maps[int(c)] = results["ap"][i].mean()
    return maps
