"""Comet: one Comet experiment per training run.

Online with ``COMET_API_KEY`` (or ~/.comet.config); offline with ``COMET_MODE=offline`` (YOLOv5's variable), which
writes ``<experiment key>.zip`` to ``COMET_OFFLINE_DIRECTORY``, else to ``save_dir/comet``, for ``comet upload``.
Project: ``COMET_PROJECT_NAME`` if set, else the run folder's parent name; experiment name: the run folder's
name. Plots are logged as images, best.pt as the model "best". A resumed training continues the experiment
whose key its checkpoint holds (``ExistingExperiment`` / ``ExistingOfflineExperiment``). Comet's own
auto-logging (code, git, framework hooks) is off: the trainer logs what matters.
"""
from __future__ import annotations

import os
from pathlib import Path

import comet_ml

from utils.loggers.tracker import TrackerBase

QUIET = dict(log_code=False, log_git_metadata=False, log_git_patch=False, parse_args=False, auto_param_logging=False,
             auto_metric_logging=False, auto_output_logging=False, display_summary_level=0)


class Tracker(TrackerBase):
    name = "comet"

    def start(self) -> None:
        offline = os.environ.get("COMET_MODE", "").lower() == "offline"
        where = dict(offline_directory=os.environ.get("COMET_OFFLINE_DIRECTORY") or str(self.save_dir / "comet"))
        if self.resume_id:
            cls = comet_ml.ExistingOfflineExperiment if offline else comet_ml.ExistingExperiment
            self.experiment = cls(previous_experiment=self.resume_id, **(where if offline else {}), **QUIET)
        else:
            project = os.environ.get("COMET_PROJECT_NAME") or self.save_dir.parent.name or "yolo-reparam"
            cls = comet_ml.OfflineExperiment if offline else comet_ml.Experiment
            self.experiment = cls(project_name=project, **(where if offline else {}), **QUIET)
            self.experiment.set_name(self.save_dir.name)
        self.run_id = self.experiment.get_key()

    def log_params(self, params: dict) -> None:
        self.experiment.log_parameters(params)

    def log_metrics(self, metrics: dict, epoch: int) -> None:
        self.experiment.log_metrics(metrics, step=epoch, epoch=epoch)

    def log_plots(self, files: list[Path]) -> None:
        for f in files:
            self.experiment.log_image(str(f), name=f.name)

    def log_model(self, path: Path) -> None:
        self.experiment.log_model("best", str(path), file_name=path.name)

    def finish(self) -> None:
        self.experiment.end()
