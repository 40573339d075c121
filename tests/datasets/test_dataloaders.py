"""Dataset config, label verification and cache, augmentation and loader determinism.

Every dataset here is built from real COCO128 images and labels copied to a temp folder, with
bad data injected on purpose; counts are asserted exactly.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import COCO128_YAML
from utils.datasets import dataset_config
from utils.datasets.augmentations import letterbox, random_perspective
from utils.datasets.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.datasets.dataset_config import check_dataset, register_generator
from utils.general import LOGGER
from utils.datasets.label_cache import CACHE_SUFFIX, STAT_KEYS, img2label_paths, summarize

COCO = COCO128_YAML.parent
COCO_IMAGES = COCO / "images" / "train2017"
COCO_LABELS = COCO / "labels" / "train2017"
URL = "https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip"
HYP = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 5.0, "translate": 0.1, "scale": 0.5,
       "shear": 2.0, "perspective": 0.0, "flipud": 0.5, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.5}

pytestmark = pytest.mark.skipif(not COCO_IMAGES.is_dir(), reason="shared coco128 dataset not present")


# ----- fixtures -----

@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Fallback caches go under ~/.cache: keep them inside the test's temp folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def logs():
    """Records of the project logger (a handler on it directly: it may not propagate to root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    old = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    yield records
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(old)


def _read_rows(f: Path) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in f.read_text().splitlines() if line.strip()],
                    dtype=np.float32).reshape(-1, 5)


def _copy_real(root: Path, n: int) -> list[str]:
    """Copy the first n labelled COCO128 images (and labels) to root/images/train, root/labels/train."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    stems = sorted(p.stem for p in COCO_IMAGES.glob("*.jpg") if (COCO_LABELS / f"{p.stem}.txt").is_file())[:n]
    for s in stems:
        shutil.copy(COCO_IMAGES / f"{s}.jpg", root / "images" / "train" / f"{s}.jpg")
        shutil.copy(COCO_LABELS / f"{s}.txt", root / "labels" / "train" / f"{s}.txt")
    return stems


@pytest.fixture
def clean_ds(tmp_path) -> Path:
    root = tmp_path / "clean"
    _copy_real(root, 8)
    return root / "images" / "train"


@pytest.fixture
def bad_ds(tmp_path):
    """8 usable images with every kind of label problem, plus 3 unusable image files.

    Returns (images dir, {stem: expected labels}, expected stats).
    """
    root = tmp_path / "bad"
    stems = _copy_real(root, 8)
    im_dir, lb_dir = root / "images" / "train", root / "labels" / "train"
    expected = {s: _read_rows(lb_dir / f"{s}.txt") for s in stems}

    def append(stem, *lines):
        with open(lb_dir / f"{stem}.txt", "a") as f:
            f.write("".join(f"{x}\n" for x in lines))

    append(stems[0], "0 0.5 0.5 0.2")  # 4 columns
    append(stems[1], "99 0.5 0.5 0.2 0.2")  # class out of range for nc=80
    append(stems[2], "1 1.5 0.5 0.2 0.2")  # coordinate 1.5
    first = (lb_dir / f"{stems[3]}.txt").read_text().splitlines()[0]
    append(stems[3], first, first)  # 2 duplicate rows
    (lb_dir / f"{stems[4]}.txt").unlink()  # missing label file -> background
    expected[stems[4]] = np.zeros((0, 5), np.float32)
    append(stems[5], "3 0.1 0.1 0.4 0.1 0.4 0.3 0.1 0.3")  # polygon -> box
    expected[stems[5]] = np.vstack([expected[stems[5]], [[3, 0.25, 0.2, 0.3, 0.2]]]).astype(np.float32)
    (lb_dir / f"{stems[6]}.txt").write_text("")  # empty -> background
    expected[stems[6]] = np.zeros((0, 5), np.float32)
    append(stems[7], "2 0.5 0.5 0.0 0.1", "1.5 0.5 0.5 0.1 0.1", "a 0.5 0.5 0.1 0.1", "5 1.0005 0.5 0.1 0.1")
    expected[stems[7]] = np.vstack([expected[stems[7]], [[5, 1.0, 0.5, 0.1, 0.1]]]).astype(np.float32)

    real = (im_dir / f"{stems[0]}.jpg").read_bytes()
    (im_dir / "truncated.jpg").write_bytes(real[: len(real) // 2])
    shutil.copy(lb_dir / f"{stems[0]}.txt", lb_dir / "truncated.txt")  # labels of a skipped image never count
    (im_dir / "notimage.jpg").write_text("this is not a JPEG\n")
    cv2.imwrite(str(im_dir / "tiny.jpg"), cv2.imread(str(im_dir / f"{stems[0]}.jpg"))[:8, :8])

    stats = {**dict.fromkeys(STAT_KEYS, 0), "images": 8, "backgrounds": 2, "missing": 1, "empty": 1,
             "corrupt": 1, "not_image": 1, "too_small": 1, "columns": 1, "class_range": 1, "coords": 1,
             "size": 1, "class_not_int": 1, "not_number": 1, "duplicates": 2, "polygon": 1, "clipped": 1,
             "boxes": sum(len(v) for v in expected.values())}
    return im_dir, expected, stats


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


# ----- check_dataset -----

def test_check_dataset_coco128():
    d = check_dataset(COCO128_YAML)
    assert d["nc"] == 80 and len(d["names"]) == 80 and d["names"][0] == "person"
    assert Path(d["train"]) == COCO_IMAGES.resolve() and Path(d["val"]).is_dir() and Path(d["path"]) == COCO.resolve()


def test_check_dataset_missing_with_download(tmp_path):
    cfg = tmp_path / "coco128.yaml"
    cfg.write_text(yaml.safe_dump({"path": "../datasets/coco128", "train": "images/train2017",
                                   "val": "images/train2017", "names": {0: "person", 1: "bicycle"}, "download": URL}))
    with pytest.raises(FileNotFoundError) as e:
        check_dataset(cfg)
    want = (tmp_path.parent / "datasets" / "coco128" / "images" / "train2017").resolve()
    assert f"download {URL} and unzip it so that {want} exists" in str(e.value)
    cfg.write_text(yaml.safe_dump({"path": "x", "train": "a", "val": "a", "nc": 1, "download": "ask Alice"}))
    with pytest.raises(FileNotFoundError, match="'download:' entry says how to get it .*ask Alice"):
        check_dataset(cfg)


def test_check_dataset_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope") as e:
        check_dataset({"path": str(tmp_path), "train": "nope", "val": "nope", "nc": 1})
    assert "download" not in str(e.value)


def test_check_dataset_names_nc_and_relative_path(tmp_path, clean_ds):
    sub = tmp_path / "cfg"
    sub.mkdir()
    cfg = sub / "d.yaml"
    cfg.write_text(yaml.safe_dump({"path": "../clean", "train": "images/train", "val": ["images/train"],
                                   "names": {1: "b", 0: "a"}}))
    d = check_dataset(cfg)
    assert d["names"] == ["a", "b"] and d["nc"] == 2
    assert d["train"] == str(clean_ds) and d["val"] == [str(clean_ds)] and "test" not in d
    with pytest.raises(ValueError, match="nc=3"):
        check_dataset({"path": str(tmp_path / "clean"), "train": "images/train", "val": "images/train",
                       "nc": 3, "names": ["a", "b"]})
    assert check_dataset({"path": str(tmp_path / "clean"), "train": "images/train", "val": "images/train",
                          "nc": 2})["names"] == ["class0", "class1"]


def test_check_dataset_txt_split_relative_to_path(tmp_path, clean_ds):
    root = clean_ds.parents[1]
    ims = sorted(clean_ds.glob("*.jpg"))
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text(f"./images/train/{ims[0].name}\nimages/train/{ims[1].name}\n")
    d = check_dataset({"path": str(root), "train": "lists/train.txt", "val": "images/train", "nc": 80})
    assert d["train"] == [str(ims[0]), str(ims[1])]
    ds = LoadImagesAndLabels(d["train"], img_size=128, nc=80)
    assert ds.im_files == [str(ims[0]), str(ims[1])]


def test_check_dataset_generator(tmp_path, monkeypatch):
    calls = []

    def gen(root: Path):
        calls.append(root)
        (root / "images" / "train").mkdir(parents=True)

    monkeypatch.setitem(dataset_config.GENERATORS, "unit-test", gen)  # removed again at teardown
    register_generator("unit-test", gen)
    d = check_dataset({"path": str(tmp_path / "gen"), "train": "images/train", "val": "images/train",
                       "nc": 1, "generate": "unit-test"})
    assert calls == [tmp_path / "gen"] and Path(d["train"]).is_dir()
    with pytest.raises(ValueError, match="unit-test"):  # unknown name lists the registered ones
        check_dataset({"path": str(tmp_path / "x"), "train": "a", "val": "a", "nc": 1, "generate": "nope"})


def test_check_dataset_generates_shapes(tmp_path):
    """The real synthetic generator, reached through the lazy import of utils.datasets.synthetic."""
    pytest.importorskip("utils.datasets.synthetic")
    d = check_dataset({"path": str(tmp_path / "shapes"), "train": "images/train", "val": "images/val",
                       "names": ["circle", "square", "triangle"], "generate": "shapes"})
    ds = LoadImagesAndLabels(d["val"], img_size=160, nc=d["nc"])
    assert ds.stats["images"] == len(ds) > 0 and ds.stats["boxes"] > 0 and not ds.problems


# ----- verification, summary and label cache -----

def test_bad_data_counts_and_labels(bad_ds, logs):
    im_dir, expected, stats = bad_ds
    ds = LoadImagesAndLabels(im_dir, img_size=128, nc=80, prefix="train: ")
    assert ds.stats == stats
    assert sorted(Path(f).stem for f in ds.im_files) == sorted(expected)
    for f, lb in zip(ds.im_files, ds.labels):
        np.testing.assert_array_equal(lb, expected[Path(f).stem], err_msg=f)
    line = summarize(stats, "train: ")[0]
    assert line == ("train: 8 images, {} boxes, 2 backgrounds (1 missing label file, 1 empty), 1 corrupt image, "
                    "1 non-image file, 1 image under 10 px skipped, 6 bad lines dropped (1 wrong column count, "
                    "1 non-numeric value, 1 class not an integer, 1 class out of range, 1 coordinates outside 0..1, "
                    "1 non-positive width/height), 2 duplicate rows removed, 1 polygon converted to boxes, "
                    "1 line clipped to 0..1").format(stats["boxes"])
    assert any(r.levelno == logging.WARNING and r.getMessage() == line for r in logs)
    debug = [r.getMessage() for r in logs if r.levelno == logging.DEBUG]
    assert len(debug) == len(ds.problems) == 11 and any("truncated" in m for m in debug)
    assert len(ds) == 8 and all(ds[i][0].shape == (3, 128, 128) for i in range(len(ds)))  # no crash on load


def test_clean_data_logs_info_only(clean_ds, logs):
    LoadImagesAndLabels(clean_ds, img_size=128, nc=80)
    assert not [r for r in logs if r.levelno >= logging.WARNING]


def test_label_cache_written_reused_invalidated(bad_ds, logs):
    im_dir, _, stats = bad_ds
    lb_dir = im_dir.parents[1] / "labels" / "train"
    old = lb_dir.parent / "train.cache"  # a YOLOv5 pickle: must be neither read nor touched
    old.write_bytes(b"\x80\x04 not for us")
    ds1 = LoadImagesAndLabels(im_dir, img_size=128, nc=80)
    cache = lb_dir.parent / f"train{CACHE_SUFFIX}"
    assert not ds1.label_cache_used and ds1.n_scanned == 11 and cache.is_file()
    assert ds1.label_cache_file == str(cache)

    logs.clear()
    ds2 = LoadImagesAndLabels(im_dir, img_size=128, nc=80)
    assert ds2.label_cache_used and ds2.n_scanned == 0 and ds2.stats == stats
    assert any("Using label cache" in r.getMessage() for r in logs)
    assert all(np.array_equal(a, b) for a, b in zip(ds1.labels, ds2.labels))
    assert old.read_bytes() == b"\x80\x04 not for us"

    f = Path(img2label_paths([ds1.im_files[0]])[0])
    f.write_text(f.read_text() + "7 0.5 0.5 0.25 0.25\n")
    ds3 = LoadImagesAndLabels(im_dir, img_size=128, nc=80)
    assert not ds3.label_cache_used and ds3.n_scanned == 11
    assert ds3.stats["boxes"] == stats["boxes"] + 1
    assert ds3.labels[0][-1].tolist() == [7, 0.5, 0.5, 0.25, 0.25]
    ds4 = LoadImagesAndLabels(im_dir, img_size=128, nc=100)  # nc decides 'class out of range': rescan
    assert not ds4.label_cache_used and ds4.stats["class_range"] == 0


def _assert_fallback(im_dir: Path, home: Path):
    ds = LoadImagesAndLabels(im_dir, img_size=128, nc=80)
    assert not ds.label_cache_used
    assert Path(ds.label_cache_file).parent == home / ".cache" / "yolo-reparam" and Path(ds.label_cache_file).is_file()
    ds2 = LoadImagesAndLabels(im_dir, img_size=128, nc=80)
    assert ds2.label_cache_used and ds2.label_cache_file == ds.label_cache_file


def test_label_cache_fallback_read_only_folder(clean_ds, tmp_path):
    """Mode 555 counts as read-only even for root (os.access alone would say writable)."""
    labels_root = clean_ds.parents[1] / "labels"
    labels_root.chmod(0o555)
    try:
        _assert_fallback(clean_ds, tmp_path / "home")
        assert not list(labels_root.glob(f"*{CACHE_SUFFIX}"))
    finally:
        labels_root.chmod(0o755)


def test_disk_cache_read_only_images_folder(clean_ds, tmp_path):
    clean_ds.chmod(0o555)
    try:
        ds = LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache="disk")
        assert not list(clean_ds.glob("*.npy"))
        assert all((tmp_path / "home" / ".cache" / "yolo-reparam") in f.parents and f.is_file() for f in ds.npy_files)
    finally:
        clean_ds.chmod(0o755)


def test_label_cache_fallback_unwritable_target(clean_ds, tmp_path):
    """Root-proof variant: the cache path is taken by a folder, so writing there fails for anyone."""
    (clean_ds.parents[1] / "labels" / f"train{CACHE_SUFFIX}").mkdir()
    _assert_fallback(clean_ds, tmp_path / "home")


def test_no_usable_images(tmp_path):
    empty = tmp_path / "empty" / "images"
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(empty)):
        LoadImagesAndLabels(empty)
    bad = tmp_path / "bad" / "images"
    bad.mkdir(parents=True)
    (bad / "a.jpg").write_text("text")
    with pytest.raises(ValueError, match=str(bad)):
        LoadImagesAndLabels(bad)


# ----- samples, augmentation, loader -----

def test_val_sample_maps_back_to_original(clean_ds):
    ds = LoadImagesAndLabels(clean_ds, img_size=320, nc=80)
    for i in range(3):
        img, labels, path, ((h0, w0), (gain, pad)) = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 320, 320)
        H, W = img.shape[1:]
        xywh = labels[:, 2:].numpy()
        xyxy = np.stack([(xywh[:, 0] - xywh[:, 2] / 2) * W - pad[0], (xywh[:, 1] - xywh[:, 3] / 2) * H - pad[1],
                         (xywh[:, 0] + xywh[:, 2] / 2) * W - pad[0], (xywh[:, 1] + xywh[:, 3] / 2) * H - pad[1]], 1)
        xyxy /= gain[0]
        orig = ds.labels[i][:, 1:]
        want = np.stack([(orig[:, 0] - orig[:, 2] / 2) * w0, (orig[:, 1] - orig[:, 3] / 2) * h0,
                         (orig[:, 0] + orig[:, 2] / 2) * w0, (orig[:, 1] + orig[:, 3] / 2) * h0], 1)
        np.testing.assert_allclose(xyxy, want.clip(0, [w0, h0, w0, h0]), atol=2.0)
        assert (w0, h0) == tuple(ds.shapes[i])
        # the tensor is CHW RGB of the OpenCV (BGR) decode, long side resized to 320 and letterboxed
        r = 320 / max(h0, w0)
        ref = cv2.resize(cv2.imread(path), (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=cv2.INTER_AREA)
        ref = letterbox(ref, 320, scaleup=False)[0]
        assert np.array_equal(img.numpy().transpose(1, 2, 0)[..., ::-1], ref)


def test_augmented_batches(clean_ds):
    loader, ds = create_dataloader(clean_ds, 256, 4, 32, hyp=HYP, augment=True, shuffle=True, workers=0, nc=80)
    for epoch in range(2):
        for imgs, labels, paths, shapes in _batches(loader, epoch):
            assert imgs.shape == (4, 3, 256, 256) and imgs.dtype == torch.uint8 and len(paths) == 4
            assert shapes == (None,) * 4  # mosaic probability 1
            assert labels.shape[1] == 6 and len(labels) > 0
            assert set(labels[:, 0].long().tolist()) <= set(range(4))
            assert ((labels[:, 1] >= 0) & (labels[:, 1] < 80)).all()
            assert ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all() and (labels[:, 4:] > 0).all()


def test_random_perspective_needs_rng_and_is_reproducible():
    im = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    t = np.array([[0, 10, 10, 40, 40]], dtype=np.float32)
    with pytest.raises(TypeError):
        random_perspective(im, t.copy(), degrees=10)
    a = random_perspective(im, t.copy(), degrees=10, rng=np.random.default_rng(5))
    b = random_perspective(im, t.copy(), degrees=10, rng=np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_determinism_across_workers_and_epochs(clean_ds):
    kw = dict(hyp=HYP, augment=True, shuffle=True, seed=3, nc=80)
    l0, _ = create_dataloader(clean_ds, 192, 4, 32, workers=0, **kw)
    l2, _ = create_dataloader(clean_ds, 192, 4, 32, workers=2, **kw)
    if (os.cpu_count() or 1) >= 2:
        assert l2.num_workers == 2
    results = {}
    for epoch in (1, 2):
        b0, b2 = _batches(l0, epoch), _batches(l2, epoch)
        for x, y in zip(b0, b2):
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
        results[epoch] = b0
    assert not torch.equal(results[1][0][0], results[2][0][0])
    # loader.set_epoch reached the dataset copies in the workers: each sample equals a fresh
    # dataset's sample at that epoch, and the same image differs between epochs
    ref = LoadImagesAndLabels(clean_ds, 192, 4, augment=True, hyp=HYP, seed=3, nc=80)
    for epoch in (1, 2):
        ref.set_epoch(epoch)
        imgs, _, paths, _ = results[epoch][0]
        for img, p in zip(imgs, paths):
            assert torch.equal(img, ref[ref.im_files.index(p)][0])
    ref.set_epoch(1)
    a = ref[0][0]
    ref.set_epoch(2)
    assert not torch.equal(a, ref[0][0])


def test_distributed_sampler_splits_dataset(clean_ds, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for rank in (0, 1):
        loader, ds = create_dataloader(clean_ds, 128, 2, 32, rank=rank, shuffle=True, workers=0, nc=80)
        loader.set_epoch(4)
        assert loader.sampler.epoch == 4 and ds.epoch == 4
        seen.append([p for batch in loader for p in batch[2]])
    assert len(seen[0]) == len(seen[1]) == 4 and sorted(seen[0] + seen[1]) == sorted(ds.im_files)


def test_rect_batches(clean_ds):
    loader, ds = create_dataloader(clean_ds, 320, 3, 32, rect=True, pad=0.5, shuffle=True, workers=0, nc=80)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by aspect ratio
    n = 0
    for imgs, labels, paths, shapes in _batches(loader, 0):
        assert imgs.shape[2] % 32 == 0 and imgs.shape[3] % 32 == 0
        assert max(imgs.shape[2:]) <= 320 + 32  # pad=0.5 adds at most one stride
        n += len(imgs)
    assert n == len(ds) == 8


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_image_cache_matches_uncached(clean_ds, cache):
    plain = LoadImagesAndLabels(clean_ds, img_size=160, nc=80)
    cached = LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache=cache)
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], cached[i][0])
    if cache == "disk":
        assert all(Path(f"{f}.npy").is_file() for f in plain.im_files)
        assert cached.npy_files[0] == Path(f"{plain.im_files[0]}.npy")


def test_auto_cache_keeps_decoded_images_in_ram_when_they_fit(clean_ds, logs):
    """train.py's default: the 8 images fit easily, so they are decoded once, up front, and the samples are the ones
    an uncached dataset gives."""
    plain = LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache="off")
    auto = LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache="auto")
    assert all(im is None for im in plain.ims) and all(im is not None for im in auto.ims)
    assert any("cache auto" in r.getMessage() and "caching them in RAM" in r.getMessage() for r in logs)
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], auto[i][0])


def test_auto_cache_decodes_as_used_beyond_its_share_of_free_memory(clean_ds, logs, monkeypatch):
    """Over the budget (a quarter of the free memory, split between DDP processes) nothing is cached, and one line
    says so; a 4-process run gets a quarter of one process's budget."""
    from utils.datasets import dataloaders

    need = sum(im.nbytes for im in LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache="ram").ims)
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(dataloaders, "AUTO_CACHE_SHARE", 2 * need / avail)  # fits one process, not four
    assert all(im is not None for im in LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache="auto").ims)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert all(im is None for im in LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache="auto").ims)
    assert any("decoding them as they are used" in r.getMessage() for r in logs)


def test_training_caches_by_default_and_not_with_cache_off(tiny_data, tmp_path, logs):
    import train

    for cache, cached in ((None, True), ("off", False)):
        logs.clear()
        train.run(data=str(tiny_data), cfg="yolov5n.yaml", imgsz=64, batch_size=8, workers=0, epochs=1, noval=True,
                  noplots=True, cache=cache, project=str(tmp_path), name=f"c{cache}")
        said = [r.getMessage() for r in logs if "cache auto" in r.getMessage() and "train: " in r.getMessage()]
        assert (len(said) == 1 and "caching them in RAM" in said[0]) if cached else not said, said


def test_disk_cache_fallback(clean_ds, tmp_path):
    jpg = sorted(clean_ds.glob("*.jpg"))[0]
    blocked = jpg.with_name(f"{jpg.name}.npy")
    blocked.mkdir()  # np.save cannot replace a folder: the .npy goes to the fallback dir
    ds = LoadImagesAndLabels(clean_ds, img_size=160, nc=80, cache="disk")
    i = ds.im_files.index(str(jpg))
    assert ds.npy_files[i].is_file() and (tmp_path / "home" / ".cache" / "yolo-reparam") in ds.npy_files[i].parents
    assert torch.equal(ds[i][0], LoadImagesAndLabels(clean_ds, img_size=160, nc=80)[i][0])


@pytest.mark.parametrize("world_size", [2, 3])
def test_rect_batches_under_ddp_stay_in_one_shape_group(world_size, monkeypatch):
    """Each rank gets whole rect batches (a plain DistributedSampler mixes shape groups and the batch cannot
    be stacked); across ranks every image comes once, and all ranks take the same number of steps."""
    images = COCO_IMAGES
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    per_rank = []
    for rank in range(world_size):
        loader, ds = create_dataloader(images, 64, 5, 32, rect=True, pad=0.5, rank=rank, workers=0, nc=80)
        loader.set_epoch(1)
        paths = []
        for imgs, labels, batch_paths, shapes in loader:  # stacking a mixed batch would raise here
            groups = {int(ds.batch[ds.im_files.index(p)]) for p in batch_paths}
            assert len(groups) == 1 and tuple(imgs.shape[2:]) == tuple(ds.batch_shapes[groups.pop()])
            paths.extend(batch_paths)
        per_rank.append((len(loader), paths))
    assert len({n for n, _ in per_rank}) == 1  # same step count on every rank
    everything = [p for _, paths in per_rank for p in paths]
    assert set(everything) == set(ds.im_files)
    assert len(everything) - len(ds.im_files) <= 5 * (world_size - 1)  # repeats only to even out the last round


def test_disk_cache_keeps_same_stem_images_apart(tmp_path):
    """photo.jpg and photo.png in one folder: each trains with its own pixels (YOLOv5 shares one .npy)."""
    src = sorted(COCO_IMAGES.glob("*.jpg"))[:2]
    root = tmp_path / "stems"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "photo.jpg"), cv2.imread(str(src[0])))
    cv2.imwrite(str(root / "images" / "photo.png"), cv2.imread(str(src[1])))
    (root / "labels" / "photo.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    plain = LoadImagesAndLabels(root / "images", img_size=128, nc=80)
    cached = LoadImagesAndLabels(root / "images", img_size=128, nc=80, cache="disk")
    assert len(set(cached.npy_files)) == 2
    for i in range(2):
        assert torch.equal(plain[i][0], cached[i][0])
    assert not torch.equal(cached[0][0], cached[1][0])
