"""Detection dataset and loader (YOLOv5 v7.0 semantics): verified labels, mosaic, rect batches.

* Labels come from ``utils.datasets.label_cache`` (verified once per pair, cached as JSON, bad data reported).
* Augmentation randomness comes from ``np.random.default_rng([seed, epoch, index])`` per sample, so
  a batch depends only on (seed, epoch), not on worker count or scheduling.
"""
from __future__ import annotations

import math
import os
import random
import zlib
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from utils.datasets.augmentations import (augment_hsv, crop_objects, letterbox, mixup, paste_in,
                                         random_perspective)
from utils.datasets.mosaic import compose, mosaic4_corners, mosaic9_corners
from utils.general import LOGGER
from utils.hyperparameters import AUGMENTATION_DEFAULTS
from utils.datasets.label_cache import (IMG_FORMATS, NUM_THREADS, fallback_cache_dir, img2label_paths, load_verified_labels,
                               report_labels, short_hash, summarize, writable_dir)
from utils.ops import xywhn2xyxy, xyxy2xywhn
from utils.textfiles import read_list

PASTE_SAMPLES, PASTE_SOURCES = 30, 16  # paste_in's objects: at least this many, from at most this many images
# cache='auto' (train.py's default): decoded images in RAM when they take at most this share of the free memory
# per training process. A mosaic decodes 4 images per sample, so without a cache each image is decoded ~4 times an
# epoch, and decoding is ~60% of a worker's time (benchmarks/README.md, "Data pipeline alone")
AUTO_CACHE_SHARE = 0.25


def world_size() -> int:
    """Training processes: the initialised process group's size, else WORLD_SIZE (torchrun), else 1."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def list_image_files(path, prefix: str = "") -> list[str]:
    """Image files from a folder (recursive), an image file, a ``.txt`` list, or a list of those.

    Relative ``.txt`` entries are relative to the ``.txt``'s folder (``check_dataset`` expands a YAML's
    ``.txt`` splits against the dataset root itself). Listed images that do not exist are kept here
    and reported as 'image file not found' by the verification.
    """
    files: list[str] = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if p.is_dir():
            files += [str(f) for f in p.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS and f.is_file()]
        elif p.suffix == ".txt" and p.is_file():
            for entry in read_list(p):
                q = Path(entry)
                files.append(os.path.normpath(q if q.is_absolute() else p.parent / q))
        elif p.suffix[1:].lower() in IMG_FORMATS:
            files.append(str(p))
        else:
            raise FileNotFoundError(f"{prefix}{p} does not exist (expected a folder, an image or a .txt list)")
    return sorted(dict.fromkeys(files))


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

class LoadImagesAndLabels(Dataset):
    """YOLO-format detection dataset. ``__getitem__`` returns (uint8 CHW RGB tensor, (n, 6) labels
    ``[0, cls, x, y, w, h]`` normalized, path, shapes) where shapes is None for mosaics and otherwise
    ``((h0, w0), ((gain_h, gain_w), (padw, padh)))`` for mapping predictions back to the original.

    ``img_size`` is the long side (int), or an ``(h, w)`` every image is letterboxed to (validation of
    files exported for a fixed, possibly non-square, input; no augmentation or rect batches then)."""

    def __init__(self, path, img_size=640, batch_size=16, augment=False, hyp=None, rect=False, cache=None,
                 single_cls=False, stride=32, pad=0.0, prefix="", nc=None, seed=0):
        if cache not in (None, False, "ram", "disk", "auto", "off"):
            raise ValueError(f"cache must be None, 'ram', 'disk', 'auto' or 'off', got {cache!r}")
        self.fixed_shape = tuple(int(x) for x in img_size) if isinstance(img_size, (tuple, list)) else None
        if self.fixed_shape and (augment or rect):
            raise ValueError(f"a fixed (h, w) image size {self.fixed_shape} is for validation: no augment or rect")
        img_size = max(self.fixed_shape) if self.fixed_shape else img_size
        self.img_size, self.augment, self.rect, self.stride = img_size, augment, rect, stride
        self.hyp = {**AUGMENTATION_DEFAULTS, **(hyp or {})}
        self.mosaic = augment and not rect  # rect batches need each image at its own aspect ratio
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.seed, self.epoch, self.prefix = int(seed), 0, prefix

        im_files = list_image_files(path, prefix)
        if not im_files:
            raise FileNotFoundError(f"{prefix}No images found in {path}")
        info = load_verified_labels(im_files, nc, prefix)
        self.label_cache_used, self.label_cache_file, self.n_scanned = (
            info["from_cache"], info["cache_file"], info["n_scanned"])
        entries, self.stats = info["entries"], info["stats"]
        self.problems = [p for e in entries for p in e["problems"]]
        report_labels(self.stats, entries, prefix)
        good = [e for e in entries if e["status"] == "ok"]
        if not good:
            raise ValueError(f"{prefix}No usable images in {path}: {summarize(self.stats)[0]}")

        self.im_files = [e["im_file"] for e in good]
        self.label_files = img2label_paths(self.im_files)
        self.labels = [np.array(e["labels"], dtype=np.float32).reshape(-1, 5) for e in good]
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.shapes = np.array([e["shape"] for e in good], dtype=np.int64)  # (w, h) per image
        self.batch = np.floor(np.arange(len(good)) / batch_size).astype(int)
        self.batch_shapes = self._rect_shapes(pad) if rect else None

        n = len(self.im_files)
        self.ims: list[np.ndarray | None] = [None] * n
        self.im_hw0: list = [None] * n
        self.im_hw: list = [None] * n
        self.npy_files: list[Path | None] = [None] * n
        if cache == "auto":
            cache = "ram" if self._ram_fits(share=AUTO_CACHE_SHARE / world_size(), auto=True) else None
        if cache and cache != "off":
            self._cache_images(cache)

    def __len__(self):
        return len(self.im_files)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream; the loader forwards its epoch here."""
        self.epoch = int(epoch)

    def _rect_shapes(self, pad: float) -> np.ndarray:
        """Sort by aspect ratio and give each batch the smallest stride-multiple (h, w) that fits it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes, ar = self.shapes[order], ar[order]
        nb = self.batch[-1] + 1
        shapes = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            if ari.max() < 1:
                shapes[i] = [ari.max(), 1]  # all wide: full width, reduced height
            elif ari.min() > 1:
                shapes[i] = [1, 1 / ari.min()]  # all tall
        return np.ceil(shapes * self.img_size / self.stride + pad).astype(int) * self.stride

    # ----- image loading and caching -----

    def load_image(self, i: int):
        """Return (BGR image resized so its long side is img_size, or to fit the fixed shape, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        npy = self.npy_files[i]
        im = np.load(npy) if npy is not None else cv2.imread(self.im_files[i])
        if im is None:
            raise FileNotFoundError(f"{self.prefix}Image unreadable (changed since verification?): {self.im_files[i]}")
        h0, w0 = im.shape[:2]
        fit = self.fixed_shape
        r = min(fit[0] / h0, fit[1] / w0) if fit else self.img_size / max(h0, w0)
        if r != 1:
            # INTER_AREA is the better downscaler; training (augment) keeps YOLOv5's faster LINEAR
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            size = (math.ceil(w0 * r), math.ceil(h0 * r))
            if fit:  # rounded as letterbox rounds, so the image fits and is resized once
                size = (max(1, round(w0 * r)), max(1, round(h0 * r)))
            im = cv2.resize(im, size, interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def _npy_path(self, i: int) -> Path:
        """``photo.jpg.npy`` beside the image: the full name, so photo.jpg and photo.png never share a cache."""
        f = Path(self.im_files[i])
        if writable_dir(f.parent):
            return f.with_name(f"{f.name}.npy")
        return fallback_cache_dir() / "npy" / short_hash(str(f.parent.resolve())) / f"{f.name}.npy"

    def _cache_disk_one(self, i: int) -> int:
        """Save the decoded image as .npy once (rewritten when the image is newer); return its bytes."""
        f, target = self.im_files[i], self._npy_path(i)
        if not (target.is_file() and target.stat().st_mtime_ns >= os.stat(f).st_mtime_ns):
            im = cv2.imread(f)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, im, allow_pickle=False)
            except OSError:  # folder writable by mode bits but not really (read-only mount, quota)
                target = fallback_cache_dir() / "npy" / short_hash(str(Path(f).parent.resolve())) / target.name
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, im, allow_pickle=False)
        self.npy_files[i] = target
        return target.stat().st_size

    def _cache_ram_one(self, i: int) -> int:
        self.ims[i], self.im_hw0[i], self.im_hw[i] = self.load_image(i)
        return self.ims[i].nbytes

    def _ram_fits(self, share: float = 1 / 1.1, auto: bool = False) -> bool:
        """Whether the decoded images (at their training size) take at most ``share`` of the free memory; says
        so when not (``auto``: also when they do, since the cache was not asked for)."""
        r = self.img_size / self.shapes.max(1)
        need = float((np.ceil(self.shapes[:, 0] * r) * np.ceil(self.shapes[:, 1] * r) * 3).sum())
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return not auto  # unknown platform: trust a user's choice, do not guess for them
        fits = need <= share * avail
        if auto:
            LOGGER.info(f"{self.prefix}cache auto: the decoded images take {need / 1e9:.2f} GB, " + (
                f"at most {share:.0%} of the {avail / 1e9:.1f} GB free: caching them in RAM (--cache off to stop)"
                if fits else f"more than {share:.0%} of the {avail / 1e9:.1f} GB free: decoding them as they are "
                "used (--cache disk stores them decoded on disk)"))
        elif not fits:
            LOGGER.warning(f"{self.prefix}cache='ram' needs {need * 1.1 / 1e9:.1f} GB, {avail / 1e9:.1f} GB free: "
                           "not caching")
        return fits

    def _cache_images(self, cache: str) -> None:
        if cache == "ram" and not self._ram_fits():
            return
        fn = self._cache_disk_one if cache == "disk" else self._cache_ram_one
        with ThreadPool(NUM_THREADS) as pool:
            total = sum(tqdm(pool.imap(fn, range(len(self))), total=len(self), leave=False,
                             desc=f"{self.prefix}Caching images ({cache})"))
        LOGGER.info(f"{self.prefix}Cached {len(self)} images ({total / 1e9:.2f} GB, {cache})")

    # ----- samples -----

    def load_mosaic(self, index: int, rng: np.random.Generator, companions=None):
        """4 images around a random centre in a 2s x 2s canvas, then random_perspective crops to s x s.
        The 3 companions are random images unless given."""
        s = self.img_size
        yc, xc = (int(rng.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        companions = companions if companions else rng.integers(0, len(self), size=3)
        indices = [int(i) for i in rng.permutation([index, *companions])]
        images = [self.load_image(i)[0] for i in indices]
        img, labels = compose(images, [self.labels[i] for i in indices],
                              mosaic4_corners([im.shape[:2] for im in images], xc, yc), 2 * s)
        return self._warp(img, labels, self.mosaic_border, rng)

    def load_mosaic9(self, index: int, rng: np.random.Generator, companions=None):
        """YOLOv7's 9-image mosaic: the image in the centre of a 3s x 3s layout, 8 others around it, a random
        2s x 2s window of it, then random_perspective crops to s x s. The 8 companions are random unless given."""
        s = self.img_size
        companions = companions if companions is not None and len(companions) == 8 else rng.integers(0, len(self), 8)
        indices = [int(index), *(int(i) for i in companions)]
        xc, yc = (int(rng.uniform(0, s)) for _ in range(2))
        images = [self.load_image(i)[0] for i in indices]
        img, labels = compose(images, [self.labels[i] for i in indices],
                              mosaic9_corners([im.shape[:2] for im in images], s, xc, yc), 2 * s)
        return self._warp(img, labels, self.mosaic_border, rng)

    def _any_mosaic(self, index: int, rng: np.random.Generator, companions=None):
        """A 9-image mosaic for a ``mosaic9`` share of the mosaics (YOLOv7's 0.2), else a 4-image one; ``companions``:
        the 8 a 9-image mosaic takes, of which a 4-image one takes the first 3. Draws nothing when mosaic9 is 0."""
        share = self.hyp["mosaic9"]
        if share and rng.random() < share:
            return self.load_mosaic9(index, rng, companions)
        return self.load_mosaic(index, rng, companions and companions[:3])

    def _warp(self, img, labels, border, rng: np.random.Generator):
        hyp = self.hyp
        return random_perspective(img, labels, degrees=hyp["degrees"], translate=hyp["translate"], scale=hyp["scale"],
                                  shear=hyp["shear"], perspective=hyp["perspective"], border=border, rng=rng)

    def _paste_samples(self, rng: np.random.Generator) -> list:
        """Objects for paste_in: half the objects (at random) of random training images at mosaic-tile scale, until
        there are ``PASTE_SAMPLES`` or ``PASTE_SOURCES`` images were drawn (YOLOv7 cuts them from 4-image mosaics,
        whose random borders cut objects in parts; whole images keep them whole)."""
        samples = []
        for i in rng.integers(0, len(self), PASTE_SOURCES):
            if len(samples) >= PASTE_SAMPLES:
                break
            if len(self.labels[i]):
                im, _, (h, w) = self.load_image(int(i))
                labels = self.labels[i].copy()
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h)
                samples += crop_objects(im, labels, rng)
        return samples

    def _load_letterboxed(self, index: int, rng: np.random.Generator):
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.fixed_shape or self.img_size
        img, ratio, pad = letterbox(img, tuple(int(x) for x in shape) if self.rect else shape,
                                    auto=False, scaleup=self.augment)
        shapes = (h0, w0), ((h * ratio[1] / h0, w * ratio[0] / w0), pad)  # both resizes, should letterbox shrink it
        labels = self.labels[index].copy()
        if labels.size:
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        if self.augment:
            img, labels = self._warp(img, labels, (0, 0), rng)
        return img, labels, shapes

    def _color_and_paste(self, img, labels, rng: np.random.Generator):
        """HSV jitter, then YOLOv7's paste_in with probability ``paste_in`` (no draw when it is 0); pixel labels."""
        hyp = self.hyp
        augment_hsv(img, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"], rng=rng)
        if hyp["paste_in"] and rng.random() < hyp["paste_in"]:
            labels = paste_in(img, labels, self._paste_samples(rng), rng)
        return labels

    def _flip(self, img, labels, rng: np.random.Generator):
        hyp = self.hyp
        if rng.random() < hyp["flipud"]:
            img = np.flipud(img)
            labels[:, 2] = 1 - labels[:, 2]
        if rng.random() < hyp["fliplr"]:
            img = np.fliplr(img)
            labels[:, 1] = 1 - labels[:, 1]
        return img, labels

    def __getitem__(self, index):
        """``index``: an image index (augmented as of ``set_epoch``) or ``(epoch, index[, partners])`` as the
        training loader's sampler yields it, so persistent workers never need the main process's epoch;
        ``partners`` (``--image-weights``) are the images mosaic and mixup combine it with."""
        epoch, index, partners = (*index, None)[:3] if isinstance(index, tuple) else (self.epoch, index, None)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])  # the sample's only randomness
        if self.mosaic and rng.random() < self.hyp["mosaic"]:
            own, other, others = ImageWeightSampler.split_partners(partners)
            img, labels = self._any_mosaic(index, rng, own)
            shapes = None
            if rng.random() < self.hyp["mixup"]:
                other = other if partners else int(rng.integers(len(self)))
                img, labels = mixup(img, labels, *self._any_mosaic(other, rng, others), rng=rng)
        else:
            img, labels, shapes = self._load_letterboxed(index, rng)
        if self.augment:
            labels = self._color_and_paste(img, labels, rng)
        labels = labels.astype(np.float32)
        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            img, labels = self._flip(img, labels, rng)
        labels_out = torch.zeros((len(labels), 6))
        if len(labels):
            labels_out[:, 1:] = torch.from_numpy(np.ascontiguousarray(labels))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        """Stack images; concatenate labels with column 0 = index of the image in the batch."""
        im, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return torch.stack(im, 0), torch.cat(labels, 0), paths, shapes


class QuadCollate:
    """``--quad``: each group of 4 samples becomes one image of twice the size (YOLOv5's collate_fn4), either the
    4 images tiled 2x2 (first top-left, second below it, third right of it, fourth bottom-right) or the first
    image upsampled 2x (bilinear), with even odds; a batch of n samples gives n // 4 images. The draw is a
    function of ``seed`` and the batch's file names, so it does not depend on worker scheduling."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, batch):
        im, labels, paths, shapes = zip(*batch)
        n = len(im) // 4
        if n == 0:
            raise ValueError(f"--quad needs batches of at least 4 images, got {len(im)}")
        rng = np.random.default_rng([self.seed, zlib.crc32("\n".join(map(str, paths)).encode())])
        out_im, out_labels = [], []
        for i in range(0, 4 * n, 4):
            if rng.random() < 0.5:
                big = F.interpolate(im[i][None].float(), scale_factor=2.0, mode="bilinear", align_corners=False)[0]
                out_im.append(big.round().clamp(0, 255).to(im[i].dtype))
                out_labels.append(labels[i].clone())
                continue
            out_im.append(torch.cat((torch.cat(im[i:i + 2], 1), torch.cat(im[i + 2:i + 4], 1)), 2))
            tiles = []
            for k, (dx, dy) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                lb = labels[i + k].clone()
                lb[:, 2:] *= 0.5  # x, y, w, h: half the size of the merged image
                lb[:, 2] += 0.5 * dx
                lb[:, 3] += 0.5 * dy
                tiles.append(lb)
            out_labels.append(torch.cat(tiles, 0))
        for j, lb in enumerate(out_labels):
            lb[:, 0] = j
        return torch.stack(out_im, 0), torch.cat(out_labels, 0), paths[:n], shapes[:n]


# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------

class SeededSampler(Sampler):
    """Single-process sampler; the shuffle order is a function of (seed, epoch) only."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self):
        return self.n


class ImageWeightSampler(Sampler):
    """``--image-weights``: n images drawn with replacement in proportion to ``weights`` (YOLOv5's class-
    balanced sampling), each with the 7 companions its mosaic and mixup take, drawn the same way (YOLOv5
    draws those from its weighted index list too). The draws are a function of (seed, epoch, weights), made
    in the main process, so persistent workers never need the weights."""

    # 3 mosaic companions, a mixup image and its 3 companions, then 5 more companions for each should its mosaic
    # take 9 images (drawn after the first 7, so a 4-image mosaic's draws do not depend on mosaic9)
    PARTNERS = 7 + 2 * 5

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0
        self.weights = np.ones(n)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_weights(self, weights) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"image weights must be {self.n} finite non-negative numbers, not all zero")
        self.weights = w

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        p = self.weights / self.weights.sum()
        draws = rng.choice(self.n, size=(self.n, 8), p=p)
        draws = np.concatenate((draws, rng.choice(self.n, size=(self.n, self.PARTNERS - 7), p=p)), 1)
        return iter((int(row[0]), tuple(int(i) for i in row[1:])) for row in draws)

    @staticmethod
    def split_partners(partners):
        """``(own companions, mixup image, its companions)`` from a sample's partners (all None without them); the
        companions are 8, of which a 4-image mosaic takes the first 3."""
        if not partners:
            return None, None, None
        return (*partners[:3], *partners[7:12]), partners[3], (*partners[4:7], *partners[12:17])

    def __len__(self):
        return self.n


class DistributedRectBatchSampler(Sampler):
    """Whole rect batches dealt to DDP ranks in turn: batch b goes to rank b % world_size.

    A plain DistributedSampler gives each rank every world_size-th image, so one rank's batch would span
    several rect shape groups and fail to stack. Here every batch is one of the dataset's shape groups
    (``dataset.batch``); ranks with one batch fewer repeat the first batches so that all ranks take the
    same number of steps (DDP needs it), as DistributedSampler pads with repeated images.
    """

    def __init__(self, group: np.ndarray, world_size: int, rank: int):
        self.groups = [np.flatnonzero(group == b).tolist() for b in range(int(group.max()) + 1)]
        self.world_size, self.rank = world_size, rank
        self.per_rank = math.ceil(len(self.groups) / world_size)

    def set_epoch(self, epoch: int) -> None:  # rect order is fixed (sorted by aspect ratio)
        pass

    def __iter__(self):
        padded = [self.groups[i % len(self.groups)] for i in range(self.per_rank * self.world_size)]
        return iter(padded[self.rank::self.world_size])

    def __len__(self):
        return self.per_rank


class EpochTaggedSampler(Sampler):
    """Yields ``(epoch, index)`` (or lists of them, around a batch sampler): the epoch travels with every
    index, so workers can stay alive across epochs (no re-fork of a large trainer process per epoch) and
    each sample's augmentation is still seeded by (seed, epoch, index)."""

    def __init__(self, inner):
        self.inner, self.epoch = inner, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self):
        for item in self.inner:  # an index, (index, partners), or a list of indices (batch sampler)
            if isinstance(item, list):
                yield [(self.epoch, i) for i in item]
            else:
                yield (self.epoch, *item) if isinstance(item, tuple) else (self.epoch, item)

    def __len__(self):
        return len(self.inner)


class EpochDataLoader(DataLoader):
    """DataLoader whose ``set_epoch`` reaches the sampler (order, and the epoch each index carries to the
    persistent workers) and the dataset (for direct ``dataset[i]`` access)."""

    def set_epoch(self, epoch: int) -> None:
        for sampler in (self.sampler, self.batch_sampler):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def seed_worker(worker_id: int, seed: int = 0) -> None:
    """Seed the global RNGs of a worker (the dataset itself uses explicit generators; this covers
    anything else) and keep OpenCV single-threaded inside workers (avoids oversubscription)."""
    ws = (torch.initial_seed() + seed) % 2**32  # initial_seed: loader generator (seeded) + worker_id
    np.random.seed(ws)
    random.seed(ws)
    torch.manual_seed(ws)
    cv2.setNumThreads(0)


def create_dataloader(path, imgsz, batch_size, stride, single_cls=False, hyp=None, augment=False, cache=None,
                      pad=0.0, rect=False, rank=-1, workers=8, prefix="", shuffle=False, seed=0, nc=None,
                      image_weights=False, quad=False):
    """Build (loader, dataset). ``batch_size`` is per process; call ``loader.set_epoch(e)`` each epoch.
    ``quad``: batches of ``batch_size // 4`` images of twice the size (``QuadCollate``).
    ``image_weights``: single process; ``loader.sampler.inner.set_weights(w)`` sets each epoch's weights."""
    if image_weights and rank != -1:
        raise ValueError("image weights need a single process (not DDP)")
    if image_weights and rect:  # the weighted draw mixes images of every shape group (YOLOv5 drops rect too)
        LOGGER.warning(f"{prefix}--rect is incompatible with --image-weights; using square batches")
        rect = False
    if rect and shuffle:
        LOGGER.warning(f"{prefix}rect=True is incompatible with shuffle; using shuffle=False")
        shuffle = False
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect, cache=cache,
                                  single_cls=single_cls, stride=int(stride), pad=pad, prefix=prefix, nc=nc,
                                  seed=seed)
    batch_size = min(batch_size, len(dataset))
    if quad and batch_size < 4:
        raise ValueError(f"{prefix}--quad merges groups of 4 images: needs a batch of at least 4 (per process), "
                         f"got {batch_size} (dataset of {len(dataset)} images)")
    n_procs = world_size()
    nw = min((os.cpu_count() or 1) // max(n_procs, 1), batch_size, workers)
    # --quad: a last batch of under 4 images makes no merged image; it is left out
    batching = dict(batch_size=batch_size, drop_last=quad and 0 < len(dataset) % batch_size < 4)
    if rank != -1 and rect:  # each rank's batch must be one rect shape group
        batching = dict(batch_sampler=EpochTaggedSampler(DistributedRectBatchSampler(dataset.batch, n_procs, rank)))
    elif rank != -1:
        batching["sampler"] = EpochTaggedSampler(
            DistributedSampler(dataset, num_replicas=n_procs, rank=rank, shuffle=shuffle, seed=seed))
    elif image_weights:
        batching["sampler"] = EpochTaggedSampler(ImageWeightSampler(len(dataset), seed))
    else:
        batching["sampler"] = EpochTaggedSampler(SeededSampler(len(dataset), shuffle, seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader = EpochDataLoader(dataset, **batching, num_workers=nw, pin_memory=torch.cuda.is_available(),
                             collate_fn=QuadCollate(seed) if quad else LoadImagesAndLabels.collate_fn,
                             worker_init_fn=partial(seed_worker, seed=seed), generator=generator, persistent_workers=nw > 0)
    return loader, dataset
