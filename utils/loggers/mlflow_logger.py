"""MLflow: one MLflow run per training run, through ``MlflowClient`` (no process-wide active run).

Store: ``MLFLOW_TRACKING_URI`` (a server, ``sqlite:///mlflow.db`` with the full ``mlflow`` package, or a local
folder ``file:/path/mlruns``, which MLflow 3 accepts with ``MLFLOW_ALLOW_FILE_STORE=true``). Experiment:
``MLFLOW_EXPERIMENT_NAME`` if set, else the run folder's parent name (``--project``); run name: the run
folder's name. Parameters are the options and hyperparameters, metrics are logged with step = epoch, the
plots go under the artifact folder ``plots/`` and best.pt under ``weights/``. A resumed training continues
the MLflow run whose id its checkpoint holds.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from utils.loggers.tracker import TrackerBase

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


class Tracker(TrackerBase):
    name = "mlflow"

    def start(self) -> None:
        self.client = MlflowClient()
        if self.resume_id:
            self.run_id = self.client.get_run(self.resume_id).info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.save_dir.parent.name or "yolo-reparam"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=self.save_dir.name).info.run_id

    def log_params(self, params: dict) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()])

    def log_metrics(self, metrics: dict, epoch: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])

    def log_plots(self, files: list[Path]) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path="plots")

    def log_model(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="weights")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if self.completed else "KILLED")
