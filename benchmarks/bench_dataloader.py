"""Training data pipeline alone: our loader against YOLOv5 7.0.14's, images/s per worker process, and a profile.

Run from the repository root::

    python benchmarks/bench_dataloader.py [--runs 3] [--batches 16] [--min-seconds 3] [--warmup 2] [--batch-size 16]
        [--configs coco640,coco640-ram,shapes] [--profile-batches 16] [--yolov5-python /tmp/y5venv/bin/python]
        [--retries 1] [--out FILE]

What a training step waits for when the model is fast (a GPU): one loader worker's images/s. Each measurement
is a subprocess that builds a training dataloader with ``workers=0`` (the batches are made in that one
process, as one worker process makes them), ``augment=True``, shuffled, batch 16, then takes ``--warmup``
batches untimed and times at least the next ``--batches`` batches, and more until ``--min-seconds`` passed
(the epochs cycle; ours gets ``set_epoch`` at each epoch start as the trainer calls it). images/s = images
delivered / that time. Building the dataset (label scan, ``--cache ram`` filling) is not timed. Both
subprocesses run as a loader worker does: one torch thread (the DataLoader worker loop's
``torch.set_num_threads(1)``), OpenCV single-threaded (``cv2.setNumThreads(0)``: our ``seed_worker`` and
YOLOv5's ``utils/general.py`` both set it) and ``OMP_NUM_THREADS=1``. With ``--workers 1`` the batches come
from one real worker process instead (the loader's own, started by the DataLoader as in training; each batch
travels back through shared memory), and the CPU time and page faults reported are the worker's.

  * ours: ``utils.datasets.dataloaders.create_dataloader`` with the hyp file through ``check_hyp``, as the trainer;
  * YOLOv5 7.0.14: ``yolov5.utils.dataloaders.create_dataloader`` run by ``--yolov5-python`` (a venv with
    ``yolov5==7.0.14``, as in ``bench_train_throughput.py``) with the same hyp file, from a temporary working
    folder and with this repository off ``sys.path``, so the two packages never share a process.

Configs (``--configs``):

  * ``coco640``: coco128 (``../shared/datasets/coco128``) at 640, hyp.scratch-low (mosaic 1.0, scale 0.5,
    translate 0.1, HSV 0.015/0.7/0.4, fliplr 0.5), each loader with its training default: ours ``cache='auto'``
    (train.py's: decoded images kept in RAM when they fit), YOLOv5 none (its ``--cache`` is off unless given);
  * ``coco640-nocache``: the same with no image cache for either (ours ``cache='off'``);
  * ``coco640-ram``: the same with ``cache='ram'`` for both (decoded images resized to 640 kept in memory);
  * ``shapes``: our default recipe, ``data/shapes.yaml`` (generated when missing) at its 160 with its
    ``hyp.shapes.yaml`` (same augmentation values as scratch-low), each loader with its default cache.

Each run also reports the process's minor page faults per image over its timed batches: where glibc's malloc
hands the freed buffers of a sample (the warped 640x640 image, the collated batch) back to the kernel, the next
sample faults them in and zeroes them again, which depends on the heap's layout in that process, not on the
code (benchmarks/README.md).

Runs alternate: round r runs (ours, YOLOv5) when r is even and (YOLOv5, ours) when odd; the table gives the
median of ``--runs`` rounds. Noise: the script records how much CPU other processes and the hypervisor (steal)
took during each run and reruns a run (``--retries``) where other processes took more than 10% of all cores'
time (a single-threaded run uses 50% of a 2-core machine; a second busy process shares caches and memory
bandwidth with it); it also refuses to start while a ``pytest`` process runs, unless ``--ignore-pytest``.

Profile (``--profile-batches``, 0 skips it): our loader on ``--profile-config`` with explicit timers around the
pipeline's functions (module attributes replaced by timing wrappers in a subprocess; nested timers count
exclusive time), batches made by the same ``workers=0`` DataLoader: decode (``cv2.imread``), resize
(``cv2.resize``), mosaic assembly (``compose``: canvas fill and tile copies), perspective warp
(``cv2.warpAffine``), warp matrix and box transform (the rest of ``random_perspective``), HSV (``augment_hsv``),
label format conversions, flips, the HWC BGR -> CHW RGB copy, the per-sample generator, collate, and the rest
of ``__getitem__`` and the DataLoader's own overhead. Each is given as ms per sample and share of the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name, cpu_times, emit, noise_pct, proc_stat  # benchmarks/ is sys.path[0]

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
NOISE_PCT = 10.0
CONFIGS = {  # name: (data YAML, imgsz, hyp file, cache: each loader's "default", "off" or "ram" for both)
    "coco640": ("../shared/datasets/coco128/coco128.yaml", 640, "data/hyps/hyp.scratch-low.yaml", "default"),
    "coco640-nocache": ("../shared/datasets/coco128/coco128.yaml", 640, "data/hyps/hyp.scratch-low.yaml", "off"),
    "coco640-ram": ("../shared/datasets/coco128/coco128.yaml", 640, "data/hyps/hyp.scratch-low.yaml", "ram"),
    "shapes": ("data/shapes.yaml", 160, "data/hyps/hyp.shapes.yaml", "default"),
}
# what each loader gets for a config's cache: train.py's default is 'auto' (RAM when it fits), YOLOv5's none
CACHE_ARG = {"ours": {"default": "auto", "off": "off", "ram": "ram"},
             "yolov5": {"default": None, "off": None, "ram": "ram"}}


def cache_label(cache: str) -> str:
    ours, yolov5 = CACHE_ARG["ours"][cache], CACHE_ARG["yolov5"][cache]
    return ours if ours == yolov5 else f"ours {ours}, YOLOv5 {yolov5 or 'none'}"
IMPLS = ("ours", "yolov5")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="alternated rounds per config (median)")
    p.add_argument("--batches", type=int, default=16, help="timed batches per run")
    p.add_argument("--min-seconds", type=float, default=3.0, help="and keep timing batches until this much time passed")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches before timing")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--configs", default="coco640,coco640-nocache,coco640-ram,shapes", help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--yolov5-python", default="/tmp/y5venv/bin/python", help="python of the venv with yolov5==7.0.14")
    p.add_argument("--no-yolov5", action="store_true", help="ours only (no ratio)")
    p.add_argument("--profile-batches", type=int, default=16, help="batches for the stage profile (0: no profile)")
    p.add_argument("--profile-config", default="coco640", choices=sorted(CONFIGS))
    p.add_argument("--retries", type=int, default=1, help="rerun a run this many times when other processes took "
                   f"> {NOISE_PCT:.0f}%% of all cores' time during it (every attempt listed, the last one counts)")
    p.add_argument("--ignore-pytest", action="store_true", help="start even while a pytest process runs")
    p.add_argument("--workers", type=int, default=0, choices=(0, 1), help="0: the batches are made in the measuring "
                   "process (as one worker makes them); 1: by one real loader worker process, batches passed back "
                   "through shared memory as in training (CPU s and page faults are then the worker's)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown output here")
    # internal: one measurement in this process
    p.add_argument("--child", choices=(*IMPLS, "profile"), help=argparse.SUPPRESS)
    p.add_argument("--train-path", help=argparse.SUPPRESS)
    p.add_argument("--imgsz", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hyp", help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.runs, args.batches, args.batch_size) < 1 or args.warmup < 0 or args.profile_batches < 0:
        p.error("--runs/--batches/--batch-size must be >= 1, --warmup/--profile-batches >= 0")
    args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.config_list if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")
    return args


# ---------------------------------------------------------------------------------------------
# Children: one measurement each
# ---------------------------------------------------------------------------------------------


def _single_worker_threads():
    import cv2
    import torch

    torch.set_num_threads(1)  # what torch's DataLoader worker loop sets
    cv2.setNumThreads(0)  # our seed_worker and YOLOv5's utils/general.py


def _our_loader(args):
    sys.path.insert(0, str(ROOT))
    from utils.datasets.dataloaders import create_dataloader
    from utils.general import load_yaml
    from utils.hyperparameters import check_hyp

    hyp = check_hyp(load_yaml(args.hyp, "hyperparameter file"), args.hyp)
    loader, _ = create_dataloader(args.train_path, args.imgsz, args.batch_size, 32, hyp=hyp, augment=True,
                                  cache=args.cache, workers=args.workers, prefix="", shuffle=True, seed=0)
    _single_worker_threads()
    return loader, loader.set_epoch


def _yolov5_loader(args):
    import yaml
    from yolov5.utils.dataloaders import create_dataloader  # sets cv2.setNumThreads(0) at import

    with open(args.hyp, encoding="utf-8") as f:
        hyp = yaml.safe_load(f)
    loader, _ = create_dataloader(args.train_path, args.imgsz, args.batch_size, 32, hyp=hyp, augment=True,
                                  cache=args.cache or False, workers=args.workers, prefix="", shuffle=True, seed=0)
    _single_worker_threads()
    return loader, None


def _batches(loader, set_epoch):
    epoch = 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader
        epoch += 1


def _versions() -> dict:
    import cv2
    import numpy
    import torch

    jpeg = re.search(r"JPEG:\s*(.+)", cv2.getBuildInformation())
    y5 = sys.modules.get("yolov5")
    return {"yolov5": getattr(y5, "__version__", None) if y5 else None, "torch": torch.__version__, "cv2": cv2.__version__, "numpy": numpy.__version__,
            "jpeg": jpeg.group(1).strip() if jpeg else "?"}


def _worker_stats() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this process's children: the loader's worker processes."""
    cpu, faults, me, tick = 0.0, 0, os.getpid(), os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = proc_stat(f"/proc/{pid}/stat")
        if fields is not None and int(fields[1]) == me:  # a child of this process
            cpu, faults = cpu + (int(fields[11]) + int(fields[12])) / tick, faults + int(fields[7])
    return cpu, faults


def _stats(workers: int) -> tuple[float, int]:
    """(CPU seconds, minor page faults) of whatever makes the batches: this process, or its worker processes."""
    if workers:
        return _worker_stats()
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child_measure(args) -> dict:
    t0 = time.perf_counter()
    loader, set_epoch = (_our_loader if args.child == "ours" else _yolov5_loader)(args)
    build_s = time.perf_counter() - t0
    it = _batches(loader, set_epoch)
    for _ in range(args.warmup):
        next(it)
    cpu0, faults0 = _stats(args.workers)
    n, nb, t0 = 0, 0, time.perf_counter()
    while nb < args.batches or time.perf_counter() - t0 < args.min_seconds:
        n, nb = n + len(next(it)[0]), nb + 1
    wall = time.perf_counter() - t0
    cpu1, faults1 = _stats(args.workers)
    cpu, faults = cpu1 - cpu0, faults1 - faults0
    return {"images": n, "batches": nb, "wall_s": wall, "cpu_s": cpu, "img_s": n / wall, "build_s": build_s,
            "faults_per_image": faults / max(n, 1),
            "dataset_len": len(loader.dataset), **_versions()}


class StageTimer:
    """Timing wrappers with exclusive time: a wrapped call's time minus that of wrapped calls inside it."""

    def __init__(self):
        self.stack: list[float] = []
        self.excl: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, stage: str, fn):
        from time import perf_counter

        def timed(*a, **k):
            self.stack.append(0.0)
            t0 = perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = perf_counter() - t0
                inner = self.stack.pop()
                self.excl[stage] = self.excl.get(stage, 0.0) + dt - inner
                self.calls[stage] = self.calls.get(stage, 0) + 1
                if self.stack:
                    self.stack[-1] += dt

        return timed


class _Shim:
    """A module stand-in: the given attributes replaced, everything else the module's own."""

    def __init__(self, module, **replaced):
        self.__dict__.update(replaced)
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)


PROFILE_STAGES = {  # key: table label
    "decode": "decode (cv2.imread)",
    "resize": "resize to 640 long side (cv2.resize in load_image)",
    "mosaic": "mosaic assembly (compose: 1280x1280 canvas fill, 4 tile copies)",
    "warp": "perspective warp (cv2.warpAffine, 1280 -> 640)",
    "warp_labels": "warp matrix, box transform and filter (rest of random_perspective)",
    "hsv": "HSV jitter (augment_hsv)",
    "label_fmt": "label format (xywhn2xyxy in compose, xyxy2xywhn)",
    "flip": "flips (_flip)",
    "chw": "HWC BGR -> CHW RGB copy (ascontiguousarray)",
    "rng": "per-sample generator (default_rng)",
    "mixup": "mixup",
    "letterbox": "letterbox resize and pad (non-mosaic samples)",
    "getitem": "rest of __getitem__ (label tensor, glue)",
    "collate": "collate (stack 16 images, cat labels)",
}


def child_profile(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import cv2
    import numpy as np

    import utils.datasets.augmentations as aug
    import utils.datasets.dataloaders as dl
    import utils.datasets.mosaic as mos
    from utils.datasets.dataloaders import LoadImagesAndLabels as D

    t = StageTimer()
    dl.cv2 = _Shim(cv2, imread=t.wrap("decode", cv2.imread), resize=t.wrap("resize", cv2.resize))
    aug.cv2 = _Shim(cv2, warpAffine=t.wrap("warp", cv2.warpAffine), warpPerspective=t.wrap("warp", cv2.warpPerspective),
                    resize=t.wrap("letterbox", cv2.resize), copyMakeBorder=t.wrap("letterbox", cv2.copyMakeBorder))
    dl.np = _Shim(np, ascontiguousarray=t.wrap("chw", np.ascontiguousarray),
                  random=_Shim(np.random, default_rng=t.wrap("rng", np.random.default_rng)))
    dl.compose = t.wrap("mosaic", dl.compose)
    mos.xywhn2xyxy = t.wrap("label_fmt", mos.xywhn2xyxy)
    dl.xyxy2xywhn = t.wrap("label_fmt", dl.xyxy2xywhn)
    dl.xywhn2xyxy = t.wrap("label_fmt", dl.xywhn2xyxy)
    dl.random_perspective = t.wrap("warp_labels", dl.random_perspective)
    dl.augment_hsv = t.wrap("hsv", dl.augment_hsv)
    dl.mixup = t.wrap("mixup", dl.mixup)
    D._flip = t.wrap("flip", D._flip)
    D.__getitem__ = t.wrap("getitem", D.__getitem__)
    D.collate_fn = staticmethod(t.wrap("collate", D.collate_fn))  # before create_dataloader captures it

    loader, set_epoch = _our_loader(args)
    it = _batches(loader, set_epoch)
    for _ in range(args.warmup):
        next(it)
    t.excl.clear()
    t.calls.clear()
    n, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        n += len(next(it)[0])
    wall = time.perf_counter() - t0
    return {"images": n, "batches": args.batches, "wall_s": wall, "stages": t.excl, "calls": t.calls,
            "decoders": decoder_times(loader.dataset.im_files)}


def decoder_times(files: list[str], rounds: int = 2) -> dict:
    """ms per image (median of ``rounds`` passes over ``files``, the bytes already in the page cache) of the JPEG
    decoders at hand, each to a uint8 HWC array, single-threaded; and the images' long sides."""
    import cv2
    import numpy as np

    blobs = [np.fromfile(f, dtype=np.uint8) for f in files]
    decoders = {
        "cv2.imread (what the loader does)": lambda i: cv2.imread(files[i]),
        "cv2.imdecode of bytes in memory": lambda i: cv2.imdecode(blobs[i], cv2.IMREAD_COLOR),
        "cv2.imread IMREAD_REDUCED_COLOR_2 (half size: DCT scaling)": lambda i: cv2.imread(files[i], cv2.IMREAD_REDUCED_COLOR_2),
    }
    try:
        from PIL import Image

        decoders["PIL Image.open + np.asarray (RGB)"] = lambda i: np.asarray(Image.open(files[i]).convert("RGB"))
    except ImportError:
        pass
    try:
        import torch
        from torchvision.io import decode_jpeg

        tensors = [torch.from_numpy(b) for b in blobs]
        decoders["torchvision.io.decode_jpeg (CPU) of bytes in memory"] = lambda i: decode_jpeg(tensors[i])
    except (ImportError, RuntimeError):
        pass
    out = {}
    for name, fn in decoders.items():
        fn(0)
        passes = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(len(files)):
                fn(i)
            passes.append((time.perf_counter() - t0) / len(files))
        out[name] = 1000 * statistics.median(passes)
    sides = [max(cv2.imread(f).shape[:2]) for f in files]
    out["_sides"] = {"n": len(sides), "max": max(sides), "median": statistics.median(sides)}
    return out


# ---------------------------------------------------------------------------------------------
# Parent: machine, runs, report
# ---------------------------------------------------------------------------------------------


def cpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    flags = set()
    for line in out.splitlines():
        if line.startswith("Flags:"):
            flags = set(line.split(":", 1)[1].split())
    if not flags:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = set(next(ln for ln in f if ln.startswith("flags")).split(":", 1)[1].split())
        except (OSError, StopIteration):
            return "unknown"
    picked = sorted(f for f in flags if f == "avx2" or f.startswith("avx512") or "vnni" in f)
    return ("avx2" if "avx2" in flags else "no avx2") + "; " + (
        ", ".join(f for f in picked if f != "avx2") if any(f.startswith("avx512") for f in flags) else "no AVX-512"
    ) + ("" if any("vnni" in f for f in flags) else "; no VNNI")


def pytest_running() -> list[str]:
    try:
        out = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [ln for ln in out.splitlines() if ln.strip() and str(os.getpid()) != ln.split()[0] and "pgrep" not in ln]


def wait_no_pytest(args) -> None:
    if args.ignore_pytest:
        return
    t0, said = time.monotonic(), False
    while pytest_running():
        if not said:
            log(f"  waiting: a pytest process is running ({pytest_running()[0][:80]})")
            said = True
        time.sleep(10)
    if said:
        log(f"  pytest gone after {time.monotonic() - t0:.0f} s")


def resolve_train(data_yaml: str) -> str:
    sys.path.insert(0, str(ROOT))
    from utils.datasets.dataset_config import check_dataset

    p = Path(data_yaml)
    train = check_dataset(str(p if p.is_absolute() else ROOT / p))["train"]
    return train if isinstance(train, str) else train[0]


def run_child(args, impl: str, cfg: str, batches: int, tmp: Path) -> dict:
    data, imgsz, hyp, cache = CONFIGS[cfg]
    cache = CACHE_ARG["yolov5" if impl == "yolov5" else "ours"][cache]
    cmd = [sys.executable if impl != "yolov5" else args.yolov5_python, str(Path(__file__).resolve()),
           "--child", impl, "--train-path", args.train_paths[cfg], "--imgsz", str(imgsz), "--hyp", str(ROOT / hyp),
           "--batch-size", str(args.batch_size), "--batches", str(batches), "--warmup", str(args.warmup),
           "--min-seconds", str(args.min_seconds if impl != "profile" else 0),
           "--workers", str(args.workers if impl != "profile" else 0)]
    if cache:
        cmd += ["--cache", cache]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "YOLO_OFFLINE": "1",
           "YOLOv5_AUTOINSTALL": "false", "PYTHONPATH": ""}
    env.pop("PYTHONPATH")
    cwd = tmp if impl == "yolov5" else ROOT  # YOLOv5: this repository's utils/ must not be importable
    c0, pytest0 = cpu_times(children=True), pytest_running()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    c1, pytest1 = cpu_times(children=True), pytest_running()
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} {cfg} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["noise"] = noise_pct(c0, c1)
    res["pytest"] = bool(pytest0 or pytest1)
    return res


def noisy(res: dict) -> bool:
    return res["pytest"] or (res["noise"] is not None and res["noise"][0] > NOISE_PCT)


def measure(args, impl, cfg, tmp) -> list[dict]:
    attempts = []
    for _ in range(args.retries + 1):
        wait_no_pytest(args)
        res = run_child(args, impl, cfg, args.batches, tmp)
        attempts.append(res)
        other = f"{res['noise'][0]:.0f}% / {res['noise'][1]:.0f}%" if res["noise"] else "?"
        log(f"  {cfg:12s} {impl:7s} {res['img_s']:7.1f} img/s ({res['images']} images in {res['wall_s']:.2f} s, "
            f"CPU {res['cpu_s']:.2f} s; other/steal {other}{'; pytest ran' if res['pytest'] else ''})")
        if not noisy(res):
            break
    return attempts


def fmt_noise(res) -> str:
    return f"{res['noise'][0]:.0f}% / {res['noise'][1]:.0f}%" if res["noise"] else "?"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        out = child_profile(args) if args.child == "profile" else child_measure(args)
        print(json.dumps(out))
        return 0
    t_start = time.monotonic()
    impls = IMPLS[:1] if args.no_yolov5 else IMPLS
    if not args.no_yolov5 and not Path(args.yolov5_python).exists():
        log(f"{args.yolov5_python} not found: create it with  python -m venv --system-site-packages /tmp/y5venv && "
            "/tmp/y5venv/bin/pip install --no-deps yolov5==7.0.14 'setuptools<81'  (or pass --no-yolov5)")
        return 2
    cfgs = list(dict.fromkeys(args.config_list + ([args.profile_config] if args.profile_batches else [])))
    args.train_paths = {c: resolve_train(CONFIGS[c][0]) for c in cfgs}
    results: dict[tuple[str, str], list[list[dict]]] = {}
    order_log = []
    with tempfile.TemporaryDirectory(prefix="bench_dl_") as tmp:
        for cfg in args.config_list:
            for r in range(args.runs):
                for impl in (impls if r % 2 == 0 else impls[::-1]):
                    attempts = measure(args, impl, cfg, Path(tmp))
                    results.setdefault((cfg, impl), []).append(attempts)
                    order_log.append((cfg, impl, attempts))
        profile = None
        if args.profile_batches:
            wait_no_pytest(args)
            c0 = cpu_times(children=True)
            profile = run_child(args, "profile", args.profile_config, args.profile_batches, Path(tmp))
            profile["noise"] = noise_pct(c0, cpu_times(children=True))
    versions = {impl: results[(args.config_list[0], impl)][0][-1] for impl in impls} if args.config_list else {}

    lines = ["## Data pipeline alone (`bench_dataloader.py`)", ""]
    ours_v = versions.get("ours", {})
    lines.append(f"Machine: {cpu_name()}, {os.cpu_count()} cores; CPU flags: {cpu_flags()}; Python "
                 f"{platform.python_version()}, torch {ours_v.get('torch', '?')}, OpenCV {ours_v.get('cv2', '?')} "
                 f"({ours_v.get('jpeg', '?')}), numpy {ours_v.get('numpy', '?')}")
    if "yolov5" in versions:
        y = versions["yolov5"]
        lines.append(f"YOLOv5 {y['yolov5']} ran in `{args.yolov5_python}`: torch {y['torch']}, OpenCV {y['cv2']}, numpy {y['numpy']}")
    made_by = ("One process (`workers=0`, as one loader worker)" if not args.workers else
               "One real loader worker process (`workers=1`; the measuring process only receives the batches)")
    lines += ["", f"{made_by}, 1 torch thread, OpenCV single-threaded; batch "
              f"{args.batch_size}, shuffled, augment on; {args.warmup} untimed batches, then at least {args.batches} "
              f"timed batches and {args.min_seconds:g} s; "
              f"median of {args.runs} alternated rounds.", ""]
    if args.config_list:
        lines += ["| config | cache | ours img/s (median) | ours runs | YOLOv5 img/s (median) | YOLOv5 runs | ours / YOLOv5 |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for cfg in args.config_list:
            data, imgsz, hyp, cache = CONFIGS[cfg]
            med, runs = {}, {}
            for impl in impls:
                vals = [a[-1]["img_s"] for a in results[(cfg, impl)]]
                med[impl], runs[impl] = statistics.median(vals), ", ".join(f"{v:.1f}" for v in vals)
            ratio = f"**{med['ours'] / med['yolov5']:.2f}x**" if "yolov5" in med else "-"
            lines.append(f"| {Path(data).name} {imgsz}, {Path(hyp).name} | {cache_label(cache)} | {med['ours']:.1f} | "
                         f"{runs['ours']} | {med.get('yolov5', float('nan')):.1f} | {runs.get('yolov5', '-')} | {ratio} |")
        lines += ["", "Per run, in the order run (CPU s: the process's own CPU time over the timed batches; other / "
                  "steal: other processes' and the hypervisor's share of all cores' time during the run; page faults: "
                  "minor faults per image over the timed batches; both of the worker process with --workers 1):", "",
                  "| # | config | implementation | counted | img/s | timed s | CPU s | page faults | dataset build s | other / steal | pytest running |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        k = 0
        for cfg, impl, attempts in order_log:
            for j, a in enumerate(attempts):
                k += 1
                lines.append(f"| {k} | {cfg} | {impl} | {'yes' if j == len(attempts) - 1 else 'no (noisy, rerun)'} | "
                             f"{a['img_s']:.1f} | {a['wall_s']:.2f} | {a['cpu_s']:.2f} | {a['faults_per_image']:.0f} | "
                             f"{a['build_s']:.1f} | "
                             f"{fmt_noise(a)} | {'yes' if a['pytest'] else 'no'} |")
    if profile:
        data, imgsz, hyp, cache = CONFIGS[args.profile_config]
        n, wall = profile["images"], profile["wall_s"]
        stages = dict(profile["stages"])
        lines += ["", f"Profile, ours: {args.profile_config} ({Path(data).name} {imgsz}, {Path(hyp).name}, cache "
                  f"{CACHE_ARG['ours'][cache]}), {profile['batches']} batches = {n} samples in {wall:.2f} s with timers "
                  f"({n / wall:.1f} img/s; other / steal {fmt_noise(profile)}). Exclusive time per stage:", "",
                  "| stage | ms per sample | share | calls |", "| --- | --- | --- | --- |"]
        for key in sorted(stages, key=stages.get, reverse=True):
            lines.append(f"| {PROFILE_STAGES.get(key, key)} | {1000 * stages[key] / n:.2f} | "
                         f"{100 * stages[key] / wall:.1f}% | {profile['calls'][key]} |")
        rest = wall - sum(stages.values())
        lines.append(f"| DataLoader overhead and untimed (fetch loop, sampler) | {1000 * rest / n:.2f} | "
                     f"{100 * rest / wall:.1f}% | - |")
        lines.append(f"| **total** | **{1000 * wall / n:.2f}** | 100% | - |")
        dec = dict(profile.get("decoders") or {})
        sides = dec.pop("_sides", None)
        if dec:
            lines += ["", f"JPEG decoders on the same {sides['n']} images (long side median {sides['median']:.0f}, max "
                      f"{sides['max']} px), one thread, ms per image (median of 2 passes; a mosaic decodes 4):", "",
                      "| decoder | ms per image |", "| --- | --- |"]
            lines += [f"| {k} | {v:.2f} |" for k, v in dec.items()]
    lines += ["", f"Total benchmark time: {(time.monotonic() - t_start) / 60:.1f} min."]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
