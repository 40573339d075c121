"""Plots of validation metrics: PR curve, F1/P/R-confidence curves, confusion matrix.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so nothing
here selects or changes the process-wide matplotlib backend. Every function returns the path it wrote.

Typical use after ``results = evaluate_detections(...)``: ``plot_metric_curves(results, save_dir, names)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from utils.evaluation.metrics import moving_average
from utils.plots import class_name, new_figure, save_figure

__all__ = ["plot_confusion_matrix", "plot_mc_curve", "plot_metric_curves", "plot_pr_curve"]

_DPI = 250  # metric plots are written finer than the training plots' 200
_MAX_LEGEND_CLASSES = 21  # per-class lines and legend entries only below this many classes


def _figure(figsize=(9, 6)):
    """One-axes figure from the shared helper (tight layout, no pyplot)."""
    fig, axes = new_figure(1, 1, figsize)
    return fig, axes[0]


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:  # nothing to list when there were no classes
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(title)


def plot_pr_curve(px, py, ap, save_dir=Path(""), labels: Sequence[str] = ()) -> Path:
    """Precision-recall curves -> ``PR_curve.png``.

    px: recall points; py: (classes, len(px)) precision; ap: (classes,) AP@0.5 for the legend;
    labels: one name per row of ``py``.
    """
    py, ap = np.asarray(py).reshape(-1, len(px)), np.asarray(ap).reshape(-1)
    fig, ax = _figure()
    if 0 < len(py) < _MAX_LEGEND_CLASSES:
        for i, y in enumerate(py):
            name = labels[i] if i < len(labels) else str(i)
            ax.plot(px, y, linewidth=1, label=f"{name} {ap[i]:.3f}")
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    if len(py):
        ax.plot(px, py.mean(0), linewidth=3, color="blue", label=f"all classes {ap.mean():.3f} mAP@0.5")
    _finish(ax, "Recall", "Precision", "Precision-Recall Curve")
    return save_figure(fig, Path(save_dir) / "PR_curve.png", dpi=_DPI)


def plot_mc_curve(px, py, save_dir=Path(""), labels: Sequence[str] = (), xlabel="Confidence", ylabel="Metric",
                  filename: str | None = None) -> Path:
    """Metric-confidence curves (F1, P or R) -> ``{ylabel}_curve.png`` unless ``filename`` is given."""
    py = np.asarray(py).reshape(-1, len(px))
    fig, ax = _figure()
    if 0 < len(py) < _MAX_LEGEND_CLASSES:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=labels[i] if i < len(labels) else str(i))
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    if len(py):
        y = moving_average(py.mean(0), fraction=0.05)  # lighter than the F1 pick's 0.1, as YOLOv5 plots
        ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    _finish(ax, xlabel, ylabel, f"{ylabel}-Confidence Curve")
    return save_figure(fig, Path(save_dir) / (filename or f"{ylabel}_curve.png"), dpi=_DPI)


def plot_metric_curves(results: dict, save_dir=Path(""), names=None) -> list[Path]:
    """All four curve plots from an ``evaluate_detections`` result; ``names`` list or dict by class id."""
    labels = [class_name(names, int(c)) for c in results["classes"]]
    px = results["px"]
    return [
        plot_pr_curve(results["pr_recall"], results["pr_curve"], results["ap50"], save_dir, labels),
        plot_mc_curve(px, results["f1_curve"], save_dir, labels, ylabel="F1"),
        plot_mc_curve(px, results["p_curve"], save_dir, labels, ylabel="Precision", filename="P_curve.png"),
        plot_mc_curve(px, results["r_curve"], save_dir, labels, ylabel="Recall", filename="R_curve.png"),
    ]


def plot_confusion_matrix(matrix, save_dir=Path(""), names=(), normalize: bool = True) -> Path:
    """Confusion matrix (rows predicted, columns true, last = background) -> ``confusion_matrix.png``.

    ``normalize`` divides each column by its total, so a column shows where that true class went.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    nc = matrix.shape[0] - 1
    array = matrix / (matrix.sum(0, keepdims=True) + 1e-9) if normalize else matrix.copy()
    array[array < 0.005] = np.nan  # blank cells instead of a sea of zeros
    ticks = [class_name(names, i) for i in range(nc)] + ["background"]
    fig, ax = _figure(figsize=(12, 9))
    im = ax.imshow(array, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if nc < 30:  # labels and numbers only while they stay readable
        ax.set_xticks(range(nc + 1), ticks, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), ticks, fontsize=8)
        for (r, c), v in np.ndenumerate(array):
            if not np.isnan(v):
                ax.text(c, r, f"{v:.2f}" if normalize else f"{v:.0f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    return save_figure(fig, Path(save_dir) / "confusion_matrix.png", dpi=_DPI)
