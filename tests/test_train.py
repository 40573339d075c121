"""Training end to end: real runs on small data (CPU), DDP with gloo, exact resume, divergence."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import train
from conftest import COCO128_YAML
from models.yolo import Model
from utils.checkpoint import load_model, load_pretrained, read_checkpoint, save_checkpoint
from utils.general import TrainingDiverged
from yolov5_reference import seeded_state_dict

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def cli(data: Path, project: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--cfg", "yolov5s_RepVGG.yaml", "--imgsz", "64", "--batch-size", "8",
            "--workers", "0", "--project", str(project), "--name", "exp", "--noplots", *extra]


def run_train(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kw)


def run_ddp(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """train.py under torch.distributed.run on a free localhost port (gloo on CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def check_run_dir(run_dir: Path, plots: bool) -> None:
    for name in ("last.pt", "best.pt"):
        raw = torch.load(run_dir / "weights" / name, weights_only=True)
        assert raw["final"] and "optimizer" not in raw and raw["epoch"] == 0
        model = load_model(run_dir / "weights" / name)
        x = torch.rand(1, 3, 96, 96)
        with torch.no_grad():
            before = model(x)[0]
            after = model.fuse()(x)[0]
        assert model.is_folded and (before - after).abs().max() < 1e-3 * before.abs().max()
    for f in ("results.csv", "hyp.yaml", "opt.yaml"):
        assert (run_dir / f).is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    if plots:
        for f in ("results.png", "labels.jpg", "train_batch0.jpg", "confusion_matrix.png", "PR_curve.png"):
            assert (run_dir / f).is_file(), f


@pytest.mark.slow
def test_one_epoch_repvgg_on_coco128(coco128_run):
    check_run_dir(coco128_run, plots=True)


@pytest.mark.slow
def test_one_epoch_orepa_on_coco128(tmp_path):
    results = train.run(cfg="yolov5s_OREPA.yaml", data=str(COCO128_YAML), epochs=1, imgsz=96, batch_size=16, workers=2,
                        project=str(tmp_path), name="exp", noplots=True)
    assert len(results) == 7 and all(0 <= r for r in results[:4])
    check_run_dir(tmp_path / "exp", plots=False)


def test_cli_rejects_bad_values(tiny_data, tmp_path):
    bad = run_train(cli(tiny_data, tmp_path, "--epochs", "0"))
    assert bad.returncode == 2 and "--epochs must be >= 1" in bad.stderr
    bad = run_train(cli(tiny_data, tmp_path, "--device", "7"))
    assert bad.returncode == 1 and "CUDA" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_train(cli(tiny_data, tmp_path, "--optimizer", "Lion"))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def final_weights(path: Path) -> dict:
    return read_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tiny_data, tmp_path):
    """SIGKILL mid-run, --resume, and end with the same weights as an uninterrupted run."""
    args = ["--epochs", "4", "--seed", "3", "--deterministic"]
    full = run_train(cli(tiny_data, tmp_path / "full", *args), timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "cut" / "exp"
    proc = subprocess.Popen([sys.executable, "train.py", *cli(tiny_data, tmp_path / "cut", *args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "weights" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = read_checkpoint(last)["epoch"]
    assert interrupted_at < 3, "the run finished before it could be killed"

    resumed = run_train(["--resume", str(last)], timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch {interrupted_at + 1}" in resumed.stderr
    a, b = final_weights(tmp_path / "full" / "exp" / "weights" / "last.pt"), final_weights(last)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    rows = (run_dir / "results.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [0, 1, 2, 3]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    done = run_ddp(cli(tiny_data, tmp_path, "--epochs", "2", "--device", "cpu"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # rank 1 wrote no run folder of its own
    assert done.stderr.count("Starting training for 2 epochs") == 1  # rank 0 alone logs
    ckpt = torch.load(tmp_path / "exp" / "weights" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert load_model(tmp_path / "exp" / "weights" / "last.pt", fuse=True).is_folded


def test_non_finite_loss_stops_and_keeps_checkpoints(tiny_data, tmp_path):
    train.run(data=str(tiny_data), cfg="yolov5s_RepVGG.yaml", imgsz=64, batch_size=8, workers=0, epochs=1,
              project=str(tmp_path), name="exp", noplots=True)
    last = tmp_path / "exp" / "weights" / "last.pt"
    before = last.read_bytes()
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
    hyp["box"] = 1e39  # a finite number (check_hyp refuses NaN) whose float32 product overflows: an inf loss
    poisoned = tmp_path / "hyp.overflow.yaml"
    poisoned.write_text(yaml.safe_dump(hyp))
    with pytest.raises(TrainingDiverged, match=r"epoch 0, batch 0"):
        train.run(data=str(tiny_data), weights=str(last), cfg="yolov5s_RepVGG.yaml", hyp=str(poisoned), imgsz=64,
                  batch_size=8, workers=0, epochs=2, project=str(tmp_path), name="exp", exist_ok=True, noplots=True)
    assert last.read_bytes() == before


def test_transfer_from_yolov5_state_dict(tmp_path):
    yolov5 = Model("yolov5s.yaml")
    sd_file = tmp_path / "yolov5s_state_dict.pt"
    torch.save(seeded_state_dict(yolov5.state_dict()), sd_file)
    model = Model("yolov5s.yaml", nc=3)
    loaded = load_pretrained(model, sd_file, exclude=("anchors",))
    own = model.state_dict()
    head = {k for k in own if k.startswith("model.24.m.")}  # 3 convs whose shapes depend on nc: weights and biases
    assert len(head) == 6 and loaded == len(own) - len(head) - 1  # ... and the excluded anchors
    assert torch.equal(own["model.0.conv.weight"], seeded_state_dict(yolov5.state_dict())["model.0.conv.weight"])

    pickled = tmp_path / "yolov5s_official.pt"  # how YOLOv5 ships weights: a pickled module, read as data
    yolov5.load_state_dict(seeded_state_dict(yolov5.state_dict()))
    torch.save({"model": yolov5}, pickled)
    again = Model("yolov5s.yaml", nc=3)
    assert load_pretrained(again, pickled, exclude=("anchors",)) == loaded
    assert torch.equal(again.state_dict()["model.0.conv.weight"], own["model.0.conv.weight"])


@pytest.mark.slow
def test_embedded_default_learns(shapes_trained):
    """12 of the default recipe's 30 epochs: mAP@0.5 goes from ~0.002 to above 0.25 (0.41 measured; the full
    run reaches 0.67)."""
    run_dir, results, _ = shapes_trained
    opt = yaml.safe_load((run_dir / "opt.yaml").read_text())
    assert (opt["imgsz"], opt["optimizer"], opt["cfg"]) == (160, "AdamW", "yolov5s_RepVGG.yaml")
    assert results[2] > 0.25, f"mAP@0.5 {results[2]:.3f} after 12 epochs"


@pytest.fixture(scope="module")
def mixed_aspect_data(tmp_path_factory) -> Path:
    """24 coco128 images (many aspect ratios, so rect batches fall into several shape groups), 80 classes."""
    src = COCO128_YAML.parent
    root = tmp_path_factory.mktemp("mixed")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    for im in sorted((src / "images" / "train2017").glob("*.jpg"))[:24]:
        (root / "images" / im.name).write_bytes(im.read_bytes())
        label = src / "labels" / "train2017" / f"{im.stem}.txt"
        if label.exists():
            (root / "labels" / label.name).write_text(label.read_text())
    names = yaml.safe_load(COCO128_YAML.read_text())["names"]
    data = root / "mixed.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": names}))
    return data


@pytest.mark.slow
def test_ddp_rect_with_sync_bn_on_cpu(mixed_aspect_data, tmp_path):
    """--rect under DDP batches within shape groups; --sync-bn off CUDA warns and trains with BatchNorm."""
    done = run_ddp(cli(mixed_aspect_data, tmp_path, "--epochs", "1", "--device", "cpu", "--rect", "--sync-bn",
                       "--imgsz", "96", "--noautoanchor"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("--sync-bn needs CUDA DDP") == 1
    assert read_checkpoint(tmp_path / "exp" / "weights" / "last.pt")["epoch"] == 0


def test_single_cls_keeps_every_box(yolo_logs, tmp_path):
    """--single-cls maps all 80 coco128 classes to one: all 929 boxes train and validate, none is dropped as
    'class out of range'."""
    train.run(cfg="yolov5s_RepVGG.yaml", data=str(COCO128_YAML), epochs=1, imgsz=64, batch_size=32, workers=2,
              single_cls=True, noautoanchor=True, project=str(tmp_path), name="exp", noplots=True)
    text = yolo_logs.text
    assert "out of range" not in text
    rows = [r.getMessage().split() for r in yolo_logs.records if r.getMessage().split()[:1] == ["all"]]
    assert rows and all(r[1:3] == ["128", "929"] for r in rows), rows


def test_finetune_from_our_checkpoint_keeps_its_anchors(tiny_data, tmp_path):
    """train.py --weights ours.pt without --cfg: the trained head keeps the anchors it was trained with."""
    model = Model("yolov5s_RepVGG.yaml", nc=3)
    detect = model.model[-1]
    with torch.no_grad():
        detect.anchors.mul_(torch.linspace(0.6, 1.7, detect.anchors.numel()).view_as(detect.anchors))
    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, model)
    train.run(weights=str(ours), data=str(tiny_data), imgsz=64, batch_size=8, workers=0, epochs=1, noautoanchor=True,
              project=str(tmp_path), name="exp", noplots=True)
    key = next(k for k in model.state_dict() if k.endswith(".anchors"))
    for f in ("last.pt", "best.pt"):
        got = read_checkpoint(tmp_path / "exp" / "weights" / f)["state_dict"][key]
        assert torch.allclose(got, detect.anchors, rtol=1e-6), f


def test_amp_training_step_in_bfloat16_on_cpu(tiny_data, tmp_path):
    """The AMP branch a CUDA run takes (autocast around forward and loss, the scaler, the optimizer step), run
    under torch.autocast('cpu', bfloat16), with GradScaler off as it is for bf16; losses match fp32."""
    from utils.training.train_config import prepare
    from utils.training.trainer import Trainer

    config = train.parse_opt(cli(tiny_data, tmp_path, "--epochs", "1", "--noautoanchor", "--device", "cpu"))
    config, hyp, data, ckpt = prepare(config)
    trainer = Trainer(config, hyp, data, torch.device("cpu"), ckpt)
    assert not trainer.amp  # CPU training stays fp32 unless asked
    imgs, targets, _, _ = next(iter(trainer.train_loader))
    imgs = imgs.float() / 255
    ref, ref_items = trainer.forward_loss(imgs, targets)

    trainer.set_amp(True)
    dtypes = set()
    hook = trainer.model.model[0].register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    loss, items = trainer.forward_loss(imgs, targets)
    hook.remove()
    assert dtypes == {torch.bfloat16} and loss.dtype == torch.float32
    assert not trainer.scaler.is_enabled()
    assert torch.allclose(items, ref_items, rtol=5e-2), (items, ref_items)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.backward(loss)
    trainer.optimizer_step()
    after = list(trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(before) // 2


def test_best_pt_check_reuses_the_last_epochs_detections_exactly(tiny_data, tmp_path, yolo_logs):
    """When best.pt holds the weights the last epoch validated, the end-of-training check scores that pass's
    detections again instead of running the model a second time: the same 7 numbers, to the bit, as running
    best.pt as saved over the same validation loader, and the plots a full check draws."""
    from utils.training.train_config import prepare
    from utils.training.trainer import Trainer

    args = cli(tiny_data, tmp_path, "--epochs", "2", "--noautoanchor", "--device", "cpu")
    args.remove("--noplots")  # the check's plots: the batches from the last epoch, matrix and curves from the rescoring
    config, hyp, data, ckpt = prepare(train.parse_opt(args))
    trainer = Trainer(config, hyp, data, torch.device("cpu"), ckpt)
    results = trainer.train()
    assert "their detections scored again" in yolo_logs.text
    assert read_checkpoint(trainer.best)["epoch"] == 1  # the last epoch is the best one here
    fresh = trainer.validate(load_model(trainer.best, torch.device("cpu")), plots=False).metrics
    assert results == fresh and results[2] > 0, (results, fresh)  # mAP50 > 0: detections were compared
    run = Path(config.save_dir)
    for name in ("val_batch0_labels.jpg", "val_batch0_pred.jpg", "confusion_matrix.png", "PR_curve.png"):
        assert (run / name).is_file(), name


def test_best_pt_from_an_earlier_epoch_is_run_again(tiny_data, tmp_path, yolo_logs):
    """best.pt from an earlier epoch than the last validated one: the check runs the model over the set."""
    from utils.training.train_config import prepare
    from utils.training.trainer import Trainer

    config, hyp, data, ckpt = prepare(train.parse_opt(cli(tiny_data, tmp_path, "--epochs", "2", "--noautoanchor")))
    trainer = Trainer(config, hyp, data, torch.device("cpu"), ckpt)
    trainer.best_fitness = float("inf")  # no epoch beats it: best.pt is never written in the loop
    epoch, _ = trainer.fit()
    save_checkpoint(trainer.best, trainer.ema.ema, epoch=0)  # an earlier epoch's best.pt, as after an early stop
    results = trainer.finish(epoch)
    assert "scored again" not in yolo_logs.text and f"Validating {trainer.best}..." in yolo_logs.text
    assert results == trainer.validate(load_model(trainer.best, torch.device("cpu")), plots=False).metrics
