"""Mosaic geometry: where the tiles of a 4-image (YOLOv5) or 9-image (YOLOv7) mosaic go, and the canvas they make.

Both mosaics are one operation: each image is placed with its top-left corner at a point of the canvas (possibly
outside it) and whatever falls outside is cut off; its labels move by the same offset and are clipped to the
canvas. Only the corners differ, so each layout is a function from the tiles' sizes to their corners, and
``compose`` builds the canvas for either. Boxes are pixel ``xyxy`` in rows ``[cls, x1, y1, x2, y2]``.
"""
from __future__ import annotations

import numpy as np

from utils.ops import xywhn2xyxy

FILL = 114  # the grey of uncovered canvas (and of letterbox and warp borders)


def paste_tile(canvas: np.ndarray, im: np.ndarray, x: int, y: int) -> None:
    """Copy ``im`` onto ``canvas`` with its top-left corner at ``(x, y)``; the part outside the canvas is cut off."""
    h, w = im.shape[:2]
    x1, y1 = max(x, 0), max(y, 0)
    x2, y2 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = im[y1 - y:y2 - y, x1 - x:x2 - x]


def mosaic4_corners(sizes, xc: int, yc: int) -> list[tuple[int, int]]:
    """Top-left corners of 4 tiles of ``(h, w)`` sizes meeting at ``(xc, yc)``: top-left, top-right, bottom-left,
    bottom-right (YOLOv5's layout)."""
    (h0, w0), (h1, _), (_, w2), _ = sizes
    return [(xc - w0, yc - h0), (xc, yc - h1), (xc - w2, yc), (xc, yc)]


def mosaic9_corners(sizes, s: int, xc: int, yc: int) -> list[tuple[int, int]]:
    """Top-left corners of 9 tiles of ``(h, w)`` sizes (long side at most ``s``) in YOLOv7's layout: the first at
    ``(s, s)`` of a 3s x 3s canvas, the others around it clockwise from the top, each beside the previous one; then
    shifted by ``(-xc, -yc)``, the corner of the 2s x 2s window that is kept (``0 <= xc, yc < s`` keeps part of
    every tile and the whole centre tile)."""
    (h0, w0), hp, wp = sizes[0], 0, 0  # hp, wp: the previous tile's size
    corners = []
    for i, (h, w) in enumerate(sizes):
        x, y = [(s, s), (s, s - h), (s + wp, s - h), (s + w0, s), (s + w0, s + hp), (s + w0 - w, s + h0),
                (s + w0 - wp - w, s + h0), (s - w, s + h0 - h), (s - w, s + h0 - hp - h)][i]
        corners.append((x - xc, y - yc))
        hp, wp = h, w
    return corners


def compose(images, labels, corners, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` canvas with each image pasted at its corner, and all labels (each image's normalized
    ``[cls, x, y, w, h]``) as canvas pixels ``xyxy``, clipped to the canvas (``random_perspective`` drops the boxes
    left with no area)."""
    canvas = np.full((size, size, 3), FILL, dtype=np.uint8)
    placed = []
    for im, lb, (x, y) in zip(images, labels, corners):
        paste_tile(canvas, im, x, y)
        lb = lb.copy()
        if lb.size:
            lb[:, 1:] = xywhn2xyxy(lb[:, 1:], im.shape[1], im.shape[0], x, y)
        placed.append(lb)
    placed = np.concatenate(placed, 0)
    placed[:, 1:] = placed[:, 1:].clip(0, size)
    return canvas, placed
