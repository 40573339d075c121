"""Plots written during training and validation: image mosaics with boxes, label statistics, results curves.

Design points:
- No global state: figures are built with ``matplotlib.figure.Figure`` on a ``FigureCanvasAgg``, so
  importing this module never selects or changes the matplotlib backend, and nothing goes through pyplot.
- No downloads: box labels use OpenCV's built-in Hershey fonts, figure text uses the DejaVu font that
  matplotlib ships. Hershey fonts cover ASCII only; other characters are drawn as '?'.
- Every public function returns the ``Path`` it wrote. ``plot_results`` and ``plot_labels`` log a warning
  and return ``None`` when there is nothing to plot (missing/empty CSV, no labels) instead of raising.

Public API: ``PALETTE``, ``colors``, ``Annotator``, ``plot_images``, ``plot_labels``, ``plot_results``; and
``new_figure``/``save_figure``, the figure helpers ``utils.evaluation.metric_plots`` uses too.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from utils.general import LOGGER
from utils.ops import xywh2xyxy

# 20 visually distinct colors (RGB hex), indexed by class id modulo 20.
_HEX = (
    "E6194B", "3CB44B", "FFE119", "4363D8", "F58231", "911EB4", "46F0F0", "F032E6", "BCF60C", "FABEBE",
    "008080", "E6BEFF", "9A6324", "FFFAC8", "800000", "AAFFC3", "808000", "FFD8B1", "000075", "808080",
)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in _HEX)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
PRED_CONF_THRESHOLD = 0.25  # predictions below this confidence are not drawn by plot_images

# results.csv columns shown by plot_results, in grid order (row 1: train losses + P/R, row 2: val losses + mAPs)
RESULTS_COLUMNS = (
    "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
    "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
)


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Palette color for class ``i`` as an (R, G, B) tuple, or (B, G, R) when ``bgr``."""
    c = PALETTE[int(i) % len(PALETTE)]
    return (c[2], c[1], c[0]) if bgr else c


def _text_color(bg: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on background ``bg`` (channel order does not matter much)."""
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _ascii(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))


def class_name(names: Mapping[int, str] | Sequence[str] | None, c: int) -> str:
    """Name of class ``c`` from a list or dict of names, falling back to the id as a string."""
    if names is not None:
        try:
            return str(names[c])
        except (KeyError, IndexError, TypeError):
            pass
    return str(c)


class Annotator:
    """Draws boxes and labels onto a contiguous uint8 HxWx3 numpy image in place, with cv2 only.

    Colors are given in the image's own channel order (use ``colors(i, bgr=True)`` for BGR images).
    """

    def __init__(self, im: np.ndarray, line_width: int | None = None):
        if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3):
            raise TypeError("Annotator needs a uint8 numpy image of shape (h, w, 3)")
        self.im = im if im.flags.c_contiguous and im.flags.writeable else np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # text thickness
        self.fs = self.lw / 3  # font scale

    def rectangle(self, xyxy, color=(128, 128, 128), width: int | None = None, filled: bool = False):
        p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
        cv2.rectangle(self.im, p1, p2, tuple(int(v) for v in color), -1 if filled else (width or self.lw), cv2.LINE_AA)

    def text(self, xy, text: str, txt_color=(255, 255, 255), bg_color=None, scale: float | None = None):
        """Write ``text`` with its top-left corner at ``xy``, optionally on a filled background box."""
        fs, text = scale or self.fs, _ascii(text)
        tf = max(int(round(fs * 1.5)), 1)
        (w, h), base = cv2.getTextSize(text, _FONT, fs, tf)
        x, y = int(xy[0]), int(xy[1])
        if bg_color is not None:
            cv2.rectangle(self.im, (x, y), (x + w + 2, y + h + base + 2), tuple(int(v) for v in bg_color), -1)
        cv2.putText(self.im, text, (x + 1, y + h + 1), _FONT, fs, tuple(int(v) for v in txt_color), tf, cv2.LINE_AA)

    def box_label(self, xyxy, label: str = "", color=(128, 128, 128), txt_color=None, min_y: int = 0,
                  max_x: int | None = None):
        """Box outline in ``color``; ``label`` on a filled tab above the box, or just inside its top edge
        when the tab would cross ``min_y`` (the image top, or a mosaic tile's top); shifted left when it
        would cross ``max_x`` (a mosaic tile's right edge: text widths differ between OpenCV versions)."""
        self.rectangle(xyxy, color)
        if not label:
            return
        label = _ascii(label)
        txt_color = txt_color or _text_color(color)
        (w, h), base = cv2.getTextSize(label, _FONT, self.fs, self.tf)
        x1, y1 = int(xyxy[0]), int(xyxy[1])
        if max_x is not None and x1 + w > max_x:
            x1 = max(int(max_x) - w, 0)
        outside = y1 - h - base >= min_y  # room for the tab above the box
        y_top = y1 - h - base if outside else y1
        cv2.rectangle(self.im, (x1, y_top), (x1 + w, y_top + h + base), tuple(int(v) for v in color), -1, cv2.LINE_AA)
        cv2.putText(self.im, label, (x1, y_top + h), _FONT, self.fs, tuple(int(v) for v in txt_color), self.tf,
                    cv2.LINE_AA)

    def result(self) -> np.ndarray:
        return self.im


# ----------------------------------------------------------------------------------------------- helpers
def _to_numpy(x) -> np.ndarray:
    """torch tensor (any device) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()  # half/bfloat16 -> float32 (numpy has no bfloat16)
        return x.numpy()
    return np.asarray(x)


def _images_hwc_uint8(images) -> np.ndarray:
    """(bs, 3, h, w) uint8 or float (0-1 or 0-255) images -> (bs, h, w, 3) uint8."""
    ims = _to_numpy(images)
    if ims.ndim != 4 or ims.shape[1] != 3:
        raise ValueError(f"plot_images expects images of shape (bs, 3, h, w), got {tuple(ims.shape)}")
    if ims.dtype != np.uint8:
        ims = ims.astype(np.float32)
        if ims.size and ims.max() <= 1.0:
            ims = ims * 255.0
        ims = np.clip(ims, 0, 255).round().astype(np.uint8)
    return ims.transpose(0, 2, 3, 1)


def new_figure(rows: int, cols: int, figsize: tuple[float, float], margins: dict | None = None):
    """A Figure on its own Agg canvas (no pyplot, no global backend) and its axes as a flat array.

    ``margins`` (``subplots_adjust`` arguments) fix the layout, which saves the extra draw that
    tight_layout costs (about half the time of a 10-panel figure); without them tight_layout is used.
    Shared with ``utils.evaluation.metric_plots`` so every figure in the project is made one way.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, tight_layout=margins is None)
    FigureCanvasAgg(fig)
    if margins is not None:
        fig.subplots_adjust(**margins)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes.ravel()


def save_figure(fig, path, dpi: int = 200) -> Path:
    """Write ``fig`` to ``path`` (parent folders created), then clear it to free its artists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.clear()
    return path


# ---------------------------------------------------------------------------------------------- plot_images
def _make_mosaic(ims: np.ndarray, max_size: int) -> tuple[np.ndarray, float, int]:
    """Tile (n, h, w, 3) images on a white square grid; shrink so the longer side is <= max_size.

    Returns the RGB mosaic, the scale applied to every tile and the grid side ``ns``.
    """
    n, h, w, _ = ims.shape
    ns = math.ceil(n ** 0.5)
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i, im in enumerate(ims):
        r, c = divmod(i, ns)
        mosaic[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    scale = min(1.0, max_size / (ns * max(h, w)))
    if scale < 1:
        size = (math.ceil(scale * ns * w), math.ceil(scale * ns * h))
        mosaic = cv2.resize(mosaic, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(mosaic), scale, ns


def _draw_tile_boxes(ann: Annotator, t: np.ndarray, origin, tile_wh, normalized: bool, scale: float, names):
    """Draw one tile's targets (rows of cls, x, y, w, h[, conf]) with the tile's top-left at ``origin``."""
    x0, y0 = origin
    tw, th = tile_wh
    boxes = xywh2xyxy(t[:, 1:5])
    boxes *= np.array([tw, th, tw, th]) if normalized else scale  # tile pixels
    inset = ann.lw  # an outline of width lw is centred on its coordinates: keep it inside the tile
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(inset, tw - 1 - inset) + x0
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(inset, th - 1 - inset) + y0
    is_pred = t.shape[1] > 5
    for row, box in zip(t, boxes):
        c = int(row[0])
        if is_pred and row[5] < PRED_CONF_THRESHOLD:
            continue
        label = class_name(names, c) + (f" {row[5]:.2f}" if is_pred else "")
        ann.box_label(box, label, color=colors(c), min_y=y0, max_x=x0 + tw - 1 - inset)


def plot_images(images, targets=None, paths=None, fname="images.jpg", names=None, max_size: int = 1920,
                max_subplots: int = 16) -> Path:
    """Save a grid mosaic of up to ``max_subplots`` images with their boxes; returns the written path.

    images: (bs, 3, h, w) RGB, uint8 or float (0-1 or 0-255), torch tensor or numpy array.
    targets: (n, 6) [batch_idx, cls, x, y, w, h] labels or (n, 7) [..., conf] predictions; boxes are
        center-xywh, either normalized to 0-1 (when every coordinate is <= 1.1) or in input pixels.
        Predictions show their confidence and those with conf < 0.25 are skipped.
    paths: per-image file paths, whose names are written on the tiles. names: class names (list/dict);
        class ids are shown where a name is missing.
    """
    ims = _images_hwc_uint8(images)[:max_subplots]
    bs, h, w, _ = ims.shape
    mosaic, scale, ns = _make_mosaic(ims, max_size)
    th, tw = int(h * scale), int(w * scale)
    ann = Annotator(mosaic, line_width=max(round((th + tw) / 2 * 0.006), 1))

    t = _to_numpy(targets).astype(np.float64) if targets is not None else np.zeros((0, 6))
    t = t.reshape(-1, t.shape[-1]) if t.size else np.zeros((0, 6))
    if t.shape[1] not in (6, 7):
        raise ValueError(f"targets must have 6 or 7 columns, got {t.shape[1]}")
    normalized = bool(t.size == 0 or np.abs(t[:, 2:6]).max() <= 1.1)

    for i in range(bs):
        x0, y0 = (i % ns) * tw, (i // ns) * th
        ann.rectangle((x0, y0, x0 + tw - 1, y0 + th - 1), (255, 255, 255), width=1)  # tile border
        ti = t[t[:, 0].astype(int) == i, 1:]
        if len(ti):
            _draw_tile_boxes(ann, ti, (x0, y0), (tw, th), normalized, scale, names)
        if paths is not None and i < len(paths):
            ann.text((x0 + 3, y0 + 3), Path(str(paths[i])).name[:40], (220, 220, 220), bg_color=(40, 40, 40),
                     scale=max(ann.fs * 0.8, 0.35))

    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(fname), cv2.cvtColor(ann.result(), cv2.COLOR_RGB2BGR)):
        raise OSError(f"cv2.imwrite could not write {fname}")
    return fname


# ---------------------------------------------------------------------------------------------- plot_labels
def _boxes_panel(labels: np.ndarray, size: int = 1000, max_boxes: int = 1000) -> np.ndarray:
    """White square with the first ``max_boxes`` boxes drawn centered, outlining each box's shape."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    boxes = labels[:max_boxes].copy()
    boxes[:, 1:3] = 0.5
    xyxy = xywh2xyxy(boxes[:, 1:5]) * size
    for c, b in zip(boxes[:, 0].astype(int), xyxy):
        cv2.rectangle(canvas, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), colors(c), 1, cv2.LINE_AA)
    return canvas


def _plot_label_correlogram(labels: np.ndarray, path: Path) -> Path:
    """4x4 pair plot of x, y, w, h: histograms on the diagonal, 2D histograms elsewhere (no seaborn)."""
    from matplotlib.colors import LogNorm

    fig, axes = new_figure(4, 4, (8, 8))
    cols = ("x", "y", "width", "height")
    for k, ax in enumerate(axes):
        i, j = divmod(k, 4)
        if i == j:
            ax.hist(labels[:, 1 + i], bins=50, range=(0, 1), color="#4363D8")
        else:
            ax.hist2d(labels[:, 1 + j], labels[:, 1 + i], bins=40, range=((0, 1), (0, 1)), cmap="Blues",
                      norm=LogNorm())
        ax.set_xlim(0, 1)
        ax.set_xlabel(cols[j] if i == 3 else "")
        ax.set_ylabel(cols[i] if j == 0 else "")
    return save_figure(fig, path)


def plot_labels(labels, names=(), save_dir=Path(""), correlogram: bool = True) -> Path | None:
    """Write ``labels.jpg`` (2x2: class counts, first 1000 boxes centered, x-y and w-h 2D histograms).

    labels: (n, 5) [cls, x, y, w, h] normalized. names: class names (list/dict) for the bar labels.
    With ``correlogram`` also writes ``labels_correlogram.jpg`` (pair plot of x, y, w, h; pure matplotlib).
    Returns the path of labels.jpg, or None (with a warning) when there are no labels.
    """
    labels = _to_numpy(labels).astype(np.float64).reshape(-1, 5)
    save_dir = Path(save_dir)
    if not len(labels):
        LOGGER.warning("plot_labels: no labels to plot, skipping labels.jpg")
        return None
    LOGGER.info(f"Plotting labels to {save_dir / 'labels.jpg'}...")
    cls = labels[:, 0].astype(int)
    nc = max(int(cls.max()) + 1, len(names) if names is not None else 0)

    from matplotlib.colors import LogNorm

    fig, ax = new_figure(2, 2, (8, 8))
    counts = np.bincount(cls, minlength=nc)
    ax[0].bar(range(nc), counts, width=0.8, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel("instances")
    if names is not None and len(names) and nc < 30:
        ax[0].set_xticks(range(nc))
        ax[0].set_xticklabels([class_name(names, i) for i in range(nc)], rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")

    ax[1].imshow(_boxes_panel(labels))
    ax[1].set_title(f"first {min(len(labels), 1000)} boxes, centered", fontsize=9)
    ax[1].axis("off")

    for a, (i, j, xl, yl) in zip(ax[2:], ((1, 2, "x", "y"), (3, 4, "width", "height"))):
        a.hist2d(labels[:, i], labels[:, j], bins=40, range=((0, 1), (0, 1)), cmap="Blues", norm=LogNorm())
        a.set_xlabel(xl)
        a.set_ylabel(yl)
        a.set_xlim(0, 1)
        a.set_ylim(0, 1)
    path = save_figure(fig, save_dir / "labels.jpg")
    if correlogram:
        _plot_label_correlogram(labels, save_dir / "labels_correlogram.jpg")
    return path


# --------------------------------------------------------------------------------------------- plot_results
def smooth(y: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Gaussian smoothing of a 1-D series, edges padded with the end values (same length as ``y``)."""
    y = np.asarray(y, dtype=np.float64)
    radius = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(y, radius, mode="edge"), k, mode="valid")


def _read_results_csv(file: Path):
    """results.csv as a DataFrame with stripped column names, or None (with a warning) if unusable."""
    import pandas as pd

    if not file.is_file():
        LOGGER.warning(f"plot_results: {file} not found, no results plot written")
        return None
    try:
        df = pd.read_csv(file, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        LOGGER.warning(f"plot_results: could not read {file}: {e}")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        LOGGER.warning(f"plot_results: {file} has no rows, no results plot written")
        return None
    return df.apply(pd.to_numeric, errors="coerce")


def plot_results(file="results.csv", save_dir=None) -> Path | None:
    """Write ``results.png``: the 10 loss/metric curves of a YOLOv5 v7.0 results.csv vs epoch (2x5 grid).

    ``save_dir`` defaults to the CSV's folder. Columns are matched by name after stripping spaces; a
    missing column leaves its panel empty with a note. Series with >= 5 finite points also get a
    Gaussian-smoothed line. A missing or empty CSV logs a warning and returns None.
    """
    file = Path(file)
    df = _read_results_csv(file)
    if df is None:
        return None
    save_dir = Path(save_dir) if save_dir is not None else file.parent
    x = df["epoch"].to_numpy() if "epoch" in df.columns else np.arange(len(df))

    margins = dict(left=0.04, right=0.99, bottom=0.05, top=0.95, wspace=0.3, hspace=0.25)
    fig, ax = new_figure(2, 5, (12, 6), margins)
    for a, col in zip(ax, RESULTS_COLUMNS):
        a.set_title(col, fontsize=12)
        if col not in df.columns:
            a.text(0.5, 0.5, "not in CSV", ha="center", va="center", transform=a.transAxes, color="gray")
            continue
        y = df[col].to_numpy(dtype=np.float64)
        a.plot(x, y, marker=".", label="results", linewidth=2, markersize=8)
        finite = np.isfinite(y)
        if finite.sum() >= 5:
            a.plot(x[finite], smooth(y[finite]), ":", label="smooth", linewidth=2)
    ax[0].legend()
    LOGGER.info(f"Plotting results to {save_dir / 'results.png'}")
    return save_figure(fig, save_dir / "results.png")


# --------------------------------------------------------------------------------- study and feature maps
STUDY_COLUMNS = ("P", "R", "mAP50", "mAP50-95", "box_loss", "obj_loss", "cls_loss", "pre_ms", "inference_ms", "nms_ms")


def plot_val_study(files, sizes, save_dir) -> Path:
    """Write ``study.png`` from ``val.py --task study``'s ``study_*.txt`` files (one row per image size in
    ``sizes``, columns ``STUDY_COLUMNS``): mAP50-95 against image size, and against inference time."""
    fig, ax = new_figure(1, 2, (10, 4))
    for f in files:
        rows = np.loadtxt(f, dtype=np.float64, ndmin=2)
        label = Path(f).stem.removeprefix("study_")
        ax[0].plot(sizes, rows[:, 3] * 100, ".-", linewidth=2, markersize=8, label=label)
        ax[1].plot(rows[:, 8], rows[:, 3] * 100, ".-", linewidth=2, markersize=8, label=label)
    for a, xlabel in zip(ax, ("image size (pixels)", "inference (ms/img)")):
        a.grid(alpha=0.2)
        a.set_xlabel(xlabel)
        a.set_ylabel("mAP50-95 (%)")
        a.legend(loc="lower right")
    path = Path(save_dir) / "study.png"
    LOGGER.info(f"Plotting study to {path}")
    return save_figure(fig, path, dpi=150)


def feature_visualization(x, module_type: str, stage: int, save_dir, n: int = 32, tile: int = 96) -> Path | None:
    """Write ``stage{stage}_{module_type}_features.png``: the first ``n`` channels of the first image of the
    feature map ``x`` (b, c, h, w), each scaled to 0-255 on its own and drawn as a ``tile``-pixel grey square,
    8 to a row with 2-pixel gaps. Other shapes (not a map) are skipped: None."""
    if not hasattr(x, "shape") or x.ndim != 4 or min(x.shape[2:]) < 2:
        return None
    maps = x[0, :n].detach().float().cpu().numpy()
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    maps = ((maps - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)
    cols = min(8, len(maps))
    rows = math.ceil(len(maps) / cols)
    h, w = maps.shape[1:]
    th, tw = (tile, max(1, round(tile * w / h))) if h >= w else (max(1, round(tile * h / w)), tile)
    canvas = np.full((rows * (th + 2), cols * (tw + 2)), 255, dtype=np.uint8)
    for k, m in enumerate(maps):
        r, c = divmod(k, cols)
        canvas[r * (th + 2):r * (th + 2) + th, c * (tw + 2):c * (tw + 2) + tw] = cv2.resize(
            m, (tw, th), interpolation=cv2.INTER_NEAREST)
    path = Path(save_dir) / f"stage{stage}_{module_type}_features.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cv2.imwrite could not write {path}")
    return path
