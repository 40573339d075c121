"""Weights & Biases: one W&B run per training run, written under the run folder (``save_dir/wandb``).

Project: ``WANDB_PROJECT`` if set, else the run folder's parent name (``--project``; the default runs/train
logs to "yolo-reparam"); run name: the run folder's name. Offline (``WANDB_MODE=offline``) the run stays in
``save_dir/wandb/offline-run-*`` for ``wandb sync``. A resumed training continues the W&B run whose id its
checkpoint holds (``resume="allow"``).
"""
from __future__ import annotations

import os
from pathlib import Path

import wandb

from utils.loggers.tracker import TrackerBase


class Tracker(TrackerBase):
    name = "wandb"

    def start(self) -> None:
        parent = self.save_dir.parent.name
        project = os.environ.get("WANDB_PROJECT") or (parent if parent not in ("", "train") else "yolo-reparam")
        self.run = wandb.init(project=project, name=self.save_dir.name, dir=str(self.save_dir), job_type="Training",
                              config=self.params, id=self.resume_id, resume="allow" if self.resume_id else None)
        self.run_id = self.run.id

    def log_params(self, params: dict) -> None:
        pass  # given to wandb.init as the run's config

    def log_metrics(self, metrics: dict, epoch: int) -> None:
        self.run.log({**metrics, "epoch": epoch}, step=epoch)

    def log_plots(self, files: list[Path]) -> None:
        self.run.log({f"plots/{f.stem}": wandb.Image(str(f), caption=f.name) for f in files})

    def log_model(self, path: Path) -> None:
        artifact = wandb.Artifact(f"run_{self.run_id}_model", type="model")
        artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact, aliases=["best", "latest"])

    def finish(self) -> None:
        self.run.finish(exit_code=0 if self.completed else 1)
