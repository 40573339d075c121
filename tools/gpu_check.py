"""The whole lifecycle on a CUDA GPU, as one command with one table of pass/fail and figures.

    bash tools/gpu_check.sh                       # from the repository root; coco128 beside the repo if present
    bash tools/gpu_check.sh --data their.yaml --epochs 3 --out runs/gpu_check

Steps (each a row of the table; a failed step does not stop the next unless it needs its output):
  cuda-tests      pytest -m cuda
  train <cfg>     AMP training (--imgsz 640 --batch-size 32, 3 epochs) of yolov5s_RepVGG, yolov5s_OREPA and
                  yolov5s for scale: img/s per epoch and peak CUDA memory
  train shapes    the embedded default recipe (data/shapes.yaml, yolov5s_RepVGG, AMP): a model that detects,
                  so that the precision rows below compare real mAPs (3 epochs of coco128 from scratch score ~0)
  val fp32/half   val.py on that model, fp32 then --half: mAP50-95 within 0.005 (and above 0.1)
  export          export.py --include fused onnx engine --half (engine only where TensorRT imports)
  val <format>    val.py on every exported file: mAP50-95 within 0.005 of the .pt's
  detect --half   detect.py --half on the sample images
  ddp nccl        with 2 or more GPUs, a 1-epoch DDP run over NCCL

Exits 2 at once on a machine without CUDA, 1 when a row failed, 0 when all passed.
"""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "datasets" / "coco128" / "coco128.yaml"
SAMPLE_IMAGES = ROOT.parent / "shared" / "images"
MAP_TOL = 0.005
MIN_MAP = 0.1  # the shapes model reaches ~0.48 mAP50-95; below this something is broken before any comparison
SHAPES_DATA, SHAPES_IMGSZ = str(ROOT / "data" / "shapes.yaml"), "160"
SPEED = re.compile(r"Epoch (\d+) speed: ([\d.]+) img/s, peak CUDA memory ([\d.]+) GiB")
ALL_ROW = re.compile(r"^\s*all\s+\d+\s+\d+\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s*$", re.M)


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, step: str, ok: bool | None, figures: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append((step, status, figures))
        print(f"[gpu_check] {step}: {status} {figures}", flush=True)

    def print(self) -> None:
        w = max(len(r[0]) for r in self.rows)
        print(f"\n| {'step':<{w}} | result | figures |\n|{'-' * (w + 2)}|--------|---------|")
        for step, status, figures in self.rows:
            print(f"| {step:<{w}} | {status:<6} | {figures} |")

    @property
    def failed(self) -> bool:
        return any(r[1] == "FAIL" for r in self.rows)


def sh(args: list[str], timeout: float = 600) -> tuple[int, str, float]:
    """Run a command from the repo root: (exit code, stdout+stderr, seconds)."""
    t0 = time.time()
    try:
        p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"{e.stdout or ''}{e.stderr or ''}\nTIMEOUT after {timeout}s", 124
    return rc, out, time.time() - t0


def tail(out: str, n: int = 3) -> str:
    lines = [x for x in out.strip().splitlines() if x.strip()]
    return " / ".join(lines[-n:])[-300:]


def map5095(out: str) -> float | None:
    rows = ALL_ROW.findall(out)
    return float(rows[-1][3]) if rows else None


def cuda_tests(table: Table) -> None:
    rc, out, s = sh([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"])
    summary = next((x for x in reversed(out.splitlines()) if " passed" in x or " failed" in x or "error" in x), tail(out, 1))
    table.add("cuda-tests", rc == 0, f"{summary.strip()} ({s:.0f}s)")


def train(table: Table, cfg: str, data: str, epochs: int, out: Path, name: str = "",
          size: list[str] = ("--imgsz", "640", "--batch-size", "32")) -> Path | None:
    name = name or Path(cfg).stem
    rc, log, s = sh([sys.executable, "train.py", "--cfg", cfg, "--data", data, *size, "--epochs", str(epochs),
                     "--device", "0", "--project", str(out), "--name", name, "--exist-ok", "--noplots", "--workers", "8"])
    speeds = SPEED.findall(log)
    amp = "AMP check failed" not in log
    figures = ", ".join(f"e{e}: {float(ips):.0f} img/s {float(mem):.1f} GiB" for e, ips, mem in speeds)
    best = out / name / "weights" / "best.pt"
    ok = rc == 0 and best.is_file() and len(speeds) == epochs and amp
    table.add(f"train {name}", ok, f"{figures}; mAP50-95 {map5095(log)}; amp={'on' if amp else 'OFF'}; {s:.0f}s"
              + ("" if ok else f"; {tail(log)}"))
    return best if best.is_file() else None


def val(weights: Path, data: str, half: bool, name: str, out: Path) -> tuple[float | None, str]:
    args = [sys.executable, "val.py", "--weights", str(weights), "--data", data, "--imgsz", SHAPES_IMGSZ, "--device", "0",
            "--project", str(out / "val"), "--name", name, "--exist-ok"]
    rc, log, _ = sh(args + (["--half"] if half else []))
    return (map5095(log) if rc == 0 else None), log


def val_rows(table: Table, best: Path, data: str, out: Path) -> float | None:
    ref, log = val(best, data, False, "fp32", out)
    learned = ref is not None and ref > MIN_MAP
    table.add("val fp32", learned, f"mAP50-95 {ref} (must exceed {MIN_MAP} for the comparisons to mean anything)"
              if ref is not None else tail(log))
    low, log = val(best, data, True, "half", out)
    ok = ref is not None and low is not None and abs(low - ref) <= MAP_TOL
    table.add("val --half", ok, f"mAP50-95 {low} (fp32 {ref}, tolerance {MAP_TOL})" if low is not None else tail(log))
    return ref


def export_rows(table: Table, best: Path, data: str, ref: float | None, out: Path) -> None:
    rc, log, s = sh([sys.executable, "export.py", "--weights", str(best), "--include", "fused", "onnx", "engine",
                     "--half", "--device", "0", "--imgsz", SHAPES_IMGSZ])
    trt_missing = "TensorRT Python package" in log
    files = {"fused": best.with_name(best.stem + "-fused.pt"), "onnx": best.with_suffix(".onnx"),
             "engine": best.with_suffix(".engine")}
    ok = rc == 0 or (trt_missing and files["onnx"].is_file() and files["fused"].is_file())
    table.add("export --half", ok, f"{s:.0f}s" + ("; engine: TensorRT not installed" if trt_missing else "")
              + ("" if ok else f"; {tail(log)}"))
    for fmt, f in files.items():
        if fmt == "engine" and trt_missing:
            table.add(f"val {fmt}", None, "TensorRT not installed")
            continue
        if not f.exists():
            table.add(f"val {fmt}", False, f"{f.name} was not written")
            continue
        got, log = val(f, data, fmt != "fused", fmt, out)
        ok = got is not None and ref is not None and abs(got - ref) <= MAP_TOL
        table.add(f"val {fmt}", ok, f"mAP50-95 {got} (.pt {ref})" if got is not None else tail(log))


def detect_row(table: Table, best: Path, out: Path) -> None:
    source = SAMPLE_IMAGES if SAMPLE_IMAGES.is_dir() else ROOT / "data" / "images"
    rc, log, s = sh([sys.executable, "detect.py", "--weights", str(best), "--source", str(source), "--half",
                     "--device", "0", "--project", str(out / "detect"), "--name", "half", "--exist-ok"])
    n = len(re.findall(r"image \d+/\d+", log))
    table.add("detect --half", rc == 0, f"{n} images, {s:.0f}s" + ("" if rc == 0 else f"; {tail(log)}"))


def ddp_row(table: Table, data: str, out: Path, n_gpu: int) -> None:
    if n_gpu < 2:
        table.add("ddp nccl", None, f"{n_gpu} GPU: needs 2 or more")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rc, log, s = sh([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n_gpu), "--master_port",
                     str(port), "train.py", "--cfg", "yolov5s_RepVGG.yaml", "--data", data, "--imgsz", "640",
                     "--batch-size", str(16 * n_gpu), "--epochs", "1", "--device", ",".join(map(str, range(n_gpu))),
                     "--project", str(out), "--name", "ddp", "--exist-ok", "--noplots"])
    speeds = SPEED.findall(log)
    table.add("ddp nccl", rc == 0, f"{n_gpu} GPUs, {speeds[-1][1] + ' img/s, ' if speeds else ''}{s:.0f}s"
              + ("" if rc == 0 else f"; {tail(log)}"))


def main() -> int:
    p = argparse.ArgumentParser(description="CUDA acceptance check: tests, AMP training, --half, exports, DDP")
    p.add_argument("--data", default=str(COCO128) if COCO128.is_file() else str(ROOT / "data" / "shapes.yaml"))
    p.add_argument("--epochs", type=int, default=3, help="coco128 epochs of the three speed runs")
    p.add_argument("--shapes-epochs", type=int, default=30, help="epochs of the shapes model the precision rows use")
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"))
    p.add_argument("--skip-tests", action="store_true", help="leave out the pytest -m cuda row")
    opt = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check")
        return 2
    out = Path(opt.out)
    t0 = time.time()
    table = Table()
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"[gpu_check] {len(names)} x {names[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, data {opt.data}")
    if not opt.skip_tests:
        cuda_tests(table)
    for cfg in ("yolov5s_RepVGG.yaml", "yolov5s_OREPA.yaml", "yolov5s.yaml"):
        train(table, cfg, opt.data, opt.epochs, out)
    best = train(table, "yolov5s_RepVGG.yaml", SHAPES_DATA, opt.shapes_epochs, out, name="shapes",
                 size=["--imgsz", SHAPES_IMGSZ, "--batch-size", "16"])
    if best is not None:
        ref = val_rows(table, best, SHAPES_DATA, out)
        export_rows(table, best, SHAPES_DATA, ref, out)
        detect_row(table, best, out)
    ddp_row(table, opt.data, out, len(names))
    table.print()
    print(f"\n{names[0]} x {len(names)}, torch {torch.__version__}; {time.time() - t0:.0f}s in all")
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
