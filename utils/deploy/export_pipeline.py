"""Export a checkpoint to several formats, each verified before it gets its name (``export.py`` is its command line).

``export_checkpoint`` loads and folds the checkpoint once (``ExportContext``), then for each format: the exporter
of ``utils.deploy.exporters`` writes into a hidden staging folder beside the weights, ``utils.deploy.verify`` checks the file
against the folded model (tensor by tensor, INT8 by detections), and only a verified file is renamed to its
normal name. A failed one is kept as ``<name>.failed<suffix>`` (``best.failed.onnx``) and the previous verified
file stays in place. One format's failure is reported in its ``ExportResult`` and the others still export.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.atomic import remove_path, replace_path, sweep_stale, temporary_dir
from utils.deploy.backends import load_backend
from utils.checkpoint import load_model
from utils.deploy.exporters import (EXPORTERS, FLOAT16_EXPORTERS, INT8_EXPORTERS, NMS_FORMATS, ExportContext,
                                   set_export_mode)
from utils.general import LOGGER, check_imgsz
from utils.deploy.quantize import load_int8_data
from utils.signals import signal_name
from utils.deploy.verify import DetectionAgreement, example_input, verify_export, verify_int8


@dataclass
class ExportResult:
    format: str
    file: Path | None = None
    seconds: float = 0.0
    max_abs_diff: float | None = None  # largest raw difference from the PyTorch model
    error_ratio: float | None = None  # normalised difference checked against utils.deploy.verify.TOLERANCE
    error: str | None = None
    size_mb: float = 0.0  # measured right after export (a later export may overwrite the file)
    agreement: DetectionAgreement | None = None  # INT8: its detections against the fp32 model's

    @property
    def ok(self) -> bool:
        return self.error is None


def size_mb(path: Path) -> float:
    """Size of a file or of everything under a folder, in MB."""
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def failed_name(path: Path, is_dir: bool) -> Path:
    """Where an export that failed verification is kept: ``best.failed.onnx``, ``best_openvino_model.failed``."""
    if path.suffix and not is_dir:
        return path.with_name(f"{path.stem}.failed{path.suffix}")
    return path.with_name(f"{path.name}.failed")


def _keep_failed(staged: Path, final: Path) -> tuple[Path, str]:
    """Move an export that failed verification out of the way: (where it went, the sentence that says so)."""
    kept = failed_name(final, staged.is_dir())
    replace_path(staged, kept)
    previous = f"the previous {final.name} is unchanged" if final.exists() else f"no {final.name} was written"
    return kept, f"; the unverified export is kept as {kept.name} ({previous})"


def export_one(fmt: str, ctx: ExportContext, int8: bool = False, float16: bool = False) -> ExportResult:
    """Export and verify one format (its INT8 variant with ``int8``: verified by detections, see
    utils.deploy.verify; its float16 file with ``float16``, for formats that write one beside the float32 one:
    verified at the fp16 tolerance); a failure is logged with its message and returned, never raised.

    The exporter writes into a hidden staging folder beside the weights; only a verified file is renamed
    to its normal name, so a failure never replaces a good file that val/detect would pick up."""
    name = f"{fmt} int8" if int8 else f"{fmt} fp16" if float16 else fmt
    exporter = INT8_EXPORTERS[fmt] if int8 else FLOAT16_EXPORTERS[fmt] if float16 else EXPORTERS[fmt]
    # a format with its own float16 file keeps the float32 one float32 whatever --half says
    precision = "fp16" if float16 else "fp32" if fmt in FLOAT16_EXPORTERS else None
    result = ExportResult(name)
    LOGGER.info(f"\n{name}: " + (f"quantizing with {len(ctx.int8_data.calibration)} calibration images..."
                                  if int8 else "exporting..."))
    t0, staged = time.time(), None
    try:  # the staging folder too: a read-only weights folder is this format's error, not every format's
        ctx.out_dir = temporary_dir(ctx.weights.parent, ctx.weights.stem, "staging")
        if ctx.nms and fmt not in NMS_FORMATS:
            raise ValueError(f"--nms is supported for {', '.join(NMS_FORMATS)} only, not {fmt} "
                             f"(export {fmt} without --nms and run utils.ops.non_max_suppression on its output)")
        staged = exporter(ctx)
        result.file = ctx.weights.parent / staged.name
        result.seconds, result.size_mb = time.time() - t0, size_mb(staged)
        if int8:  # by detections; fp32 and fp16 tensor by tensor (utils.deploy.verify)
            result.agreement = verify_int8(ctx.model, load_backend(staged, device=ctx.im.device),
                                           ctx.int8_data.verification, int(ctx.im.shape[0]), name)
        else:
            result.max_abs_diff, result.error_ratio = verify_export(fmt, staged, ctx, precision)
        replace_path(staged, result.file)
        ctx.exported[name] = result.file  # verified: the fp32 engine may build from this ONNX
    except Exception as e:  # noqa: BLE001 -- one format's failure must not stop the others; logged and reported
        result.seconds = result.seconds or time.time() - t0
        result.error = f"{type(e).__name__}: {e}"
        if staged is not None and staged.exists():
            try:
                result.file, kept = _keep_failed(staged, result.file)
                result.error += kept
            except OSError as keep_error:  # reported with the first error; the staging folder goes below
                result.error += f"; the unverified export could not be kept either ({keep_error})"
        LOGGER.error(f"{name}: export failed: {result.error}")
        if ctx.verbose:
            LOGGER.exception(e)
    else:
        check = result.agreement if int8 else (f"max abs difference {result.max_abs_diff:.3g}, "
                                               f"error {result.error_ratio:.3g}")
        LOGGER.info(f"{name}: saved {result.file} ({result.size_mb:.1f} MB, {result.seconds:.1f}s), verified: {check}")
    finally:
        if ctx.out_dir is not None:
            remove_path(ctx.out_dir)  # whatever else the exporter wrote there; also on Ctrl-C and SIGTERM
        ctx.out_dir = None
    return result


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


def export_checkpoint(weights, include, imgsz, batch_size, device, names=None, int8=False, data=None,
                      calib_images=300, **options) -> list[ExportResult]:
    """Export ``weights`` to each format in ``include`` (in ``EXPORTERS`` order), each verified; with ``int8`` also
    each format's INT8 variant, after its fp32 one, calibrated on ``calib_images`` images of the ``data`` YAML.
    Options are the ``ExportContext`` fields (``half``, ``dynamic``, ``nms``, ...), checked by the caller."""
    sweep_stale(Path(weights).parent)  # temporaries of exports killed by SIGKILL: ours only, owner gone
    ctx = build_context(weights, imgsz, batch_size, device, names, **options)
    if int8:  # every image read before any export starts: bad images fail now, not after minutes
        ctx.int8_data = load_int8_data(data, calib_images, tuple(ctx.im.shape[2:]))
    formats = [f for f in EXPORTERS if f in include]  # engine reuses the ONNX file exported before it
    LOGGER.info(f"Exporting {weights} (folded, {len(ctx.names)} classes, stride {ctx.stride}) with input "
                f"{tuple(ctx.im.shape)} on {device} to: {', '.join(formats)}")
    results = []
    try:
        for fmt in formats:
            results.append(export_one(fmt, ctx))
            if fmt in FLOAT16_EXPORTERS:
                results.append(export_one(fmt, ctx, float16=True))
            if int8 and fmt in INT8_EXPORTERS:
                results.append(export_one(fmt, ctx, int8=True))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under export.py: say what is on disk
        done = [str(r.file) for r in results if r.ok]
        LOGGER.warning(f"\nExport stopped by {signal_name(e)}: " + (f"verified and saved: {', '.join(done)}"
                       if done else "nothing was exported") + "; no partly written file is left")
        raise
    return results
