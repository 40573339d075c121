"""tools/gpu_check.sh before any GPU: the CPU rehearsal of every row (without the optional packages, as on a
bare CUDA machine), the interpreter it runs with, and its one-line exits."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "tools" / "gpu_check.sh"
# not in the bare CUDA machine's list (torch, torchvision, onnx, onnxruntime, opencv-headless, numpy, pandas,
# scipy, matplotlib, PyYAML, tqdm, tensorboard)
OPTIONAL = ("pycocotools", "onnxslim", "openvino", "nncf", "tensorrt")
HIDER = """import sys
from importlib.machinery import PathFinder


class WithoutOptionalPackages(PathFinder):
    \"\"\"sys.path's finder, blind to {names}: importing them fails as where they are not installed
    (ModuleNotFoundError; importlib.util.find_spec gives None).\"\"\"

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [WithoutOptionalPackages if f is PathFinder else f for f in sys.meta_path]
"""
ROWS = ("cuda-tests", "train yolov5s_RepVGG", "train yolov5s_OREPA", "train yolov5s", "loader", "train shapes",
        "val fp32", "val --half", "export --half", "val fused", "val onnx", "val engine", "detect --half", "ddp nccl",
        "train --batch-size -1")


def run_script(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHON", "VIRTUAL_ENV")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A virtual environment without torch (no system site packages): its bin/ holds python and python3."""
    d = tmp_path_factory.mktemp("bare") / "venv"
    venv.create(d, with_pip=False, system_site_packages=False, symlinks=True)
    assert subprocess.run([str(d / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode != 0
    return d


def test_gpu_check_without_torch_says_so_in_one_line(bare_venv):
    python = bare_venv / "bin" / "python"
    done = run_script(env=clean_env(PYTHON=str(python)))
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and "cannot import torch" in lines[0] and str(python) in lines[0]


def test_gpu_check_without_cuda_exits_2_with_one_line(bare_venv):
    """Run with the interpreter named in PYTHON (this test's), not the first python on PATH, which here is one
    without torch (as when pytest runs from a virtual environment that was not activated)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tools/gpu_check.sh would run the whole check")
    env = clean_env(PYTHON=sys.executable, PATH=f"{bare_venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    done = run_script(env=env)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and "no CUDA device" in lines[0]


def test_gpu_check_names_a_missing_interpreter():
    done = run_script(env=clean_env(PYTHON="/nonexistent/python3"))
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "/nonexistent/python3" in lines[0]


@pytest.mark.slow
def test_gpu_check_rehearsal_passes_on_cpu_without_optional_packages(tmp_path):
    """Every row of the GPU check, on the CPU at tiny sizes, with pycocotools, onnxslim, openvino, nncf and
    tensorrt impossible to import in every process it starts (a meta-path finder in sitecustomize)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDER.format(names=OPTIONAL))
    env = clean_env(PYTHON=sys.executable, PYTHONPATH=str(hide))
    probe = subprocess.run([sys.executable, "-c", "import torch, onnxruntime\nimport openvino"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert "No module named 'openvino'" in probe.stderr  # the hook is active, the base packages are not hidden

    done = run_script("--rehearse", "--out", str(tmp_path / "out"), env=env, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    table = dict(re.findall(r"^\| (.+?)\s+\| (PASS|FAIL|SKIP)\s+\|", out, re.M))
    assert list(table) == list(ROWS), out[-3000:]
    assert {k for k, v in table.items() if v != "PASS"} == {"val engine"}
    assert re.search(r"^\| val engine\s+\| SKIP\s+\| needs tensorrt \+ CUDA", out, re.M)
    # the loader alone, beside each training row's speed, with the verdict of which bounds the epoch
    loader = re.search(r"^\| loader\s+\| PASS\s+\| ([\d.]+) img/s with 0 workers; (.*)$", out, re.M)
    assert loader and float(loader[1]) > 0, out[-3000:]
    assert all(f"{cfg} " in loader[2] for cfg in ("yolov5s_RepVGG", "yolov5s_OREPA", "yolov5s")), loader[2]
    assert loader[2].count("bounds") == 3
    weights = tmp_path / "out" / "shapes" / "weights"
    assert (weights / "best.onnx").is_file() and (weights / "best-fused.pt").is_file()
    assert "rehearsal" in out.splitlines()[0]


def test_val_save_json_without_pycocotools_is_refused_before_any_work(monkeypatch, tmp_path):
    """Only --save-json's COCO evaluation needs pycocotools (the GPU machine has none): refused up front, with
    what to do, instead of a ModuleNotFoundError after the whole validation."""
    import val

    for name in [m for m in sys.modules if m.split(".")[0] == "pycocotools"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # makes "import pycocotools..." raise ImportError
    with pytest.raises(ValueError, match=r"--save-json evaluates with pycocotools.*pip install pycocotools"):
        val.run(data=str(ROOT / "data" / "shapes.yaml"), weights=str(tmp_path / "best.pt"), save_json=True,
                project=str(tmp_path / "val"))
    assert not (tmp_path / "val").exists()
