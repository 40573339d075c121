"""Validate a detector on a YOLO-format dataset.

    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --imgsz 160
    python val.py --weights best.pt --data ../shared/datasets/coco128/coco128.yaml --save-json
    python val.py --weights a.pt b.pt --data their.yaml              # an ensemble: predictions merged before NMS
    python val.py --weights best.onnx --dnn                           # the ONNX file through OpenCV DNN
    python val.py --weights best.pt --task study --imgsz 320 480 640  # mAP and speed per size: study_*.txt, study.png

Prints YOLOv5's table (P, R, mAP50, mAP50-95; per class with --verbose), the speed line and, with
--save-json, the pycocotools summary. ``run(**kwargs)`` is importable (and takes an in-memory
``model`` with a ``dataloader``, as YOLOv5's does); the evaluation itself is ``utils.evaluation.evaluator.validate``,
which training calls directly.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from utils.evaluation.coco import COCO80_TO_91, coco_evaluate, find_coco_annotations, ground_truth_json, require_pycocotools
from utils.deploy.backends import load_backend, weights_label
from utils.evaluation.evaluator import Collector, output_to_target, validate  # noqa: F401 (output_to_target: re-exported)
from utils.general import LOGGER, ROOT, check_options, freeze_long_lived_objects, increment_path, setup_logging
from utils.plots import STUDY_COLUMNS, plot_val_study
from utils.torch_utils import de_parallel, select_device


STUDY_SIZES = tuple(range(256, 1536 + 128, 128))  # YOLOv5's --task study image sizes


def load_for_validation(weights, data, task, device, batch_size, imgsz, half, single_cls, workers, dnn=False):
    """Backend, dataloader and dataset dict for the command-line path (any checkpoint or exported format,
    several .pt files as an ensemble, an .onnx file through OpenCV DNN with ``dnn``)."""
    from utils.datasets.dataloaders import create_dataloader
    from utils.datasets.dataset_config import check_dataset

    backend = load_backend(weights, device, fp16=half, fuse=False, dnn=dnn)  # a .pt validates exactly as stored
    if backend.end2end:  # its NMS ran with the exporter's confidence threshold and box limit: mAP comes out lower
        LOGGER.warning(f"WARNING {weights} has NMS inside (--nms, or YOLOv7's --end2end): validating the boxes its "
                       "own NMS keeps, with its own IoU and confidence thresholds (--iou-thres does not apply, and a "
                       "--conf-thres below the export's finds nothing more); mAP is lower than the model's (export "
                       "without NMS for the true figure)")
    rect = backend.imgsz is None
    if not rect:  # a fixed-shape export: every image letterboxed to its (h, w), batches of its batch size
        imgsz, batch_size = tuple(backend.imgsz), backend.batch or batch_size
        LOGGER.info(f"{weights}: fixed input {imgsz[0]}x{imgsz[1]}, batch {batch_size}")
    data = check_dataset(data)
    if not backend.names:  # YOLOv7's TorchScript, a bare TensorRT engine: "predicts 0 classes" would mislead
        raise ValueError(f"{weights} has no class names or class count in its metadata, so its classes cannot be "
                         f"matched to the data YAML's: re-export it with this project's export.py (it writes them)")
    if not single_cls and backend.nc != int(data["nc"]):  # before the pass, not after it
        raise ValueError(f"{weights} predicts {backend.nc} classes but {data.get('yaml_file', 'the data YAML')} has "
                         f"nc={data['nc']}: validate on the dataset it was trained for (or use --single-cls)")
    split = data.get(task) if task in ("train", "val", "test") else data["val"]
    if not split:
        raise ValueError(f"--task {task}: the data YAML has no '{task}' split")
    loader = create_dataloader(split, imgsz, batch_size, backend.stride, single_cls, pad=0.5, rect=rect,
                               workers=workers, prefix=f"{task}: ", nc=data["nc"])[0]
    return backend, loader, data


def evaluate_with_pycocotools(collector: Collector, names, data, save_dir: Path, weights) -> dict:
    """COCO numbers for any dataset: official annotations for COCO, our labels as COCO JSON otherwise."""
    pred_json = save_dir / f"{weights_label(weights) if weights else 'model'}_predictions.json"
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
    model=None, dataloader=None, save_dir=Path(""), plots=True, compute_loss=None, names=None, dnn=False,
):
    """Returns ((P, R, mAP50, mAP50-95, box, obj, cls losses), per-class mAP array, (pre, inf, nms) ms/img).

    With ``model`` and ``dataloader`` (YOLOv5's in-process form) that model is validated on that loader;
    otherwise ``weights`` (any format; a list of several .pt files is an ensemble) on ``data``'s ``task`` split.
    --half applies on CUDA only. ``task="study"`` is ``run_study``."""
    if task == "study":
        raise ValueError("--task study runs one validation per image size: call val.run_study(weights, data, sizes)")
    if task not in ("train", "val", "test", "speed"):
        raise ValueError(f"--task must be one of train, val, test, speed, study, got task={task!r}")
    if isinstance(weights, (list, tuple)) and len(weights) == 1:
        weights = weights[0]
    check_options(batch_size=batch_size, imgsz=imgsz, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                  workers=workers)
    if save_json:  # refused before any work where pycocotools is missing
        require_pycocotools("--save-json")
    if model is None:
        device = select_device(device, batch_size)
        if task == "speed":  # YOLOv5's speed benchmark settings
            conf_thres, iou_thres, save_json, plots = 0.25, 0.45, False, False
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
        if save_txt:
            (save_dir / "labels").mkdir(exist_ok=True)
        model, dataloader, data = load_for_validation(weights, data, task, device, batch_size, imgsz,
                                                      half and device.type != "cpu", single_cls, workers, dnn)
        names = data["names"]
    backend = load_backend(de_parallel(model), fuse=False)  # a backend (the CLI path) passes through
    half = half and backend.device.type != "cpu"
    names = list(names or backend.names or range(backend.nc))
    class_map = COCO80_TO_91 if find_coco_annotations(data or {}) is not None else None
    v = validate(backend, dataloader, names=names, single_cls=single_cls, half=half, conf_thres=conf_thres, iou_thres=iou_thres,
                 max_det=max_det, augment=augment, compute_loss=compute_loss, plots=plots, save_dir=save_dir,
                 verbose=verbose or (weights is not None and len(names) < 50), save_txt=save_txt,
                 save_conf=save_conf, save_json=save_json, class_map=class_map)
    if weights is not None:
        LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at %s"
                    % (*v.times, v.shape_text()))
    if save_json and v.collector.preds:
        v.results["coco"] = evaluate_with_pycocotools(v.collector, names, data, Path(save_dir), weights)
    if weights is not None and (save_txt or save_json or plots):
        LOGGER.info(f"Results saved to {save_dir}")
    return v.metrics, v.maps, v.times


def run_study(weights, data=ROOT / "data/shapes.yaml", sizes=STUDY_SIZES, project=ROOT / "runs/val", name="study", exist_ok=False,
              **kwargs) -> list[Path]:
    """mAP and speed over image sizes (YOLOv5's ``--task study``): for each of ``weights`` (each on its own), one
    validation per size in ``sizes``; writes ``study_<data>_<weights>.txt`` (a row per size: P, R, mAP50,
    mAP50-95, the 3 losses, pre-process/inference/NMS ms per image) and ``study.png`` into one run folder.
    ``kwargs`` are ``run``'s other options. Returns the text files."""
    sizes = [int(s) for s in ([sizes] if isinstance(sizes, int) else sizes)]
    if not sizes:
        raise ValueError("--task study: give the image sizes to study (--imgsz 320 480 640), or none for YOLOv5's "
                         f"{STUDY_SIZES[0]}..{STUDY_SIZES[-1]}")
    for s in sizes:
        check_options(imgsz=s)
    weights = [weights] if isinstance(weights, (str, Path)) else list(weights)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    data_stem = Path(str(data)).stem if isinstance(data, (str, Path)) else "data"
    files = []
    for w in weights:
        f = save_dir / f"study_{data_stem}_{weights_label(w)}.txt"
        rows = []
        for size in sizes:
            LOGGER.info(f"Running {f.name} --imgsz {size}...")
            metrics, _, times = run(data=data, weights=w, imgsz=size, project=save_dir.parent, name=save_dir.name,
                                    exist_ok=True, plots=False, **kwargs)
            rows.append(list(metrics) + list(times))
        np.savetxt(f, rows, fmt="%10.4g", header=" ".join(STUDY_COLUMNS) + f"; one row per --imgsz {sizes}")
        files.append(f)
    plot_val_study(files, sizes, save_dir)
    LOGGER.info(f"Study saved to {save_dir}")
    return files


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Validate a detector checkpoint on a YOLO-format dataset.")
    p.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset YAML")
    p.add_argument("--weights", type=str, nargs="+", required=True, help="checkpoint (folded or not) or exported "
                   "model; several .pt files: an ensemble")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--imgsz", "--img", "--img-size", type=int, nargs="+", default=None,
                   help="inference size (pixels, default 640); with --task study the sizes to study (default "
                   f"{STUDY_SIZES[0]} to {STUDY_SIZES[-1]} in steps of 128)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", choices=("train", "val", "test", "speed", "study"),
                   help="split to validate, speed (YOLOv5's benchmark settings) or study (mAP and speed per size)")
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
    p.add_argument("--dnn", action="store_true", help="run an .onnx file with OpenCV DNN instead of ONNX Runtime")
    opt = p.parse_args(argv)
    if opt.task == "study":
        opt.imgsz = opt.imgsz or list(STUDY_SIZES)
    elif opt.imgsz and len(opt.imgsz) > 1:
        p.error(f"--imgsz takes one size (several only with --task study), got {' '.join(map(str, opt.imgsz))}")
    else:
        opt.imgsz = opt.imgsz[0] if opt.imgsz else 640
    try:
        for size in (opt.imgsz if opt.task == "study" else [opt.imgsz]):
            check_options(imgsz=size)
        check_options(batch_size=opt.batch_size, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                      max_det=opt.max_det, workers=opt.workers)
    except ValueError as e:
        p.error(str(e))
    if opt.dnn and (len(opt.weights) > 1 or not opt.weights[0].endswith(".onnx")):
        p.error(f"--dnn (OpenCV DNN) runs one .onnx file, got --weights {' '.join(opt.weights)}")
    return opt


def main(opt):
    setup_logging()
    if opt.half and not torch.cuda.is_available():
        LOGGER.warning("--half needs CUDA: validating in FP32 on CPU")
    if opt.task == "study":
        options = {k: v for k, v in vars(opt).items() if k not in ("task", "imgsz", "weights", "data", "project",
                                                                   "name", "exist_ok")}
        return run_study(opt.weights, opt.data, opt.imgsz, project=opt.project,
                         name=opt.name if opt.name != "exp" else "study", exist_ok=opt.exist_ok, **options)
    return run(**vars(opt))


if __name__ == "__main__":
    import sys

    from utils.deploy.backends import BackendUnavailable
    from utils.checkpoint import CheckpointError

    try:
        config = parse_opt()
        freeze_long_lived_objects()
        main(config)
    except (CheckpointError, FileNotFoundError, ValueError, BackendUnavailable) as e:
        LOGGER.error(f"ERROR: {e}")
        sys.exit(1)
