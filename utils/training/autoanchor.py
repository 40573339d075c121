"""AutoAnchor: check how well a model's anchors fit a dataset's boxes, and evolve better ones.

The fit measure is YOLOv5's: for a label and an anchor, the worse of the two side ratios
``min(w/aw, aw/w, h/ah, ah/h)``; a label is recallable when some anchor's ratio exceeds
``1 / thr`` (the loss's ``anchor_t`` rule). Best possible recall (BPR) is the recallable fraction.
Everything random runs on a seeded ``np.random.Generator``, so a seed fixes the result.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from scipy.cluster.vq import kmeans

from models.yolo import check_anchor_order
from utils.general import LOGGER

PREFIX = "AutoAnchor: "
BPR_GOOD = 0.98  # below this the anchors are re-fitted
MUTATION_PROB, MUTATION_SIGMA = 0.9, 0.1


def label_wh(dataset, img_size: int = 640, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pixel (w, h) of every label once the image's long side is scaled to ``img_size``.

    ``dataset.labels``: list of ``(n, 5)`` arrays ``[cls, x, y, w, h]`` (normalised);
    ``dataset.shapes``: ``(N, 2)`` image (w, h). With ``rng``, each image also gets a random scale
    in 0.9..1.1, which keeps a fit that only just works from passing the check.
    """
    shapes = np.asarray(dataset.shapes, dtype=np.float64)
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    if rng is not None:
        shapes = shapes * rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1))
    wh = [np.asarray(labels, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, labels in zip(shapes, dataset.labels)]
    return np.concatenate(wh).astype(np.float32) if wh else np.zeros((0, 2), np.float32)


def _ratios(wh: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (label, anchor) worse-side ratio in (0, 1], and each label's best over anchors."""
    r = wh[:, None] / anchors[None]
    x = np.minimum(r, 1 / r).min(2)
    return x, x.max(1)


def anchor_stats(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """(BPR, anchors above threshold per label) of pixel ``anchors`` ``(n, 2)`` on label ``wh``."""
    x, best = _ratios(wh, anchors)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def check_anchors(dataset, model, thr: float = 4.0, imgsz: int = 640, seed: int = 0) -> float:
    """Log the anchors' fit to ``dataset``; if BPR < 0.98, evolve new ones and keep them if better.

    New anchors are written into the model's ``Detect.anchors`` buffer in place (grid units, on
    its device and dtype). Returns the final BPR (``nan`` when the dataset has no labels).
    """
    m = getattr(model, "module", model).model[-1]  # Detect
    rng = np.random.default_rng(seed)
    wh = label_wh(dataset, imgsz, rng)
    if not len(wh):
        LOGGER.warning(f"{PREFIX}no labels, anchors left unchanged")
        return float("nan")
    stride = m.stride.detach().cpu().double().view(-1, 1, 1)
    anchors = (m.anchors.detach().cpu().double() * stride).view(-1, 2).numpy()  # pixels
    bpr, aat = anchor_stats(wh, anchors, thr)
    msg = f"{PREFIX}{aat:.2f} anchors/target, BPR {bpr:.3f}"
    if bpr >= BPR_GOOD:
        LOGGER.info(f"{msg}. Current anchors fit the dataset")
        return bpr
    LOGGER.info(f"{msg}. Anchors fit the dataset poorly, evolving new ones...")
    new = kmean_anchors(dataset, n=m.na * m.nl, img_size=imgsz, thr=thr, gen=1000, verbose=False, seed=seed)
    new_bpr, _ = anchor_stats(wh, new, thr)
    if new_bpr <= bpr:
        LOGGER.info(f"{PREFIX}new anchors no better (BPR {new_bpr:.3f}), keeping the original anchors")
        return bpr
    with torch.no_grad():
        m.anchors[:] = torch.from_numpy(new).to(m.anchors).view_as(m.anchors)  # pixels, for the order check
        check_anchor_order(m)
        m.anchors /= m.stride.to(m.anchors).view(-1, 1, 1)
    LOGGER.info(f"{PREFIX}new anchors written to the model, BPR {new_bpr:.3f} "
                "(they travel in the checkpoint; copy them into the model YAML to reuse)")
    return new_bpr


def _kmeans(obs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    # SciPy >= 1.15 takes the generator as rng=, older versions as seed=
    key = "rng" if "rng" in inspect.signature(kmeans).parameters else "seed"
    return kmeans(obs, n, iter=30, **{key: rng})[0]


def kmean_anchors(dataset, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  verbose: bool = True, seed: int = 0) -> np.ndarray:
    """Anchors evolved for ``dataset``: k-means on whitened (w, h), then a genetic search.

    ``dataset`` is an object with ``labels`` and ``shapes`` (see :func:`label_wh`) or a plain
    ``(N, 2)`` array of pixel (w, h). Returns ``(n, 2)`` float32 pixel anchors sorted by area.
    The fitness is the mean best ratio over labels, counting only labels above ``1 / thr``.
    """
    rng = np.random.default_rng(seed)
    if hasattr(dataset, "labels"):
        wh0 = label_wh(dataset, img_size)
    else:
        wh0 = np.asarray(dataset, dtype=np.float32).reshape(-1, 2)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        LOGGER.warning(f"{PREFIX}{tiny} of {len(wh0)} labels are smaller than 3 pixels")
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)  # sub-2-pixel labels only add noise
    if not len(wh):
        raise ValueError(f"{PREFIX}no labels of at least 2 pixels to fit anchors to")

    k = None
    if n <= len(wh):
        s = wh.std(0)
        s = np.where(s > 0, s, 1.0)  # one repeated size: nothing to whiten
        k = _kmeans(wh / s, n, rng) * s
        if len(k) != n:  # k-means dropped empty clusters
            k = None
    if k is None:
        LOGGER.warning(f"{PREFIX}k-means could not give {n} anchors, starting from random ones")
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    k = k.astype(np.float32)

    def fitness(anchors):
        _, best = _ratios(wh, anchors)
        return float((best * (best > 1 / thr)).mean())

    f = fitness(k)
    LOGGER.info(f"{PREFIX}evolving {n} anchors on {len(wh)} labels for {gen} generations (k-means fitness {f:.4f})")
    for g in range(gen):
        v = np.ones(k.shape)
        while (v == 1).all():  # mutate until at least one value changes
            mutate = rng.random(k.shape) < MUTATION_PROB
            v = (mutate * rng.random() * rng.standard_normal(k.shape) * MUTATION_SIGMA + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0).astype(np.float32)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
            if verbose:
                LOGGER.info(f"{PREFIX}generation {g}: fitness {f:.4f}")
    k = k[np.argsort(k.prod(1))]
    bpr, aat = anchor_stats(wh0, k, thr)
    LOGGER.info(f"{PREFIX}thr={thr:.2f}: BPR {bpr:.4f}, {aat:.2f} anchors/target, fitness {f:.4f}, "
                f"anchors {', '.join(f'{w:.0f},{h:.0f}' for w, h in k)}")
    return k
