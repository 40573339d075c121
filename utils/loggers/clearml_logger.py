"""ClearML: one ClearML task per training run.

Online with a ``clearml.conf`` (``clearml-init``) or the ``CLEARML_API_*`` variables; offline with
``CLEARML_OFFLINE_MODE=1``, which writes the session to ``<ClearML cache>/offline/<task id>/`` and, when the task
closes, ``<task id>.zip`` beside it (cache: ``CLEARML_CACHE_DIR``, else ``sdk.storage.cache.default_base_dir``,
else ~/.clearml/cache) for ``clearml-task --import-offline-session``. Project: the run folder's parent name
(``--project``); task name: the run folder's name. The options and hyperparameters are the task's
"Hyperparameters" section, the epoch results scalars (iteration = epoch), the plots debug images under
"plots", and best.pt the artifact "best.pt". A resumed training continues the task whose id its checkpoint holds,
with its iterations unshifted (offline: in the same local session folder, if it is still there).

ClearML's automatic hooks stay off (frameworks such as torch.save and matplotlib, argparse, resource monitoring,
console capture): the trainer logs what matters. ``Task.init`` also installs SIGINT/SIGTERM handlers; the
handlers in place before it are put back, so Ctrl-C and SIGTERM stop training as without ClearML, and
``teardown`` closes the task.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from clearml import Task

from utils.general import LOGGER
from utils.loggers import clearml_offline
from utils.loggers.tracker import TrackerBase

QUIET = dict(auto_connect_frameworks=False, auto_connect_arg_parser=False, auto_resource_monitoring=False,
             auto_connect_streams=False)


def split_key(key: str) -> tuple[str, str]:
    """``train/box_loss`` -> (title "train", series "box_loss"); a key without a slash is its own title."""
    title, _, series = key.rpartition("/")
    return title or series, series


class Tracker(TrackerBase):
    name = "clearml"

    def start(self) -> None:
        if clearml_offline():
            Task.set_offline(True)  # ClearML reads the variable once, when imported
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        if self.resume_id:  # continue_last_task=0: the same task, reported iterations not offset
            self.task = Task.init(reuse_last_task_id=self.resume_id, continue_last_task=0, **QUIET)
        else:
            project = self.save_dir.parent.name or "yolo-reparam"
            self.task = Task.init(project_name=project, task_name=self.save_dir.name, reuse_last_task_id=False,
                                  task_type=Task.TaskTypes.training, **QUIET)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        self.logger = self.task.get_logger()
        self.run_id = self.task.id

    def log_params(self, params: dict) -> None:
        self.task.connect(dict(params), name="Hyperparameters")

    def log_metrics(self, metrics: dict, epoch: int) -> None:
        for key, value in metrics.items():
            self.logger.report_scalar(*split_key(key), value=value, iteration=epoch)

    def log_plots(self, files: list[Path]) -> None:
        for f in files:
            self.logger.report_image("plots", f.stem, iteration=0, local_path=str(f))

    def log_model(self, path: Path) -> None:
        self.task.upload_artifact(path.name, artifact_object=str(path), wait_on_upload=True)

    def finish(self) -> None:
        if not self.completed:
            self.task.mark_stopped(force=True, status_message="training stopped before its end")
        folder = self.task.get_offline_mode_folder() if Task.is_offline() else None
        self.task.close()
        if folder:
            LOGGER.info(f"clearml: offline session {folder}.zip; upload with clearml-task --import-offline-session")
