"""Inference latency of one model in every CPU-runnable deployment form, side by side in one run.

    python benchmarks/bench_deploy.py                       # yolov5s_RepVGG, 640x640 then 320x320, batch 1, CPU

Forms: the unfolded PyTorch model (training layout), the folded one (Model.fuse()), and the exported
TorchScript, ONNX Runtime and OpenVINO files, and, where requirements-mobile.txt is installed, the LiteRT
float32 and float16 .tflite files (LiteRT interpreter, XNNPACK) and the ExecuTorch .pte (XNNPACK), all from the
same random weights with random BatchNorm statistics, exported (and verified) once per image size. The forms are timed in interleaved blocks (three passes over all forms) so machine noise hits
all alike; the table gives the median and min and each form's speed relative to the unfolded model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import export  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.deploy.backends import load_backend  # noqa: E402
from utils.checkpoint import load_model, save_checkpoint  # noqa: E402
from utils.general import setup_logging  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))  # randomize_batchnorm_ is test-only: it lives in tests/helpers.py
from helpers import randomize_batchnorm_  # noqa: E402

from machine import cpu_flags, cpu_name, emit  # noqa: E402  (benchmarks/machine.py: the script's folder is on sys.path)


FORM_NAMES = {"torchscript": "TorchScript", "onnx": "ONNX Runtime", "openvino": "OpenVINO", "tflite": "LiteRT float32",
              "tflite fp16": "LiteRT float16", "executorch": "ExecuTorch (XNNPACK)"}


def mobile_formats() -> tuple[str, ...]:
    """The mobile formats whose packages are installed (requirements-mobile.txt)."""
    import importlib.util

    return tuple(f for f, module in (("tflite", "litert_torch"), ("executorch", "executorch"))
                 if importlib.util.find_spec(module) is not None)


def build_forms(cfg: str, imgsz: int, workdir: Path) -> dict:
    """name -> callable(x) for every form, all from one checkpoint."""
    ckpt = workdir / "model.pt"
    save_checkpoint(ckpt, randomize_batchnorm_(Model(cfg), seed=0).eval())
    results = export.run(weights=str(ckpt), include=("torchscript", "onnx", "openvino", *mobile_formats()),
                         imgsz=(imgsz, imgsz))
    failed = [r.format for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"export failed for {failed}")
    unfolded = load_model(ckpt)
    folded = load_model(ckpt, fuse=True)
    forms = {"PyTorch, unfolded": lambda x: unfolded(x)[0], "PyTorch, folded": lambda x: folded(x)[0]}
    for r in results:
        backend = load_backend(r.file)
        forms[FORM_NAMES[r.format]] = backend
    return forms


def time_forms(forms: dict, x: torch.Tensor, runs: int, warmup: int, passes: int = 3) -> dict:
    """Interleaved blocks: each pass runs every form ``runs // passes`` times in a row.

    Blocks rather than one call each: ONNX Runtime's and OpenVINO's thread pools spin after a call and
    would steal the cores from whichever form runs next.
    """
    times = {name: [] for name in forms}
    per_block = max(runs // passes, 1)
    with torch.inference_mode():
        for _ in range(passes):
            for name, fn in forms.items():
                for i in range(warmup + per_block):
                    t0 = time.perf_counter()
                    fn(x)
                    if i >= warmup:
                        times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfg", default="yolov5s_RepVGG.yaml")
    p.add_argument("--imgsz", type=int, nargs="+", default=[640, 320], help="one table per size")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", type=str, default=None, help="also write the markdown table here")
    opt = p.parse_args(argv)
    setup_logging(verbose=False)
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores, CPU flags: {', '.join(cpu_flags()) or 'none found'}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads"]
    for imgsz in opt.imgsz:
        with tempfile.TemporaryDirectory() as tmp:
            forms = build_forms(opt.cfg, imgsz, Path(tmp))
            times = time_forms(forms, torch.rand(1, 3, imgsz, imgsz), opt.runs, opt.warmup)
        base = statistics.median(times["PyTorch, unfolded"])
        lines += ["", f"{opt.cfg}, {imgsz}x{imgsz}, batch 1, CPU; median of {opt.runs} runs in 3 interleaved blocks, "
                  f"{opt.warmup} warmup per block", "", "| form | ms (median / min) | speed vs unfolded |", "|---|---|---|"]
        for name, ts in times.items():
            med = statistics.median(ts)
            lines.append(f"| {name} | {med:.1f} / {min(ts):.1f} | {base / med:.2f}x |")
    return emit(lines, opt.out)


if __name__ == "__main__":
    main()
