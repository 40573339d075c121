"""Training speed of our train.py against YOLOv5 v7.0's train on the same data and settings.

Run from the repository root::

    python benchmarks/bench_train_throughput.py [--data ../shared/datasets/coco128/coco128.yaml] [--imgsz 320]
        [--batch-size 16] [--epochs 1] [--workers 2] [--rounds 2] [--yolov5-python /tmp/y5venv/bin/python]
        [--threads N] [--out FILE]

Trains, each as its own subprocess with identical settings (same images, imgsz, batch size, epochs, loader
workers, SGD + hyp.scratch-low, from scratch, ``--noval --noplots --device cpu``, AutoAnchor on; each with its
default image cache: none for YOLOv5, ``auto`` for ours (``--our-cache`` overrides)), alternating the runs (round r runs the list forward when r is even, backward when odd) so host
noise hits all alike:

  (a) YOLOv5 7.0.14 (the ``--yolov5-python`` venv's ``yolov5/train.py``, through a launcher: see the end) with its
      own yolov5s.yaml,
  (b) ours (``train.py``) with yolov5s.yaml,
  (c) ours with yolov5s_RepVGG.yaml and (d) yolov5s_OREPA.yaml (YOLOv5 cannot build these blocks, so they are
      reported beside the others).

The measure is the whole process's wall time, from launch to exit: imports, dataset scan, AutoAnchor, model
build, the training epochs, the final epoch's validation (``--noval`` still validates the last epoch), the
check of best.pt (YOLOv5 runs a second validation; ours scores the last epoch's pass again when best.pt holds
those weights, as it always does after one ``--noval`` epoch) and checkpoint writes: what a user waits for. The ratio is YOLOv5's median time
divided by ours (> 1: ours is faster). The training progress bar's own elapsed time (epoch 0) is listed beside
it: the script timestamps, with its own monotonic clock, the moment the bar's first line (``0/N``) and its
first ``N/N`` line arrive on the subprocess's pipe (tqdm flushes every line).

Threads: YOLOv5's ``yolov5/utils/general.py`` sets ``os.environ['OMP_NUM_THREADS']`` to
``min(8, cpu_count - 1)`` at import, but only after ``torch`` is imported, so it does not change the
trainer's intra-op threads (it reaches only child processes). Both subprocesses get the same
``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` (``--threads``, default: this process's
``torch.get_num_threads()``) in their environment, and the script checks what they really used: the
trainer process's threads that were busy for at least 25% of the measured epoch (from
``/proc/PID/task/*/stat``).

Noise: before every run the script waits until the 1-minute load average is below ``--load-threshold``
(0.7) or ``--max-wait`` (600 s) passed, and records the load average before and during each run and how
much CPU other processes (all busy CPU time minus this script's and its children's) and the hypervisor
(steal) took while it ran. A run during which they took more than 5% of all cores' time is run again
(``--retries``, default 2; every attempt is listed, the last one counts): with 2 OpenMP threads on 2 cores,
one busy core from elsewhere makes every parallel region wait for a descheduled thread, and training
slows down many times over, not by a few percent.

YOLOv5 setup (see tools/make_yolov5_reference.py): the venv has ``yolov5==7.0.14`` installed without its
dependencies. Its train.py imports ``roboflow`` (for roboflow.com dataset URLs) and calls
``huggingface_hub`` to look ``--weights`` up on the Hugging Face hub; where those packages are missing, the
script puts offline stand-ins on the YOLOv5 subprocess's ``PYTHONPATH`` (``list_repo_files`` raises
``RepositoryNotFoundError``, which YOLOv5 catches and treats as "not on the hub"). Both runs get
``YOLO_OFFLINE=1`` and ``YOLOv5_AUTOINSTALL=false``, and YOLOv5 ``--weights ''``, so nothing tries the
network. YOLOv5 switches its Weights & Biases, ClearML and Comet loggers on whenever those packages import (they
are in requirements.txt); a ``sitecustomize`` on its ``PYTHONPATH`` makes them unimportable for its process, so
it trains without them, as ours does unless asked. YOLOv5 resolves a relative ``path:`` in the data YAML against its own package folder, so both
implementations are given a copy of the data YAML with ``path`` made absolute. YOLOv5 7.0 reloads its own
pickled checkpoints with ``torch.load`` (``strip_optimizer``, then the final validation of best.pt), which
torch >= 2.6 refuses by default (``weights_only``); its subprocess gets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``,
torch's own switch for that default, so it runs its whole ending (it would otherwise exit early and skip
the final validation, looking faster than it is).

The pip package's train.py (7.0.14) also crashes at the end of the first epoch that is not validated:
``--noval`` skips ``results, maps, map50s, _ = validate.run(...)`` but the logging line after it still reads
``list(map50s)`` (UnboundLocalError; upstream v7.0 logs no ``map50s``). So the script does not run
``python -m yolov5.train`` directly but a launcher that reads the installed ``yolov5/train.py``, replaces
that one expression by ``list(locals().get('map50s', np.zeros(nc)))`` (per-class zeros, like ``maps``
before any validation), compiles it under the original file name and
runs it as ``__main__`` (same ``__file__``, so the same paths and imports). The patch touches only that
logging line; nothing else changes.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from machine import cpu_flags, cpu_name, cpu_times, noise_pct, proc_stat  # benchmarks/machine.py: the script's folder is sys.path[0]

ROOT = Path(__file__).resolve().parents[1]
IMG_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"}
BUSY_THREAD_FRACTION = 0.25
NOISE_PCT = 5.0  # other processes or steal above this share of all cores' time counts as noise

# A training bar line: "  1/2   0G   0.1123   0.04115   0.1056   216   320:  75%|...| 6/8 [01:49<00:29, 14.79s/it]"
TRAIN_BAR = re.compile(r"^\s*(?P<epoch>\d+)/(?P<last>\d+)\s+[\d.]+G\s.*?\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                       r"\[(?P<elapsed>[\d:]+)<[^,\]]*,\s*(?P<rate>\?|[\d.]+)\s*(?P<unit>s/it|it/s)")
# The bar's first line, printed when tqdm is created (both trainers set the description only after a batch).
BAR_START = re.compile(r"^\s*0%\|[^|]*\|\s*0/(?P<total>\d+)\s*\[00:00<")

YOLOV5_STUBS = {
    "roboflow": {
        "roboflow/__init__.py": "class Roboflow:  # offline stand-in: only roboflow.com dataset URLs use it\n"
                                "    def __init__(self, *a, **k):\n"
                                "        raise RuntimeError('roboflow is not installed (benchmark stand-in)')\n",
        "roboflow/core/__init__.py": "",
        "roboflow/core/version.py": "class Version:\n    pass\n",
    },
    "huggingface_hub": {
        "huggingface_hub/__init__.py": "from .utils._errors import RepositoryNotFoundError\n\n\n"
                                       "def list_repo_files(*a, **k):  # offline stand-in: nothing is on the hub\n"
                                       "    raise RepositoryNotFoundError('offline benchmark stand-in')\n\n\n"
                                       "def hf_hub_download(*a, **k):\n"
                                       "    raise RepositoryNotFoundError('offline benchmark stand-in')\n",
        "huggingface_hub/utils/__init__.py": "",
        "huggingface_hub/utils/_errors.py": "class RepositoryNotFoundError(Exception):\n    pass\n",
        "huggingface_hub/utils/_validators.py": "class HFValidationError(Exception):\n    pass\n",
    },
}
# the module YOLOv5's train.py imports from each: huggingface_hub 1.x and later (which other packages here, such as
# transformers, bring) no longer have utils._errors, so an installed but newer hub needs the stand-in too
STUB_PROBES = {"roboflow": "roboflow", "huggingface_hub": "huggingface_hub.utils._errors"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/datasets/coco128/coco128.yaml", help="data YAML (relative: to the repo root)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1, help="epochs per run")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (both trainers)")
    p.add_argument("--rounds", type=int, default=2, help="repeat the runs this many times (order alternates)")
    p.add_argument("--yolov5-python", default="/tmp/y5venv/bin/python", help="python of the venv with yolov5==7.0.14")
    p.add_argument("--isa", choices=("native", "avx2"), default="native", help="avx2: both trainers' torch kernels "
                   "limited to AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2), an AVX-512 machine's stand-in "
                   "for a CPU without AVX-512")
    p.add_argument("--our-cache", choices=("auto", "off", "ram"), default=None, help="ours' --cache (default: "
                   "train.py's own, auto); YOLOv5 runs with its default, no cache")
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL_NUM_THREADS for both (default: torch.get_num_threads())")
    p.add_argument("--load-threshold", type=float, default=0.7, help="wait before each run until the 1-min load average is below this")
    p.add_argument("--max-wait", type=float, default=600, help="wait at most this many seconds for a quiet machine")
    p.add_argument("--retries", type=int, default=2, help="rerun a run this many times when other processes or steal "
                   f"took > {NOISE_PCT:.0f}%% of the CPU during it (all attempts are listed; the last one counts)")
    p.add_argument("--timeout", type=float, default=3600, help="kill a run after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the run folders and logs (printed at the end)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown output here")
    args = p.parse_args(argv)
    if min(args.imgsz, args.batch_size, args.rounds, args.epochs) < 1 or args.workers < 0:
        p.error("--imgsz/--batch-size/--rounds/--epochs must be >= 1 and --workers >= 0")
    return args


# ---------------------------------------------------------------------------------------------
# Machine, noise
# ---------------------------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, float] | None:
    """CPU seconds (user + system) of each thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        fields = proc_stat(f"/proc/{pid}/task/{tid}/stat")
        if fields is not None:
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every few seconds while a run is going."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop_event = every, [], threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stop_event.wait(self.every)

    def stop(self) -> list[float]:
        self.stop_event.set()
        self.join()
        return self.samples


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Wait until the 1-min load average is below ``threshold`` (at most ``max_wait`` s): (load, waited s)."""
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    last_note = -60.0
    while load >= threshold and time.monotonic() - t0 < max_wait:
        waited = time.monotonic() - t0
        if waited - last_note >= 60:
            log(f"  waiting for a quiet machine: 1-min load {load:.2f} >= {threshold} ({waited:.0f} s so far)")
            last_note = waited
        time.sleep(5)
        load = os.getloadavg()[0]
    return load, time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def tqdm_seconds(s: str) -> int:
    secs = 0
    for part in s.split(":"):
        secs = secs * 60 + int(part)
    return secs


def run_training(cmd: list[str], cwd: Path, env: dict, log_file: Path, epochs: int, timeout: float) -> dict:
    """Run one trainer, timestamping its output lines; return per-epoch bar timings and run facts."""
    cpu0 = cpu_times(children=True)
    sampler = LoadSampler()
    sampler.start()
    t_start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    epochs_seen: dict[int, dict] = {}
    pending_start = None  # (time, total) of the latest bare "0%| 0/N" line
    threads_at: dict[str, tuple[float, dict]] = {}
    fd = proc.stdout.fileno()
    buf, buf_t = b"", None
    with open(log_file, "wb") as flog:

        def handle(segment: bytes, t: float) -> None:
            nonlocal pending_start
            text = segment.decode("utf-8", "replace")
            m = BAR_START.search(text)
            if m and not TRAIN_BAR.search(text):
                pending_start = (t, int(m["total"]))
                return
            m = TRAIN_BAR.search(text)
            if not m:
                return
            ep, n, total = int(m["epoch"]), int(m["n"]), int(m["total"])
            e = epochs_seen.get(ep)
            if e is None:
                start = pending_start[0] if pending_start and pending_start[1] == total else None
                e = epochs_seen[ep] = dict(epoch=ep, total=total, t0=start, t_done=None, tqdm_elapsed=None, rate=None)
                pending_start = None
                if ep == min(1, epochs - 1):  # the epoch the thread check covers has begun
                    threads_at["begin"] = (time.monotonic(), thread_cpu(proc.pid) or {})
            if n == total:
                if e["t_done"] is None:
                    e["t_done"] = t
                    if ep == epochs - 1:
                        threads_at["end"] = (time.monotonic(), thread_cpu(proc.pid) or {})
                e["tqdm_elapsed"] = tqdm_seconds(m["elapsed"])  # the last (closing) line wins
                e["rate"] = f"{m['rate']}{m['unit']}"

        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            now = time.monotonic()
            flog.write(chunk)
            parts = re.split(rb"[\r\n]", buf + chunk)
            for i, part in enumerate(parts[:-1]):
                handle(part, buf_t if (i == 0 and buf and buf_t is not None) else now)
            buf = parts[-1]
            buf_t = now if buf else None
        if buf:
            handle(buf, buf_t)
    rc = proc.wait()
    timer.cancel()
    wall = time.monotonic() - t_start
    loads = sampler.stop()
    cpu1 = cpu_times(children=True)

    busy_threads, main_cpu = None, None
    if "begin" in threads_at and "end" in threads_at:
        (ta, a), (tb, b) = threads_at["begin"], threads_at["end"]
        if tb > ta and a and b:
            used = {tid: b[tid] - a.get(tid, 0.0) for tid in b}
            busy_threads = sum(1 for v in used.values() if v >= BUSY_THREAD_FRACTION * (tb - ta))
            main_cpu = sum(used.values()) / (tb - ta)
    others, steal = noise_pct(cpu0, cpu1) or (None, None)
    return dict(rc=rc, wall=wall, epochs=[epochs_seen.get(i) for i in range(epochs)], loads=loads,
                others_pct=others, steal_pct=steal, busy_threads=busy_threads, trainer_cores=main_cpu)


def epoch_elapsed(e: dict | None) -> float | None:
    if not e or e["t_done"] is None:
        return None
    if e["t0"] is not None:
        return e["t_done"] - e["t0"]
    return float(e["tqdm_elapsed"]) if e["tqdm_elapsed"] else None  # fallback: tqdm's whole seconds


def count_images(data: dict) -> int:
    """Images in the data YAML's train split (a folder, a list file, or a list of them)."""
    base = Path(data.get("path") or ".")
    srcs = data["train"] if isinstance(data["train"], list) else [data["train"]]
    n = 0
    for s in srcs:
        p = Path(s) if Path(s).is_absolute() else base / s
        if p.is_dir():
            n += sum(1 for f in p.rglob("*") if f.suffix.lower() in IMG_SUFFIXES)
        elif p.is_file():
            n += sum(1 for line in p.read_text().splitlines() if line.strip())
        else:
            raise FileNotFoundError(f"train split {p} not found")
    return n


def yolov5_info(python: str) -> tuple[Path, str, list[str]]:
    """(yolov5 package folder, version, top-level modules its train.py needs that are not installed, or not in the
    form it imports)."""
    code = ("import importlib.util as u, importlib.metadata as m, os\n"
            "def found(name):\n"
            "    try:\n"
            "        return u.find_spec(name) is not None\n"
            "    except ImportError:\n"
            "        return False\n"
            "s = u.find_spec('yolov5'); print(s.submodule_search_locations[0]); print(m.version('yolov5'))\n"
            f"print(','.join(x for x, probe in {sorted(STUB_PROBES.items())!r} if not found(probe)))\n")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    pkg, version, missing = (out.stdout.splitlines() + ["", "", ""])[:3]
    return Path(pkg), version, [x for x in missing.split(",") if x]


Y5_BUG = "+ list(maps) + list(map50s)"
Y5_FIX = "+ list(maps) + list(locals().get('map50s', np.zeros(nc)))"
Y5_LAUNCHER = f"""\
# Runs the installed yolov5/train.py as __main__ with its --noval logging bug fixed (see bench_train_throughput.py).
import sys
path = sys.argv[1]
src = open(path, encoding="utf-8").read()
if {Y5_BUG!r} in src:
    src = src.replace({Y5_BUG!r}, {Y5_FIX!r})
else:
    print("bench launcher: --noval logging bug not found in", path, "(running it unpatched)", file=sys.stderr)
sys.argv = [path] + sys.argv[2:]
exec(compile(src, path, "exec"), {{"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}})
"""


# YOLOv5 turns its Weights & Biases, ClearML and Comet loggers on whenever those packages import (Comet then
# archives an offline run at exit, ClearML looks for a server); ours only when asked. They are made unimportable
# in YOLOv5's process, which its loggers take as "not installed", so both trainers time training alone.
TRACKERS = ("wandb", "clearml", "comet_ml")
HIDE_TRACKERS = f"""\
import sys
from importlib.abc import MetaPathFinder


class _NoTrackers(MetaPathFinder):  # benchmark: YOLOv5's experiment loggers off, as ours are unless asked for
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRACKERS!r}:
            raise ImportError(f"{{name}} hidden by bench_train_throughput.py")
        return None


sys.meta_path.insert(0, _NoTrackers())
"""


def write_stubs(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HIDE_TRACKERS)
    for name in names:
        for rel, text in YOLOV5_STUBS[name].items():
            f = folder / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)


def fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_bench = time.monotonic()
    import torch  # only for the machine line and the default thread count

    threads = args.threads or torch.get_num_threads()
    data_file = Path(args.data) if Path(args.data).is_absolute() else (ROOT / args.data).resolve()
    if not data_file.is_file():
        raise SystemExit(f"data YAML {data_file} not found")
    data = yaml.safe_load(data_file.read_text())
    path = Path(data.get("path") or ".")
    data["path"] = str(path if path.is_absolute() else (data_file.parent / path).resolve())
    n_images = count_images(data)
    n_batches = math.ceil(n_images / args.batch_size)

    y5_pkg, y5_version, missing = yolov5_info(args.yolov5_python)
    if y5_version != "7.0.14":
        log(f"WARNING: {args.yolov5_python} has yolov5 {y5_version}, not 7.0.14")
    hyp_ours, hyp_y5 = ROOT / "data/hyps/hyp.scratch-low.yaml", y5_pkg / "data/hyps/hyp.scratch-low.yaml"
    same_hyp = yaml.safe_load(hyp_ours.read_text()) == yaml.safe_load(hyp_y5.read_text())
    same_cfg = yaml.safe_load((ROOT / "models/yolov5s.yaml").read_text()) == yaml.safe_load((y5_pkg / "models/yolov5s.yaml").read_text())

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    stub_dir = work / "yolov5_stubs"
    write_stubs(stub_dir, missing)
    run_data = work / "data.yaml"
    run_data.write_text(yaml.safe_dump(data, sort_keys=False))
    y5_cwd = work / "y5_cwd"  # not the repo root: our models/ and utils/ must not shadow anything
    y5_cwd.mkdir()
    launcher = work / "yolov5_train_launcher.py"
    launcher.write_text(Y5_LAUNCHER)

    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    base_env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                    YOLO_OFFLINE="1", YOLOv5_AUTOINSTALL="false")
    if args.isa == "avx2":
        base_env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    common = ["--data", str(run_data), "--epochs", str(args.epochs), "--imgsz", str(args.imgsz),
              "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu",
              "--optimizer", "SGD", "--noval", "--noplots", "--name", "exp"]

    def y5_cmd(project: Path):
        return ([args.yolov5_python, str(launcher), str(y5_pkg / "train.py"), "--weights", "", "--cfg", str(y5_pkg / "models/yolov5s.yaml"),
                 "--hyp", str(hyp_y5), "--project", str(project)] + common, y5_cwd,
                {**base_env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONPATH": str(stub_dir)})

    def ours_cmd(cfg: str):
        cache = ["--cache", args.our_cache] if args.our_cache else []
        return lambda project: ([sys.executable, "train.py", "--cfg", cfg, "--hyp", str(hyp_ours),
                                 "--project", str(project)] + common + cache, ROOT, dict(base_env))

    configs = [("yolov5s", f"YOLOv5 {y5_version}", y5_cmd), ("yolov5s", "ours", ours_cmd("yolov5s.yaml")),
               ("yolov5s_RepVGG", "ours", ours_cmd("yolov5s_RepVGG.yaml")),
               ("yolov5s_OREPA", "ours", ours_cmd("yolov5s_OREPA.yaml"))]

    runs = []
    for r in range(args.rounds):
        order = list(range(len(configs))) if r % 2 == 0 else list(reversed(range(len(configs))))
        for k in order:
            cfg, impl, make = configs[k]
            for attempt in range(args.retries + 1):
                tag = f"r{r}_{cfg}_{'yolov5' if impl != 'ours' else 'ours'}_a{attempt}"
                load_before, waited = wait_quiet(args.load_threshold, args.max_wait)
                log(f"[round {r + 1}/{args.rounds}] {cfg} / {impl}: start, attempt {attempt + 1} "
                    f"(1-min load {load_before:.2f}, waited {waited:.0f} s)")
                cmd, cwd, env = make(work / tag)
                res = run_training(cmd, cwd, env, work / f"{tag}.log", args.epochs, args.timeout)
                res.update(round=r, config=cfg, impl=impl, k=k, load_before=load_before, waited=waited,
                           log=work / f"{tag}.log", used=False)
                els = [epoch_elapsed(e) for e in res["epochs"]]
                res["elapsed"] = els
                res["ips"] = [n_images / x if x else None for x in els]
                res["complete"] = all(e is not None and e["t_done"] is not None for e in res["epochs"])
                noisy = (res["others_pct"] or 0) > NOISE_PCT or (res["steal_pct"] or 0) > NOISE_PCT
                log(f"    exit {res['rc']}, {res['wall']:.0f} s; epoch bar elapsed s: " + ", ".join(fmt(x) for x in els)
                    + ("" if res["complete"] else "  (INCOMPLETE: see the log)")
                    + (f"; other processes took {res['others_pct']:.0f}% of the CPU: noisy" if noisy else ""))
                runs.append(res)
                if not noisy or not res["complete"]:
                    break
                if attempt < args.retries:
                    log("    noisy: running it again")
            res["used"] = True

    # ---- results ------------------------------------------------------------------------------
    summary = {}
    for k in range(len(configs)):
        used = [res for res in runs if res["k"] == k and res["used"] and res["rc"] == 0]
        walls = [res["wall"] for res in used]
        bars = [x for res in used for x in res["elapsed"] if x is not None]
        summary[k] = dict(wall=statistics.median(walls) if walls else None, n=len(walls),
                          lo=min(walls) if walls else None, hi=max(walls) if walls else None,
                          bar=statistics.median(bars) if bars else None)
    ref = summary[0]["wall"]

    lines = []
    isa = ("; kernels limited to AVX2 in both (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)"
           if args.isa == "avx2" else "")
    lines.append(f"Machine: {cpu_name()}, {os.cpu_count()} cores, CPU flags: {', '.join(cpu_flags()) or 'none found'}, "
                 f"torch {torch.__version__}, Python {platform.python_version()}; "
                 f"both trainers run with OMP_NUM_THREADS=MKL_NUM_THREADS={threads}{isa}")
    lines.append("")
    lines.append(f"Settings (identical for all runs): {n_images} images ({data_file.name}), imgsz {args.imgsz}, batch {args.batch_size} "
                 f"({n_batches} batches/epoch), {args.epochs} epoch(s), {args.workers} loader workers, from scratch, SGD, "
                 f"hyp.scratch-low ({'same values in both' if same_hyp else 'VALUES DIFFER between the two'}), "
                 f"--noval --noplots --device cpu, AutoAnchor on, image cache: YOLOv5 none (its default), ours "
                 f"{args.our_cache or 'auto (its default)'}, {args.rounds} round(s) of alternating runs. "
                 f"yolov5s.yaml: {'same as' if same_cfg else 'DIFFERENT from'} YOLOv5's.")
    lines.append("")
    lines.append("| config | implementation | whole-process wall s (median) | min-max s | runs | YOLOv5 time / this time | "
                 "training bar s per epoch (median) |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for k, (cfg, impl, _) in enumerate(configs):
        s = summary[k]
        if k == 0:
            ratio = "1.00 (reference)"
        elif s["wall"] and ref:
            ratio = f"{ref / s['wall']:.2f}" + ("" if cfg == "yolov5s" else " (vs YOLOv5 yolov5s; other model)")
        else:
            ratio = "-"
        lines.append(f"| {cfg} | {impl} | {fmt(s['wall'], '.1f')} | {fmt(s['lo'], '.1f')}-{fmt(s['hi'], '.1f')} | {s['n']} | "
                     f"{ratio} | {fmt(s['bar'], '.1f')} |")
    lines.append("")
    lines.append("Per run (in the order run; elapsed = the training bar's, timestamped / as tqdm printed it):")
    lines.append("")
    lines.append("| # | config | implementation | counted | exit | wall s | epoch bar elapsed s (timestamped; tqdm) | images/s per epoch | "
                 "1-min load before / during (mean, max) | other processes / steal (% of all cores) | busy trainer threads (cores used) |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    noisy = []
    for i, res in enumerate(runs, 1):
        el = ", ".join(f"{fmt(x)}; {e['tqdm_elapsed'] if e else '-'}" for x, e in zip(res["elapsed"], res["epochs"]))
        ips = ", ".join(fmt(x, ".2f") for x in res["ips"])
        loads = res["loads"] or [float("nan")]
        lines.append(f"| {i} | {res['config']} | {res['impl']} | {'yes' if res['used'] else 'no (noisy, rerun)'} | {res['rc']} | {res['wall']:.0f} | {el} | {ips} | "
                     f"{res['load_before']:.2f} / {statistics.fmean(loads):.2f}, {max(loads):.2f} | "
                     f"{fmt(res['others_pct'], '.0f')}% / {fmt(res['steal_pct'], '.0f')}% | "
                     f"{fmt(res['busy_threads'], 'd')} ({fmt(res['trainer_cores'], '.2f')}) |")
        if res["used"] and (res["load_before"] >= args.load_threshold or (res["others_pct"] or 0) > NOISE_PCT
                or (res["steal_pct"] or 0) > NOISE_PCT or not res["complete"]):
            noisy.append(i)
    lines.append("")
    lines.append(f"Noise in the counted runs: {'present in run(s) ' + ', '.join(map(str, noisy)) if noisy else 'none detected'} "
                 f"(a run counts as noisy when it started at a 1-min load >= {args.load_threshold}, other processes or "
                 f"steal took > {NOISE_PCT:.0f}% of all cores' time, or its epochs were not all parsed). The load average "
                 f"during a run includes the run itself (trainer threads + loader workers).")
    total = time.monotonic() - t_bench
    lines.append(f"Total benchmark time: {total / 60:.1f} min.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.keep:
        log(f"run folders and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(res["complete"] for res in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
