"""What every experiment tracker logs, once; each tracker supplies the few calls that differ.

A run's tracker logs: the options and hyperparameters when it starts (not again when resumed), the
results of every epoch (losses, precision, recall, mAPs, learning rates, step = epoch), the plots in the run
folder when training ends (labels, training and validation batches, results.png, curves, confusion matrix),
and best.pt as a model artifact. ``teardown`` ends the tracker's run.
"""
from __future__ import annotations

from pathlib import Path

PLOT_SUFFIXES = (".png", ".jpg")


def plot_files(save_dir: Path) -> list[Path]:
    """The plots training drew in ``save_dir``, in name order."""
    return sorted(p for p in Path(save_dir).iterdir() if p.suffix in PLOT_SUFFIXES and p.is_file())


class TrackerBase:
    """Template for a tracker: subclasses implement ``start``, ``log_params``, ``log_metrics``, ``log_plots``,
    ``log_model`` and ``finish``, and set ``run_id`` once started."""

    name = ""

    def __init__(self, save_dir: Path, params: dict, keys: tuple, resume_id: str | None = None):
        self.save_dir, self.params, self.keys, self.resume_id = Path(save_dir), params, keys, resume_id
        self.run_id: str | None = None
        self.completed = False  # set when training ended normally (not by Ctrl-C or an error)

    # ---- hooks -------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.start()
        if self.resume_id is None:
            self.log_params(self.params)

    def on_fit_epoch_end(self, log_vals, epoch, best_fitness, fi) -> None:
        metrics = dict(zip(self.keys, (float(v) for v in log_vals)))
        metrics["fitness"] = float(fi)
        self.log_metrics(metrics, epoch)

    def on_train_end(self, last, best, epoch, results) -> None:
        plots = plot_files(self.save_dir)
        if plots:
            self.log_plots(plots)
        if Path(best).exists():
            self.log_model(Path(best))
        self.completed = True

    def teardown(self) -> None:
        if self.run_id is not None:
            self.finish()

    # ---- what each tracker implements ----------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def log_params(self, params: dict) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict, epoch: int) -> None:
        raise NotImplementedError

    def log_plots(self, files: list[Path]) -> None:
        raise NotImplementedError

    def log_model(self, path: Path) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError
