"""Benchmark structural re-parameterization: whole models before/after fuse(), and single blocks in training.

Run from the repository root::

    python benchmarks/bench_reparam.py [--imgsz 640] [--runs 50] [--block-runs 30] [--warmup 5] [--threads N] [--device cpu|cuda] [--out FILE]

Prints two markdown tables (progress goes to stderr):

1. Models (batch 1, eval, ``torch.inference_mode``): parameters, GFLOPs and median latency of the same
   model before and after ``Model.fuse()``, timed interleaved in one process, plus the largest absolute
   difference between the two outputs. BatchNorm statistics and affine parameters are randomised with a
   fixed seed first, so folding has non-trivial statistics to absorb.
2. Blocks (64->64, k=3, s=1, input 8x64x80x80, training mode): median training-step time (forward, loss,
   backward, SGD step; the three blocks are stepped round-robin), activation memory saved for backward and parameter count; on CUDA also the
   allocator peak of one step above the memory resident before it. Ratios are relative to ``Conv``.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from models.common import OREPA, Conv, RepVGGBlock  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.torch_utils import count_flops, count_parameters  # noqa: E402

from machine import cpu_name, cpu_times, noise_pct  # noqa: E402  (benchmarks/machine.py: the script's folder is on sys.path)

LOG = logging.getLogger("bench_reparam")
MODELS = ("yolov5s", "yolov5s_RepVGG", "yolov5s_OREPA")
BLOCKS = {"Conv": lambda: Conv(64, 64, 3, 1), "RepVGGBlock": lambda: RepVGGBlock(64, 64, 3, 1), "OREPA": lambda: OREPA(64, 64, 3, 1)}
BLOCK_INPUT = (8, 64, 80, 80)
SEED = 0
MIB = 2**20


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--imgsz", type=int, default=640, help="square input size of the model benchmark")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model (median reported)")
    p.add_argument("--block-runs", type=int, default=30, help="timed training steps per block (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's current)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown output here")
    args = p.parse_args(argv)
    if min(args.runs, args.block_runs) < 1 or args.warmup < 0:
        p.error("--runs/--block-runs must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    return args


def noise_note(start) -> str:
    """How much of the machine other processes and other VMs (steal) took while the benchmark ran."""
    pct = noise_pct(start, cpu_times())
    if pct is None:
        return ""
    return f"Noise during the run: other processes used {pct[0]:.0f}% of all cores' time, hypervisor steal {pct[1]:.0f}%"


def machine_line(device: torch.device) -> str:
    line = (f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")
    if device.type == "cuda":
        line += f", GPU {torch.cuda.get_device_name(device)}"
    return line


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes (synchronised on CUDA)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(fns, runs: int, warmup: int, device: torch.device) -> list[tuple[float, float]]:
    """(median, min) ms of each function, called round-robin so host noise and drift hit all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times):
            t.append(timed(fn, device))
    return [(statistics.median(t), min(t)) for t in times]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([fmt(header), sep, *(fmt(r) for r in rows)])


# ---------------------------------------------------------------------------------------------
# Models: unfolded vs folded inference
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = SEED) -> None:
    """Give every BatchNorm2d non-trivial statistics and affine parameters (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    u = lambda n, lo, hi: torch.rand(n, generator=g) * (hi - lo) + lo  # noqa: E731
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(u(n, -0.5, 0.5))
            m.running_var.copy_(u(n, 0.5, 2.0))
            m.weight.copy_(u(n, 0.5, 1.5))
            m.bias.copy_(u(n, -0.2, 0.2))


def max_abs_diff(a, b) -> tuple[float, float]:
    """Largest |a - b| of the decoded output and of the raw head maps of an eval-mode Detect output."""
    (da, raw_a), (db, raw_b) = a, b
    decoded = (da - db).abs().max().item()
    raw = max((x - y).abs().max().item() for x, y in zip(raw_a, raw_b))
    return decoded, raw


def bench_model(cfg: str, args, device: torch.device) -> list[str]:
    torch.manual_seed(SEED)
    unfolded = Model(f"{cfg}.yaml").eval()
    randomize_bn(unfolded)
    folded = copy.deepcopy(unfolded).fuse()
    unfolded, folded = unfolded.to(device), folded.to(device)
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(SEED)).to(device)
    p0, p1 = count_parameters(unfolded), count_parameters(folded)
    g0, g1 = count_flops(unfolded, args.imgsz) / 1e9, count_flops(folded, args.imgsz) / 1e9
    with torch.inference_mode():
        d_dec, d_raw = max_abs_diff(unfolded(x), folded(x))
        (ms0, min0), (ms1, min1) = time_interleaved([lambda: unfolded(x), lambda: folded(x)], args.runs, args.warmup, device)
    LOG.info(f"{cfg}: {ms0:.1f} ms -> {ms1:.1f} ms, max|diff| {d_dec:.2e}")
    return [cfg, f"{p0:,}", f"{p1:,}", f"{g0:.1f}", f"{g1:.1f}", f"{ms0:.1f} / {min0:.1f}", f"{ms1:.1f} / {min1:.1f}",
            f"{ms0 / ms1:.2f}x", f"{d_dec:.1e}", f"{d_raw:.1e}"]


def models_table(args, device: torch.device) -> str:
    header = ["model", "params", "params fused", "GFLOPs", "GFLOPs fused", "ms (median / min)", "ms fused (median / min)",
              "speedup (median)", "max abs diff (decoded)", "max abs diff (raw)"]
    return markdown_table(header, [bench_model(cfg, args, device) for cfg in MODELS])


# ---------------------------------------------------------------------------------------------
# Blocks: training step time and memory
# ---------------------------------------------------------------------------------------------


def saved_activation_bytes(block: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique storages autograd saves for backward during one forward, parameters and buffers excluded."""
    persistent = {t.untyped_storage().data_ptr() for t in [*block.parameters(), *block.buffers()]}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in persistent:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(x)
    del out
    return sum(storages.values())


def train_step(block: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss = block(x).float().square().mean()
    loss.backward()
    opt.step()


def cuda_step_peak(block, opt, x, device: torch.device) -> float:
    """Allocator peak (MiB) of one training step above what was resident before it (weights, input, ...)."""
    opt.zero_grad(set_to_none=True)
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    train_step(block, opt, x)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / MIB


def make_block(name: str, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(SEED)
    block = BLOCKS[name]().to(device).train()
    return block, torch.optim.SGD(block.parameters(), lr=1e-3, momentum=0.9)


def bench_blocks(args, device: torch.device) -> list[dict]:
    """Training-step medians (blocks stepped round-robin), saved activations, parameters, CUDA peak."""
    x = torch.randn(*BLOCK_INPUT, generator=torch.Generator().manual_seed(SEED)).to(device)
    setups = {name: make_block(name, device) for name in BLOCKS}
    steps = [lambda b=b, o=o: train_step(b, o, x) for b, o in setups.values()]
    medians = time_interleaved(steps, args.block_runs, args.warmup, device)
    results = []
    for (name, (block, opt)), (ms, ms_min) in zip(setups.items(), medians):
        res = {"name": name, "ms": ms, "ms_min": ms_min, "act": saved_activation_bytes(block, x) / MIB, "params": count_parameters(block)}
        if device.type == "cuda":
            res["peak"] = cuda_step_peak(block, opt, x, device)
        LOG.info(f"{name}: {ms:.1f} ms/step, {res['act']:.1f} MiB saved for backward")
        results.append(res)
    return results


def blocks_table(args, device: torch.device) -> str:
    results = bench_blocks(args, device)
    ref = results[0]
    header = ["block", "train step ms (median / min)", "vs Conv (median)", "activation memory saved for backward (MiB)", "vs Conv",
              "params", "vs Conv"]
    if device.type == "cuda":
        header += ["CUDA step peak over resident (MiB)", "vs Conv"]
    rows = []
    for r in results:
        row = [r["name"], f"{r['ms']:.1f} / {r['ms_min']:.1f}", f"{r['ms'] / ref['ms']:.2f}x", f"{r['act']:.1f}",
               f"{r['act'] / ref['act']:.2f}x", f"{r['params']:,}", f"{r['params'] / ref['params']:.2f}x"]
        if device.type == "cuda":
            row += [f"{r['peak']:.1f}", f"{r['peak'] / ref['peak']:.2f}x"]
        rows.append(row)
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> str:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0, jiffies = time.perf_counter(), cpu_times()
    sections = [
        machine_line(device),
        f"### Models ({args.imgsz}x{args.imgsz}, batch 1, eval, inference_mode; median of {args.runs} runs after {args.warmup} warmup)",
        models_table(args, device),
        f"### Blocks (64->64, k=3, s=1, input {'x'.join(map(str, BLOCK_INPUT))}, training; "
        f"median of {args.block_runs} steps after {args.warmup} warmup)",
        blocks_table(args, device),
    ]
    note = noise_note(jiffies)
    if note:
        sections.insert(1, note)
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    LOG.info(f"total {time.perf_counter() - t0:.0f} s")
    return text


if __name__ == "__main__":
    main()
