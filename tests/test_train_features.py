"""YOLOv5's remaining training features: --evolve, --image-weights, and multi-node launches."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import COCO128_YAML
from utils.checkpoint import read_checkpoint
from utils.datasets.dataloaders import ImageWeightSampler, create_dataloader
from utils.training.evolve import MUTATION_BOUNDS, RESULT_COLUMNS, mutate, read_evolve_csv
from utils.general import load_yaml
from utils.evaluation.metrics import class_weights, image_weights
from utils.datasets.synthetic import generate_shapes

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
HYP = load_yaml(ROOT / "data/hyps/hyp.scratch-low.yaml", "hyp")


def run_train(*args: str, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)


def coco128_args(project: Path, *extra: str) -> list[str]:
    return ["--data", str(COCO128_YAML), "--cfg", "yolov5s.yaml", "--imgsz", "128", "--batch-size", "32",
            "--epochs", "1", "--workers", "2", "--project", str(project), "--name", "evo", *extra]


# ---- --evolve ---------------------------------------------------------------------------------


def test_evolve_two_generations_on_coco128_and_continue(tmp_path):
    """--evolve 1, then --evolve 2 with the same name trains only the missing generation; a third run
    with --evolve 2 trains nothing. evolve.csv, hyp_evolve.yaml and evolve.png are written."""
    first = run_train(*coco128_args(tmp_path, "--evolve", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "evo"
    keys = [k for k in HYP if k in MUTATION_BOUNDS]
    rows = read_evolve_csv(run / "evolve.csv", keys)
    assert rows.shape == (1, len(RESULT_COLUMNS) + len(keys))
    assert np.allclose(rows[0, len(RESULT_COLUMNS):], [HYP[k] for k in keys], rtol=1e-4)  # generation 1: the base

    second = run_train(*coco128_args(tmp_path, "--evolve", "2"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "has 1 of 2 generations; continuing" in second.stderr
    assert second.stderr.count("evolve: generation ") == 1 and "generation 2/2" in second.stderr
    rows = read_evolve_csv(run / "evolve.csv", keys)
    assert len(rows) == 2
    child = dict(zip(keys, rows[1, len(RESULT_COLUMNS):]))
    assert any(abs(child[k] - HYP[k]) > 1e-9 for k in keys)  # mutated
    for k, v in child.items():
        assert MUTATION_BOUNDS[k][1] - 1e-9 <= v <= MUTATION_BOUNDS[k][2] + 1e-9, k
    assert all(np.isfinite(rows[:, :4]).ravel())
    best = yaml.safe_load((run / "hyp_evolve.yaml").read_text())
    best_row = rows[int(np.argmax(0.1 * rows[:, 2] + 0.9 * rows[:, 3]))]
    assert [best[k] for k in keys] == pytest.approx(list(best_row[len(RESULT_COLUMNS):]), rel=1e-4)
    assert set(best) == set(HYP)  # a complete hyp file: train.py --hyp hyp_evolve.yaml works
    assert (run / "evolve.png").stat().st_size > 10_000
    assert not (tmp_path / "evo2").exists()  # the same folder, not a new one

    third = run_train(*coco128_args(tmp_path, "--evolve", "2"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "evolve: generation " not in third.stderr
    assert len(read_evolve_csv(run / "evolve.csv", keys)) == 2


def test_mutation_is_seeded_bounded_and_uses_the_best_parents():
    keys = [k for k in HYP if k in MUTATION_BOUNDS]
    rng = np.random.default_rng(0)
    rows = np.zeros((8, len(RESULT_COLUMNS) + len(keys)))
    rows[:, 3] = np.arange(8) / 10  # mAP50-95: rows 3..7 are the 5 best
    for i in range(8):
        rows[i, len(RESULT_COLUMNS):] = [MUTATION_BOUNDS[k][1] + (MUTATION_BOUNDS[k][2] - MUTATION_BOUNDS[k][1]) * (i + 1) / 9
                                         for k in keys]
    a = mutate(rows, keys, HYP, np.random.default_rng([0, 3]))
    assert a == mutate(rows, keys, HYP, np.random.default_rng([0, 3]))  # (seed, generation) decides
    assert a != mutate(rows, keys, HYP, np.random.default_rng([0, 4]))
    for _ in range(50):
        child = mutate(rows, keys, HYP, rng)
        for k in keys:
            assert MUTATION_BOUNDS[k][1] <= child[k] <= MUTATION_BOUNDS[k][2]
        fixed = [k for k in keys if MUTATION_BOUNDS[k][0] == 0]  # gain 0: the parent's value, never mutated
        parents = [rows[i, len(RESULT_COLUMNS) + keys.index(fixed[0])] for i in range(3, 8)]
        assert any(child[fixed[0]] == pytest.approx(p, abs=1e-5) for p in parents)  # one of the 5 best


def test_evolve_csv_of_other_hyperparameters_is_refused(tmp_path):
    f = tmp_path / "evolve.csv"
    f.write_text(",".join([*RESULT_COLUMNS, "lr0"]) + "\n" + ",".join(["0.1"] * 8) + "\n")
    with pytest.raises(ValueError, match="written for other hyperparameters"):
        read_evolve_csv(f, ["lr0", "momentum"])
    f.write_text(",".join([*RESULT_COLUMNS, "lr0"]) + "\n" + ",".join(["0.1"] * 7 + ["x"]) + "\n")
    with pytest.raises(ValueError, match="malformed row"):
        read_evolve_csv(f, ["lr0"])


@pytest.mark.parametrize("flag", [["--evolve", "2"], ["--image-weights"]])
def test_single_process_features_refused_under_ddp(flag, tmp_path):
    env = {**ENV, "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2"}
    done = run_train("--data", str(COCO128_YAML), "--project", str(tmp_path), *flag, env=env, timeout=120)
    assert done.returncode == 1
    assert f"{flag[0]} is not supported with DDP" in done.stderr
    assert "Traceback" not in done.stderr and not any(tmp_path.iterdir())


# ---- --image-weights --------------------------------------------------------------------------


def test_image_weights_follow_class_rarity():
    labels = [np.array([[0, .5, .5, .1, .1]] * 3), np.array([[1, .5, .5, .1, .1]]), np.zeros((0, 5)),
              np.array([[0, .5, .5, .1, .1], [2, .5, .5, .1, .1]])]
    cw = class_weights(labels, 4)  # counts 4, 1, 1, 0 (-> 1)
    assert cw == pytest.approx(np.array([0.25, 1, 1, 1]) / 3.25)
    iw = image_weights(labels, 4, cw)
    assert iw == pytest.approx(np.array([0.75, 1, 0, 1.25]) / 3.25)

    sampler = ImageWeightSampler(4, seed=1)
    sampler.set_weights(iw)
    draws = [i for e in range(200) for i, _ in (sampler.set_epoch(e) or sampler)]
    counts = np.bincount(draws, minlength=4) / len(draws)
    assert counts[2] == 0  # no boxes: never drawn
    assert counts == pytest.approx(iw / iw.sum(), abs=0.03)
    sampler.set_epoch(5)
    assert list(sampler) == list(sampler)  # a function of (seed, epoch)
    first = list(sampler)
    assert all(len(p) == 17 and 2 not in p for _, p in first)  # mosaic/mixup companions drawn the same way
    with pytest.raises(ValueError, match="not all zero"):
        sampler.set_weights(np.zeros(4))


@pytest.mark.parametrize("mosaic9", [0.0, 1.0])
def test_image_weighted_mosaic_uses_the_drawn_companions(mosaic9, tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    generate_shapes(root, n_train=24, n_val=4, imgsz=64, seed=5)
    hyp = {**HYP, "mosaic": 1.0, "mixup": 1.0, "mosaic9": mosaic9}
    loader, dataset = create_dataloader(str(root / "images/train"), 64, 4, 32, hyp=hyp, augment=True, workers=0,
                                        shuffle=True, image_weights=True, rect=True)
    assert not dataset.rect  # --rect gives way to weighted sampling
    seen = []
    original = type(dataset).load_image
    monkeypatch.setattr(type(dataset), "load_image", lambda self, i: seen.append(i) or original(self, i))
    dataset[(0, 3, tuple(range(4, 21)))]
    if mosaic9:  # 9-image mosaics: the image, its 8 companions, the mixup image and its 8
        assert sorted(seen) == list(range(3, 21))
    else:  # the image, its 3 companions, the mixup image and its 3
        assert sorted(seen) == [3, 4, 5, 6, 7, 8, 9, 10]


def test_image_weights_train_one_epoch_on_coco128(tmp_path):
    done = run_train(*coco128_args(tmp_path, "--image-weights", "--noplots", "--rect"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--rect is incompatible with --image-weights" in done.stderr
    ckpt = read_checkpoint(tmp_path / "evo" / "weights" / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["opt"]["image_weights"] is True
    assert len(ckpt["maps"]) == 80


# ---- multi-node -------------------------------------------------------------------------------


def test_two_nodes_of_one_process_write_one_run_folder(tmp_path):
    """torch.distributed.run --nnodes 2 on localhost: the process of node 1 has LOCAL_RANK 0 but RANK 1; only
    global rank 0 logs, saves and validates, and both agree on the run folder (exp2, exp being taken)."""
    root = tmp_path / "shapes"
    generate_shapes(root, n_train=16, n_val=4, imgsz=96, seed=3)
    data = tmp_path / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": ["circle", "square", "triangle"]}))
    project = tmp_path / "runs"
    (project / "exp").mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--data", str(data), "--cfg", "yolov5s_RepVGG.yaml", "--imgsz", "64", "--batch-size", "8", "--epochs", "1",
            "--workers", "0", "--device", "cpu", "--project", str(project), "--name", "exp", "--noplots"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    assert sorted(p.name for p in project.iterdir()) == ["exp", "exp2"]
    assert not any((project / "exp").iterdir())
    assert "Starting training for 1 epochs" in outs[0][1] and "Starting training" not in outs[1][1]
    ckpt = torch.load(project / "exp2" / "weights" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and (project / "exp2" / "results.csv").exists()
