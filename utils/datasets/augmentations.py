"""Image augmentations (YOLOv5 v7.0 semantics): letterbox, HSV jitter, random perspective, mixup; and
YOLOv7's paste-in.

Every random draw comes from an explicit ``rng: np.random.Generator`` argument, never from the
global ``random``/``numpy`` state, so a sample's augmentation depends only on the generator it was
given (the dataset seeds one per (seed, epoch, index)) and not on worker count or call order.
Boxes here are pixel ``xyxy`` in rows ``[cls, x1, y1, x2, y2]``.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def letterbox(im: np.ndarray, new_shape=640, color=(114, 114, 114), auto: bool = False,
              scaleup: bool = True, stride: int = 32):
    """Resize keeping aspect ratio, then pad to ``new_shape`` (int or (h, w)).

    ``auto`` pads only to the next multiple of ``stride`` (minimum rectangle); ``scaleup=False``
    never enlarges (validation keeps small images sharp). Returns (image, (rw, rh), (dw, dh)) with
    dw/dh the padding per side, possibly fractional.
    """
    shape = im.shape[:2]  # h, w
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = max(1, int(round(shape[1] * r))), max(1, int(round(shape[0] * r)))  # w, h; 4000x1 keeps 1 px
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw, dh = dw / 2, dh / 2  # split between both sides
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))  # -0.1/+0.1: an odd pad puts the extra pixel last
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, (r, r), (dw, dh)


def augment_hsv(im: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> np.ndarray:
    """Jitter hue, saturation and value of a BGR uint8 image in place (and return it)."""
    if not (hgain or sgain or vgain):
        return im
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1  # multiplicative gains
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV hue range is 0..179
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=im)
    return im


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Keep boxes (4, n) after augmentation that are > wh_thr px, keep > area_thr of their area
    and have an aspect ratio < ar_thr: drops slivers cut off at the border."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _perspective_matrix(shape_hw, out_wh, degrees, translate, scale, shear, perspective, rng):
    """Compose centre -> perspective -> rotate/scale -> shear -> translate; returns (M, scale)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -shape_hw[1] / 2, -shape_hw[0] / 2  # move the image centre to the origin
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)
    R = np.eye(3)
    a, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_wh[0]
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_wh[1]
    return T @ S @ R @ P @ C, s  # order matters: right-most applies first


def random_perspective(im: np.ndarray, targets: np.ndarray, degrees: float = 10, translate: float = 0.1,
                       scale: float = 0.1, shear: float = 10, perspective: float = 0.0, border=(0, 0),
                       rng: np.random.Generator | None = None):
    """Random affine/perspective warp of an image and its ``[cls, x1, y1, x2, y2]`` pixel targets.

    ``border`` (negative for mosaic: -s/2) crops the output to ``im.shape - 2 * border``. Warped
    boxes are the hull of their warped corners, clipped to the output, then filtered by
    ``box_candidates``. ``rng`` is required (it is last only to keep YOLOv5's argument order).
    """
    if rng is None:
        raise TypeError("random_perspective needs an explicit rng (np.random.Generator)")
    height, width = im.shape[0] + border[0] * 2, im.shape[1] + border[1] * 2
    M, s = _perspective_matrix(im.shape[:2], (width, height), degrees, translate, scale, shear, perspective, rng)
    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=(114, 114, 114))
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=(114, 114, 114))

    n = len(targets)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # four corners per box
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), axis=1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(targets[:, 1:5].T * s, new.T, area_thr=0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator):
    """Blend two images with a Beta(32, 32) ratio (close to 0.5) and keep both label sets."""
    r = rng.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


# YOLOv7's paste-in regions: each a fraction of the image side (tried largest first), each skipped with p=0.2
PASTE_SCALES = (0.75,) * 2 + (0.5,) * 4 + (0.25,) * 4 + (0.125,) * 4 + (0.0625,) * 6


def box_ioa(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of ``box`` (4,) with each of ``boxes`` (n, 4), over the area of that box of ``boxes`` (xyxy):
    the share of each box that ``box`` covers."""
    wh = (np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2])).clip(0)
    return wh.prod(1) / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + eps)


def crop_objects(im: np.ndarray, labels: np.ndarray, rng: np.random.Generator, fraction: float = 0.5) -> list:
    """``round(fraction * n)`` of the n objects of ``im``, at random, each as ``(cls, pixels of its box)``: YOLOv7's
    sample_segments for labels without segments, where the object is its whole box (YOLOv7 masks the pixels
    outside the polygon and, given no polygons, cuts nothing). Boxes are clipped to the image, empty ones skipped."""
    h, w = im.shape[:2]
    samples = []
    for j in rng.choice(len(labels), size=round(fraction * len(labels)), replace=False):
        x1, x2 = np.clip(labels[j, [1, 3]], 0, w - 1).astype(int)
        y1, y2 = np.clip(labels[j, [2, 4]], 0, h - 1).astype(int)
        if x2 > x1 and y2 > y1:
            samples.append((float(labels[j, 0]), im[y1:y2, x1:x2].copy()))
    return samples


def paste_in(im: np.ndarray, labels: np.ndarray, samples: list, rng: np.random.Generator, max_ioa: float = 0.3):
    """YOLOv7's paste-in: for each of ``PASTE_SCALES`` (skipped with p=0.2) a random region up to that fraction of
    the image side; where it is over 20 px a side and covers less than ``max_ioa`` of every box so far (the pasted
    ones included), a random sample of ``samples`` (``(cls, pixels)``, as from ``crop_objects``) is resized to
    fit it (aspect kept) and pasted at its top-left corner, when over 10 px a side. ``im`` changes in place;
    returns ``labels`` (pixel ``[cls, x1, y1, x2, y2]``) with a row for each pasted object."""
    if not samples:
        return labels
    h, w = im.shape[:2]
    rows = [labels.reshape(-1, 5)]
    for scale in PASTE_SCALES:
        if rng.random() < 0.2:
            continue
        mh, mw = (int(rng.integers(1, max(1, int(side * scale)), endpoint=True)) for side in (h, w))
        x1 = max(0, int(rng.integers(0, w, endpoint=True)) - mw // 2)
        y1 = max(0, int(rng.integers(0, h, endpoint=True)) - mh // 2)
        x2, y2 = min(w, x1 + mw), min(h, y1 + mh)
        boxes = np.concatenate(rows, 0)
        if x2 <= x1 + 20 or y2 <= y1 + 20 or (box_ioa(np.array([x1, y1, x2, y2]), boxes[:, 1:5]) >= max_ioa).any():
            continue
        cls, crop = samples[int(rng.integers(len(samples)))]
        r = min((y2 - y1) / crop.shape[0], (x2 - x1) / crop.shape[1])
        rw, rh = int(crop.shape[1] * r), int(crop.shape[0] * r)
        if rw > 10 and rh > 10:
            im[y1:y1 + rh, x1:x1 + rw] = cv2.resize(crop, (rw, rh))
            rows.append(np.array([[cls, x1, y1, x1 + rw, y1 + rh]], dtype=rows[0].dtype))
    return np.concatenate(rows, 0)
