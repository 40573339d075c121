"""Experiment trackers with the real libraries: W&B, Comet and ClearML offline and MLflow on a local file store, read back through
their own formats and client; with the libraries unavailable or unconfigured, training imports none of them."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import torch

from utils.loggers import RESULT_KEYS, configured, enabled_trackers

ROOT = Path(__file__).resolve().parents[1]
PLOTS = {"results", "labels", "train_batch0", "val_batch0_pred", "confusion_matrix", "PR_curve"}


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (run-<id>.wandb): a 7-byte header (":W&B", magic, version),
    then LevelDB-log chunks in 32 KiB blocks, each with a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def of_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def test_wandb_offline_run_holds_hyp_metrics_plots_and_best(tracked_run):
    run_dir, _, _, hyp = tracked_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (run_file,) = offline.glob("run-*.wandb")
    records = wandb_records(run_file)
    (run,) = of_type(records, "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    assert config["lr0"] == hyp["lr0"] and config["epochs"] == 1 and config["imgsz"] == 64
    assert run.display_name == "exp" and run.project == "runs"
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in h.item} for h in of_type(records, "history")]
    epochs = [h for h in history if "metrics/mAP_0.5" in h]
    assert [int(h["_step"]) for h in epochs] == [0]  # one row per epoch
    assert all(k in epochs[0] for k in RESULT_KEYS)
    logged = {k.split("/")[1] for h in history for k in h if k.startswith("plots/") and k.endswith("/path")}
    assert PLOTS <= logged
    images = {p.name.rsplit("_", 2)[0] for p in (offline / "files" / "media" / "images" / "plots").iterdir()}
    assert PLOTS <= images
    (artifact,) = of_type(records, "artifact")
    (entry,) = artifact.manifest.contents
    best = (run_dir / "weights" / "best.pt").read_bytes()
    assert artifact.type == "model" and entry.path == "best.pt" and "best" in artifact.aliases
    assert entry.digest == base64.b64encode(hashlib.md5(best).digest()).decode()
    assert (of_type(records, "exit")[0]).exit_code == 0


def test_mlflow_store_holds_params_metrics_plots_and_best(tracked_run, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, _, uri, hyp = tracked_run
    client = MlflowClient(uri)
    run_id = torch.load(run_dir / "weights" / "best.pt", weights_only=True)["trackers"]["mlflow"]
    run = client.get_run(run_id)
    assert run.info.run_name == "exp" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "runs"
    assert float(run.data.params["lr0"]) == hyp["lr0"] and run.data.params["epochs"] == "1"
    for key in RESULT_KEYS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0], key
    plots = {Path(a.path).stem for a in client.list_artifacts(run_id, "plots")}
    assert PLOTS <= plots
    assert [a.path for a in client.list_artifacts(run_id, "weights")] == ["weights/best.pt"]
    local = client.download_artifacts(run_id, "weights/best.pt", str(tmp_path))
    assert Path(local).read_bytes() == (run_dir / "weights" / "best.pt").read_bytes()


def test_comet_offline_archive_holds_hyp_metrics_plots_and_best(tracked_run):
    """The zip comet_ml's OfflineExperiment writes (what `comet upload` sends): messages.json, one JSON message a
    line, and the uploaded files as members."""
    import zipfile

    run_dir, _, _, hyp = tracked_run
    (archive,) = (run_dir / "comet").glob("*.zip")
    with zipfile.ZipFile(archive) as z:
        by_type = {}
        for line in z.read("messages.json").decode().splitlines():
            message = json.loads(line)
            by_type.setdefault(message["type"], []).append(message["payload"])
        params = [p.get("param") or p["params"] for p in by_type["parameter_msg"]]  # "params": list values
        params = {p["paramName"]: p["paramValue"] for p in params if p["source"] == "manual"}
        assert params["lr0"] == hyp["lr0"] and params["epochs"] == 1 and params["freeze"] == [0]
        metrics = {}
        for p in by_type["metric_msg"]:
            metrics.setdefault(p["metric"]["metricName"], []).append(p["metric"]["step"])
        assert all(metrics[k] == [0] for k in RESULT_KEYS), metrics
        uploads = by_type["file_upload"]
        images = {Path(p["additional_params"]["figName"]).stem for p in uploads if "figName" in p["additional_params"]}
        assert PLOTS <= images
        (model,) = [p for p in uploads if p["additional_params"].get("type") == "model-element"]
        assert model["additional_params"]["fileName"] == "best.pt"
        assert z.read(model["file_path"]) == (run_dir / "weights" / "best.pt").read_bytes()


def clearml_session(cache: Path, task_id: str) -> tuple[dict, list, Path]:
    """An offline ClearML session folder (<cache>/offline/<task id>, what the zip beside it holds): task.json (the
    task, its hyperparameters and artifacts), metrics.jsonl (one JSON list of events a line) and data/ (files)."""
    folder = cache / "offline" / task_id
    events = [e for line in (folder / "metrics.jsonl").read_text().splitlines() for e in json.loads(line)]
    return json.loads((folder / "task.json").read_text()), events, folder


def test_clearml_offline_session_holds_hyp_metrics_plots_and_best(tracked_run):
    run_dir, _, _, hyp = tracked_run
    task_id = torch.load(run_dir / "weights" / "best.pt", weights_only=True)["trackers"]["clearml"]
    cache = run_dir.parents[1] / "clearml-cache"
    task, events, folder = clearml_session(cache, task_id)
    assert (cache / "offline" / f"{task_id}.zip").is_file()
    assert task["name"] == "exp" and task["project_name"] == "runs" and task["type"] == "training"
    params = {k: v["value"] for k, v in task["hyperparams"]["Hyperparameters"].items()}
    assert float(params["lr0"]) == hyp["lr0"] and params["epochs"] == "1" and params["imgsz"] == "64"
    scalars = {}
    for e in events:
        if e["type"] == "training_stats_scalar":
            scalars.setdefault(f"{e['metric']}/{e['variant']}", []).append(e["iter"])
    assert all(scalars[k] == [0] for k in RESULT_KEYS) and scalars["fitness/fitness"] == [0], scalars
    images = {e["variant"]: Path(e["url"]) for e in events if e["type"] == "training_debug_image"}
    assert PLOTS <= set(images) and all(p.is_file() and p.is_relative_to(folder) for p in images.values())
    (artifact,) = task["execution"]["artifacts"]
    best = (run_dir / "weights" / "best.pt").read_bytes()
    assert artifact["key"] == "best.pt" and Path(artifact["uri"]).read_bytes() == best
    assert artifact["hash"] == hashlib.sha256(best).hexdigest()


def test_checkpoints_keep_tracker_run_ids_as_plain_data(tracked_run):
    run_dir = tracked_run[0]
    for name in ("last.pt", "best.pt"):
        trackers = torch.load(run_dir / "weights" / name, weights_only=True)["trackers"]
        assert sorted(trackers) == ["clearml", "comet", "mlflow", "wandb"]
        assert all(isinstance(v, str) for v in trackers.values())
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert offline.name.endswith(trackers["wandb"])
    assert (run_dir / "comet" / f"{trackers['comet']}.zip").exists()


def test_resumed_training_continues_the_tracker_runs(tracked_run, tmp_path, monkeypatch):
    """What the trainer does on --resume: the loggers get the checkpoint (epoch 0 saved, its tracker ids) and
    log epoch 1 into the same runs; hyperparameters are not logged again."""
    from mlflow.tracking import MlflowClient

    from utils.callbacks import Callbacks
    from utils.loggers import attach_loggers

    run_dir, _, uri, _ = tracked_run
    ckpt = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for key in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(key, str(tmp_path / key))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("COMET_MODE", "offline")
    monkeypatch.setenv("COMET_ERROR_TRACKING_ENABLE", "false")  # no Sentry reports from Comet
    monkeypatch.delenv("COMET_OFFLINE_DIRECTORY", raising=False)
    cache = run_dir.parents[1] / "clearml-cache"  # the same offline session folder is continued
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(cache))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(run_dir.parents[1] / "clearml.conf"))
    save_dir = tmp_path / "runs" / "exp"
    save_dir.mkdir(parents=True)
    callbacks = Callbacks()
    loggers = attach_loggers(callbacks, save_dir, {"lr0": 0.5}, {"epoch": 0, "trackers": ckpt["trackers"]}, ("mlflow",))
    callbacks.run("on_train_start")
    callbacks.run("on_fit_epoch_end", [0.25] * len(RESULT_KEYS), 1, 0.3, 0.3)
    callbacks.run("teardown")
    assert loggers.run_ids() == ckpt["trackers"]
    client = MlflowClient(uri)
    run_id = ckpt["trackers"]["mlflow"]
    assert [m.step for m in client.get_metric_history(run_id, "metrics/mAP_0.5")] == [0, 1]
    assert float(client.get_run(run_id).data.params["lr0"]) != 0.5  # the original run's hyperparameters stay
    (offline,) = (save_dir / "wandb").glob("offline-run-*")
    (run,) = of_type(wandb_records(next(offline.glob("run-*.wandb"))), "run")
    assert run.run_id == ckpt["trackers"]["wandb"]
    (archive,) = (save_dir / "comet").glob("*.zip")  # ExistingOfflineExperiment: <key>-<suffix>.zip
    assert archive.name.startswith(ckpt["trackers"]["comet"])
    task, events, _ = clearml_session(cache, ckpt["trackers"]["clearml"])
    steps = [e["iter"] for e in events if e["type"] == "training_stats_scalar" and e["variant"] == "mAP_0.5"]
    assert steps == [0, 1]  # epoch 1 appended, not offset by ClearML's continue_last_task
    assert float(task["hyperparams"]["Hyperparameters"]["lr0"]["value"]) != 0.5


def test_configured_reads_each_trackers_own_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from a real wandb login
    assert not configured("wandb", {}) and not configured("mlflow", {})
    assert configured("wandb", {"WANDB_MODE": "offline"}) and configured("wandb", {"WANDB_API_KEY": "x"})
    assert not configured("wandb", {"WANDB_API_KEY": "x", "WANDB_MODE": "disabled"})
    assert configured("mlflow", {"MLFLOW_TRACKING_URI": "file:/tmp/mlruns"})
    assert not configured("clearml", {"CLEARML_OFFLINE_MODE": "0"}) and not configured("clearml", {})
    assert configured("clearml", {"CLEARML_OFFLINE_MODE": "1"}) and configured("clearml", {"CLEARML_API_ACCESS_KEY": "x"})
    for key in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    assert enabled_trackers(("mlflow",)) == ["mlflow"]  # an explicit --track needs no configuration
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password key\n")
    (tmp_path / ".netrc").chmod(0o600)  # as wandb login writes it (Python's netrc refuses a readable password)
    assert configured("wandb", {})
    (tmp_path / "clearml.conf").write_text("")  # where clearml-init writes its configuration
    assert configured("clearml", {})


UNAVAILABLE = """
import os, sys
sys.path.insert(0, {root!r})
import train, utils.training.trainer
from utils.loggers import enabled_trackers, installed

LIBS = ("wandb", "mlflow", "comet_ml", "clearml")
print("UNCONFIGURED:", [installed(m) for m in LIBS], enabled_trackers(),
      sorted(m for m in sys.modules if m.split(".")[0] in LIBS))
os.environ.update(WANDB_MODE="offline", MLFLOW_TRACKING_URI={uri!r}, COMET_MODE="offline",
                  CLEARML_OFFLINE_MODE="1")  # configured, but:
for name in LIBS:
    sys.modules[name] = None  # as if uninstalled: import and importlib.util.find_spec both fail
train.run(data={data!r}, cfg="yolov5s_RepVGG.yaml", imgsz=64, batch_size=8, workers=0, epochs=1,
          project={project!r}, name="exp", noplots=True, noautoanchor=True)
try:
    train.run(data={data!r}, epochs=1, project={project!r}, track=["wandb"])
except ValueError as e:
    print("REFUSED:", e)
print("LOADED:", sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in LIBS))
"""


def test_trackers_unconfigured_or_unavailable_cost_nothing(tiny_data, tmp_path):
    """In one process: installed but not configured, importing the training code and deciding the trackers imports
    neither library; then configured (WANDB_MODE, MLFLOW_TRACKING_URI) but not installed, the run trains as before,
    imports neither, and --track is refused naming the package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "COMET_", "CLEARML_"))}
    env["HOME"] = str(tmp_path)  # no ~/.netrc from a wandb login, no ~/.comet.config or ~/clearml.conf
    script = UNAVAILABLE.format(root=str(ROOT), data=str(tiny_data), project=str(tmp_path / "runs"),
                                uri=f"file:{tmp_path / 'mlruns'}")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "UNCONFIGURED: [True, True, True, True] [] []" in done.stdout
    assert "REFUSED: --track wandb: the wandb package is not installed (pip install wandb)" in done.stdout
    assert "LOADED: []" in done.stdout
    run_dir = tmp_path / "runs" / "exp"
    assert (run_dir / "results.csv").exists() and (run_dir / "weights" / "best.pt").exists()
    assert not any((run_dir / d).exists() for d in ("wandb", "comet")) and not (tmp_path / "mlruns").exists()
    assert torch.load(run_dir / "weights" / "best.pt", weights_only=True)["trackers"] == {}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["exp"]  # the refused run claimed no folder
