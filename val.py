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
from pathlib import Path

import torch

from utils.coco import COCO80_TO_91, coco_evaluate, find_coco_annotations, ground_truth_json
from utils.evaluator import Collector, evaluate, output_to_target, per_class_map, score  # noqa: F401 (re-exported)
from utils.general import LOGGER, ROOT, increment_path, setup_logging
from utils.torch_utils import de_parallel, select_device


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
    model_nc = int(model.yaml["nc"])
    if not single_cls and model_nc != int(data["nc"]):  # before the pass, not after it
        raise ValueError(f"{weights} predicts {model_nc} classes but {data.get('yaml_file', 'the data YAML')} has "
                         f"nc={data['nc']}: validate on the dataset it was trained for (or use --single-cls)")
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
        gt = ground_truth_json(collector.ids, collector.paths, collector.shapes, collector.targets, names,
                               collector.class_map)
        anno_json.write_text(json.dumps(gt))
    LOGGER.info(f"Evaluating pycocotools mAP: {pred_json.name} against {anno_json}")
    return coco_evaluate(anno_json, pred_json, image_ids=collector.ids)


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
    else:
        device = select_device(device, batch_size)
        half &= device.type != "cpu"
        if task == "speed":  # YOLOv5's speed benchmark settings
            conf_thres, iou_thres, save_json, plots = 0.25, 0.45, False, False
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
        if save_txt:
            (save_dir / "labels").mkdir(exist_ok=True)
        model, dataloader, data = load_for_validation(weights, data, task, device, batch_size, imgsz, half, single_cls,
                                                      workers, augment)
        names = data["names"]
    nc = 1 if single_cls else int(model.yaml["nc"])
    names = list(names or getattr(model, "names", None) or range(nc))
    class_map = COCO80_TO_91 if find_coco_annotations(data or {}) is not None else None
    collector = Collector(single_cls, save_txt, save_conf, save_json, class_map, Path(save_dir))
    loss, dt = evaluate(model, dataloader, collector, device=device, half=half, conf_thres=conf_thres,
                        iou_thres=iou_thres, max_det=max_det, augment=augment, compute_loss=compute_loss,
                        plots=plots, save_dir=save_dir, names=names)
    results = score(collector, nc, names, verbose=verbose or (not training and nc < 50), plots=plots, save_dir=save_dir)
    seen = len(collector.preds)
    times = tuple(x / max(seen, 1) * 1e3 for x in dt)
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s" % (*times, shape))
    if save_json and seen:
        results["coco"] = evaluate_with_pycocotools(collector, names, data, Path(save_dir), weights)
    if not training and (save_txt or save_json or plots):
        LOGGER.info(f"Results saved to {save_dir}")
    metrics = (results["precision"], results["recall"], results["map50"], results["map"])
    return (*metrics, *loss.cpu().tolist()), per_class_map(results, nc), times


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
