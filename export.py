"""Export a checkpoint to deployment formats, folded first, each export verified before it is reported.

    python export.py --weights runs/train/exp/weights/best.pt --include onnx openvino --imgsz 640
    python export.py --weights best.pt --include onnx --dynamic --simplify
    python export.py --weights best.pt --include onnx --nms --conf-thres 0.25 --iou-thres 0.45
    python export.py --weights best.pt --include engine --device 0 --half --workspace 4
    python export.py --weights best.pt --include onnx openvino --int8 --data data.yaml [--calib-images 300]

Formats (files land beside the weights):

| --include   | file                          | runs with                                  |
|-------------|-------------------------------|--------------------------------------------|
| fused       | <stem>-fused.pt               | PyTorch (torch.load weights_only=True)     |
| torchscript | <stem>.torchscript            | torch.jit.load                             |
| onnx        | <stem>.onnx                   | ONNX Runtime, OpenCV DNN (--opset 12)      |
| openvino    | <stem>_openvino_model/        | OpenVINO                                   |
| engine      | <stem>.engine                 | TensorRT (CUDA and tensorrt required)      |

Every format is exported from the folded model (``load_model(..., fuse=True)``), so no graph has
training branches. Each file is then run through ``utils.backends.load_backend`` on bus.jpg
letterboxed to --imgsz and compared with the folded PyTorch model: the error, boxes relative to the
image size and probabilities as they are, must stay below ``TOLERANCE`` (5e-4 for fp32, 1e-2 for
fp16). With --nms the graph ends in ONNX NonMaxSuppression and the check is against
``utils.ops.non_max_suppression``. A summary table follows; the exit status is 1 if any requested
format failed (the others are still exported). ``run(**kwargs)`` is importable and returns the results.
Files are written into a hidden staging folder and get their name only once verified: a failed one is kept
as ``<name>.failed<suffix>`` (``best.failed.onnx``) and the previous verified file stays in place.

``--int8`` also writes a calibrated INT8 model for each of onnx (``<stem>-int8.onnx``, ONNX Runtime QDQ),
openvino (``<stem>_int8_openvino_model/``, NNCF) and engine (``<stem>-int8.engine``, TensorRT from the QDQ
ONNX), calibrated on ``--calib-images`` images of ``--data`` (see ``utils.quantize``). INT8 cannot equal
fp32 tensor by tensor, so it is verified by its detections on the data's val images: the share of the
fp32 model's detections it reproduces and their mean IoU, printed, with a failure below the stated levels.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.atomic import remove_path, replace_path, sweep_stale, temporary_dir
from utils.augmentations import letterbox
from utils.backends import load_backend
from utils.checkpoint import load_model
from utils.dataset_config import load_names  # one parser for names, shared with check_dataset
from utils.exporters import EXPORTERS, INT8_EXPORTERS, NMS_FORMATS, ExportContext, set_export_mode
from utils.general import LOGGER, ROOT, check_imgsz, check_options, setup_logging
from utils.ops import non_max_suppression
from utils.signals import signal_name
from utils.torch_utils import select_device

FORMATS = tuple(EXPORTERS)  # export order matters: engine reuses the ONNX file exported before it
TOLERANCE = {"fp32": 5e-4, "fp16": 1e-2}  # max error, boxes / image size and probabilities as they are
TEST_IMAGE = ROOT / "data" / "images" / "bus.jpg"  # shipped with the repository: no outside folder needed


@dataclass
class ExportResult:
    format: str
    file: Path | None = None
    seconds: float = 0.0
    max_abs_diff: float | None = None  # largest raw difference from the PyTorch model
    error_ratio: float | None = None  # normalised difference checked against TOLERANCE
    error: str | None = None
    size_mb: float = 0.0  # measured right after export (a later export may overwrite the file)
    agreement: object = None  # INT8: utils.quantize.DetectionAgreement with the fp32 model

    @property
    def ok(self) -> bool:
        return self.error is None


def size_mb(path: Path) -> float:
    """Size of a file or of everything under a folder, in MB."""
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


class VerificationError(RuntimeError):
    """An exported file does not reproduce the PyTorch model."""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def verification_image() -> Path:
    if TEST_IMAGE.is_file():
        return TEST_IMAGE
    raise FileNotFoundError(f"no test image for verification: {TEST_IMAGE} is missing")


def example_input(hw: tuple[int, int], batch: int, device) -> torch.Tensor:
    """bus.jpg letterboxed to ``hw``, RGB, 0..1, repeated ``batch`` times."""
    path = verification_image()
    im0 = cv2.imread(str(path))
    if im0 is None:
        raise ValueError(f"cannot read {path}")
    im = letterbox(im0, hw, auto=False)[0][:, :, ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
    x = torch.from_numpy(np.ascontiguousarray(im)).float().div(255)
    return x.unsqueeze(0).expand(batch, -1, -1, -1).contiguous().to(device)


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------

def prediction_error(ref: torch.Tensor, out: torch.Tensor, scale: float) -> tuple[float, float]:
    """(max abs difference, error): box columns divided by ``scale`` (the image size), probabilities as they are."""
    if out.shape != ref.shape:
        raise VerificationError(f"output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    diff = (out.float() - ref.float()).abs()
    if not torch.isfinite(diff).all():
        raise VerificationError("output has NaN or infinite values where PyTorch's has none")
    return diff.max().item(), max(diff[..., :4].max().item() / scale, diff[..., 4:].max().item())


def match_detections(ref: torch.Tensor, out: list, scale: float, tol: float, conf_thres: float) -> tuple[float, float]:
    """Match one image's end-to-end outputs with ``non_max_suppression`` rows [x1, y1, x2, y2, conf, cls].

    One-to-one and order-free (equal scores may come in any order). A detection whose score is within
    ``tol`` of ``conf_thres`` may be missing on either side: rounding decides it. Returns (max abs
    difference, error as in ``prediction_error``); any other mismatch is a ``VerificationError``.
    """
    num, boxes, scores, classes = int(out[0]), out[1].float(), out[2].float(), out[3]
    boxes, scores, classes = boxes[:num], scores[:num], classes[:num]
    free = torch.ones(num, dtype=torch.bool)
    max_abs, worst = 0.0, 0.0
    for row in ref:
        err = torch.maximum((boxes - row[:4]).abs().amax(1) / scale, (scores - row[4]).abs())
        err[~free | (classes != row[5])] = float("inf")
        j = int(err.argmin()) if num else -1
        if j < 0 or not err[j] <= tol:
            if abs(row[4].item() - conf_thres) <= tol:
                continue  # borderline score: on either side of the threshold after rounding
            raise VerificationError(f"no exported detection matches {[round(v, 4) for v in row.tolist()]} within "
                                    f"{tol:g} ({num} exported, {len(ref)} from non_max_suppression)")
        free[j] = False
        max_abs = max(max_abs, (boxes[j] - row[:4]).abs().max().item(), abs(scores[j].item() - row[4].item()))
        worst = max(worst, err[j].item())
    extra = scores[free]
    if (extra - conf_thres).abs().gt(tol).any():
        raise VerificationError(f"{int(free.sum())} exported detections that non_max_suppression does not keep "
                                f"(scores {extra.tolist()[:5]})")
    return max_abs, worst


def verification_inputs(ctx: ExportContext) -> list[torch.Tensor]:
    """The example input, plus a smaller batch-1 one for dynamic exports (they must accept other shapes)."""
    inputs = [ctx.im]
    if ctx.dynamic:
        s, (h, w) = ctx.stride, ctx.im.shape[2:]
        inputs.append(example_input((max(s, h // 2 // s * s), max(s, w // 2 // s * s)), 1, ctx.im.device))
    return inputs


def verify_export(fmt: str, file: Path, ctx: ExportContext) -> tuple[float, float]:
    """Run ``file`` through its backend and compare with the folded PyTorch model: (max abs diff, error)."""
    tol = TOLERANCE["fp16" if ctx.half and fmt != "fused" else "fp32"]
    backend = load_backend(file, device=ctx.im.device)
    max_abs, worst = 0.0, 0.0
    for im in verification_inputs(ctx):
        with torch.no_grad():
            ref = ctx.model(im).float()
        out = backend(im)
        scale = max(im.shape[2:])
        if backend.end2end:
            kept = non_max_suppression(ref, ctx.conf_thres, ctx.iou_thres, max_det=ctx.max_det)
            diffs = [match_detections(det.cpu(), [t[i].cpu() for t in out], scale, tol, ctx.conf_thres)
                     for i, det in enumerate(kept)]
        else:
            diffs = [prediction_error(ref, out, scale)]
        max_abs = max([max_abs, *(d[0] for d in diffs)])
        worst = max([worst, *(d[1] for d in diffs)])
    if not worst <= tol:
        raise VerificationError(f"{fmt} output differs from PyTorch's by {worst:.3g} (tolerance {tol:g}; "
                                f"max abs difference {max_abs:.3g})")
    return max_abs, worst


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def failed_name(path: Path, is_dir: bool) -> Path:
    """Where an export that failed verification is kept: ``best.failed.onnx``, ``best_openvino_model.failed``."""
    if path.suffix and not is_dir:
        return path.with_name(f"{path.stem}.failed{path.suffix}")
    return path.with_name(f"{path.name}.failed")


def _verify(fmt: str, file: Path, ctx: ExportContext, result: ExportResult, int8: bool) -> None:
    if int8:
        from utils.quantize import verify_int8

        backend = load_backend(file, device=ctx.im.device)
        result.agreement = verify_int8(ctx.model, backend, ctx.int8_data.verification, int(ctx.im.shape[0]),
                                       result.format)
    else:
        result.max_abs_diff, result.error_ratio = verify_export(fmt, file, ctx)


def _keep_failed(staged: Path, final: Path) -> tuple[Path, str]:
    """Move an export that failed verification out of the way: (where it went, the sentence that says so)."""
    kept = failed_name(final, staged.is_dir())
    replace_path(staged, kept)
    previous = f"the previous {final.name} is unchanged" if final.exists() else f"no {final.name} was written"
    return kept, f"; the unverified export is kept as {kept.name} ({previous})"


def export_one(fmt: str, ctx: ExportContext, int8: bool = False) -> ExportResult:
    """Export and verify one format (its INT8 variant with ``int8``: verified by detections, see
    utils.quantize); a failure is logged with its message and returned, never raised.

    The exporter writes into a hidden staging folder beside the weights; only a verified file is renamed
    to its normal name, so a failure never replaces a good file that val/detect would pick up."""
    name = f"{fmt} int8" if int8 else fmt
    result = ExportResult(name)
    LOGGER.info(f"\n{name}: " + (f"quantizing with {len(ctx.int8_data.calibration)} calibration images..."
                                  if int8 else "exporting..."))
    t0, staged = time.time(), None
    ctx.out_dir = temporary_dir(ctx.weights.parent, ctx.weights.stem, "staging")
    try:
        if ctx.nms and fmt not in NMS_FORMATS:
            raise ValueError(f"--nms is supported for {', '.join(NMS_FORMATS)} only, not {fmt} "
                             f"(export {fmt} without --nms and run utils.ops.non_max_suppression on its output)")
        staged = (INT8_EXPORTERS if int8 else EXPORTERS)[fmt](ctx)
        result.file = ctx.weights.parent / staged.name
        result.seconds, result.size_mb = time.time() - t0, size_mb(staged)
        _verify(fmt, staged, ctx, result, int8)
        replace_path(staged, result.file)
        ctx.exported[name] = result.file  # verified: the fp32 engine may build from this ONNX
    except Exception as e:  # noqa: BLE001 -- one format's failure must not stop the others; logged and reported
        result.seconds = result.seconds or time.time() - t0
        result.error = f"{type(e).__name__}: {e}"
        if staged is not None and staged.exists():
            result.file, kept = _keep_failed(staged, result.file)
            result.error += kept
        LOGGER.error(f"{name}: export failed: {result.error}")
        if ctx.verbose:
            LOGGER.exception(e)
    else:
        check = result.agreement if int8 else (f"max abs difference {result.max_abs_diff:.3g}, "
                                               f"error {result.error_ratio:.3g}")
        LOGGER.info(f"{name}: saved {result.file} ({result.size_mb:.1f} MB, {result.seconds:.1f}s), verified: {check}")
    finally:
        remove_path(ctx.out_dir)  # whatever else the exporter wrote there; also on Ctrl-C and SIGTERM
        ctx.out_dir = None
    return result


def log_summary(results: list[ExportResult]) -> None:
    LOGGER.info(f"\n{'Format':<14}{'File':<48}{'Size MB':>9}{'Time s':>8}  {'Max abs diff':>12}  Status")
    for r in results:
        diff = f"{r.max_abs_diff:.3g}" if r.max_abs_diff is not None else "-"
        if r.agreement is not None:
            diff = f"{r.agreement.share:.1%} matched, IoU {r.agreement.mean_iou:.3f}"
        status = "ok" if r.ok else f"FAILED: {r.error}"
        LOGGER.info(f"{r.format:<14}{str(r.file or '-'):<48}{r.size_mb:>9.1f}{r.seconds:>8.1f}  {diff:>12}  {status}")


def build_context(weights, imgsz, batch_size, device, names, **options) -> ExportContext:
    """Load and fold the checkpoint, set export mode and make the example input."""
    model = load_model(weights, device, fuse=True)
    if not model.is_folded:
        raise RuntimeError(f"{weights}: some blocks did not fold; refusing to export training branches")
    if names is not None and len(names) != len(model.names):
        raise ValueError(f"--data lists {len(names)} class names but the model predicts {len(model.names)} classes")
    model.names = list(names or model.names)
    for p in model.parameters():
        p.requires_grad_(False)
    set_export_mode(model, options.get("dynamic", False))
    stride = int(max(model.stride))
    im = example_input(check_imgsz(imgsz, stride), batch_size, device)
    with torch.no_grad():
        model(im)  # build Detect's grids once so tracing does not record their creation
    return ExportContext(model=model, im=im, weights=Path(weights), names=model.names, **options)


def run(weights, include=("torchscript", "onnx"), imgsz=(640, 640), batch_size=1, device="cpu",
        half=False, dynamic=False, simplify=False, opset=17, workspace=4.0, nms=False, conf_thres=0.25,
        iou_thres=0.45, max_det=300, verbose=False, data=None, int8=False, calib_images=300) -> list[ExportResult]:
    """Export ``weights`` to every format in ``include``; returns one ``ExportResult`` per format, in order.

    A format that fails is logged and reported in its result (``.ok`` False); the others still export.
    """
    setup_logging()
    include = [x.lower() for x in ([include] if isinstance(include, str) else include)]
    unknown = sorted(set(include) - set(FORMATS))
    if unknown or not include:
        raise ValueError(f"--include {unknown or include}: choose from {', '.join(FORMATS)}")
    check_options(batch_size=batch_size, max_det=max_det, opset=opset, conf_thres=conf_thres, iou_thres=iou_thres)
    int8_formats = [f for f in include if f in INT8_EXPORTERS]
    if int8 and not int8_formats:
        raise ValueError(f"--int8 applies to {', '.join(INT8_EXPORTERS)}: include one of them")
    if int8 and nms:
        raise ValueError("--int8 with --nms is not supported: export INT8 without --nms and run NMS on its output")
    device = select_device(str(device))
    names = load_names(data) if data else None
    if int8:  # before the model loads
        from utils.quantize import check_int8_args

        check_int8_args(data, calib_images, opset, int8_formats)
    sweep_stale(Path(weights).parent)  # temporaries of exports killed by SIGKILL: ours only, owner gone
    ctx = build_context(weights, imgsz, batch_size, device, names, half=half, dynamic=dynamic, simplify=simplify,
                        opset=opset, workspace=workspace, nms=nms, conf_thres=conf_thres, iou_thres=iou_thres,
                        max_det=max_det, verbose=verbose)
    if int8:  # every image read before any export starts: bad images fail now, not after minutes
        from utils.quantize import load_int8_data

        ctx.int8_data = load_int8_data(data, calib_images, tuple(ctx.im.shape[2:]))
    LOGGER.info(f"Exporting {weights} (folded, {len(ctx.names)} classes, stride {ctx.stride}) with input "
                f"{tuple(ctx.im.shape)} on {device} to: {', '.join(f for f in FORMATS if f in include)}")
    results = []
    try:
        for fmt in (f for f in FORMATS if f in include):
            results.append(export_one(fmt, ctx))
            if int8 and fmt in INT8_EXPORTERS:
                results.append(export_one(fmt, ctx, int8=True))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under export.py: say what is on disk
        done = [str(r.file) for r in results if r.ok]
        LOGGER.warning(f"\nExport stopped by {signal_name(e)}: " + (f"verified and saved: {', '.join(done)}"
                       if done else "nothing was exported") + "; no partly written file is left")
        raise
    log_summary(results)
    return results


def parse_opt(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=str, required=True, help="checkpoint of this project (.pt)")
    parser.add_argument("--include", nargs="+", default=["torchscript", "onnx"], choices=FORMATS, help="formats")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image size: h [w]")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size (the largest with --dynamic engine)")
    parser.add_argument("--device", default="cpu", help="cpu or a CUDA id such as 0")
    parser.add_argument("--half", action="store_true", help="FP16 weights and inputs (CPU fp16 tracing needs a torch build with CPU half kernels)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX/OpenVINO/TensorRT: dynamic batch and image size")
    parser.add_argument("--simplify", action="store_true", help="ONNX: slim the graph with onnxslim")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (12 for OpenCV DNN)")
    parser.add_argument("--workspace", type=float, default=4, help="TensorRT builder workspace (GB)")
    parser.add_argument("--nms", action="store_true", help="onnx/openvino/engine: end-to-end graph with NMS")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="--nms confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="--nms IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="--nms detections per image")
    parser.add_argument("--verbose", action="store_true", help="verbose exporter logs, tracebacks on failure")
    parser.add_argument("--data", type=str, default=None, help="dataset YAML whose class names to embed (and, with "
                        "--int8, whose images calibrate and verify)")
    parser.add_argument("--int8", action="store_true", help="also write calibrated INT8 onnx/openvino/engine models")
    parser.add_argument("--calib-images", type=int, default=300, help="--int8: calibration images from --data")
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> int:
    results = run(**vars(opt))
    failed = [r.format for r in results if not r.ok]
    if failed:
        LOGGER.error(f"Export failed for: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    from utils.checkpoint import CheckpointError
    from utils.signals import exit_code, handle_termination

    handle_termination()  # SIGTERM unwinds like Ctrl-C: temporaries are removed
    try:
        raise SystemExit(main(parse_opt()))
    except KeyboardInterrupt as e:  # once exports started, run() logged what is saved
        raise SystemExit(exit_code(e)) from None
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as e:  # before any format: a sentence
        setup_logging()
        LOGGER.error(f"ERROR: {e}")
        raise SystemExit(1) from None
