"""The run folder's own logs as callbacks: results.csv (YOLOv5's layout) and TensorBoard scalars."""
from __future__ import annotations

import csv
from pathlib import Path

from utils.general import LOGGER


class CSVLogger:
    """One row per epoch in ``save_dir/results.csv``; a resumed run first drops the rows of epochs its
    checkpoint does not hold."""

    def __init__(self, save_dir: Path, keys: tuple, start_epoch: int = 0, resumed: bool = False):
        self.file, self.keys = Path(save_dir) / "results.csv", keys
        self.start_epoch, self.resumed = start_epoch, resumed

    def on_train_start(self) -> None:
        if self.resumed and self.file.exists():
            rows = list(csv.reader(self.file.open()))
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) < self.start_epoch]
            with self.file.open("w", newline="") as f:
                csv.writer(f).writerows(keep)

    def on_fit_epoch_end(self, log_vals, epoch, best_fitness, fi) -> None:
        header = "" if self.file.exists() else ",".join(["%20s" % "epoch", *("%20s" % k for k in self.keys)]) + "\n"
        with self.file.open("a") as f:
            f.write(header + ",".join(["%20i" % epoch, *("%20.5g" % v for v in log_vals)]) + "\n")


class TensorBoardLogger:
    """Every result key as a scalar per epoch, in event files in ``save_dir``."""

    def __init__(self, save_dir: Path, keys: tuple):
        self.save_dir, self.keys, self.writer = Path(save_dir), keys, None

    def on_train_start(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in requirements.txt; keep training if someone removed it
            LOGGER.warning("tensorboard is not installed: no TensorBoard logs")
            return
        self.writer = SummaryWriter(str(self.save_dir))

    def on_fit_epoch_end(self, log_vals, epoch, best_fitness, fi) -> None:
        if self.writer:
            for k, v in zip(self.keys, log_vals):
                self.writer.add_scalar(k, v, epoch)

    def teardown(self) -> None:
        if self.writer:
            self.writer.close()
            self.writer = None
