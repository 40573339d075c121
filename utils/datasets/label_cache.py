"""Label scan with its JSON cache: every image/label pair of a dataset verified once, counted, cached.

* Each pair is verified (image readable and whole, label lines well-formed); the result is cached as JSON
  beside the labels folder (``<labels_dir>.labels-cache.json``; YOLOv5's pickled ``.cache`` is ignored)
  or, when that folder is read-only, under ``~/.cache/yolo-reparam/``. The cache key hashes paths,
  sizes and mtimes.
* Bad data never crashes training and is never used silently: unreadable images are skipped, bad
  label lines dropped, duplicates removed, and one summary line reports the counts per kind.

Plain JSON-able data in and out: the Dataset that uses it lives in ``utils.datasets.dataloaders``.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from utils.atomic import atomic_file, sweep_stale
from utils.general import LOGGER
from utils.textfiles import read_lines

IMG_FORMATS = ("bmp", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp")
CACHE_VERSION = 1
CACHE_SUFFIX = ".labels-cache.json"
COORD_TOL = 1e-3  # normalized coordinates this far outside 0..1 are clipped; further out, the line is dropped
MIN_SIZE = 10  # pixels; smaller images are skipped
NUM_THREADS = max(1, min(8, os.cpu_count() or 1))
MAX_LOGGED_PROBLEMS = 5  # per-file problems shown at warning level; all of them go to debug

# problem kinds -> wording in the summary. Image-level kinds skip the image; line-level kinds drop a line.
IMAGE_PROBLEMS = {"corrupt": ("corrupt image",), "not_image": ("non-image file",),
                  "too_small": ("image under 10 px", "images under 10 px"), "not_found": ("missing image file",)}
LINE_PROBLEMS = {"columns": "wrong column count", "not_number": "non-numeric value",
                 "class_not_int": "class not an integer", "class_range": "class out of range",
                 "coords": "coordinates outside 0..1", "size": "non-positive width/height"}


def fallback_cache_dir() -> Path:
    """Where caches go when the dataset folder is read-only (looked up per call: HOME may change)."""
    return Path.home() / ".cache" / "yolo-reparam"


def writable_dir(d: Path) -> bool:
    """A folder we may write caches into. Mode bits that grant write to nobody (a shared, read-only
    dataset) count as read-only even for root, whom ``os.access`` would let through."""
    try:
        return os.access(d, os.W_OK) and bool(os.stat(d).st_mode & 0o222)
    except OSError:
        return False


def short_hash(text: str) -> str:
    """Short stable name for a folder's cache files (also used by the image cache in utils.datasets.dataloaders)."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def img2label_paths(img_paths: list[str]) -> list[str]:
    """``.../images/x.jpg`` -> ``.../labels/x.txt`` (the last ``/images/`` only)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(str(x).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


# ---------------------------------------------------------------------------------------------
# Verification of one image/label pair (runs in a thread pool; returns plain JSON-able data)
# ---------------------------------------------------------------------------------------------

def _exif_size(im: Image.Image) -> tuple[int, int]:
    """(w, h) as OpenCV will decode it: EXIF orientations 5-8 swap width and height."""
    w, h = im.size
    if (im.format or "").upper() in ("JPEG", "MPO") and im.getexif().get(0x0112) in (5, 6, 7, 8):
        return h, w
    return w, h


def _jpeg_complete(path: str) -> bool:
    """A whole JPEG ends with the end-of-image marker FFD9 (some writers add zero padding after it)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64))
        return f.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def verify_image(im_file: str) -> tuple[str | None, list[int] | None, str]:
    """Return (problem kind or None, [w, h], message). PIL ``verify`` catches structural damage;
    a truncated JPEG passes it, so the end-of-image marker is checked too."""
    if not os.path.isfile(im_file):
        return "not_found", None, "image file not found"
    try:
        with Image.open(im_file) as im:
            im.verify()
        with Image.open(im_file) as im:  # verify() leaves the object unusable: reopen for size/format
            fmt, shape = (im.format or "").lower(), _exif_size(im)
    except UnidentifiedImageError:
        return "not_image", None, "not an image file"
    except Exception as e:  # PIL raises many types for damaged files; any of them means 'do not train on it'
        return "corrupt", None, f"corrupt image ({type(e).__name__}: {e})"
    if fmt not in IMG_FORMATS:
        return "not_image", None, f"unsupported image format {fmt!r}"
    if fmt in ("jpeg", "mpo") and not _jpeg_complete(im_file):
        return "corrupt", None, "corrupt JPEG (no end-of-image marker: truncated file)"
    if min(shape) < MIN_SIZE:
        return "too_small", None, f"image size {shape[0]}x{shape[1]} is under {MIN_SIZE} px"
    return None, list(shape), ""


def _parse_line(parts: list[str], nc: int | None):
    """One label line -> (row [cls, x, y, w, h] or None, problem kind or None, flags set)."""
    n = len(parts)
    if not (n == 5 or (n >= 7 and n % 2 == 1)):  # a box, or class + >= 3 polygon points
        return None, "columns", set()
    try:
        vals = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        return None, "not_number", set()
    if not np.isfinite(vals).all():
        return None, "not_number", set()
    c, xy = vals[0], vals[1:]
    if c != int(c):
        return None, "class_not_int", set()
    if c < 0 or (nc is not None and c >= nc):
        return None, "class_range", set()
    if ((xy < -COORD_TOL) | (xy > 1 + COORD_TOL)).any():
        return None, "coords", set()
    flags = {"clipped"} if ((xy < 0) | (xy > 1)).any() else set()
    xy = xy.clip(0, 1)  # within tolerance: rounding noise from the exporting tool
    if n > 5:  # polygon -> its bounding box
        flags.add("polygon")
        xs, ys = xy[0::2], xy[1::2]
        xy = np.array([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2, xs.max() - xs.min(), ys.max() - ys.min()])
    if xy[2] <= 0 or xy[3] <= 0:
        return None, "size", set()
    return [c, *xy], None, flags


def parse_label_file(lb_file: str, nc: int | None):
    """Return (rows as float32 lists, counts, problem messages) for one label file."""
    counts: Counter = Counter()
    problems: list[str] = []
    if not os.path.isfile(lb_file):
        counts["missing"] += 1
        return [], counts, problems
    lines = read_lines(lb_file, errors="replace")
    rows, seen = [], set()
    for ln, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        row, kind, flags = _parse_line(parts, nc)
        if kind:
            counts[kind] += 1
            problems.append(f"{lb_file}:{ln}: {LINE_PROBLEMS[kind]}: {line.strip()[:80]!r}")
            continue
        counts.update(flags)
        row = np.array(row, dtype=np.float32).tolist()  # float32 first: duplicates compare as stored
        if tuple(row) in seen:
            counts["duplicates"] += 1  # exact repeat: removing it loses nothing
            problems.append(f"{lb_file}:{ln}: duplicate row removed")
            continue
        seen.add(tuple(row))
        rows.append(row)
    if not any(line.split() for line in lines):
        counts["empty"] += 1
    return rows, counts, problems


def verify_image_label(args) -> dict:
    """Verify one pair; the image is skipped on an image problem, bad label lines are dropped."""
    im_file, lb_file, nc = args
    kind, shape, msg = verify_image(im_file)
    if kind:
        return {"im_file": im_file, "status": kind, "shape": None, "labels": [], "counts": {kind: 1},
                "problems": [f"{im_file}: {msg}; skipped"]}
    rows, counts, problems = parse_label_file(lb_file, nc)
    return {"im_file": im_file, "status": "ok", "shape": shape, "labels": rows, "counts": dict(counts),
            "problems": problems}


# ---------------------------------------------------------------------------------------------
# Label cache
# ---------------------------------------------------------------------------------------------

def _files_hash(im_files: list[str], lb_files: list[str], nc: int | None) -> str:
    """Hash of paths, sizes and mtimes (and nc, which decides 'class out of range')."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, nc]).encode())
    for f in (*im_files, *lb_files):
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


def label_cache_paths(lb_files: list[str]) -> tuple[Path, Path]:
    """(beside the labels folder, fallback under the user cache dir named by a hash of that folder)."""
    lb_dir = Path(lb_files[0]).parent.resolve()
    fallback = fallback_cache_dir() / f"{short_hash(str(lb_dir))}{CACHE_SUFFIX}"
    return lb_dir.parent / f"{lb_dir.name}{CACHE_SUFFIX}", fallback


def _read_cache(paths: tuple[Path, ...], key: str) -> tuple[dict | None, Path | None]:
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue  # absent, unreadable or half-written: scan again
        if isinstance(data, dict) and data.get("version") == CACHE_VERSION and data.get("hash") == key:
            return data, p
    return None, None


def _write_json(data: dict, target: Path) -> None:
    sweep_stale(target.parent)  # a SIGKILLed scan's temporary
    with atomic_file(target, fsync=False) as tmp:  # a concurrent reader never sees half a file
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)


def _write_cache(data: dict, primary: Path, fallback: Path, prefix: str) -> Path | None:
    """Write beside the labels; if that folder is read-only, under the fallback dir (and say so)."""
    try:
        if not writable_dir(primary.parent):
            raise PermissionError(f"{primary.parent} is not writable")
        _write_json(data, primary)
        LOGGER.info(f"{prefix}New label cache created: {primary}")
        return primary
    except OSError as e:
        reason = e
    try:
        _write_json(data, fallback)
        LOGGER.info(f"{prefix}Cannot write {primary} ({reason}); label cache written to {fallback}")
        return fallback
    except OSError as e:
        LOGGER.warning(f"{prefix}Label cache not saved ({reason}; {e}): labels will be verified again next time")
        return None


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------

def _n(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def summarize(stats: dict, prefix: str = "") -> tuple[str, bool]:
    """One line with the counts per kind; the flag says whether anything was wrong with the data."""
    s = Counter(stats)
    parts = [_n(s["images"], "image"), _n(s["boxes"], "box", "boxes"), _n(s["backgrounds"], "background")]
    if s["missing"] or s["empty"]:
        parts[-1] += f" ({_n(s['missing'], 'missing label file')}, {s['empty']} empty)"
    skipped = [_n(s[k], *IMAGE_PROBLEMS[k]) for k in IMAGE_PROBLEMS if s[k]]
    if skipped:
        parts.append(", ".join(skipped) + " skipped")
    bad = sum(s[k] for k in LINE_PROBLEMS)
    if bad:
        kinds = ", ".join(f"{s[k]} {w}" for k, w in LINE_PROBLEMS.items() if s[k])
        parts.append(f"{_n(bad, 'bad line')} dropped ({kinds})")
    if s["duplicates"]:
        parts.append(f"{_n(s['duplicates'], 'duplicate row')} removed")
    if s["polygon"]:
        parts.append(f"{_n(s['polygon'], 'polygon')} converted to boxes")
    if s["clipped"]:
        parts.append(f"{_n(s['clipped'], 'line')} clipped to 0..1")
    wrong = bool(skipped or bad or s["duplicates"])
    return prefix + ", ".join(parts), wrong


STAT_KEYS = ("images", "boxes", "backgrounds", "missing", "empty", *IMAGE_PROBLEMS, *LINE_PROBLEMS,
             "duplicates", "polygon", "clipped")


def _aggregate(entries: list[dict]) -> dict:
    stats: Counter = Counter(dict.fromkeys(STAT_KEYS, 0))  # every kind present, zeros included
    for e in entries:
        stats.update(e["counts"])
        if e["status"] == "ok":
            stats["images"] += 1
            stats["boxes"] += len(e["labels"])
            stats["backgrounds"] += not e["labels"]
    return dict(stats)


def _scan(im_files: list[str], lb_files: list[str], nc: int | None, desc: str) -> list[dict]:
    """Verify all pairs with a thread pool (PIL and file I/O release the GIL)."""
    jobs = [(im, lb, nc) for im, lb in zip(im_files, lb_files)]
    with ThreadPool(NUM_THREADS) as pool:
        return list(tqdm(pool.imap(verify_image_label, jobs), total=len(jobs), desc=desc, leave=False))


def load_verified_labels(im_files: list[str], nc: int | None, prefix: str = "") -> dict:
    """Cached verification of all pairs. Returns the cache dict plus 'from_cache' and 'cache_file'."""
    lb_files = img2label_paths(im_files)
    primary, fallback = label_cache_paths(lb_files)
    key = _files_hash(im_files, lb_files, nc)
    data, where = _read_cache((primary, fallback), key)
    if data is not None:
        LOGGER.info(f"{prefix}Using label cache {where}")
        return {**data, "from_cache": True, "cache_file": str(where), "n_scanned": 0}
    entries = _scan(im_files, lb_files, nc, f"{prefix}Scanning {primary.parent}")
    data = {"version": CACHE_VERSION, "hash": key, "nc": nc, "entries": entries, "stats": _aggregate(entries)}
    where = _write_cache(data, primary, fallback, prefix)
    return {**data, "from_cache": False, "cache_file": str(where) if where else None, "n_scanned": len(entries)}


def report_labels(stats: dict, entries: list[dict], prefix: str) -> None:
    """Log the summary line (a warning with the first problems if the data had faults) and every problem at debug."""
    line, wrong = summarize(stats, prefix)
    problems = [p for e in entries for p in e["problems"]]
    for p in problems:
        LOGGER.debug(f"{prefix}{p}")
    if wrong:
        LOGGER.warning(line)
        for p in problems[:MAX_LOGGED_PROBLEMS]:
            LOGGER.warning(f"{prefix}  {p}")
        if len(problems) > MAX_LOGGED_PROBLEMS:
            LOGGER.warning(f"{prefix}  ... {len(problems) - MAX_LOGGED_PROBLEMS} more (debug log / label cache)")
    else:
        LOGGER.info(line)
