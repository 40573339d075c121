"""Does an exported file reproduce the model it came from? The one answer for fp32, fp16 and INT8 exports.

fp32 and fp16 files (the fused checkpoint too) are compared tensor by tensor: ``verify_export`` runs the file
through ``utils.deploy.backends.load_backend`` on bus.jpg letterboxed to the export size (dynamic exports also on a
smaller batch-1 input) and compares it with the folded PyTorch model; the error, boxes relative to the image
size and probabilities as they are, must stay within ``TOLERANCE``. A file with NMS in its graph (``--nms``)
gives detections, which must pair one to one with ``utils.ops.non_max_suppression`` of the model's output.

INT8 cannot equal fp32 tensor by tensor, so ``verify_int8`` compares the detections both make on real images:
the share of fp32 detections the INT8 file also makes (same class, IoU >= ``MATCH_IOU``) and their mean IoU
must reach ``MIN_MATCHED`` and ``MIN_MEAN_IOU``.

Both pair detections with the same matcher, ``match``: greedy, one to one, highest reference confidence first,
each reference detection taking the nearest free detection of its class; only the distance differs (largest
coordinate or score difference for fp32/fp16, 1 - IoU for INT8).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

from utils.datasets.sources import prepare, read_image
from utils.deploy.backends import load_backend
from utils.deploy.exporters import ExportContext
from utils.general import LOGGER, ROOT
from utils.ops import non_max_suppression

TOLERANCE = {"fp32": 5e-4, "fp16": 1e-2}  # max error, boxes / image size and probabilities as they are
TEST_IMAGE = ROOT / "data" / "images" / "bus.jpg"  # shipped with the repository: no outside folder needed
MIN_MATCHED, MIN_MEAN_IOU = 0.80, 0.80  # INT8 levels: share of fp32 detections kept, their mean IoU
VERIFY_CONF, VERIFY_IOU, MATCH_IOU = 0.25, 0.45, 0.5
# A fp32 detection at VERIFY_CONF or above counts as kept when INT8 makes it at VERIFY_CONF * KEPT_CONF_RATIO or
# above: a box at 0.26 in fp32 and 0.24 in INT8 flipped across the threshold, it was not lost (a weakly trained
# model has many such boxes). Extra INT8 detections are counted at VERIFY_CONF.
KEPT_CONF_RATIO = 0.5


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
    """bus.jpg letterboxed to ``hw``, RGB, 0..1, repeated ``batch`` times: what exports trace and verify on."""
    path = verification_image()
    im0 = read_image(str(path))
    if im0 is None:
        raise ValueError(f"cannot read {path}")
    x = torch.from_numpy(prepare(im0, hw, stride=1, auto=False)).float().div(255)  # as detect.py letterboxes
    return x.unsqueeze(0).expand(batch, -1, -1, -1).contiguous().to(device)


def verification_inputs(ctx: ExportContext) -> list[torch.Tensor]:
    """The example input, plus a smaller batch-1 one for dynamic exports (they must accept other shapes)."""
    inputs = [ctx.im]
    if ctx.dynamic:
        s, (h, w) = ctx.stride, ctx.im.shape[2:]
        inputs.append(example_input((max(s, h // 2 // s * s), max(s, w // 2 // s * s)), 1, ctx.im.device))
    return inputs


# ---------------------------------------------------------------------------------------------
# The matcher
# ---------------------------------------------------------------------------------------------

def match(ref: torch.Tensor, out: torch.Tensor, distance: torch.Tensor,
          max_distance: float) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Greedy one-to-one matching of (n, 6) ``ref`` and (m, 6) ``out`` detections [x1, y1, x2, y2, conf, cls].

    Each ``ref`` row, highest confidence first (equal ones in their given order), takes the nearest ``out`` row
    of its class not taken yet, by the (n, m) ``distance``, if it is within ``max_distance``. Returns the
    matched (ref row, out row) pairs and the mask of ``out`` rows left unmatched.
    """
    free = torch.ones(len(out), dtype=torch.bool)
    pairs: list[tuple[int, int]] = []
    if not len(out):
        return pairs, free
    distance = distance.masked_fill(ref[:, 5:6] != out[:, 5].unsqueeze(0), float("inf"))
    for i in ref[:, 4].argsort(descending=True, stable=True).tolist():
        row = distance[i].masked_fill(~free, float("inf"))
        j = int(row.argmin())
        if row[j] <= max_distance:
            free[j] = False
            pairs.append((i, j))
    return pairs, free


# ---------------------------------------------------------------------------------------------
# fp32 and fp16: tensor by tensor
# ---------------------------------------------------------------------------------------------

def prediction_error(ref: torch.Tensor, out: torch.Tensor, scale: float) -> tuple[float, float]:
    """(max abs difference, error): box columns divided by ``scale`` (the image size), probabilities as they are."""
    if out.shape != ref.shape:
        raise VerificationError(f"output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    diff = (out.float() - ref.float()).abs()
    if not torch.isfinite(diff).all():
        raise VerificationError("output has NaN or infinite values where PyTorch's has none")
    return diff.max().item(), max(diff[..., :4].max().item() / scale, diff[..., 4:].max().item())


def end2end_error(ref: torch.Tensor, out: list, scale: float, tol: float, conf_thres: float) -> tuple[float, float]:
    """One image's end-to-end outputs (num, boxes, scores, classes) against ``non_max_suppression`` rows ``ref``.

    Order-free (equal scores may come in any order). A detection whose score is within ``tol`` of ``conf_thres``
    may be missing on either side: rounding decides it. Returns (max abs difference, error as in
    ``prediction_error``); any other mismatch is a ``VerificationError``.
    """
    num = int(out[0])
    rows = torch.cat((out[1][:num].float(), out[2][:num].float().unsqueeze(1), out[3][:num].float().unsqueeze(1)), 1)
    box_diff = (rows[None, :, :4] - ref[:, None, :4]).abs()
    score_diff = (rows[None, :, 4] - ref[:, None, 4]).abs()
    error = torch.maximum(box_diff.amax(2) / scale, score_diff)
    pairs, free = match(ref, rows, error, tol)
    matched = {i for i, _ in pairs}
    for i, row in enumerate(ref):  # non_max_suppression's order: highest score first
        if i not in matched and abs(row[4].item() - conf_thres) > tol:  # not a borderline score
            raise VerificationError(f"no exported detection matches {[round(v, 4) for v in row.tolist()]} within "
                                    f"{tol:g} ({num} exported, {len(ref)} from non_max_suppression)")
    extra = rows[free, 4]
    if (extra - conf_thres).abs().gt(tol).any():
        raise VerificationError(f"{int(free.sum())} exported detections that non_max_suppression does not keep "
                                f"(scores {extra.tolist()[:5]})")
    max_abs = max((max(box_diff[i, j].max().item(), score_diff[i, j].item()) for i, j in pairs), default=0.0)
    return max_abs, max((error[i, j].item() for i, j in pairs), default=0.0)


def end2end_reference(pred: torch.Tensor, ctx: ExportContext) -> list[torch.Tensor]:
    """What an ``--nms`` graph must output per image: ``non_max_suppression`` (class-agnostic with
    ``--agnostic-nms``), at most ``--topk-per-class`` boxes of each class, then the ``--max-det`` best."""
    kept = non_max_suppression(pred, ctx.conf_thres, ctx.iou_thres, agnostic=ctx.agnostic_nms, max_det=1 << 20)
    out = []
    for det in kept:  # rows by descending score
        if ctx.topk_per_class and not ctx.agnostic_nms:
            cls = det[:, 5]
            rank = (cls[None, :] == cls[:, None]).tril().sum(1) - 1  # rows of the same class ranked above, per row
            det = det[rank < ctx.topk_per_class]
        out.append(det[:ctx.max_det])
    return out


def verify_export(fmt: str, file: Path, ctx: ExportContext, precision: str | None = None) -> tuple[float, float]:
    """Run ``file`` through its backend and compare with the folded PyTorch model: (max abs diff, error).
    ``precision`` (a ``TOLERANCE`` key) is the file's, by default fp16 with ``--half`` (but for the fused .pt)."""
    tol = TOLERANCE[precision or ("fp16" if ctx.half and fmt != "fused" else "fp32")]
    backend = load_backend(file, device=ctx.im.device)
    max_abs, worst = 0.0, 0.0
    for im in verification_inputs(ctx):
        with torch.no_grad():
            ref = ctx.model(im).float()
        out = backend(im)
        scale = max(im.shape[2:])
        if backend.end2end:
            kept = end2end_reference(ref, ctx)
            diffs = [end2end_error(det.cpu(), [t[i].cpu() for t in out], scale, tol, ctx.conf_thres)
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
# INT8: by detections
# ---------------------------------------------------------------------------------------------

@dataclass
class DetectionAgreement:
    reference: int  # fp32 detections
    matched: int  # of those, also found by the INT8 model (same class, IoU >= MATCH_IOU)
    mean_iou: float  # over the matched ones
    extra: int  # INT8 detections matching no fp32 one

    @property
    def share(self) -> float:
        return self.matched / self.reference if self.reference else 0.0

    def __str__(self) -> str:
        return (f"{self.matched}/{self.reference} fp32 detections matched ({self.share:.1%}), mean IoU "
                f"{self.mean_iou:.3f}, {self.extra} extra")


def compare_detections(reference, candidate, images: list[np.ndarray], batch: int) -> DetectionAgreement:
    """Detections of ``candidate`` (a backend) against ``reference`` (the fp32 folded model) on ``images``."""
    device = next(reference.parameters()).device
    n_ref = n_match = extra = 0
    ious: list[float] = []
    for i in range(0, len(images), batch):  # the backend pads a short last batch for a fixed-batch file itself
        im = torch.from_numpy(np.stack(images[i:i + batch]).astype(np.float32) / 255).to(device)
        with torch.no_grad():
            ref = non_max_suppression(reference(im), VERIFY_CONF, VERIFY_IOU)  # eval output or export tensor
        # NMS keeps the same boxes above VERIFY_CONF at the lower threshold (lower scores suppress nothing above)
        out = non_max_suppression(candidate(im), VERIFY_CONF * KEPT_CONF_RATIO, VERIFY_IOU)
        for r, o in zip(ref, out):
            r, o = r.cpu(), o.cpu()
            iou = torchvision.ops.box_iou(r[:, :4], o[:, :4])
            pairs, free = match(r, o, -iou, -MATCH_IOU)  # nearest = largest IoU
            e = int((o[free, 4] >= VERIFY_CONF).sum()) if len(o) else 0
            n_ref, n_match, extra = n_ref + len(r), n_match + len(pairs), extra + e
            ious += [float(iou[i, j]) for i, j in pairs]
    return DetectionAgreement(n_ref, n_match, float(np.mean(ious)) if ious else 0.0, extra)


def verify_int8(reference, candidate, images: list[np.ndarray], batch: int, what: str) -> DetectionAgreement:
    """``compare_detections``, logged; a ``VerificationError`` below ``MIN_MATCHED`` or ``MIN_MEAN_IOU``."""
    agreement = compare_detections(reference, candidate, images, batch)
    LOGGER.info(f"{what}: against the fp32 model on {len(images)} images: {agreement}")
    if agreement.reference == 0:
        raise VerificationError(f"{what}: the fp32 model detects nothing (conf {VERIFY_CONF}) on the verification "
                                "images, so the INT8 model cannot be checked; export a trained model")
    if agreement.share < MIN_MATCHED or agreement.mean_iou < MIN_MEAN_IOU:
        raise VerificationError(f"{what} loses too much: {agreement} (needs >= {MIN_MATCHED:.0%} matched and mean "
                                f"IoU >= {MIN_MEAN_IOU})")
    return agreement
