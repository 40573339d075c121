"""What each training speed-up is worth: our train.py with each one switched off in turn, whole process.

Run from the repository root::

    python benchmarks/bench_train_speedups.py [--cfg yolov5s.yaml] [--rounds 2] [--out FILE]

Same settings as ``bench_train_throughput.py`` (coco128, imgsz 320, batch 16, 2 workers, 1 epoch,
``--noval --noplots --device cpu``, from scratch), whole-process wall time, runs alternated (forward on even
rounds, backward on odd ones), each started on a quiet machine. Variants, each a ``train.run`` call in a fresh
interpreter with one function replaced before training starts:

- ``all``: the code as it is;
- ``no channels-last``: ``to_channels_last`` is the identity in the trainer and in the validation backend, so
  training and validation run NCHW;
- ``no folded validation``: the trainer validates the EMA itself (``fuse=False``), as YOLOv5 does;
- ``neither``: both off.

Persistent dataloader workers were measured when they were added (benchmarks/README.md); they cannot be
switched off without changing the sampler, so they are not a variant here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_train_throughput import run_training, wait_quiet  # the script's folder is sys.path[0]
from machine import cpu_name, emit

ROOT = Path(__file__).resolve().parents[1]

LAUNCH = """
import functools, json, sys
sys.path.insert(0, {root!r})
import train, utils.training.trainer, utils.deploy.backends, utils.torch_utils
variant = {variant!r}
if variant in ("no channels-last", "neither"):
    utils.training.trainer.to_channels_last = lambda m: m
    utils.torch_utils.to_channels_last = lambda m: m  # the backend imports it from here at call time
if variant in ("no folded validation", "neither"):
    utils.training.trainer.validate = functools.partial(utils.training.trainer.validate, fuse=False)
train.run(**json.loads({kwargs!r}))
"""
VARIANTS = ("all", "no channels-last", "no folded validation", "neither")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfg", default="yolov5s.yaml")
    p.add_argument("--data", default=str(ROOT.parent / "shared/datasets/coco128/coco128.yaml"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench_speedups_"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    bars: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            wait_quiet(0.7, 600)
            kwargs = dict(cfg=args.cfg, data=args.data, epochs=1, imgsz=320, batch_size=16, workers=2, device="cpu",
                          noval=True, noplots=True, project=str(work / f"r{r}"), name=v.replace(" ", "_"))
            code = LAUNCH.format(root=str(ROOT), variant=v, kwargs=json.dumps(kwargs))
            res = run_training([sys.executable, "-c", code], ROOT, env, work / f"r{r}_{v}.log", 1, 1800)
            bar = res["epochs"][0]["t_done"] - res["epochs"][0]["t0"] if res["epochs"][0] and res["epochs"][0]["t0"] else None
            print(f"[round {r + 1}] {v}: exit {res['rc']}, {res['wall']:.1f} s, training bar {bar or float('nan'):.1f} s",
                  file=sys.stderr, flush=True)
            if res["rc"] == 0:
                walls[v].append(res["wall"])
                bars[v].append(bar)
    ref = statistics.median(walls["all"])
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; {args.cfg}, coco128, imgsz 320, "
             f"batch 16, 2 workers, 1 epoch, --noval --noplots, {args.rounds} alternating rounds", "",
             "| variant | whole-process s (median) | runs (s) | training bar s (median) | this time / all on |",
             "| --- | --- | --- | --- | --- |"]
    for v in VARIANTS:
        med = statistics.median(walls[v])
        lines.append(f"| {v} | {med:.1f} | {', '.join(f'{x:.1f}' for x in walls[v])} | "
                     f"{statistics.median([b for b in bars[v] if b]):.1f} | {med / ref:.2f} |")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"Total: {(time.time() - t0) / 60:.1f} min", file=sys.stderr)
    sys.exit(rc)
