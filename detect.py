"""Run a detector on images, folders, globs, path lists, videos, webcams and streams.

    python detect.py --weights best.pt --source data/images            # folder
    python detect.py --weights best.onnx --source clip.mp4 --vid-stride 2
    python detect.py --weights best_openvino_model --source 'images/*.jpg' --save-txt --save-conf --save-crop
    python detect.py --weights best.pt --source 0                       # webcam
    python detect.py --weights best.pt --source rtsp://host/stream      # network stream
    python detect.py --weights a.pt b.pt --source data/images          # ensemble: predictions merged before NMS
    python detect.py --weights best.onnx --dnn                          # the ONNX file through OpenCV DNN
    python detect.py --weights best.pt --visualize                      # feature maps of every layer, as pngs

Any format ``utils.deploy.backends.load_backend`` reads works: our checkpoints (folded or not), TorchScript,
ONNX, OpenVINO, TensorRT. Results go to runs/detect/exp{N}: annotated images and videos, YOLO-format
labels (``--save-txt``), crops (``--save-crop``). ``run(**kwargs)`` is importable and returns the
detections of every image or frame.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.deploy.detections import count_text, draw_detections, postprocess, save_one_box
from utils.deploy.backends import load_backend
from utils.datasets.dataset_config import load_names
from utils.general import (LOGGER, ROOT, check_imgsz, check_options, freeze_long_lived_objects, increment_path,
                           setup_logging, unique_name)
from utils.ops import label_lines, scale_boxes
from utils.plots import class_name
from utils.datasets.sources import LoadImages, expand_files, is_stream, load_source
from utils.display import Viewer
from utils.torch_utils import select_device, synced_time


@dataclass
class ImageResult:
    """Detections of one image or video frame: ``det`` is (n, 6) [x1, y1, x2, y2, conf, cls] in the
    original image's pixels; ``frame`` counts from 1 in videos and streams and is 0 for images."""

    path: str
    frame: int
    det: np.ndarray
    shape: tuple  # original image (h, w)


# ------------------------------------------------------------------------------------------------ model
def class_names(data, default) -> list[str]:
    """Class names from a dataset YAML (list or {id: name}), else ``default`` (the model's)."""
    if not data:
        return list(default)
    names = load_names(data)  # the one parser of a data YAML's names, as training and export read them
    if len(names) != len(default):
        LOGGER.warning(f"WARNING {data} names {len(names)} classes but the model has {len(default)}")
    return [str(n) for n in names]


# ----------------------------------------------------------------------------------------------- output
class Outputs:
    """Writes what detect.py saves: annotated images and videos, label files and crops."""

    def __init__(self, save_dir: Path, names, save_img: bool, save_txt: bool, save_conf: bool, save_crop: bool,
                 line_thickness: int, hide_labels: bool, hide_conf: bool):
        self.save_dir, self.names = save_dir, names
        self.save_img, self.save_txt, self.save_conf, self.save_crop = save_img, save_txt, save_conf, save_crop
        self.draw_kw = dict(line_width=line_thickness, hide_labels=hide_labels, hide_conf=hide_conf)
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.labels_written = 0
        self.out_names: dict[str, str] = {}  # source path -> output file name, unique within the run
        self.taken: set[str] = set()

    def out_name(self, path: str) -> str:
        """The source's file name, made unique when another folder of the run had a file of that name."""
        key = str(path)
        if key not in self.out_names:
            self.out_names[key] = unique_name(self.stem(key), self.taken)
        return self.out_names[key]

    @staticmethod
    def stem(path: str) -> str:
        """Output file name for a source: its file name; 'webcam0' for webcam 0; 'stream' for a bare URL."""
        p = str(path)
        if p.isnumeric():
            return f"webcam{p}"
        return Path(p.split("?")[0]).name or "stream"

    def labels(self, path: str, frame: int, det, shape) -> None:
        if not (self.save_txt and len(det)):  # YOLOv5: no file for an image without detections
            return
        name = Path(self.out_name(path)).stem + (f"_{frame}" if frame else "")
        (self.save_dir / "labels" / f"{name}.txt").write_text("\n".join(label_lines(det, shape, self.save_conf)) + "\n")
        self.labels_written += 1

    def crops(self, path: str, det, im0: np.ndarray) -> None:
        if not self.save_crop:
            return
        stem = Path(self.out_name(path)).stem
        for *xyxy, _, cls in det.tolist():
            save_one_box(xyxy, im0, self.save_dir / "crops" / class_name(self.names, int(cls)) / f"{stem}.jpg")

    def annotate(self, im0: np.ndarray, det) -> np.ndarray:
        return draw_detections(im0.copy(), det, self.names, **self.draw_kw)

    def image(self, path: str, im: np.ndarray, fps: float | None) -> None:
        """Save an annotated image, or append it to the video of ``path`` when ``fps`` is given."""
        if not self.save_img:
            return
        out = self.save_dir / self.out_name(path)
        if fps is None:
            if not cv2.imwrite(str(out), im):
                raise OSError(f"cv2.imwrite could not write {out}")
            return
        key = str(out.with_suffix(".mp4"))
        if key not in self.writers:
            h, w = im.shape[:2]
            self.writers[key] = cv2.VideoWriter(key, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not self.writers[key].isOpened():
                raise OSError(f"cv2.VideoWriter could not open {key} (mp4v)")
        self.writers[key].write(im)

    def finish_video(self, path: str) -> None:
        writer = self.writers.pop(str((self.save_dir / self.out_name(path)).with_suffix(".mp4")), None)
        if writer is not None:
            writer.release()

    def close(self) -> None:
        for w in self.writers.values():
            w.release()
        self.writers.clear()


def video_fps(cap, dataset, path: str) -> float | None:
    """Frame rate for the output video: the input's (30 when it does not say), None for still images."""
    if cap is not None:
        fps = cap.get(cv2.CAP_PROP_FPS)
        return fps if np.isfinite(fps) and 0 < fps < 1000 else 30.0
    if getattr(dataset, "mode", "") == "stream":
        return dataset.fps[dataset.sources.index(path)]
    return None


# ------------------------------------------------------------------------------------------------- run
@torch.no_grad()
def run(
    weights=None, source=ROOT / "data/images", data=None, imgsz=(640, 640), conf_thres=0.25, iou_thres=0.45,
    max_det=1000, device="", view_img=False, save_txt=False, save_conf=False, save_crop=False, nosave=False,
    classes=None, agnostic_nms=False, augment=False, project=ROOT / "runs/detect", name="exp", exist_ok=False,
    line_thickness=3, hide_labels=False, hide_conf=False, half=False, vid_stride=1, dnn=False, visualize=False,
) -> list[ImageResult]:
    """Detect objects in ``source``; returns one ImageResult per image or video frame, in order. ``weights``: one
    model file, or several .pt files run as an ensemble; ``dnn``: an .onnx file through OpenCV DNN;
    ``visualize``: every layer's feature maps saved under the run folder's ``features/<image>/``."""
    if weights is None or (isinstance(weights, (list, tuple)) and not weights):
        raise ValueError("weights: pass a model file (checkpoint .pt, .torchscript, .onnx, *_openvino_model, .engine)")
    if isinstance(weights, (list, tuple)) and len(weights) == 1:
        weights = weights[0]
    check_options(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, vid_stride=vid_stride,
                  line_thickness=line_thickness, imgsz=imgsz, classes=classes)
    if not is_stream(str(source)) and not isinstance(source, (list, tuple)):
        expand_files(source)  # a missing path fails here, before the model loads
    device = select_device(device)
    if half and device.type == "cpu":
        LOGGER.warning("WARNING --half needs CUDA: running in FP32 on CPU")
        half = False
    backend = load_backend(weights, device, fp16=half, augment=augment, dnn=dnn)  # any format, or an ensemble
    features = _feature_maps(backend, augment) if visualize else None
    names = class_names(data, backend.names)
    stride = int(backend.stride)
    imgsz = check_imgsz(imgsz, stride)
    if backend.imgsz is not None and tuple(backend.imgsz) != imgsz:  # a fixed-shape export takes one size only
        LOGGER.warning(f"WARNING {weights} was exported for {tuple(backend.imgsz)} inputs: using that, not {imgsz}")
        imgsz = tuple(int(v) for v in backend.imgsz)
    viewer = Viewer(view_img, then="detecting without showing")  # one warning line where no window can open
    # minimum-rectangle letterbox when the model takes any shape (faster), the exported shape otherwise
    dataset = load_source(source, imgsz, stride, auto=backend.imgsz is None, vid_stride=vid_stride)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)  # after the source opened
    if save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
    backend.warmup(imgsz=(1, 3, *imgsz))
    outputs = Outputs(save_dir, names, not nosave, save_txt, save_conf, save_crop, line_thickness, hide_labels, hide_conf)
    nms = dict(conf_thres=conf_thres, iou_thres=iou_thres, classes=classes, agnostic=agnostic_nms, max_det=max_det,
               end2end=getattr(backend, "end2end", False))
    try:
        results, dt = _loop(dataset, backend, augment, nms, outputs, names, viewer, features)
    finally:
        outputs.close()
        if features is not None:
            features.close()
        if hasattr(dataset, "close"):
            dataset.close()  # stream reader threads stop even when the loop ended early
    if not results:  # every file unreadable: a failed run, not an empty success
        raise ValueError(f"no image or video frame could be read from {source} (see the warnings above)")
    seen = len(results)
    LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s"
                % (*(t * 1e3 / seen for t in dt), (backend.batch or 1, 3, *imgsz)))  # a fixed batch runs padded
    if save_txt or not nosave or save_crop:
        labels = f", {outputs.labels_written} label files saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {save_dir}{labels}")
    return results


def _feature_maps(backend, augment: bool):
    """The ``--visualize`` recorder for ``backend``: a single PyTorch checkpoint, one forward pass per image."""
    from utils.deploy.backends import PyTorchBackend
    from utils.deploy.visualize import FeatureMaps

    if not isinstance(backend, PyTorchBackend):
        raise ValueError(f"--visualize needs one PyTorch .pt checkpoint (the layers' outputs), not {backend.weights}")
    if augment:
        raise ValueError("--visualize with --augment: test-time augmentation runs 3 passes; visualize without it")
    return FeatureMaps(backend.native())


def _loop(dataset, backend, augment: bool, nms: dict, outputs: Outputs, names, viewer: Viewer, features=None):
    """Inference over every item of ``dataset``; returns (results, [pre, inference, nms] seconds)."""
    results, dt, frames, last_path = [], [0.0, 0.0, 0.0], {}, None
    for path, im, im0, cap, s in dataset:
        t0 = time.perf_counter()
        x = torch.from_numpy(im).to(backend.device)
        x = (x.half() if backend.fp16 else x.float())[None] / 255
        t1 = synced_time(backend.device)
        y = backend(x, augment=augment)
        t2 = synced_time(backend.device)
        det = postprocess(y, **nms)[0]
        scale_boxes(x.shape[2:], det[:, :4], im0.shape[:2])
        det = det.float().cpu()
        t3 = synced_time(backend.device)
        dt = [dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + t3 - t2]
        LOGGER.info(f"{s}{x.shape[2]}x{x.shape[3]} {count_text(det, names)}, {(t2 - t1) * 1e3:.1f}ms")

        fps = video_fps(cap, dataset, path)
        if isinstance(dataset, LoadImages) and last_path not in (None, path):
            outputs.finish_video(last_path)  # videos of a folder come one after another
            viewer.close(str(last_path))  # one window per file at a time; the last stays until the process ends
        last_path = path
        frame = frames[path] = frames.get(path, 0) + 1 if fps is not None else 0
        results.append(ImageResult(str(path), frame, det.numpy(), tuple(im0.shape[:2])))
        outputs.labels(path, frame, det, im0.shape)
        outputs.crops(path, det, im0)
        if features is not None:
            stem = Path(outputs.out_name(path)).stem + (f"_{frame}" if frame else "")
            features.save(outputs.save_dir / "features" / stem)
        if outputs.save_img or viewer.enabled:
            annotated = outputs.annotate(im0, det)
            outputs.image(path, annotated, fps)
            if not viewer.show(str(path), annotated):  # a window per file or stream, 1 ms of events a frame
                LOGGER.info("--view-img: q pressed, stopping")
                break
    return results, dt


# ------------------------------------------------------------------------------------------------- CLI
def parse_opt(argv=None):
    p = argparse.ArgumentParser(description="Detect objects in images, videos, folders, webcams and streams.")
    p.add_argument("--weights", type=str, nargs="+", required=True, help="model: checkpoint .pt, .torchscript, .onnx, "
                   "*_openvino_model, .engine; several .pt files: an ensemble")
    p.add_argument("--source", type=str, default=str(ROOT / "data/images"), help="file/dir/glob/.txt list/video/URL, 0 for webcam")
    p.add_argument("--data", type=str, default=None, help="(optional) dataset YAML whose class names to use")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--view-img", action="store_true", help="show results in a window per file or stream (q stops)")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--augment", action="store_true", help="augmented inference (PyTorch .pt models only)")
    p.add_argument("--project", default=ROOT / "runs/detect", help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    p.add_argument("--dnn", action="store_true", help="run an .onnx file with OpenCV DNN instead of ONNX Runtime")
    p.add_argument("--visualize", action="store_true", help="save every layer's feature maps (PyTorch .pt)")
    opt = p.parse_args(argv)
    try:
        check_options(imgsz=opt.imgsz, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres, max_det=opt.max_det,
                      vid_stride=opt.vid_stride, line_thickness=opt.line_thickness, classes=opt.classes)
    except ValueError as e:
        p.error(str(e))
    opt.imgsz = opt.imgsz * 2 if len(opt.imgsz) == 1 else opt.imgsz  # expand
    return opt


def main(opt):
    setup_logging()
    return run(**vars(opt))


if __name__ == "__main__":
    import sys

    from utils.deploy.backends import BackendUnavailable
    from utils.checkpoint import CheckpointError

    try:
        config = parse_opt()
        freeze_long_lived_objects()
        main(config)
    except (BackendUnavailable, CheckpointError, OSError, ValueError) as e:  # OSError: files, streams, URLs
        LOGGER.error(f"ERROR: {e}")
        sys.exit(1)
