"""The whole lifecycle on a CUDA GPU, as one command with one table of pass/fail and figures.

    bash tools/gpu_check.sh                       # from the repository root; coco128 beside the repo if present
    bash tools/gpu_check.sh --data their.yaml --epochs 3 --out runs/gpu_check
    bash tools/gpu_check.sh --rehearse            # every row on the CPU at tiny sizes (the test suite runs this)
    PYTHON=venv/bin/python bash tools/gpu_check.sh   # another interpreter than python3 on PATH

Steps (each a row of the table; a failed step does not stop the next unless it needs its output):
  cuda-tests      pytest -m cuda
  train <cfg>     AMP training (--imgsz 640 --batch-size 32, 3 epochs) of yolov5s_RepVGG, yolov5s_OREPA and
                  yolov5s for scale: img/s per epoch and peak CUDA memory
  loader          the training dataloader alone (tools/loader_speed.py, same data, sizes and workers): its img/s
                  beside the training rows' last-epoch img/s, and which of the two bounds the epoch
  train shapes    the embedded default recipe (data/shapes.yaml, yolov5s_RepVGG, AMP): a model that detects,
                  so that the precision rows below compare real mAPs (3 epochs of coco128 from scratch score ~0)
  val fp32/half   val.py on that model, fp32 then --half: mAP50-95 within 0.005 (and above 0.1)
  export          export.py --include fused onnx engine --half (engine only where TensorRT imports)
  val <format>    val.py on every exported file: mAP50-95 within 0.005 of the .pt's
  detect --half   detect.py --half on the sample images
  ddp nccl        with 2 or more GPUs, a 1-epoch DDP run over NCCL
  autobatch       train.py --batch-size -1: the batch AutoBatch fits to 0.8 of the free CUDA memory, then 1 epoch

``--rehearse`` runs the same rows, commands, parsing and file names on the CPU with tiny sizes (32 px, a
generated 6-image dataset, 1 epoch) and the CPU's equivalents of CUDA-only options: --device cpu, no --half
(fp32), DDP over gloo with 2 processes, the TensorRT engine skipped. Its figures are not measurements and the
0.1 mAP floor is not applied (1 epoch learns nothing); it proves the script itself before a GPU hour is spent.
It runs two independent groups of rows at a time (about 160 CPU seconds in all on a 2-core x86 machine).
Optional packages (pycocotools, onnxslim, openvino, nncf, tensorrt) are not needed; a row that needs one
says so and is skipped.

Exits 2 at once (one line) without torch or, unless rehearsing, without CUDA; 1 when a row failed; 0 when
all passed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "datasets" / "coco128" / "coco128.yaml"
SAMPLE_IMAGES = ROOT.parent / "shared" / "images"
MAP_TOL = 0.005
MIN_MAP = 0.1  # the shapes model reaches ~0.48 mAP50-95; below this something is broken before any comparison
SHAPES_DATA = str(ROOT / "data" / "shapes.yaml")
SPEED_CFGS = ("yolov5s_RepVGG.yaml", "yolov5s_OREPA.yaml", "yolov5s.yaml")
SPEED = re.compile(r"Epoch (\d+) speed: ([\d.]+) img/s, peak CUDA memory ([\d.]+) GiB")
LOADER = re.compile(r"loader: ([\d.]+) img/s")
DATA_BOUND = 0.85  # training at this share or more of what the loader alone delivers: the loader sets the pace
AUTOBATCH = re.compile(r"AutoBatch: batch size (\d+) \((.*?); ([\d.]+) GiB/image .* predicted ([\d.]+) of ([\d.]+) GiB")
ALL_ROW = re.compile(r"^\s*all\s+\d+\s+\d+\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s*$", re.M)


@dataclass(frozen=True)
class Plan:
    """What the rows run with: the GPU recipe, or the CPU rehearsal's tiny sizes and CPU equivalents."""
    rehearse: bool
    device: str  # --device of every single-process row
    data: str  # the three speed rows' dataset
    epochs: int  # of the speed rows
    speed_size: tuple[str, ...]  # --imgsz/--batch-size of the speed rows
    shapes_data: str  # the recipe the precision rows' model is trained with
    shapes_epochs: int
    shapes_size: tuple[str, str]  # (--imgsz, --batch-size) of the shapes model, its val, export and detect
    half: tuple[str, ...]  # ('--half',) on CUDA, () on the CPU (fp32 there)
    workers: str
    engine_missing: str | None  # why the TensorRT rows are skipped, None where they run
    ddp_processes: int  # of the DDP row: one per GPU (2 CPU processes over gloo when rehearsing)
    ddp_size: tuple[str, ...]  # its --imgsz/--batch-size


def has_module(name: str) -> bool:
    """Whether ``import name`` would find the package, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []
        self.train_speed: dict[str, float] = {}  # train row -> its last epoch's img/s

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
    if not has_module("pytest"):  # not among a bare CUDA machine's packages
        table.add("cuda-tests", None, "needs pytest (pip install pytest)")
        return
    rc, out, s = sh([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"])
    summary = next((x for x in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|skipped|error)", x)),
                   tail(out, 1))
    table.add("cuda-tests", rc == 0, f"{summary.strip()} ({s:.0f}s)" + ("" if rc == 0 else f"; {tail(out)}"))


def train(table: Table, plan: Plan, cfg: str, data: str, epochs: int, out: Path, name: str = "",
          size: tuple[str, ...] = ()) -> Path | None:
    name = name or Path(cfg).stem
    rc, log, s = sh([sys.executable, "train.py", "--cfg", cfg, "--data", data, *size, "--epochs", str(epochs),
                     "--device", plan.device, "--project", str(out), "--name", name, "--exist-ok", "--noplots",
                     "--workers", plan.workers])
    speeds = SPEED.findall(log)
    amp = "n/a on CPU" if plan.rehearse else ("OFF" if "AMP check failed" in log else "on")
    figures = ", ".join(f"e{e}: {float(ips):.0f} img/s {float(mem):.1f} GiB" for e, ips, mem in speeds)
    best = out / name / "weights" / "best.pt"
    if speeds:
        table.train_speed[f"train {name}"] = float(speeds[-1][1])
    ok = rc == 0 and best.is_file() and len(speeds) == epochs and amp != "OFF"
    table.add(f"train {name}", ok, f"{figures}; mAP50-95 {map5095(log)}; amp={amp}; {s:.0f}s"
              + ("" if ok else f"; {tail(log)}"))
    return best if best.is_file() else None


def val(plan: Plan, weights: Path, half: bool, name: str, out: Path) -> tuple[float | None, str]:
    args = [sys.executable, "val.py", "--weights", str(weights), "--data", plan.shapes_data, "--imgsz",
            plan.shapes_size[0], "--device", plan.device, "--project", str(out / "val"), "--name", name, "--exist-ok"]
    rc, log, _ = sh(args + (list(plan.half) if half else []))
    return (map5095(log) if rc == 0 else None), log


def val_rows(table: Table, plan: Plan, best: Path, out: Path) -> float | None:
    ref, log = val(plan, best, False, "fp32", out)
    if plan.rehearse:  # one epoch learns nothing: the floor would fail every rehearsal
        table.add("val fp32", ref is not None, f"mAP50-95 {ref} (rehearsal: the {MIN_MAP} floor is not applied)"
                  if ref is not None else tail(log))
    else:
        table.add("val fp32", ref is not None and ref > MIN_MAP, f"mAP50-95 {ref} (must exceed {MIN_MAP} for the "
                  "comparisons to mean anything)" if ref is not None else tail(log))
    low, log = val(plan, best, True, "half", out)
    ok = ref is not None and low is not None and abs(low - ref) <= MAP_TOL
    precision = "half" if plan.half else "fp32 on CPU"
    table.add("val --half", ok, f"mAP50-95 {low} ({precision}; fp32 {ref}, tolerance {MAP_TOL})" if low is not None
              else tail(log))
    return ref


def export_rows(table: Table, plan: Plan, best: Path, ref: float | None, out: Path) -> None:
    include = ["fused", "onnx"] + ([] if plan.engine_missing else ["engine"])
    rc, log, s = sh([sys.executable, "export.py", "--weights", str(best), "--include", *include, *plan.half,
                     "--device", plan.device, "--imgsz", plan.shapes_size[0]])
    files = {"fused": best.with_name(best.stem + "-fused.pt"), "onnx": best.with_suffix(".onnx"),
             "engine": best.with_suffix(".engine")}
    table.add("export --half", rc == 0, f"{' '.join(include)}{' --half' if plan.half else ' (fp32 on CPU)'}; {s:.0f}s"
              + (f"; engine: {plan.engine_missing}" if plan.engine_missing else "")
              + ("" if rc == 0 else f"; {tail(log)}"))
    for fmt, f in files.items():
        if fmt == "engine" and plan.engine_missing:
            table.add(f"val {fmt}", None, plan.engine_missing)
            continue
        if not f.exists():
            table.add(f"val {fmt}", False, f"{f.name} was not written")
            continue
        got, log = val(plan, f, fmt != "fused", fmt, out)
        ok = got is not None and ref is not None and abs(got - ref) <= MAP_TOL
        table.add(f"val {fmt}", ok, f"mAP50-95 {got} (.pt {ref})" if got is not None else tail(log))


def detect_row(table: Table, plan: Plan, best: Path, out: Path) -> None:
    source = SAMPLE_IMAGES if SAMPLE_IMAGES.is_dir() else ROOT / "data" / "images"
    rc, log, s = sh([sys.executable, "detect.py", "--weights", str(best), "--source", str(source), *plan.half,
                     "--imgsz", plan.shapes_size[0], "--device", plan.device, "--project", str(out / "detect"),
                     "--name", "half", "--exist-ok"])
    n = len(re.findall(r"image \d+/\d+", log))
    ok = rc == 0 and n > 0
    table.add("detect --half", ok, f"{n} images, {s:.0f}s" + ("" if ok else f"; {tail(log)}"))


def ddp_row(table: Table, plan: Plan, out: Path) -> None:
    n = plan.ddp_processes
    if n < 2:
        table.add("ddp nccl", None, f"{n} GPU: needs 2 or more")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    devices = "cpu" if plan.rehearse else ",".join(map(str, range(n)))
    rc, log, s = sh([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
                     str(port), "train.py", "--cfg", "yolov5s_RepVGG.yaml", "--data", plan.data, *plan.ddp_size,
                     "--epochs", "1", "--device", devices, "--project", str(out), "--name", "ddp", "--exist-ok",
                     "--noplots", "--workers", plan.workers])
    speeds = SPEED.findall(log)
    ok = rc == 0 and len(speeds) == 1
    what = f"{n} CPU processes over gloo (rehearsal)" if plan.rehearse else f"{n} GPUs"
    table.add("ddp nccl", ok, f"{what}, {speeds[-1][1] + ' img/s, ' if speeds else ''}{s:.0f}s"
              + ("" if ok else f"; {tail(log)}"))


def autobatch_row(table: Table, plan: Plan, out: Path) -> None:
    """A 1-epoch run with --batch-size -1: on CUDA the probe's fit must choose a batch that trains."""
    size = plan.speed_size[:2]  # --imgsz only: the batch is AutoBatch's
    rc, log, s = sh([sys.executable, "train.py", "--cfg", "yolov5s_RepVGG.yaml", "--data", plan.data, *size,
                     "--batch-size", "-1", "--epochs", "1", "--device", plan.device, "--project", str(out),
                     "--name", "autobatch", "--exist-ok", "--noplots", "--workers", plan.workers])
    fit = AUTOBATCH.search(log)
    if plan.rehearse:  # nothing to measure on the CPU: the message and the default batch
        ok = rc == 0 and "needs a CUDA device" in log
        figures = "CPU: default batch 16 (rehearsal)"
    else:
        ok = rc == 0 and fit is not None and fit.group(2) == "fit"
        figures = (f"batch {fit.group(1)} ({fit.group(2)}), {fit.group(3)} GiB/image, predicted {fit.group(4)} of "
                   f"{fit.group(5)} GiB free" if fit else "no AutoBatch line")
    table.add("train --batch-size -1", ok, f"{figures}; {s:.0f}s" + ("" if ok else f"; {tail(log)}"))


def rehearsal_data(out: Path) -> str:
    """A generated 4+2-image shapes set with data/shapes.yaml's training recipe (optimizer, hyp)."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from utils.datasets.synthetic import generate_shapes

    root = out / "data" / "shapes"
    generate_shapes(root, n_train=4, n_val=2, imgsz=64, seed=0)
    recipe = yaml.safe_load(Path(SHAPES_DATA).read_text(encoding="utf-8"))
    cfg = {"path": str(root), "train": "images/train", "val": "images/val", "names": recipe["names"],
           "optimizer": recipe["optimizer"], "hyp": str(ROOT / "data" / recipe["hyp"])}
    f = out / "data" / "shapes.yaml"
    f.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return str(f)


def loader_row(table: Table, plan: Plan) -> None:
    """The dataloader alone at the speed rows' settings, against what those trainings achieved."""
    rc, log, s = sh([sys.executable, "tools/loader_speed.py", "--data", plan.data, *plan.speed_size,
                     "--workers", plan.workers, "--batches", "2" if plan.rehearse else "30"])
    found = LOADER.findall(log)
    if rc != 0 or not found:
        table.add("loader", False, f"{s:.0f}s; {tail(log)}")
        return
    loader = float(found[-1])
    verdicts = []
    for row, ips in table.train_speed.items():
        share = ips / loader
        verdicts.append(f"{row.removeprefix('train ')} {ips:.0f} img/s = {share:.0%} of it: "
                        + ("the data pipeline bounds the epoch" if share >= DATA_BOUND else "the model step bounds it"))
    table.add("loader", True, f"{loader:.0f} img/s with {plan.workers} workers; " + ("; ".join(verdicts) or
                                                                                     "no training figures to compare")
              + f"; {s:.0f}s")


def make_plan(opt: argparse.Namespace, torch) -> Plan:
    if opt.rehearse:
        data = rehearsal_data(Path(opt.out))
        tiny = ("--imgsz", "32", "--batch-size", "4")
        return Plan(rehearse=True, device="cpu", data=opt.data or data, epochs=1, speed_size=tiny, shapes_data=data,
                    shapes_epochs=1, shapes_size=("32", "4"), half=(), workers="0",
                    engine_missing="needs tensorrt + CUDA (rehearsal on the CPU)", ddp_processes=2, ddp_size=tiny)
    engine_missing = None if has_module("tensorrt") else "needs tensorrt (pip install tensorrt)"
    n = torch.cuda.device_count()
    return Plan(rehearse=False, device="0", data=opt.data or (str(COCO128) if COCO128.is_file() else SHAPES_DATA),
                epochs=opt.epochs, speed_size=("--imgsz", "640", "--batch-size", "32"), shapes_data=SHAPES_DATA,
                shapes_epochs=opt.shapes_epochs, shapes_size=("160", "16"), half=("--half",), workers="8",
                engine_missing=engine_missing, ddp_processes=n, ddp_size=("--imgsz", "640", "--batch-size", str(16 * n)))


def shapes_rows(table: Table, plan: Plan, out: Path) -> None:
    """The shapes model, then everything that compares against it."""
    best = train(table, plan, "yolov5s_RepVGG.yaml", plan.shapes_data, plan.shapes_epochs, out, name="shapes",
                 size=("--imgsz", plan.shapes_size[0], "--batch-size", plan.shapes_size[1]))
    if best is not None:
        ref = val_rows(table, plan, best, out)
        export_rows(table, plan, best, ref, out)
        detect_row(table, plan, best, out)


def run_rows(table: Table, plan: Plan, out: Path, skip_tests: bool) -> None:
    """Four independent groups of rows, added to ``table`` in this order. On the GPU they run one after another
    (the speed figures need the machine to themselves); the rehearsal measures nothing and runs two at a time,
    the longest first, which halves its time on two cores."""
    groups = {  # name: (the rehearsal's CPU seconds, measured on 2 cores; the rows)
        "cuda-tests": (12, cuda_tests),
        "speed": (62, lambda t: [*(train(t, plan, cfg, plan.data, plan.epochs, out, size=plan.speed_size)
                                   for cfg in SPEED_CFGS), loader_row(t, plan)]),
        "shapes": (70, lambda t: shapes_rows(t, plan, out)),
        "ddp": (27, lambda t: [ddp_row(t, plan, out), autobatch_row(t, plan, out)]),
    }
    if skip_tests:
        del groups["cuda-tests"]
    tables = {name: Table() for name in groups}
    order = sorted(groups, key=lambda name: -groups[name][0]) if plan.rehearse else list(groups)
    with ThreadPoolExecutor(max_workers=2 if plan.rehearse else 1) as pool:
        for future in [pool.submit(groups[name][1], tables[name]) for name in order]:
            future.result()
    for t in tables.values():
        table.rows += t.rows


def main() -> int:
    p = argparse.ArgumentParser(description="CUDA acceptance check: tests, AMP training, --half, exports, DDP")
    p.add_argument("--data", default="", help="dataset of the three speed rows (default: coco128 beside the repo, "
                   "else data/shapes.yaml; when rehearsing, a generated 6-image set)")
    p.add_argument("--epochs", type=int, default=3, help="coco128 epochs of the three speed runs")
    p.add_argument("--shapes-epochs", type=int, default=30, help="epochs of the shapes model the precision rows use")
    p.add_argument("--out", default="", help="output folder (default runs/gpu_check, runs/gpu_check_rehearsal)")
    p.add_argument("--skip-tests", action="store_true", help="leave out the pytest -m cuda row")
    p.add_argument("--rehearse", action="store_true", help="every row on the CPU at tiny sizes, CPU equivalents of "
                   "CUDA-only options: proves the script (and the suite runs it), measures nothing")
    opt = p.parse_args()
    opt.out = opt.out or str(ROOT / "runs" / ("gpu_check_rehearsal" if opt.rehearse else "gpu_check"))
    try:
        import torch
    except ImportError as e:
        print(f"gpu_check: {sys.executable} cannot import torch ({e}); install requirements.txt for it, or name "
              "the interpreter that has them: PYTHON=/path/to/python bash tools/gpu_check.sh")
        return 2
    if not opt.rehearse and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check "
              "(--rehearse runs every row on the CPU)")
        return 2
    out, t0, table = Path(opt.out), time.time(), Table()
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(opt, torch)
    if plan.rehearse:
        machine = f"CPU rehearsal ({os.cpu_count()} cores; figures are not measurements)"
    else:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        machine = f"{len(names)} x {names[0]}, CUDA {torch.version.cuda}"
    print(f"[gpu_check] {machine}, torch {torch.__version__}, Python {sys.version.split()[0]} ({sys.executable}), "
          f"data {plan.data}", flush=True)
    run_rows(table, plan, out, opt.skip_tests)
    table.print()
    print(f"\n{machine}, torch {torch.__version__}; {time.time() - t0:.0f}s in all")
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
