"""How much of each decoded mosaic tile reaches the training image: the ceiling on decoding only what is seen.

    python benchmarks/bench_mosaic_visibility.py [--data ../shared/datasets/coco128] [--hyp data/hyps/hyp.scratch-low.yaml]
        [--imgsz 640] [--samples 2048]

A 4-image mosaic decodes four whole images, pastes them around a random centre of a 2s x 2s canvas and warps the
canvas to the s x s output, so most decoded pixels are cut off. For each sample this replays the training
loader's own random draws (same seeded generator, same order: mosaic draw, centre, companions, order, then the
warp matrix of ``utils.datasets.augmentations._perspective_matrix``), maps the output window back onto the
canvas and measures, per tile, the share of its pixels inside that window, the share of its rows (what a decoder
that can only skip scanlines would save) and how many tiles are not seen at all. Image sizes come from the image
headers (no decoding). Without rotation, shear and perspective (hyp.scratch-low) the window is exact; with them it
is the bounding box of the mapped window, an upper bound on what is seen.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.datasets.augmentations import _perspective_matrix  # noqa: E402
from utils.datasets.dataloaders import list_image_files  # noqa: E402
from utils.datasets.mosaic import mosaic4_corners  # noqa: E402
from utils.general import load_yaml  # noqa: E402
from machine import emit  # noqa: E402  (benchmarks/machine.py)


def image_size(path: str) -> tuple[int, int]:
    """(h, w) from the file's header (PIL reads it without decoding the pixels)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def tile_visibility(sizes: list[tuple[int, int]], hyp: dict, s: int, n_samples: int, seed: int = 0) -> np.ndarray:
    """(n_samples * 4, 2) rows of (visible pixel share, visible row share) per mosaic tile."""
    n = len(sizes)
    rows = []
    for k in range(n_samples):
        epoch, index = divmod(k, n)
        rng = np.random.default_rng([seed, epoch, index])  # LoadImagesAndLabels.__getitem__'s generator
        rng.random()  # the mosaic-or-not draw
        yc, xc = (int(rng.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))  # mosaic_border = -s/2
        tiles = [int(i) for i in rng.permutation([index, *rng.integers(0, n, size=3)])]
        scaled = [(int(np.ceil(h * s / max(h, w))), int(np.ceil(w * s / max(h, w)))) for h, w in (sizes[i] for i in tiles)]
        m, _ = _perspective_matrix((2 * s, 2 * s), (s, s), hyp["degrees"], hyp["translate"], hyp["scale"],
                                   hyp["shear"], hyp["perspective"], rng)
        window = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=float) @ np.linalg.inv(m).T
        window = window[:, :2] / window[:, 2:]
        (wx0, wy0), (wx1, wy1) = window.min(0), window.max(0)
        for (h, w), (x, y) in zip(scaled, mosaic4_corners(scaled, xc, yc)):
            x0, y0 = max(x, 0, wx0), max(y, 0, wy0)  # the tile as pasted (clipped to the canvas) within the window
            x1, y1 = min(x + w, 2 * s, wx1), min(y + h, 2 * s, wy1)
            seen = x1 > x0 and y1 > y0
            rows.append(((x1 - x0) * (y1 - y0) / (h * w) if seen else 0.0, (y1 - y0) / h if seen else 0.0))
    return np.array(rows)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "coco128"), help="dataset folder")
    p.add_argument("--hyp", default=str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--out", default=None)
    opt = p.parse_args(argv)
    files = list_image_files(str(Path(opt.data) / "images"))
    hyp = load_yaml(opt.hyp, "hyperparameter file")
    v = tile_visibility([image_size(f) for f in files], hyp, opt.imgsz, opt.samples)
    lines = [f"{len(files)} images of {opt.data}, {opt.imgsz} px, {Path(opt.hyp).name}, {opt.samples} mosaics "
             f"({len(v)} tiles)", "",
             "| per tile | mean | median |", "| --- | --- | --- |",
             f"| share of decoded pixels in the output | {v[:, 0].mean():.3f} | {np.median(v[:, 0]):.3f} |",
             f"| share of decoded rows in the output | {v[:, 1].mean():.3f} | {np.median(v[:, 1]):.3f} |",
             f"| tiles not in the output at all | {np.mean(v[:, 0] == 0):.3f} | - |"]
    return emit(lines, opt.out)


if __name__ == "__main__":
    main()
