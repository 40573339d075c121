"""INT8 against fp32 for plain, RepVGG, QARepVGG and OREPA models: accuracy drop and CPU latency.

Run from the repository root::

    python benchmarks/bench_int8.py [--cfgs yolov5s yolov5s_RepVGG yolov5s_QARepVGG yolov5s_OREPA]
        [--formats onnx openvino] [--epochs N] [--runs-dir DIR] [--calib-images 300] [--latency-runs 50] [--out FILE]
    python benchmarks/bench_int8.py --formats tflite executorch --cfgs yolov5s yolov5s_RepVGG yolov5s_QARepVGG yolov7-tiny

For each config: train it on the embedded default recipe (``python train.py --cfg X``: data/shapes.yaml and
its recommendations; ``--epochs`` shortens it; a run already in ``--runs-dir`` is reused), then export best.pt
with ``export.py --include onnx openvino --int8 --data data/shapes.yaml`` at the recipe's image size (the
INT8 files are verified by their detections inside export) and validate every file with ``val.py`` on the
val split: fp32 ONNX, INT8 ONNX, fp32 OpenVINO and INT8 OpenVINO mAP50-95. Latency: the same four forms
exported again at 640x640 (calibrated on the same images, letterboxed to 640), batch 1, median of
``--latency-runs`` single-image runs after 10 warm-up runs, in ONNX Runtime (CPU provider) and OpenVINO (CPU),
each with its default thread count on this machine. The CPU's INT8 instructions (AVX2 only, AVX-512 VNNI,
AVX-VNNI, AMX) are read from /proc/cpuinfo: INT8 gains little without VNNI or AMX.

``--compare-calibration`` also quantizes each model's fp32 ONNX with each of ONNX Runtime's calibration
methods in ``utils.deploy.quantize.CALIBRATIONS`` (same images, same layout otherwise) and its fp32 OpenVINO IR
with each NNCF activation range estimator in ``OPENVINO_RANGES``, and validates each: how
``utils.deploy.quantize.CALIBRATION_METHOD`` and ``OPENVINO_ACTIVATION_RANGES`` were chosen.
``--latency-runs 0`` skips the latency copies (accuracy only). ``--formats`` picks the exports compared (any of
``FORMATS``; the mobile ones need requirements-mobile.txt): LiteRT's float32 and INT8 ``.tflite`` run in the LiteRT
interpreter (XNNPACK), ExecuTorch's ``.pte`` files in ExecuTorch's runtime (XNNPACK).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import cpu_flags, cpu_name, emit  # noqa: E402  (benchmarks/machine.py)

DATA = ROOT / "data" / "shapes.yaml"
CFGS = ("yolov5s", "yolov5s_RepVGG", "yolov5s_QARepVGG", "yolov5s_OREPA")
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
OPENVINO_RANGES = ("MINMAX", "HISTOGRAM")  # NNCF RangeEstimatorParametersSet members compared
FORMATS = {"onnx": "ONNX", "openvino": "OpenVINO", "tflite": "TFLite", "executorch": "ExecuTorch"}
RUNTIMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO", "tflite": "LiteRT", "executorch": "ExecuTorch"}


def cpu_int8_flags() -> list[str]:
    return cpu_flags(INT8_FLAGS)


def package_versions(formats) -> str:
    """The runtimes behind ``formats``, with their versions (the table's figures depend on them)."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {"onnx": ["onnxruntime"], "openvino": ["openvino", "nncf"],
                "tflite": ["litert-torch", "ai-edge-litert", "ai-edge-quantizer"], "executorch": ["executorch", "torchao"]}
    out = []
    for name in dict.fromkeys(p for f in formats for p in packages[f]):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} missing")
    return ", ".join(out)


def train(cfg: str, runs_dir: Path, epochs: int | None) -> Path:
    name = f"{cfg}-{epochs}ep" if epochs else cfg  # a shortened run is never reused as the full recipe
    best = runs_dir / name / "weights" / "best.pt"
    if best.exists():
        print(f"{cfg}: reusing {best}", file=sys.stderr)
        return best
    cmd = [sys.executable, "train.py", "--cfg", f"{cfg}.yaml", "--project", str(runs_dir), "--name", name,
           "--exist-ok", "--noplots"] + (["--epochs", str(epochs)] if epochs else [])
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{cfg}: trained in {time.time() - t0:.0f} s", file=sys.stderr)
    return best


def export_forms(weights: Path, imgsz: int, calib: int, timing_only: bool = False,
                 formats=("onnx", "openvino")) -> tuple[dict, dict]:
    """({form: file}, {form: detection agreement}) for fp32/INT8 ``formats`` at ``imgsz``.

    ``timing_only``: an INT8 file that export's verification refused (kept as ``*.failed.*``) is still timed,
    and the refusal reported: the 640 px latency copies run a model trained at 160 px on 4x upscaled images,
    where a weak model's marginal detections may not survive INT8 (its speed is the same)."""
    import export

    results = export.run(weights=str(weights), include=tuple(formats), imgsz=(imgsz, imgsz), int8=True,
                         data=str(DATA), calib_images=calib)
    failed = [f"{r.format}: {r.error}" for r in results if not r.ok]
    if failed and timing_only and all(r.file is not None and r.file.exists() for r in results):
        print(f"{weights}: timed although refused by verification: {'; '.join(failed)}", file=sys.stderr)
        for r in results:  # back to the name load_backend reads (these copies exist only to be timed)
            if not r.ok:
                timed = r.file.with_name(r.file.name.replace(".failed", ""))
                os.replace(r.file, timed)
                r.file = timed
    elif failed:
        raise RuntimeError(f"{weights} export failed: {'; '.join(failed)}")
    files = {r.format: r.file for r in results}
    agreement = {r.format: r.agreement for r in results if r.agreement is not None}
    return files, agreement


def map5095(file: Path, imgsz: int) -> float:
    import val

    metrics = val.run(data=str(DATA), weights=str(file), imgsz=imgsz, batch_size=1,
                      workers=2, plots=False, project=str(file.parent / "val"), exist_ok=True)[0]
    return float(metrics[3])


def compare_calibration(weights: Path, fp32_onnx: Path, imgsz: int, calib: int) -> dict:
    """INT8 ONNX mAP50-95 for each ONNX Runtime calibration method (metadata copied from the fp32 file)."""
    import onnx

    from utils.checkpoint import load_model
    from utils.deploy.quantize import CALIBRATIONS, head_prefix, load_int8_data, quantize_onnx

    data = load_int8_data(str(DATA), calib, (imgsz, imgsz))
    head = head_prefix(load_model(weights))
    meta = list(onnx.load(str(fp32_onnx)).metadata_props)
    out = {}
    for method in CALIBRATIONS:
        f = weights.with_name(f"{weights.stem}-int8-{method.replace(' ', '').replace(',', '-')}.onnx")
        quantize_onnx(fp32_onnx, f, data.calibration, 1, head, method=method)
        model = onnx.load(str(f))
        model.metadata_props.extend(meta)
        onnx.save(model, str(f))
        out[method] = map5095(f, imgsz)
    return out


def compare_openvino_ranges(weights: Path, fp32_ir: Path, imgsz: int, calib: int) -> dict:
    """INT8 OpenVINO mAP50-95 for each NNCF activation range estimator (metadata copied from the INT8 folder)."""
    import shutil

    import openvino as ov

    from utils.checkpoint import load_model
    from utils.deploy.quantize import head_prefix, load_int8_data, quantize_openvino

    data = load_int8_data(str(DATA), calib, (imgsz, imgsz))
    head = head_prefix(load_model(weights))
    meta = weights.with_name(f"{weights.stem}_int8_openvino_model") / "metadata.yaml"
    out = {}
    for ranges in OPENVINO_RANGES:
        q = quantize_openvino(ov.Core().read_model(str(fp32_ir / f"{weights.stem}.xml")), data.calibration, 1, head,
                              activation_ranges=ranges)
        d = weights.with_name(f"{weights.stem}-int8-{ranges.lower()}_openvino_model")
        d.mkdir(exist_ok=True)
        ov.save_model(q, str(d / f"{weights.stem}.xml"), compress_to_fp16=False)
        shutil.copy(meta, d / "metadata.yaml")
        out[ranges] = map5095(d, imgsz)
    return out


def latency_ms(file: Path, runs: int) -> float:
    """Median single-image latency at the file's input size (batch 1), backend only."""
    from utils.deploy.backends import load_backend

    backend = load_backend(file)
    h, w = backend.imgsz or (640, 640)
    import torch

    x = torch.rand(1, 3, h, w)
    for _ in range(10):
        backend(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def table_header(columns: list[str]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfgs", nargs="+", default=list(CFGS))
    p.add_argument("--epochs", type=int, default=None, help="shorten the recipe (default: its own epochs)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench_int8")
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--formats", nargs="+", default=["onnx", "openvino"], choices=list(FORMATS))
    p.add_argument("--compare-calibration", action="store_true", help="also INT8 ONNX mAP per calibration method")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.compare_calibration and not {"onnx", "openvino"} <= set(args.formats):
        p.error("--compare-calibration needs --formats onnx openvino")
    forms = [f for fmt in args.formats for f in (fmt, f"{fmt} int8")]
    import torch
    import yaml

    imgsz = int(yaml.safe_load(DATA.read_text())["imgsz"])
    rows, lat_rows, calib_rows = [], [], []
    t_all = time.time()
    for cfg in args.cfgs:
        best = train(cfg, args.runs_dir, args.epochs)
        files, agree = export_forms(best, imgsz, args.calib_images, formats=args.formats)
        m = {form: map5095(files[form], imgsz) for form in forms}
        rows.append((cfg, m, agree))
        print(f"{cfg}: {m}", file=sys.stderr)
        if args.compare_calibration:
            calib_rows.append((cfg, compare_calibration(best, files["onnx"], imgsz, args.calib_images),
                               compare_openvino_ranges(best, files["openvino"], imgsz, args.calib_images)))
            print(f"{cfg}: calibration methods {calib_rows[-1][1:]}", file=sys.stderr)
        if not args.latency_runs:
            continue
        # latency at 640: separate copies so the accuracy files above stay at the recipe's size
        lat_dir = best.parents[1] / "latency640"
        lat_dir.mkdir(parents=True, exist_ok=True)
        lat_weights = lat_dir / "best.pt"
        lat_weights.write_bytes(best.read_bytes())
        lfiles, _ = export_forms(lat_weights, 640, min(args.calib_images, 64), timing_only=True, formats=args.formats)
        lat = {form: latency_ms(lfiles[form], args.latency_runs) for form in forms}
        lat_rows.append((cfg, lat))
        print(f"{cfg}: latency {lat}", file=sys.stderr)

    flags = cpu_int8_flags()
    vnni = "yes" if {"avx512_vnni", "avx_vnni"} & set(flags) else "no (u8 x s8 pairs add in int16: 7-bit weights matter here)"
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores; INT8-relevant CPU flags: {', '.join(flags) or 'none'} "
             f"(VNNI: {vnni}); torch {torch.__version__}, {package_versions(args.formats)}, Python {platform.python_version()}", "",
             f"Accuracy: default recipe (data/shapes.yaml{f', {args.epochs} epochs' if args.epochs else ''}), imgsz {imgsz}, "
             f"val split, mAP50-95 from val.py; INT8 calibrated on {args.calib_images} train images "
             f"(evenly spaced); agreement = INT8 detections against fp32 on the val images (export's check)", "",
             *table_header(["model"] + [c for f in args.formats for c in (f"fp32 {FORMATS[f]}", f"INT8 {FORMATS[f]}", "drop")]
                           + [f"{FORMATS[f]} INT8 agreement" for f in args.formats])]
    for cfg, m, agree in rows:
        cells = [c for f in args.formats for c in (f"{m[f]:.4f}", f"{m[f + ' int8']:.4f}",
                                                   f"{(m[f] - m[f + ' int8']) * 100:.2f} pt")]
        cells += [f"{agree[f + ' int8'].share:.1%}, IoU {agree[f + ' int8'].mean_iou:.3f}" for f in args.formats]
        lines.append(f"| {cfg} | " + " | ".join(cells) + " |")
    if lat_rows:
        lines += ["", f"Latency: 640x640, batch 1, median of {args.latency_runs} runs after 10 warm-up runs (ms)", "",
                  *table_header(["model"] + [c for f in args.formats for c in (f"{RUNTIMES[f]} fp32", f"{RUNTIMES[f]} INT8",
                                                                               "speed-up")])]
    for cfg, lat in lat_rows:
        lines.append(f"| {cfg} | " + " | ".join(c for f in args.formats for c in (
            f"{lat[f]:.1f}", f"{lat[f + ' int8']:.1f}", f"{lat[f] / lat[f + ' int8']:.2f}x")) + " |")
    if calib_rows:
        from utils.deploy.quantize import CALIBRATIONS

        lines += ["", "Calibration method (INT8 ONNX mAP50-95, drop from fp32 ONNX in points)", "",
                  "| model | " + " | ".join(CALIBRATIONS) + " |", "| --- |" + " --- |" * len(CALIBRATIONS)]
        fp32 = {cfg: m["onnx"] for cfg, m, _ in rows}
        for cfg, res, _ in calib_rows:
            lines.append(f"| {cfg} | " + " | ".join(f"{res[k]:.4f} ({(fp32[cfg] - res[k]) * 100:.2f})"
                                                     for k in CALIBRATIONS) + " |")
        lines += ["", "OpenVINO activation ranges (NNCF, 7-bit weights; INT8 OpenVINO mAP50-95, drop from fp32 OpenVINO)",
                  "", "| model | " + " | ".join(OPENVINO_RANGES) + " |", "| --- |" + " --- |" * len(OPENVINO_RANGES)]
        fp32_ov = {cfg: m["openvino"] for cfg, m, _ in rows}
        for cfg, _, res in calib_rows:
            lines.append(f"| {cfg} | " + " | ".join(f"{res[k]:.4f} ({(fp32_ov[cfg] - res[k]) * 100:.2f})"
                                                     for k in OPENVINO_RANGES) + " |")
    lines.append(f"\nTotal: {(time.time() - t_all) / 60:.1f} min")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
