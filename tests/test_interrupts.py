"""Stopping and failing never cost a good file: real SIGTERM and SIGINT sent to real train.py and export.py
processes in the middle of a save, stale temporaries swept at the next start, and an export that fails its
verification leaving the previous verified file where it was."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import export
from conftest import ROOT
from models.yolo import Model
from utils.atomic import WRITE_DELAY_ENV, _host, sweep_stale
from utils.checkpoint import read_checkpoint, save_checkpoint
from utils.deploy.verify import TOLERANCE

HOST = _host()  # the host part of our temporaries' names


@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nano") / "m.pt"
    save_checkpoint(path, Model("yolov5n.yaml", nc=3))
    return path


@pytest.fixture(scope="module")
def eight_images(tmp_path_factory) -> Path:
    """8 training images, one batch: an epoch of a second or two, so a training run is mostly its start-up."""
    from helpers import shapes_data

    return shapes_data(tmp_path_factory.mktemp("eight"), "eight", n_train=8, n_val=4, imgsz=64, seed=3)


def weights_copy(checkpoint: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(checkpoint, folder / checkpoint.name))


def start(args: list[str], delay: float = 1.5) -> subprocess.Popen:
    """A script run as a user runs it, its atomic writes held ``delay`` s before the rename (a slow disk)."""
    env = {**os.environ, WRITE_DELAY_ENV: str(delay), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(autouse=True)
def _ctrl_c_as_a_terminal_delivers_it():
    """A suite started in the background (``cmd &`` in a script) inherits SIGINT ignored: Python then installs no
    KeyboardInterrupt handler, and its children inherit the ignore. With Python's handler here, this process
    raises KeyboardInterrupt and a child starts with the default disposition (a handler does not survive exec;
    no preexec_fn, which is unsafe with threads)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def held(folder: Path, pattern: str) -> bool:
    """A temporary matching ``pattern`` is written and held before its rename (WRITE_DELAY_ENV): it exists and its
    size stays the same over 0.3 s. The temporary exists from before the write starts (utils.atomic names it
    first), so its existence alone would signal the process in the middle of torch.save or the ONNX exporter."""
    sizes = []
    for _ in range(4):
        found = sorted(folder.rglob(pattern))
        if not found:
            return False
        sizes.append(found[0].stat().st_size)
        time.sleep(0.1)
    return sizes[0] > 0 and len(set(sizes)) == 1


def wait_for(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before the point to signal it:\n{proc.stdout.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"not ready after {timeout}s:\n{proc.communicate()[0][-2000:]}")
        time.sleep(0.02)


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_training_stopped_mid_save_keeps_last_and_says_how_to_resume(eight_images, tmp_path, sig):
    wdir = tmp_path / "exp" / "weights"
    wdir.mkdir(parents=True)
    (wdir / f".last.{dead_pid()}@{HOST}.k3j_x9.tmp.pt").write_bytes(b"")  # from a SIGKILLed run: swept at start
    proc = start(["train.py", "--cfg", "yolov5n.yaml", "--data", str(eight_images), "--epochs", "3", "--imgsz", "64",
                  "--batch-size", "8", "--workers", "0", "--noval", "--noplots", "--project", str(tmp_path),
                  "--name", "exp", "--exist-ok"])
    # last.pt of epoch 0 is in place and epoch 1's last.pt is being written: the signal lands mid-save
    wait_for(proc, lambda: (wdir / "last.pt").is_file() and held(wdir, ".last.*.tmp.pt"))
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + sig, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"Training stopped by {name}" in out and "at epoch 1; last.pt saved at epoch 0: resume with " \
        f"python train.py --resume {wdir / 'last.pt'}" in out, out[-2000:]
    assert hidden(wdir) == [] and sorted(p.name for p in wdir.iterdir()) == ["best.pt", "last.pt"]
    assert read_checkpoint(wdir / "last.pt")["epoch"] == 0  # whole, and resumable
    assert "optimizer" in read_checkpoint(wdir / "last.pt")


def test_export_terminated_mid_write_keeps_the_previous_file(nano_checkpoint, tmp_path):
    weights = weights_copy(nano_checkpoint, tmp_path)
    (good,) = export.run(weights=weights, include=["onnx"], imgsz=64)
    before = good.file.read_bytes()
    proc = start(["export.py", "--weights", str(weights), "--include", "onnx", "--imgsz", "64"], delay=30)
    wait_for(proc, lambda: held(tmp_path, ".m.*.tmp.onnx"))  # the new graph is written, not yet renamed
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143 and "Traceback" not in out, out[-2000:]
    assert "Export stopped by SIGTERM: nothing was exported; no partly written file is left" in out, out[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt"]
    assert good.file.read_bytes() == before


def test_stale_temporaries_of_dead_processes_are_swept_at_the_next_start(nano_checkpoint, tmp_path):
    weights = weights_copy(nano_checkpoint, tmp_path)
    dead = dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".m.{dead}@{HOST}.k3j_x9.tmp.onnx",
                 tmp_path / f".last.{dead}@{HOST}.a1b2c3.tmp.pt"]
        stale_dir = tmp_path / f".m_openvino_model.{dead}@{HOST}.zz9.tmp"
        kept = [tmp_path / f".m.{alive.pid}@{HOST}.q1w2e3.tmp.onnx",  # a live export beside ours
                tmp_path / f".m.{dead}@another-host.r4t5y6.tmp.onnx",  # a shared disk: not ours to judge
                tmp_path / ".m.tmp.onnx", tmp_path / ".m.123.tmp"]  # the user's own files
        for p in stale + kept:
            p.write_bytes(b"")
        stale_dir.mkdir()
        (stale_dir / "m.xml").write_text("<net/>")
        (result,) = export.run(weights=weights, include=["fused"], imgsz=64)
        assert result.ok
        assert not any(p.exists() for p in [*stale, stale_dir]) and all(p.exists() for p in kept)
    finally:
        alive.kill()
        alive.wait()
    assert sweep_stale(tmp_path) == [kept[0]]  # once its process has gone



def test_generated_dataset_and_label_cache_sweep_their_dead_temporaries(tmp_path):
    from utils.datasets.label_cache import label_cache_paths, load_verified_labels
    from utils.datasets.synthetic import generate_shapes

    dead = dead_pid()
    stale_dir = tmp_path / f".shapes.{dead}@{HOST}.k3j_x9.tmp"  # a generator killed mid-write
    (stale_dir / "images").mkdir(parents=True)
    root = generate_shapes(tmp_path / "shapes", n_train=3, n_val=1, imgsz=32)
    assert not stale_dir.exists() and hidden(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert (root.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0o700
    images = sorted(str(p) for p in (root / "images" / "train").iterdir())
    cache = label_cache_paths([str(root / "labels" / "train" / "x.txt")])[0]
    stale_cache = cache.parent / f".{cache.stem}.{dead}@{HOST}.a1b2c3.tmp{cache.suffix}"  # a scan killed mid-write
    stale_cache.write_text("{")
    load_verified_labels(images, nc=3)
    assert cache.is_file() and not stale_cache.exists()

def test_failed_verification_keeps_the_previous_verified_file(nano_checkpoint, tmp_path, monkeypatch):
    weights = weights_copy(nano_checkpoint, tmp_path)
    good = {r.format: r.file for r in export.run(weights=weights, include=["onnx", "openvino"], imgsz=64)}
    before = {fmt: sorted((p.relative_to(f), p.read_bytes()) for p in ([f] if f.is_file() else f.rglob("*")))
              for fmt, f in good.items()}
    torch.manual_seed(1)
    save_checkpoint(weights, Model("yolov5n.yaml", nc=3))  # other weights: a replaced file would show
    monkeypatch.setitem(TOLERANCE, "fp32", -1.0)  # the real verification runs, and no file can pass it
    results = {r.format: r for r in export.run(weights=weights, include=["fused", "onnx", "openvino"], imgsz=64)}
    assert not any(r.ok for r in results.values())
    for fmt, f in good.items():
        after = sorted((p.relative_to(f), p.read_bytes()) for p in ([f] if f.is_file() else f.rglob("*")))
        assert after == before[fmt], f"{fmt}: the verified file was replaced"
        assert f"kept as {results[fmt].file.name} (the previous {f.name} is unchanged)" in results[fmt].error
    assert results["onnx"].file.name == "m.failed.onnx" and results["openvino"].file.name == "m_openvino_model.failed"
    fused = results["fused"]
    assert "kept as m-fused.failed.pt (no m-fused.pt was written)" in fused.error and fused.file.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.pt", "m.onnx", "m_openvino_model", "m.failed.onnx", "m_openvino_model.failed", "m-fused.failed.pt"])


def test_ctrl_c_right_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch):
    """The narrowest window: SIGINT arriving the moment the temporary exists, before the write starts (a loaded
    machine can stop the process just there; the suite once caught it): the temporary is named before it is
    created, so the interrupt removes it."""
    from utils.atomic import atomic_file

    opened = os.open

    def open_then_sigint(file, *args, **kwargs):
        fd = opened(file, *args, **kwargs)
        if str(file).startswith(str(tmp_path)):
            os.kill(os.getpid(), signal.SIGINT)  # a real signal: Python raises at the next bytecode
        return fd

    monkeypatch.setattr(os, "open", open_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "last.pt") as tmp:
            tmp.write_bytes(b"checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_export_cannot_write_to_fails_each_format_not_the_run(nano_checkpoint, tmp_path, monkeypatch):
    import errno

    import utils.deploy.export_pipeline as pipeline

    weights = weights_copy(nano_checkpoint, tmp_path)

    def read_only(parent, name, kind="tmp"):  # what mkdtemp raises in a read-only folder (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied", str(parent))

    monkeypatch.setattr(pipeline, "temporary_dir", read_only)
    results = export.run(weights=weights, include=["fused", "onnx"], imgsz=64)  # returned, never raised
    assert [r.format for r in results] == ["fused", "onnx"] and not any(r.ok for r in results)
    assert all("Permission denied" in r.error for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_sigterm_inside_torch_save_stops_after_the_write_keeping_the_previous_file(tmp_path):
    """A real SIGTERM sent while torch.save is writing a checkpoint (its temporary growing). Raised inside the zip
    writer it broke it ("enforce fail at inline_container.cc": exit 1, not 143); held until the write ends, the
    save stops as a signal between two writes does: the previous file kept, no temporary, ``Terminated``."""
    import threading

    from utils.checkpoint import atomic_torch_save
    from utils.signals import Terminated, handle_termination

    target = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 0}, target)
    big = {f"w{i}": torch.randn(64, 1024) for i in range(400)}  # 105 MB: a write of a good fraction of a second
    sent = {}

    def signal_while_writing():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            growing = [p for p in tmp_path.glob(".last.*.tmp.pt") if p.stat().st_size > 0]
            if growing:
                sent["at_size"] = growing[0].stat().st_size
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.001)

    previous = signal.getsignal(signal.SIGTERM)
    handle_termination()
    try:
        watcher = threading.Thread(target=signal_while_writing)
        watcher.start()
        with pytest.raises(Terminated):
            atomic_torch_save(big, target)
        watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert 0 < sent["at_size"] < 100e6  # it landed in the middle of the write
    assert torch.load(target)["epoch"] == 0
    assert hidden(tmp_path) == []


def test_sigterm_inside_the_onnx_exporter_exits_143_not_a_crash(nano_checkpoint, tmp_path):
    """SIGTERM while torch.onnx.export traces (the temporary exists, still empty): raised inside the exporter it
    crashed the process (exit -11); now export says it will stop after the write, then stops as usual."""
    weights = weights_copy(nano_checkpoint, tmp_path)
    (good,) = export.run(weights=weights, include=["onnx"], imgsz=64)
    before = good.file.read_bytes()
    proc = start(["export.py", "--weights", str(weights), "--include", "onnx", "--imgsz", "64"], delay=0)
    wait_for(proc, lambda: any(p.stat().st_size == 0 for p in tmp_path.rglob(".m.*.tmp.onnx")))
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143 and "Traceback" not in out, out[-2000:]
    assert "SIGTERM received: stopping once the ONNX file m.onnx is complete" in out, out[-2000:]
    assert "Export stopped by SIGTERM" in out, out[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt"]
    assert good.file.read_bytes() == before
