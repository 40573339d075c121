"""Validate a detector on a YOLO-format dataset.

    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --imgsz 160
    python val.py --weights best.pt --data ../shared/datasets/coco128/coco128.yaml --save-json

Prints YOLOv5's table (P, R, mAP50, mAP50-95; per class with --verbose), the speed line and, with
--save-json, the pycocotools summary. ``run(**kwargs)`` is importable: training calls it every
epoch with its in-memory model and dataloader.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.coco import COCO80_TO_91, coco_evaluate, detections_to_json, find_coco_annotations, ground_truth_json
from utils.general import LOGGER, ROOT, increment_path, setup_logging
from utils.metric_plots import plot_metric_curves
from utils.metrics import ConfusionMatrix, evaluate_detections
from utils.ops import non_max_suppression, scale_boxes, xywh2xyxy, xyxy2xywh
from utils.plots import plot_images
from utils.torch_utils import de_parallel, select_device


class Collector:
    """Detections and labels of every image, in original-image pixels, plus optional txt/json output."""

    def __init__(self, single_cls: bool, save_txt: bool, save_conf: bool, save_json: bool, class_map, save_dir: Path):
        self.single_cls, self.save_txt, self.save_conf = single_cls, save_txt, save_conf
        self.save_json, self.class_map, self.save_dir = save_json, class_map, save_dir
        self.preds, self.targets, self.paths, self.shapes, self.json = [], [], [], [], []

    def add_batch(self, preds, targets, im, paths, shapes) -> None:
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            shape0, ratio_pad = shapes[si][0], shapes[si][1]
            predn = pred.clone()
            if self.single_cls:
                predn[:, 5] = 0
            scale_boxes(im.shape[2:], predn[:, :4], shape0, ratio_pad)
            tbox = xywh2xyxy(labels[:, 1:5])
            scale_boxes(im.shape[2:], tbox, shape0, ratio_pad)
            predn = predn.float().cpu().numpy()
            self.preds.append(predn)
            self.targets.append(torch.cat((labels[:, :1], tbox), 1).float().cpu().numpy())
            self.paths.append(str(paths[si]))
            self.shapes.append(tuple(int(x) for x in shape0))
            if self.save_txt:
                self.write_txt(predn, shape0, Path(paths[si]))
            if self.save_json:
                self.json.extend(detections_to_json(predn, paths[si], self.class_map))

    def write_txt(self, predn: np.ndarray, shape0, path: Path) -> None:
        gain = np.array([shape0[1], shape0[0], shape0[1], shape0[0]], dtype=np.float64)
        lines = []
        for *xyxy, conf, cls in predn.tolist():
            xywh = (xyxy2xywh(np.array([xyxy], dtype=np.float64)) / gain)[0]
            row = (int(cls), *xywh, conf) if self.save_conf else (int(cls), *xywh)
            lines.append(("%g " * len(row)).rstrip() % row)
        out = self.save_dir / "labels" / f"{path.stem}.txt"
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


class ExportedModel:
    """Drives an exported model (TorchScript, ONNX Runtime, OpenVINO, TensorRT) like an in-memory one."""

    def __init__(self, backend):
        self.backend, self.names, self.stride = backend, list(backend.names), torch.tensor([float(backend.stride)])
        self.yaml = {"nc": len(self.names)}

    def __call__(self, im, augment=False):
        return self.backend(im.float()), None


def load_for_validation(weights, data, task, device, batch_size, imgsz, half, single_cls, workers, augment):
    """Model, dataloader and dataset dict for the command-line path (any checkpoint or exported format)."""
    from utils.backends import load_backend
    from utils.checkpoint import load_model
    from utils.dataloaders import create_dataloader
    from utils.dataset_config import check_dataset

    rect = True
    if Path(weights).suffix == ".pt":  # ours, folded or not, exactly as stored
        model = load_model(weights, device)
        model.half() if half else model.float()
    else:
        backend = load_backend(weights, device, fp16=half)
        if backend.end2end:
            raise ValueError(f"{weights} has NMS inside (exported with --nms): export without --nms to validate it")
        if augment:
            raise ValueError("--augment needs a PyTorch checkpoint (.pt)")
        model = ExportedModel(backend)
        if backend.imgsz is not None:  # a fixed-shape export: its own size, square batches of its batch size
            imgsz, rect = int(max(backend.imgsz)), False
            batch_size = backend.batch or batch_size
            LOGGER.info(f"{weights}: fixed input {tuple(backend.imgsz)}, batch {batch_size}")
    data = check_dataset(data)
    split = data.get(task) if task in ("train", "val", "test") else data["val"]
    if not split:
        raise ValueError(f"--task {task}: the data YAML has no '{task}' split")
    stride = int(model.stride.max())
    loader = create_dataloader(split, imgsz, batch_size, stride, single_cls, pad=0.5, rect=rect, workers=workers,
                               prefix=f"{task}: ", nc=data["nc"])[0]
    return model, loader, data


def evaluate_with_pycocotools(collector: Collector, names, data, save_dir: Path, weights) -> dict:
    """COCO numbers for any dataset: official annotations for COCO, our labels as COCO JSON otherwise."""
    pred_json = save_dir / f"{Path(weights).stem if weights else 'model'}_predictions.json"
    pred_json.write_text(json.dumps(collector.json))
    anno_json = find_coco_annotations(data or {})
    if anno_json is None:
        anno_json = save_dir / "ground_truth.json"
        gt = ground_truth_json(collector.paths, collector.shapes, collector.targets, names, collector.class_map)
        anno_json.write_text(json.dumps(gt))
    LOGGER.info(f"Evaluating pycocotools mAP: {pred_json.name} against {anno_json}")
    from utils.coco import image_id

    return coco_evaluate(anno_json, pred_json, image_ids=[image_id(p) for p in collector.paths])


@torch.no_grad()
def run(
    data=None, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300,
    task="val", device="", workers=8, single_cls=False, augment=False, verbose=False, save_txt=False,
    save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp", exist_ok=False, half=True,
    model=None, dataloader=None, save_dir=Path(""), plots=True, compute_loss=None, names=None,
):
    """Returns ((P, R, mAP50, mAP50-95, box, obj, cls losses), per-class mAP array, (pre, inf, nms) ms/img)."""
    training = model is not None
    if training:
        device = next(model.parameters()).device
        half &= device.type != "cpu"
        model = de_parallel(model)
        model.half() if half else model.float()
    else:
        device = select_device(device, batch_size)
        half &= device.type != "cpu"
        if task == "speed":  # YOLOv5's speed benchmark settings
            conf_thres, iou_thres, save_json, plots = 0.25, 0.45, False, False
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
        model, dataloader, data = load_for_validation(weights, data, task, device, batch_size, imgsz, half, single_cls,
                                                      workers, augment)
        names = data["names"]
    is_module = isinstance(model, torch.nn.Module)
    if is_module:
        model.eval()
    nc = 1 if single_cls else int(model.yaml["nc"])
    names = list(names or getattr(model, "names", None) or range(nc))
    class_map = COCO80_TO_91 if find_coco_annotations(data or {}) is not None else None
    collector = Collector(single_cls, save_txt, save_conf, save_json, class_map, Path(save_dir))
    loss = torch.zeros(3, device=device)
    dt = [0.0, 0.0, 0.0]
    for batch_i, (im, targets, paths, shapes) in enumerate(tqdm(dataloader, desc="validating", leave=False)):
        t0 = time.perf_counter()
        im = im.to(device, non_blocking=True)
        im = (im.half() if half else im.float()) / 255
        targets = targets.to(device)
        t1 = time.perf_counter()
        preds, train_out = model(im, augment=augment) if augment else model(im)
        t2 = time.perf_counter()
        if compute_loss and train_out is not None:
            loss += compute_loss(train_out, targets)[1]
        targets[:, 2:] *= torch.tensor((im.shape[3], im.shape[2]) * 2, device=device)
        preds = non_max_suppression(preds, conf_thres, iou_thres, multi_label=True, agnostic=single_cls, max_det=max_det)
        t3 = time.perf_counter()
        dt = [dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + t3 - t2]
        collector.add_batch(preds, targets, im, paths, shapes)
        if plots and batch_i < 3:
            plot_images(im, targets, paths, Path(save_dir) / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds), paths, Path(save_dir) / f"val_batch{batch_i}_pred.jpg", names)
    results = evaluate_detections(collector.preds, collector.targets, nc)
    seen, n_instances = len(collector.preds), int(sum(len(t) for t in collector.targets))
    log_table(results, names, seen, n_instances, verbose or (not training and nc < 50))
    times = tuple(x / max(seen, 1) * 1e3 for x in dt)
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s" % (*times, shape))
    if plots:
        confusion = ConfusionMatrix(nc=nc)
        for pred, target in zip(collector.preds, collector.targets):
            confusion.process_batch(pred, target)
        confusion.plot(save_dir, names)
        plot_metric_curves(results, save_dir, names)
    if save_json and seen:
        results["coco"] = evaluate_with_pycocotools(collector, names, data, Path(save_dir), weights)
    if not training and (save_txt or save_json or plots):
        LOGGER.info(f"Results saved to {save_dir}")
    maps = np.zeros(nc) + results["map"]
    for i, c in enumerate(results["classes"]):
        maps[int(c)] = results["ap"][i].mean()
    if is_module:
        model.float()
    metrics = (results["precision"], results["recall"], results["map50"], results["map"])
    return (*metrics, *(loss.cpu() / max(len(dataloader), 1)).tolist()), maps, times


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Validate a detector checkpoint on a YOLO-format dataset.")
    p.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset YAML")
    p.add_argument("--weights", type=str, required=True, help="checkpoint (folded or not) or exported model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", choices=("train", "val", "test", "speed"))
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--augment", action="store_true", help="test-time augmentation")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file and evaluate it with pycocotools")
    p.add_argument("--project", default=ROOT / "runs/val", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    opt = p.parse_args(argv)
    for flag, value, ok in (("--batch-size", opt.batch_size, opt.batch_size >= 1), ("--imgsz", opt.imgsz, opt.imgsz >= 32),
                            ("--conf-thres", opt.conf_thres, 0 <= opt.conf_thres <= 1),
                            ("--iou-thres", opt.iou_thres, 0 <= opt.iou_thres <= 1), ("--max-det", opt.max_det, opt.max_det >= 1)):
        if not ok:
            p.error(f"{flag}: invalid value {value}")
    return opt


def main(opt):
    setup_logging()
    if opt.half and not torch.cuda.is_available():
        LOGGER.warning("--half needs CUDA: validating in FP32 on CPU")
    return run(**vars(opt))


if __name__ == "__main__":
    import sys

    from utils.backends import BackendUnavailable
    from utils.checkpoint import CheckpointError

    try:
        main(parse_opt())
    except (CheckpointError, FileNotFoundError, ValueError, BackendUnavailable) as e:
        LOGGER.error(f"ERROR: {e}")
        sys.exit(1)
