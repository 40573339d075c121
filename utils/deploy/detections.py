"""Inference results shared by detect.py and the hub API.

- drawing (``draw_detections``), crops (``save_one_box``), YOLO label lines (``label_lines``) and the
  per-image summary text (``count_text``), so detect.py and ``Detections`` draw and save alike;
- ``postprocess``: model output -> per-image ``(n, 6)`` rows ``[x1, y1, x2, y2, conf, cls]`` through NMS,
  or through the thresholds alone for end-to-end exports that ran NMS inside the graph;
- ``AutoShape``: wraps a ``Model`` or a backend from ``utils.deploy.backends.load_backend`` and takes file paths,
  URLs, PIL images, numpy arrays or lists of them (letterbox, inference, NMS, boxes back to the originals);
- ``Detections``: what ``AutoShape`` returns, with YOLOv5's accessors (``xyxy``, ``xywh``, ``xyxyn``,
  ``xywhn``, ``pandas()``, ``print()``, ``save()``, ``crop()``, ``render()``, ``tolist()``).

Channel order: numpy arrays given to ``AutoShape`` are RGB HWC, as in YOLOv5's hub API (convert an
OpenCV image with ``im[..., ::-1]``). Files and URLs are decoded with OpenCV exactly as detect.py
decodes them, so the hub API and detect.py see the same pixels and give the same detections.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from utils.datasets.augmentations import letterbox
from utils.deploy.backends import load_backend
from utils.general import LOGGER, increment_path, make_divisible, unique_name
from utils.ops import clip_boxes, filter_end2end, non_max_suppression, realtime_nms_budget, scale_boxes, xyxy2xywh
from utils.plots import Annotator, class_name, colors


# ---------------------------------------------------------------------------------------------- helpers
def count_text(det, names) -> str:
    """'4 persons, 1 bus' for (n, 6) detections, or '(no detections)'."""
    if not len(det):
        return "(no detections)"
    cls = np.asarray(det[:, 5].tolist(), dtype=np.int64)
    parts = []
    for c in np.unique(cls):
        n = int((cls == c).sum())
        parts.append(f"{n} {class_name(names, int(c))}{'s' * (n > 1)}")
    return ", ".join(parts)


def label_text(names, cls: int, conf: float, hide_labels: bool = False, hide_conf: bool = False) -> str:
    if hide_labels:
        return ""
    return class_name(names, cls) if hide_conf else f"{class_name(names, cls)} {conf:.2f}"


def draw_detections(im: np.ndarray, det, names, line_width: int | None = None, hide_labels: bool = False,
                    hide_conf: bool = False, bgr: bool = True) -> np.ndarray:
    """Draw (n, 6) detections onto ``im`` (uint8 HWC, BGR when ``bgr``) in place; returns the image."""
    ann = Annotator(im, line_width=line_width)
    for *xyxy, conf, cls in reversed(det.tolist()):  # lowest confidence first: the best box ends on top
        c = int(cls)
        ann.box_label(xyxy, label_text(names, c, conf, hide_labels, hide_conf), color=colors(c, bgr=bgr))
    return ann.result()


def save_one_box(xyxy, im: np.ndarray, file: Path | None = None, gain: float = 1.02, pad: int = 10,
                 square: bool = False, bgr: bool = True) -> np.ndarray:
    """Crop ``xyxy`` from ``im`` (enlarged by ``gain`` and ``pad`` pixels, as YOLOv5 does) and return it.

    With ``file`` the crop is written there, or to file2.jpg, file3.jpg, ... when the name is taken.
    ``bgr`` says the channel order of ``im``; files are always written with the right colors.
    """
    b = xyxy2xywh(np.asarray(xyxy, dtype=np.float64).reshape(1, 4))
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdims=True)
    b[:, 2:] = b[:, 2:] * gain + pad
    box = np.concatenate((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1)
    x1, y1, x2, y2 = clip_boxes(box, im.shape[:2])[0].astype(int)
    crop = im[y1:y2, x1:x2]
    if file is not None and crop.size:
        path = increment_path(Path(file).with_suffix(".jpg"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), crop if bgr else crop[..., ::-1]):
            raise OSError(f"cv2.imwrite could not write {path}")
    return crop


def postprocess(out, conf_thres: float, iou_thres: float, classes=None, agnostic: bool = False,
                multi_label: bool = False, max_det: int = 1000, end2end: bool = False) -> list[torch.Tensor]:
    """Model output -> per-image (n, 6) [x1, y1, x2, y2, conf, cls] in network-input pixels.

    ``end2end``: the output is (num_dets, boxes, scores, classes) from an export with NMS inside
    (``utils.ops.filter_end2end``: ``iou_thres``, ``agnostic`` and ``multi_label`` do not apply).
    """
    if end2end:
        return filter_end2end(out, conf_thres, classes, max_det)
    pred = out[0] if isinstance(out, (list, tuple)) else out  # eval-mode models return (pred, raw maps)
    return non_max_suppression(pred, conf_thres, iou_thres, classes, agnostic, multi_label, max_det=max_det,
                               time_limit=realtime_nms_budget(len(pred)))


# ---------------------------------------------------------------------------------------------- AutoShape
def _image_from(x, i: int) -> tuple[np.ndarray, str]:
    """One AutoShape input -> (RGB HWC uint8 array, file name)."""
    from PIL import Image, ImageOps

    from utils.datasets.sources import is_url, read_image

    if isinstance(x, (str, Path)):
        im = read_image(str(x))  # same decoder as detect.py (and URLs fetched with a timeout)
        if im is None:
            raise ValueError(f"{x}: not a readable image (missing, corrupt or another kind of file)")
        name = Path(str(x).split("?")[0]).name if is_url(str(x)) else Path(x).name
        return im[..., ::-1], name or f"image{i}.jpg"
    if isinstance(x, Image.Image):
        name = Path(getattr(x, "filename", "") or f"image{i}.jpg").name
        x = ImageOps.exif_transpose(x)
        if x.mode in ("I", "F") or x.mode.startswith("I;16"):  # 16/32-bit: PIL's convert("RGB") clips at 255
            return _array_to_rgb8(_wide_pil_array(x, i), i), name
        return np.asarray(x.convert("RGB")), name
    if isinstance(x, np.ndarray):
        return _array_to_rgb8(x, i), f"image{i}.jpg"
    raise TypeError(f"image {i}: unsupported input type {type(x).__name__} (use a path, URL, PIL image, "
                    "numpy array, torch tensor or a list of these)")


def _wide_pil_array(x, i: int) -> np.ndarray:
    """A PIL image of mode I;16*, I (32-bit int) or F (float) as an array the 16-bit/float rules scale."""
    a = np.asarray(x)
    if x.mode == "I":  # how PIL opens some 16-bit files: 16-bit values in 32-bit ints
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"image {i}: 32-bit PIL image (mode I) with values outside 0..65535; convert it to "
                             "8 or 16 bits first")
        a = a.astype(np.uint16)
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder not in ("=", "|") else a  # I;16B: big-endian


def _array_to_rgb8(x: np.ndarray, i: int) -> np.ndarray:
    """An HxW, HxWx3(4) or CHW array (uint8, 16-bit, or float 0..1 / 0..255) -> RGB HWC uint8."""
    im = x
    if im.ndim not in (2, 3):
        raise ValueError(f"image {i}: expected an HxW or HxWx3 array, got shape {x.shape} (pass a list for a batch)")
    if im.size == 0:
        raise ValueError(f"image {i}: empty array of shape {x.shape}")
    if im.ndim == 3 and im.shape[0] in (1, 3, 4) and im.shape[2] not in (1, 3, 4):
        im = im.transpose(1, 2, 0)  # CHW -> HWC
    if im.ndim == 2 or (im.ndim == 3 and im.shape[2] == 1):
        im = np.repeat(im.reshape(im.shape[0], im.shape[1], 1), 3, axis=2)
    if im.ndim != 3 or im.shape[2] < 3:
        raise ValueError(f"image {i}: expected an HxWx3 array, got shape {x.shape}")
    im = im[..., :3]  # drop alpha
    if im.dtype == np.bool_ or not (np.issubdtype(im.dtype, np.integer) or np.issubdtype(im.dtype, np.floating)):
        raise ValueError(f"image {i}: unsupported array dtype {im.dtype}; use uint8, uint16 or float")
    if np.issubdtype(im.dtype, np.floating):
        bad = int(im.size - np.isfinite(im).sum())
        if bad:  # NaN would become black pixels the model still "detects" on
            raise ValueError(f"image {i}: float array holds {bad} NaN or infinite value(s); replace them "
                             "(e.g. np.nan_to_num) before detection")
    if np.issubdtype(im.dtype, np.integer) and im.dtype != np.uint8:  # 16-bit images: scale, never clip
        im = im.astype(np.float64) * (255.0 / np.iinfo(im.dtype).max)
    elif im.dtype != np.uint8:  # float: 0..1 or 0..255, as YOLOv5 takes it
        im = im.astype(np.float32)
        im = im * 255 if im.max() <= 1.0 else im
    if im.dtype != np.uint8:
        im = np.clip(im, 0, 255).round().astype(np.uint8)
    return im


class AutoShape(nn.Module):
    """Inference on ordinary images: letterbox, model, NMS, boxes mapped back to each original image.

    ``model``: a ``models.yolo.Model``, a model file or a backend (all run through ``utils.deploy.backends``). Thresholds are
    attributes, as in YOLOv5: ``conf``, ``iou``, ``classes``, ``agnostic``, ``multi_label``, ``max_det``.
    A torch tensor input (BCHW, RGB, 0..1) goes to the model unchanged and the raw model output comes back.
    """

    conf = 0.25  # NMS confidence threshold
    iou = 0.45  # NMS IoU threshold
    agnostic = False  # class-agnostic NMS
    multi_label = False  # several labels per box
    classes = None  # keep only these class ids, e.g. [0, 15, 16]
    max_det = 1000  # maximum detections per image

    def __init__(self, model):
        super().__init__()
        self.backend = load_backend(model, fuse=False)  # a Model runs as given (fold it first to deploy)
        self.model = self.backend.native()  # a Model registers as a submodule: .half()/.to() reach it
        self.stride, self.names = int(self.backend.stride), list(self.backend.names)
        self.imgsz, self.end2end = self.backend.imgsz, self.backend.end2end  # fixed-shape exports take one size

    def _input_shape(self, shapes, size) -> tuple[int, int]:
        """Common letterbox shape: each image scaled so its longer side is ``size``, rounded up to the stride."""
        if self.imgsz is not None:
            return tuple(int(v) for v in self.imgsz)
        size = (size, size) if isinstance(size, int) else tuple(size)
        hw = np.array([[round(h * max(size) / max(h, w)), round(w * max(size) / max(h, w))] for h, w in shapes])
        return tuple(make_divisible(int(v), self.stride) for v in hw.max(0))

    @torch.no_grad()
    def forward(self, ims, size=640, augment: bool = False):
        """Detections for one input or a list of inputs; raw model output for a torch tensor."""
        t0 = time.perf_counter()
        device = self.backend.device
        if isinstance(ims, torch.Tensor):
            return self.backend(ims.to(device), augment)
        batch = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        if not batch:
            raise ValueError("no images given (an empty list)")
        pairs = [_image_from(x, i) for i, x in enumerate(batch)]
        images, files = [np.ascontiguousarray(p[0]) for p in pairs], [p[1] for p in pairs]
        shape1 = self._input_shape([im.shape[:2] for im in images], size)
        x = np.stack([letterbox(im, shape1, auto=False, stride=self.stride)[0] for im in images])
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device).float() / 255
        t1 = time.perf_counter()
        y = self.backend(x, augment)
        t2 = time.perf_counter()
        pred = postprocess(y, self.conf, self.iou, self.classes, self.agnostic, self.multi_label, self.max_det,
                           self.end2end)
        for im, p in zip(images, pred):
            scale_boxes(shape1, p[:, :4], im.shape[:2])
        t3 = time.perf_counter()
        pred = [p.float().cpu() for p in pred]
        return Detections(images, pred, files, (t1 - t0, t2 - t1, t3 - t2), self.names, tuple(x.shape))


# --------------------------------------------------------------------------------------------- Detections
@dataclass
class Detections:
    """Detections of a batch of images, with boxes in original-image pixels (YOLOv5's hub result).

    ``ims``: the RGB images; ``pred``: per image an (n, 6) tensor [x1, y1, x2, y2, conf, cls];
    ``times``: seconds for pre-processing, inference and NMS of the whole batch; ``shape``: network input.
    """

    ims: list
    pred: list
    files: list
    times: tuple = (0.0, 0.0, 0.0)
    names: list = field(default_factory=list)
    shape: tuple = ()

    def __post_init__(self):
        gn = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0]) for im in self.ims]
        self.xyxy = self.pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in self.pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gn)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gn)]
        self.n = len(self.pred)
        self._raw = list(self.ims)  # never drawn on: crops and repeated renders start from these
        self.t = tuple(x * 1e3 / max(self.n, 1) for x in self.times)  # ms per image

    def __len__(self) -> int:
        return self.n

    def __str__(self) -> str:
        lines = [f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} {count_text(p, self.names)}"
                 for i, (im, p) in enumerate(zip(self.ims, self.pred))]
        lines.append("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s" % (*self.t, self.shape))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.n} image(s)>\n{self}"

    def print(self) -> None:
        """Log one line per image and the speed line."""
        for line in str(self).splitlines():
            LOGGER.info(line)

    def _annotated(self, labels: bool = True) -> list[np.ndarray]:
        return [draw_detections(np.array(im, dtype=np.uint8, order="C"), p, self.names, hide_labels=not labels, bgr=False)
                for im, p in zip(self._raw, self.pred)]

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Annotated copies of the images (RGB), also stored in ``self.ims`` as YOLOv5 does."""
        self.ims = self._annotated(labels)
        return self.ims

    def show(self, labels: bool = True) -> None:
        """Display the annotated images in OpenCV windows, when a display exists (one warning otherwise)."""
        from utils.display import Viewer

        viewer = Viewer(who="Detections.show()", then="use save() or render() instead")
        for f, im in zip(self.files, self._annotated(labels)):
            viewer.show(str(f), np.ascontiguousarray(im[..., ::-1]))

    def save(self, labels: bool = True, save_dir="runs/detect/exp", exist_ok: bool = False) -> Path:
        """Write the annotated images to ``save_dir`` (incremented: exp, exp2, ...); returns the folder."""
        save_dir = increment_path(save_dir, exist_ok, mkdir=True)
        taken: set[str] = set()  # images of one name (same file twice, or two folders) each get a file
        for f, im in zip(self.files, self._annotated(labels)):
            path = save_dir / unique_name(Path(f).with_suffix(".jpg").name, taken)  # bus.jpg, bus_2.jpg, ...
            if not cv2.imwrite(str(path), im[..., ::-1]):
                raise OSError(f"cv2.imwrite could not write {path}")
        LOGGER.info(f"Saved {self.n} image{'s' * (self.n != 1)} to {save_dir}")
        return save_dir

    def crop(self, save: bool = True, save_dir="runs/detect/exp", exist_ok: bool = False) -> list[dict]:
        """Crop every detection (written under save_dir/crops/<class>/ when ``save``); returns dicts
        with ``box``, ``conf``, ``cls``, ``label`` and ``im`` (the RGB crop)."""
        save_dir = increment_path(save_dir, exist_ok, mkdir=True) if save else None
        crops = []
        for im, f, p in zip(self._raw, self.files, self.pred):
            for *box, conf, cls in p.tolist():
                name = class_name(self.names, int(cls))
                file = save_dir / "crops" / name / Path(f).with_suffix(".jpg").name if save else None
                crops.append({"box": box, "conf": conf, "cls": int(cls), "label": f"{name} {conf:.2f}",
                              "im": save_one_box(box, im, file, bgr=False)})
        if save:
            LOGGER.info(f"Saved {len(crops)} crop{'s' * (len(crops) != 1)} to {save_dir / 'crops'}")
        return crops

    def pandas(self) -> "Detections":
        """A copy whose xyxy, xyxyn, xywh, xywhn are lists of pandas DataFrames, one per image
        (columns xmin ymin xmax ymax / xcenter ycenter width height, then confidence class name)."""
        import pandas as pd

        new = copy.copy(self)
        ca = "xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"
        cb = "xcenter", "ycenter", "width", "height", "confidence", "class", "name"
        for k, cols in zip(("xyxy", "xyxyn", "xywh", "xywhn"), (ca, ca, cb, cb)):
            rows = [[r[:5] + [int(r[5]), class_name(self.names, int(r[5]))] for r in p.tolist()] for p in getattr(self, k)]
            setattr(new, k, [pd.DataFrame(r, columns=list(cols)) for r in rows])
        return new

    def tolist(self) -> list["Detections"]:
        """One Detections object per image."""
        return [Detections([self._raw[i]], [self.pred[i]], [self.files[i]], tuple(t / self.n for t in self.times),
                           self.names, self.shape) for i in range(self.n)]
