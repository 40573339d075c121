"""Shared test setup: the repository root on sys.path, CUDA skipping and small fixtures."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield



COCO128_YAML = SHARED / "datasets" / "coco128" / "coco128.yaml"


@pytest.fixture(scope="session")
def coco128_run(tmp_path_factory) -> Path:
    """A yolov5s_RepVGG run trained one epoch on coco128 at 96 px (shared by several test files)."""
    import train

    project = tmp_path_factory.mktemp("coco128_run")
    train.run(cfg="yolov5s_RepVGG.yaml", data=str(COCO128_YAML), epochs=1, imgsz=96, batch_size=16, workers=2,
              project=str(project), name="exp")
    return project / "exp"


@pytest.fixture(scope="session")
def shapes_trained(tmp_path_factory):
    """The embedded default recipe (data/shapes.yaml's recommendations) on the real generated set, shortened
    to 12 of its 30 epochs: (run folder, final metrics, data YAML). A model that detects, for checks that need
    real detections (reduced precision against fp32, for one)."""
    import yaml

    import train

    tmp = tmp_path_factory.mktemp("shapes_trained")
    cfg = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())
    cfg["path"] = str(tmp / "shapes")
    cfg["hyp"] = str(ROOT / "data" / cfg["hyp"])
    data = tmp / "shapes.yaml"
    data.write_text(yaml.safe_dump(cfg))
    results = train.run(data=str(data), epochs=12, workers=2, project=str(tmp), name="exp", noplots=True)
    return tmp / "exp", results, data


@pytest.fixture
def yolo_logs(caplog):
    """Records of the project logger (which does not propagate once setup_logging ran)."""
    logger = logging.getLogger("yolo")
    old = logger.propagate
    logger.propagate = True  # setup_logging() turns propagation off; caplog listens on the root
    with caplog.at_level(logging.INFO, logger="yolo"):
        yield caplog
    logger.propagate = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """24 training and 8 validation images of the generated shapes dataset (96 px): a few-second epoch."""
    from helpers import shapes_data

    return shapes_data(tmp_path_factory.mktemp("tiny"), "tiny", n_train=24, n_val=8, imgsz=96, seed=3)


# ClearML reports from a thread instead of its default subprocess, whose offline close waits 10 s for a daemon
CLEARML_CONF = "sdk { development { report_use_subprocess: false } }\n"


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory, tiny_data):
    """One 1-epoch training on tiny_data with every hook recorded by a user callback, Weights & Biases, Comet and
    ClearML offline (enabled by WANDB_MODE, COMET_MODE, CLEARML_OFFLINE_MODE; ClearML's session under
    clearml-cache/offline) and MLflow on a local file store (--track mlflow): (run folder,
    recorded calls [(hook, args, kwargs)], MLflow tracking URI, hyperparameters used). Shared by
    test_callbacks.py and test_trackers.py."""
    import train
    from utils.callbacks import HOOKS, Callbacks

    tmp = tmp_path_factory.mktemp("tracked")
    calls, callbacks = [], Callbacks()
    for hook in HOOKS:
        callbacks.register_action(hook, "recorder", lambda *a, _hook=hook, **k: calls.append((_hook, a, k)))
    uri = f"file:{tmp / 'mlruns'}"
    (tmp / "clearml.conf").write_text(CLEARML_CONF)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in dict(WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_DATA_DIR=str(tmp / "wandb-data"),
                               WANDB_CACHE_DIR=str(tmp / "wandb-cache"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
                               MLFLOW_TRACKING_URI=uri, MLFLOW_ALLOW_FILE_STORE="true", COMET_MODE="offline",
                               COMET_ERROR_TRACKING_ENABLE="false",  # no Sentry reports from Comet
                               CLEARML_OFFLINE_MODE="1", CLEARML_CACHE_DIR=str(tmp / "clearml-cache"),
                               CLEARML_CONFIG_FILE=str(tmp / "clearml.conf")).items():
            mp.setenv(key, value)
        for key in ("WANDB_PROJECT", "COMET_PROJECT_NAME", "COMET_OFFLINE_DIRECTORY", "CLEARML_API_ACCESS_KEY",
                    "CLEARML_API_SECRET_KEY", "CLEARML_API_HOST"):
            mp.delenv(key, raising=False)
        train.run(data=str(tiny_data), cfg="yolov5s_RepVGG.yaml", imgsz=64, batch_size=8, workers=0, epochs=1,
                  project=str(tmp / "runs"), name="exp", track=["mlflow"], callbacks=callbacks)
    import yaml

    hyp = yaml.safe_load((tmp / "runs" / "exp" / "hyp.yaml").read_text())
    return tmp / "runs" / "exp", calls, uri, hyp
