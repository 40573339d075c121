"""LiteRT (TFLite) and ExecuTorch exports: written from the folded model, verified like every other format,
run by val.py and detect.py through their own runtimes (ai-edge-litert, ExecuTorch's Python runtime)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="pip install -r requirements-mobile.txt (.ci/run installs it)")
pytest.importorskip("executorch", reason="pip install -r requirements-mobile.txt (.ci/run installs it)")

import export  # noqa: E402
import val  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.deploy.backends import load_backend  # noqa: E402
from utils.deploy.mobile_backends import METADATA_NAME, read_tflite_metadata  # noqa: E402
from utils.deploy.mobile_exporters import tflite_head_pattern  # noqa: E402
from utils.deploy.verify import MIN_MATCHED, MIN_MEAN_IOU  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FILES = {"tflite": "best_float32.tflite", "tflite fp16": "best_float16.tflite", "tflite int8": "best_int8.tflite",
         "executorch": "best.pte", "executorch int8": "best-int8.pte"}


@pytest.fixture(scope="module")
def mobile_exports(shapes_trained, tmp_path_factory):
    """The default recipe's trained model exported to every mobile file, INT8 calibrated on 64 training images."""
    from helpers import export_trained_int8

    return export_trained_int8(shapes_trained, tmp_path_factory.mktemp("mobile"), ("tflite", "executorch"))


def test_every_mobile_file_is_written_and_verified(mobile_exports):
    results, weights, _ = mobile_exports
    assert [r.error for r in results.values() if not r.ok] == []
    assert {fmt: r.file.name for fmt, r in results.items()} == FILES
    for fmt in ("tflite", "executorch"):
        assert results[fmt].error_ratio <= 5e-4  # export's fp32 tolerance, boxes relative to the image size
    assert 0 < results["tflite fp16"].error_ratio <= 1e-2  # float16 weights: not bit-identical to float32
    for fmt in ("tflite int8", "executorch int8"):
        a = results[fmt].agreement
        print(f"{fmt}: {a}")
        assert a.reference > 20 and a.share >= MIN_MATCHED and a.mean_iou >= MIN_MEAN_IOU
    sizes = {fmt: r.file.stat().st_size for fmt, r in results.items()}
    assert sizes["tflite fp16"] < 0.6 * sizes["tflite"]
    assert sizes["tflite int8"] < 0.4 * sizes["tflite"] and sizes["executorch int8"] < 0.4 * sizes["executorch"]


def test_files_carry_names_stride_and_size_and_run_like_the_model(mobile_exports, yolo_logs):
    """Each backend reads the metadata back and gives the folded model's output on a real image."""
    results, weights, _ = mobile_exports
    model = load_model(weights, fuse=True)
    from utils.deploy.verify import example_input

    im = example_input((160, 160), 2, "cpu")  # two images: a batch-1 file runs them one at a time
    with torch.no_grad():
        ref = model(im)[0]
    for fmt in ("tflite", "executorch"):
        backend = load_backend(results[fmt].file)
        assert backend.names == list(model.names) == ["circle", "square", "triangle"]
        assert (backend.stride, backend.imgsz, backend.batch) == (32, (160, 160), 1)
        out = backend(im)
        assert out.shape == ref.shape and (out - ref).abs()[..., 4:].max() < 1e-4, fmt
        with pytest.raises(ValueError, match="exported for 160x160"):
            backend(torch.zeros(1, 3, 192, 192))
    for fmt, runtime in (("tflite", "LiteRT"), ("executorch", "ExecuTorch")):  # a GPU asked for: said, not ignored
        yolo_logs.clear()
        assert load_backend(results[fmt].file, device="cuda:0").device.type == "cpu"
        assert any(f"{runtime} files run on the CPU here" in r.getMessage() for r in yolo_logs.records)
    meta = read_tflite_metadata(results["tflite int8"].file.read_bytes())
    assert meta["int8"] is True and "64 images" in meta["calibration"] and meta["half"] is False
    assert read_tflite_metadata(results["tflite fp16"].file.read_bytes())["half"] is True


def _tflite_ops(path: Path) -> list[tuple[str, int, str]]:
    """(operator, type of its first input, name of its output) per operator of a .tflite file."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph, names = root.Subgraphs(0), {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = root.OperatorCodes(op.OpcodeIndex())
        ops.append((names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())], graph.Tensors(op.Inputs(0)).Type(),
                    graph.Tensors(op.Outputs(0)).Name().decode()))
    return ops


def test_tflite_int8_is_integer_outside_the_head_with_float_input_and_output(mobile_exports):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    results, weights, _ = mobile_exports
    pattern = tflite_head_pattern(load_model(weights, fuse=True))
    ops = _tflite_ops(results["tflite int8"].file)
    convs = [(t, name) for op, t, name in ops if op == "CONV_2D"]
    head = [t for t, name in convs if re.search(pattern, name)]
    body = [t for t, name in convs if not re.search(pattern, name)]
    assert head == [schema.TensorType.FLOAT32] * 3  # one output convolution per level, in float
    assert len(body) > 20 and set(body) == {schema.TensorType.INT8}
    interpreter = Interpreter(model_path=str(results["tflite int8"].file))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    output = interpreter.get_output_details()[0]
    assert output["dtype"] == np.float32
    # the op that writes the output (the concatenation of the levels' boxes and scores) computes in float: an int8
    # one would share one scale between pixel boxes and probabilities, and every score would round to 0
    writers = [(op, t) for op, t, name in ops if name == output["name"]]
    assert writers == [("CONCATENATION", schema.TensorType.FLOAT32)]


def test_val_gives_the_models_map_on_every_mobile_file(mobile_exports):
    """val.py runs the files like any other format: fp32/fp16 within 0.005 mAP50-95 of the .pt, INT8 near it."""
    results, weights, data = mobile_exports
    maps = {}
    for fmt, f in [(".pt", weights)] + [(fmt, r.file) for fmt, r in results.items()]:
        maps[fmt] = val.run(data=str(data), weights=str(f), imgsz=160, batch_size=1, workers=0, plots=False,
                            project=str(weights.parent / "val"), name=fmt.replace(" ", "_"))[0][3]
    print(maps)
    assert maps[".pt"] > 0.1
    for fmt in ("tflite", "tflite fp16", "executorch"):
        assert abs(maps[fmt] - maps[".pt"]) < 0.005, maps
    for fmt in ("tflite int8", "executorch int8"):
        assert abs(maps[fmt] - maps[".pt"]) < 0.03, maps


def test_detect_runs_tflite_and_pte_files(mobile_exports, tmp_path):
    import detect
    from utils.datasets.dataloaders import list_image_files
    from utils.datasets.dataset_config import check_dataset

    results, weights, data = mobile_exports
    images = list_image_files(check_dataset(str(data))["val"])[:6]
    found = {fmt: detect.run(weights=str(f), source=images, imgsz=(160, 160), conf_thres=0.1, project=tmp_path,
                             name=fmt.replace(" ", "_"))
             for fmt, f in (("pt", weights), ("tflite", results["tflite"].file), ("executorch", results["executorch"].file))}
    ref = found["pt"]
    assert sum(len(r.det) for r in ref) >= 6
    for fmt in ("tflite", "executorch"):
        assert [len(r.det) for r in found[fmt]] == [len(r.det) for r in ref], fmt
        for r, g in zip(ref, found[fmt]):
            assert np.abs(r.det[:, :4] - g.det[:, :4]).max(initial=0) < 0.5 and np.array_equal(r.det[:, 5], g.det[:, 5])
        assert len(list((tmp_path / fmt).glob("*.jpg"))) == len(images)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


HIDE = ("import runpy, sys; sys.modules.update(dict.fromkeys({modules!r})); sys.argv = sys.argv[:1] + sys.argv[1:];"
        " sys.argv[0] = {script!r}; runpy.run_path({script!r}, run_name='__main__')")


@pytest.mark.parametrize("fmt, hidden, package", [
    ("tflite", ["litert_torch"], "litert-torch"),
    ("executorch", ["executorch", "executorch.exir"], "executorch"),
])
def test_a_missing_package_is_one_line_naming_the_install(mobile_exports, tmp_path, fmt, hidden, package):
    """Without the optional package (hidden from import), export says what to install, in one line per format;
    val.py on an existing file too; nothing is written."""
    results, weights, _ = mobile_exports
    w = tmp_path / "w.pt"
    shutil.copy(weights, w)
    done = run_python(HIDE.format(modules=hidden, script="export.py"), "--weights", str(w), "--include", fmt,
                      "--imgsz", "160")
    lines = [ln for ln in done.stderr.splitlines() if "pip install -r requirements-mobile.txt" in ln]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    # each file of the format (tflite: float32 and float16) fails with one line naming the package, logged when it
    # happens and again in the summary table
    assert len(lines) == 2 * (2 if fmt == "tflite" else 1), done.stderr[-2000:]
    assert all(f"'{package}'" in ln for ln in lines), done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]
    file = results["tflite" if fmt == "tflite" else "executorch"].file
    hidden_runtime = ["ai_edge_litert", "ai_edge_litert.interpreter"] if fmt == "tflite" else ["executorch",
                                                                                               "executorch.runtime"]
    done = run_python(HIDE.format(modules=hidden_runtime, script="val.py"), "--weights", str(file), "--data",
                      str(mobile_exports[2]), "--imgsz", "160")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "pip install -r requirements-mobile.txt" in done.stderr


@pytest.mark.parametrize("fmt, flag, message", [
    ("tflite", "--dynamic", "fixed input shape"),
    ("executorch", "--dynamic", "fixed input shape"),
    ("executorch", "--half", "XNNPACK runs float32"),
    ("tflite", "--nms", "--nms is supported for onnx"),
])
def test_options_these_formats_cannot_honour_are_refused(mobile_exports, tmp_path, fmt, flag, message):
    _, weights, _ = mobile_exports
    w = tmp_path / "w.pt"
    shutil.copy(weights, w)
    results = export.run(weights=str(w), include=(fmt,), imgsz=(160, 160), **{flag[2:]: True})
    assert not results[0].ok and message in results[0].error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_a_tflite_file_without_our_metadata_is_refused_with_a_sentence(mobile_exports, tmp_path):
    """A .tflite another tool wrote (here: ours with the metadata entry removed) is one clear error, not a guess."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    results, _, _ = mobile_exports
    m = schema.ModelT.InitFromPackedBuf(bytearray(results["tflite"].file.read_bytes()), 0)
    m.metadata = [e for e in m.metadata if e.name.decode() != METADATA_NAME]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    bare = tmp_path / "other.tflite"
    bare.write_bytes(bytes(builder.Output()))
    assert read_tflite_metadata(bare.read_bytes()) is None
    with pytest.raises(ValueError, match="not written by this project's export.py"):
        load_backend(bare)


@pytest.mark.parametrize("suffix, backend", [(".tflite", "LiteRTBackend"), (".pte", "ExecuTorchBackend")])
def test_a_broken_file_is_one_sentence_naming_it(tmp_path, suffix, backend):
    f = tmp_path / f"broken{suffix}"
    f.write_bytes(b"TFL3 not a model" * 8)
    with pytest.raises(ValueError, match=f"broken{re.escape(suffix)} could not be loaded by {backend}"):
        load_backend(f)
