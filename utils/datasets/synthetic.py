"""The embedded default dataset: seeded synthetic shapes (circle, square, triangle) in YOLO format.

``generate_shapes(root)`` writes::

    root/images/{train,val}/<split>_00000.jpg   160x160 BGR JPEG (quality 95)
    root/labels/{train,val}/<split>_00000.txt   "class x_center y_center width height", normalized
    root/README.txt                             what this is and the parameters it was made with

Every image is drawn from its own ``np.random.Generator`` seeded with ``(seed, split, index)``, so
the output is the same byte for byte on every run (for a given OpenCV/libjpeg build) and does not
depend on generation order. Scenes: a textured background (smooth value noise, a two-colour
gradient or sinusoidal stripes, plus fine grain), then 1-4 flat-coloured shapes of 12-60 px
(at 160 px) whose colour contrasts with the background under them. Shapes may overlap, but every
shape keeps at least ``MIN_VISIBLE`` of its area visible; labels are the tight box of the pixels
of that shape that remain visible in the final image.

Generation is atomic: files go to a hidden temporary folder beside ``root`` that is renamed to
``root`` only once complete, so an interrupted run never leaves a half dataset at ``root``. A
complete ``root`` made with the same parameters is left untouched.

``utils.datasets.dataset_config`` looks this generator up as ``generate: shapes``; this module knows nothing of
it (dependencies point one way) and importing it writes no files.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.atomic import plain_mode, sweep_stale, temporary_dir
from utils.general import LOGGER

CLASS_NAMES = ("circle", "square", "triangle")
SPLITS = ("train", "val")
GENERATOR_VERSION = 1  # bump when the drawing changes, so an old folder is not taken for a new one
DEFAULT_IMGSZ = 160
SIZE_RANGE = (0.075, 0.375)  # object extent as a fraction of the image side: 12-60 px at 160 px
N_OBJECTS = (1, 4)  # objects per image, inclusive
MIN_VISIBLE = 0.6  # fraction of a shape's own area that must stay visible after later shapes
MIN_CONTRAST = 100.0  # Euclidean BGR distance between a shape's colour and the background under it
MAX_SQUARE_ROTATION = 20.0  # degrees; beyond ~30 a square starts to read as a diamond
JPEG_QUALITY = 95
_README = "README.txt"


@dataclass
class Scene:
    """One rendered image with its objects.

    ``boxes`` holds one row per object: ``class, x0, y0, x1, y1`` in pixels, where (x0, y0) is the
    first covered pixel and (x1, y1) is one past the last (so width = x1 - x0). ``instances`` maps
    every pixel to the index of the object visible there, or -1 for background.
    """

    image: np.ndarray  # (H, W, 3) uint8, BGR
    boxes: np.ndarray  # (N, 5) int
    instances: np.ndarray  # (H, W) int16


# ---------------------------------------------------------------- backgrounds
def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _value_noise(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """Smooth multi-colour noise: a coarse random grid upsampled bicubically."""
    cells = int(rng.integers(2, 7))
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1, 3)).astype(np.float32)
    noise = cv2.resize(grid, (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    return _random_color(rng) + noise * rng.uniform(25, 60)


def _gradient(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """A linear blend between two colours along a random direction."""
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:imgsz, 0:imgsz].astype(np.float32) / imgsz
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = _random_color(rng), _random_color(rng)
    return a + t[..., None] * (b - a)


def _stripes(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """Soft sinusoidal stripes of a random period, angle and phase between two close colours."""
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.08, 0.4) * imgsz
    yy, xx = np.mgrid[0:imgsz, 0:imgsz].astype(np.float32)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period
                           + rng.uniform(0, 2 * math.pi))
    a = _random_color(rng)
    b = np.clip(a + rng.uniform(-70, 70, size=3), 0, 255)
    return a + t[..., None] * (b - a)


_BACKGROUNDS = (_value_noise, _gradient, _stripes)


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """A float32 (H, W, 3) textured background with fine grain, values in 0..255."""
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    bg = kind(rng, imgsz) + rng.normal(0, rng.uniform(2, 8), size=(imgsz, imgsz, 3))
    return np.clip(bg, 0, 255).astype(np.float32)


# ---------------------------------------------------------------- shapes
def _shape_mask(rng: np.random.Generator, cls: int, size: float, imgsz: int) -> np.ndarray:
    """A (H, W) bool mask of one filled shape of extent ~``size`` px, fully inside the image."""
    if cls == 0:  # circle
        pts = None
    elif cls == 1:  # square, slightly rotated; the rotated extent must still fit `size`
        theta = math.radians(rng.uniform(-MAX_SQUARE_ROTATION, MAX_SQUARE_ROTATION))
        side = size / (abs(math.cos(theta)) + abs(math.sin(theta)))
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * side / 2
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = corners @ rot.T
    else:  # triangle: near-equilateral, any orientation
        start = rng.uniform(0, 2 * math.pi)
        angles = start + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.25, 0.25, 3)
        pts = np.stack([np.cos(angles), np.sin(angles)], 1)
        pts = pts / np.ptp(pts, axis=0).max() * size  # largest extent == size
        pts -= (pts.max(0) + pts.min(0)) / 2  # centre the box on the origin
    half = size / 2 + 2  # margin for rounding: the whole shape stays inside the image
    cx, cy = rng.uniform(half, imgsz - half, size=2)
    mask = np.zeros((imgsz, imgsz), np.uint8)
    if pts is None:
        cv2.circle(mask, (round(cx), round(cy)), max(round(size / 2), 1), 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        poly = np.round(pts + (cx, cy)).astype(np.int32)
        cv2.fillPoly(mask, [poly], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _contrasting_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour at least MIN_CONTRAST away from the mean background colour ``under``."""
    for _ in range(50):
        color = _random_color(rng)
        if np.linalg.norm(color - under) >= MIN_CONTRAST:
            return color
    return np.where(under < 128, 255.0, 0.0)  # the farthest corner of the colour cube


def render_scene(rng: np.random.Generator, imgsz: int = DEFAULT_IMGSZ,
                 n_objects: tuple[int, int] = N_OBJECTS,
                 background: np.ndarray | None = None) -> Scene:
    """Draw one scene from ``rng``.

    ``background`` replaces the random texture (used by the tests to check box tightness against
    a plain background); the shape colours still contrast with it.
    """
    bg = _background(rng, imgsz) if background is None else np.asarray(background, np.float32).copy()
    image = bg.copy()
    instances = np.full((imgsz, imgsz), -1, np.int16)
    areas: list[int] = []
    classes: list[int] = []
    target = int(rng.integers(n_objects[0], n_objects[1] + 1))
    lo, hi = SIZE_RANGE[0] * imgsz, SIZE_RANGE[1] * imgsz
    for _ in range(target * 20):  # placement attempts
        if len(classes) == target:
            break
        cls = int(rng.integers(len(CLASS_NAMES)))
        mask = _shape_mask(rng, cls, rng.uniform(lo, hi), imgsz)
        trial = instances.copy()
        trial[mask] = len(classes)
        if any(np.count_nonzero(trial == k) < MIN_VISIBLE * areas[k] for k in range(len(classes))):
            continue  # would hide too much of an earlier shape
        color = _contrasting_color(rng, bg[mask].mean(0))
        image[mask] = color
        instances = trial
        areas.append(int(mask.sum()))
        classes.append(cls)
    boxes = np.zeros((len(classes), 5), np.int64)
    for k, cls in enumerate(classes):
        ys, xs = np.nonzero(instances == k)
        boxes[k] = cls, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return Scene(np.clip(np.round(image), 0, 255).astype(np.uint8), boxes, instances)


def yolo_labels(boxes: np.ndarray, imgsz: int) -> str:
    """Pixel boxes ``(class, x0, y0, x1, y1)`` as YOLO label text (normalized xywh, 6 decimals)."""
    lines = []
    for cls, x0, y0, x1, y1 in boxes.tolist():
        xc, yc, w, h = ((x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz, (x1 - x0) / imgsz, (y1 - y0) / imgsz)
        lines.append(f"{cls} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws image ``index`` of ``split``: independent of generation order."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


# ---------------------------------------------------------------- dataset on disk
def _signature(n_train: int, n_val: int, imgsz: int, seed: int) -> str:
    return (f"generator: shapes v{GENERATOR_VERSION} imgsz={imgsz} n_train={n_train} "
            f"n_val={n_val} seed={seed}")


def _readme(signature: str) -> str:
    names = ", ".join(f"{i}: {n}" for i, n in enumerate(CLASS_NAMES))
    return (
        "Synthetic shapes: the project's embedded default detection dataset.\n"
        "Made by utils/datasets/synthetic.py (generate_shapes); delete this folder to regenerate it.\n"
        f"Classes: {names}. Labels are YOLO format: class x_center y_center width height, normalized.\n"
        "Each box is the tight box of the visible pixels of one shape.\n"
        f"{signature}\n"
    )


def _is_complete(root: Path, counts: dict[str, int], signature: str) -> bool:
    """True if ``root`` holds a finished dataset made with these parameters.

    Raises FileExistsError if ``root`` holds something else (another generation, or edited files),
    rather than overwriting it.
    """
    readme = root / _README
    if not readme.is_file():
        return False
    if signature not in readme.read_text().splitlines():
        raise FileExistsError(f"{root} holds a shapes dataset made with other parameters "
                              f"(see {readme}); delete it or choose another folder")
    for split, n in counts.items():
        n_img = sum(1 for _ in (root / "images" / split).glob("*.jpg"))
        n_lbl = sum(1 for _ in (root / "labels" / split).glob("*.txt"))
        if n_img != n or n_lbl != n:
            raise FileExistsError(f"{root}: {split} has {n_img} images and {n_lbl} labels, "
                                  f"expected {n}; delete the folder to regenerate it")
    return True


def _write_sample(out: Path, split: str, index: int, imgsz: int, seed: int) -> None:
    """Render one sample and write its JPEG and label file under ``out``."""
    scene = render_scene(sample_rng(seed, split, index), imgsz)
    stem = f"{split}_{index:05d}"
    ok, buf = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {stem}")
    (out / "images" / split / f"{stem}.jpg").write_bytes(buf.tobytes())
    (out / "labels" / split / f"{stem}.txt").write_text(yolo_labels(scene.boxes, imgsz))


def generate_shapes(root: str | os.PathLike, n_train: int = 400, n_val: int = 100,
                    imgsz: int = DEFAULT_IMGSZ, seed: int = 0) -> Path:
    """Write the synthetic shapes dataset to ``root`` (atomically); return ``root``.

    Does nothing if ``root`` is already a complete dataset made with the same parameters; an empty
    ``root`` folder is replaced; any other existing ``root`` raises FileExistsError.
    """
    root = Path(root).resolve()
    counts = {"train": int(n_train), "val": int(n_val)}
    signature = _signature(counts["train"], counts["val"], imgsz, seed)
    if root.exists():
        if _is_complete(root, counts, signature):
            LOGGER.info(f"Shapes dataset already complete at {root}")
            return root
        if any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not a shapes dataset; delete it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    LOGGER.info(f"Generating shapes dataset ({counts['train']} train, {counts['val']} val, "
                f"{imgsz}x{imgsz}, seed {seed}) at {root}")
    t0 = time.perf_counter()
    # a hidden sibling (same filesystem, so the final rename is atomic), swept once a SIGKILLed generator is gone
    sweep_stale(root.parent)
    tmp = temporary_dir(root.parent, root.name)
    try:
        for split in SPLITS:
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
        jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
        for split, i in tqdm(jobs, desc="Generating shapes", unit="img", leave=False):
            _write_sample(tmp, split, i, imgsz, seed)
        (tmp / _README).write_text(_readme(signature))  # written last: marks the folder complete
        _move_into_place(tmp, root, counts, signature)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOGGER.info(f"Shapes dataset written to {root} in {time.perf_counter() - t0:.1f}s")
    return root


def _move_into_place(tmp: Path, root: Path, counts: dict[str, int], signature: str) -> None:
    """Rename the finished ``tmp`` to ``root``; if another process got there first, keep theirs."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # an empty placeholder folder
    os.chmod(tmp, plain_mode(root, is_dir=True))  # mkdtemp's 0o700 -> what the umask gives a new folder
    try:
        os.rename(tmp, root)
    except OSError:
        if root.exists() and _is_complete(root, counts, signature):
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run finished first
            return
        raise


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``python -m utils.datasets.synthetic --root datasets/shapes``."""
    from utils.general import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("datasets/shapes"), help="output folder")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=DEFAULT_IMGSZ)
    parser.add_argument("--seed", type=int, default=0)
    opt = parser.parse_args(argv)
    setup_logging()
    return generate_shapes(opt.root, opt.n_train, opt.n_val, opt.imgsz, opt.seed)


if __name__ == "__main__":
    main()
