"""INT8 exports (export.py --int8): calibrated from the data, verified by detections, runnable by val/detect."""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

import val
from utils.deploy.backends import load_backend
from utils.checkpoint import load_model
from utils.deploy.quantize import head_prefix, load_int8_data, quantize_onnx
from utils.deploy.verify import (KEPT_CONF_RATIO, MIN_MATCHED, MIN_MEAN_IOU, VerificationError, compare_detections,
                          verify_int8)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def int8_exports(shapes_trained, tmp_path_factory):
    """The default recipe's trained model exported to fp32 and INT8 ONNX and OpenVINO at its image size."""
    from helpers import export_trained_int8

    return export_trained_int8(shapes_trained, tmp_path_factory.mktemp("int8"), ("onnx", "openvino"))


def test_int8_onnx_and_openvino_are_written_and_verified_by_detections(int8_exports):
    results, weights, _ = int8_exports
    assert [r for r in results.values() if not r.ok] == []
    assert set(results) == {"onnx", "onnx int8", "openvino", "openvino int8"}
    assert results["onnx int8"].file == weights.with_name("best-int8.onnx")
    assert results["openvino int8"].file == weights.with_name("best_int8_openvino_model")
    for fmt in ("onnx int8", "openvino int8"):
        a = results[fmt].agreement
        print(f"{fmt}: {a}")
        assert a.reference > 20 and a.share >= MIN_MATCHED and a.mean_iou >= MIN_MEAN_IOU
    assert results["onnx int8"].size_mb < 0.5 * results["onnx"].size_mb  # INT8 weights


def test_int8_onnx_quantizes_convolutions_and_keeps_the_head_in_float(int8_exports):
    results, weights, _ = int8_exports
    prefix = head_prefix(load_model(weights))  # '/model.22/' for the default yolov5s_RepVGG
    graph = onnx.load(str(results["onnx int8"].file)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    producers = {o: n for n in graph.node for o in n.output}
    head = [n for n in graph.node if n.name.startswith(prefix)]
    head_convs = [n for n in head if n.op_type == "Conv"]
    assert len(head_convs) == 3
    initializers = {i.name: i for i in graph.initializer}
    for conv in head_convs:  # float weights, not a DequantizeLinear of INT8 ones
        w = conv.input[1]
        assert w in initializers and initializers[w].data_type == onnx.TensorProto.FLOAT, conv.name
    # the decoding (Sigmoid and the grid/anchor arithmetic) gets no quantized input
    for n in head:
        if n.op_type != "Conv":
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input), n.name
    other_convs = [n for n in graph.node if n.op_type == "Conv" and not n.name.startswith(prefix)]
    assert other_convs and all(producers[n.input[1]].op_type == "DequantizeLinear" for n in other_convs)
    meta = {p.key: p.value for p in onnx.load(str(results["onnx int8"].file)).metadata_props}
    assert meta["int8"] == "true" and "64 images" in meta["calibration"]
    # ONNX Runtime's fast x86 form: unsigned activations, and the ops between convolutions quantized too, so
    # whole Conv-Sigmoid-Mul groups become integer kernels (S8 activations or Conv alone ran slower than fp32)
    zero_points = [onnx.numpy_helper.to_array(initializers[n.input[2]])
                   for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and {z.dtype for z in zero_points} == {np.dtype(np.uint8)}
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    dequantized_inputs = {n.op_type for n in graph.node
                          if not n.name.startswith(prefix) and dequantized.intersection(n.input)}
    assert {"Conv", "Sigmoid", "Mul", "Concat"} <= dequantized_inputs, dequantized_inputs


def pair_sum_bounds(graph) -> dict[str, int]:
    """For each convolution with INT8 weights: the largest |sum of two products| an x86 u8 x s8 kernel without
    VNNI (VPMADDUBSW) can form in its int16 intermediate, whichever two weights of an output channel it pairs
    and whatever the 8-bit activations are: max|a| * (largest + second largest |w| of the channel)."""
    init = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    bounds = {}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        wdq, xdq = producer.get(conv.input[1]), producer.get(conv.input[0])
        if wdq is None or wdq.op_type != "DequantizeLinear":
            continue  # float weights (the head)
        assert xdq is not None and xdq.op_type == "DequantizeLinear", f"{conv.name}: INT8 weights, float input"
        w, x_zero_point = init[wdq.input[0]], init[xdq.input[2]]
        assert w.dtype == np.int8, conv.name
        info = np.iinfo(x_zero_point.dtype)  # the kernel multiplies the raw 8-bit values, zero point aside
        a_max = max(abs(int(info.min)), int(info.max))
        top2 = np.sort(np.abs(w.reshape(len(w), -1).astype(np.int64)), axis=1)[:, -2:].sum(1)
        bounds[conv.name] = a_max * int(top2.max())
    return bounds


def test_int8_onnx_cannot_saturate_int16_on_cpus_without_vnni(int8_exports):
    """On AVX2 / AVX-512 CPUs without VNNI, ONNX Runtime's u8 x s8 convolutions add pairs of products into int16
    with saturation: a file whose pairs can exceed 32767 computes another model there (76% of detections kept on
    an AMD EPYC) although it verifies on a VNNI CPU. Arithmetic over the file itself, so it holds on any CPU."""
    results, _, _ = int8_exports
    graph = onnx.load(str(results["onnx int8"].file)).graph
    bounds = pair_sum_bounds(graph)
    assert len(bounds) > 20  # every convolution outside the head
    worst = max(bounds, key=bounds.get)
    print(f"largest pair sum: {bounds[worst]} ({worst})")
    assert bounds[worst] <= np.iinfo(np.int16).max, {k: v for k, v in bounds.items() if v > 32767}


def openvino_pair_sum_bounds(model_dir: Path) -> dict[str, int]:
    """``pair_sum_bounds`` for an OpenVINO INT8 IR: its convolutions' INT8 weight constants (NNCF's quantized
    weights as saved), against 8-bit activations (|a| <= 255, whether the plugin runs them as u8 or s8)."""
    import openvino as ov

    model = ov.Core().read_model(str(next(model_dir.glob("*.xml"))))
    bounds = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.i8:
            continue
        node, hops = op, 0
        while node.get_type_name() not in ("Convolution", "GroupConvolution") and hops < 5:  # Convert, Multiply..
            node, hops = next(iter(node.output(0).get_target_inputs())).get_node(), hops + 1
        assert node.get_type_name() in ("Convolution", "GroupConvolution"), op.get_friendly_name()
        w = op.get_data().astype(np.int64)
        w = w.reshape(-1, int(np.prod(w.shape[-3:])))  # one row per output channel (per group too)
        bounds[node.get_friendly_name()] = 255 * int(np.sort(np.abs(w), axis=1)[:, -2:].sum(1).max())
    return bounds


def test_int8_openvino_cannot_saturate_int16_on_cpus_without_vnni(int8_exports):
    """The same arithmetic for the NNCF model: OpenVINO's u8 x s8 kernels pair products in int16 without VNNI."""
    results, _, _ = int8_exports
    bounds = openvino_pair_sum_bounds(results["openvino int8"].file)
    assert len(bounds) > 20
    worst = max(bounds, key=bounds.get)
    print(f"largest pair sum: {bounds[worst]} ({worst})")
    assert bounds[worst] <= np.iinfo(np.int16).max, {k: v for k, v in bounds.items() if v > 32767}


def test_verification_counts_each_image_once(int8_exports):
    """A last batch padded with repeated images must not count them: 1 image at batch 3 is 1 image."""
    _, weights, data = int8_exports
    reference, candidate = load_model(weights, fuse=True), load_backend(weights)
    images = load_int8_data(str(data), 1, (160, 160)).verification
    one = next([im] for im in images if compare_detections(reference, candidate, [im], 1).reference > 0)
    single = compare_detections(reference, candidate, one, 1)
    padded = compare_detections(reference, candidate, one, 3)
    assert (padded.reference, padded.matched, padded.extra) == (single.reference, single.matched, single.extra)
    two = compare_detections(reference, candidate, one * 2, 3)  # the same image twice: counted twice, not thrice
    assert two.reference == 2 * single.reference


@pytest.mark.parametrize("split", ["train", "val"])
def test_int8_data_with_one_split_uses_it_for_both(shapes_trained, tmp_path, split):
    """As the README says: calibration from train (else val), verification from val (else train)."""
    _, _, data = shapes_trained
    cfg = yaml.safe_load(data.read_text())
    one = {k: v for k, v in cfg.items() if k not in ("train", "val")} | {split: cfg[split]}
    f = tmp_path / f"only-{split}.yaml"
    f.write_text(yaml.safe_dump(one))
    d = load_int8_data(str(f), 4, (160, 160))
    assert len(d.calibration) == 4 and len(d.verification) > 4 and split in d.source


def test_tensorrt_qdq_layout_is_signed_with_zero_points_at_zero(int8_exports, tmp_path):
    """The INT8 engine is built from its own QDQ ONNX: TensorRT's explicit quantization takes signed INT8 with
    zero point 0 only. Checked here without TensorRT: the layout, and that it keeps the fp32 detections."""
    results, weights, data = int8_exports
    model = load_model(weights, fuse=True)
    d = load_int8_data(str(data), 32, (160, 160))
    out = quantize_onnx(results["onnx"].file, tmp_path / "trt.onnx", d.calibration, 1, head_prefix(model),
                        layout="tensorrt")
    qdq = onnx.load(str(out))
    graph = qdq.graph
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [initializers[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    conv_inputs = {i for n in graph.node if n.op_type == "Conv" for i in n.input}
    dequantized = [o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output]
    assert dequantized and set(dequantized) <= conv_inputs  # Q/DQ only where a convolution reads
    qdq.metadata_props.extend(onnx.load(str(results["onnx"].file)).metadata_props)  # names, stride for the backend
    onnx.save(qdq, str(out))
    agreement = verify_int8(model, load_backend(out), d.verification, 1, "TensorRT-layout INT8 ONNX")
    assert agreement.reference > 20


def test_val_reports_map_for_each_int8_file(int8_exports):
    """val.py runs INT8 files like any other format; the accuracy stays near the fp32 export's."""
    results, _, data = int8_exports
    maps = {}
    for fmt in ("onnx", "onnx int8", "openvino int8"):
        maps[fmt] = val.run(data=str(data), weights=str(results[fmt].file), imgsz=160, batch_size=1, workers=0,
                            plots=False, project=str(results[fmt].file.parent / "val"), name=fmt.replace(" ", "_"))[0][3]
    print(maps)
    assert maps["onnx"] > 0.1
    for fmt in ("onnx int8", "openvino int8"):
        assert abs(maps[fmt] - maps["onnx"]) < 0.03, maps


def test_verification_fails_when_int8_loses_the_detections(int8_exports):
    """The check is not a formality: a model whose box outputs are off fails it with the figures."""
    results, weights, data = int8_exports
    reference = load_model(weights, fuse=True)
    int8_data = load_int8_data(str(data), 8, (160, 160))
    for what, outputs, change in (("shifted boxes", slice(0, 2), 1.5),  # every box centre moved by ~a cell
                                  ("faded scores", slice(4, 5), -8.0)):  # objectness logits down by 8: scores fade
        broken = copy.deepcopy(reference)
        head = broken.model[-1]
        with torch.no_grad():
            for conv in head.m:
                conv.bias.view(head.na, -1)[:, outputs] += change
        with pytest.raises(VerificationError, match="loses too much"):
            verify_int8(reference, load_backend(broken, fuse=False), int8_data.verification, 1, what)
    ok = verify_int8(reference, load_backend(results["onnx int8"].file), int8_data.verification, 1, "onnx int8")
    assert ok.share >= MIN_MATCHED


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "export.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra, message", [
    ((), "--int8 needs --data"),
    (("--data", "{data}", "--opset", "12"), "--opset 13 or later"),
], ids=["without-data", "opset-12"])
def test_int8_bad_options_are_refused_before_any_export(int8_exports, tmp_path, extra, message):
    _, weights, data = int8_exports
    w = tmp_path / "w.pt"
    shutil.copy(weights, w)
    done = run_export("--weights", str(w), "--include", "onnx", "--int8", *(a.format(data=data) for a in extra))
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_int8_with_unreadable_images_fails_before_any_export(int8_exports, tmp_path):
    _, weights, _ = int8_exports
    w = tmp_path / "w.pt"
    shutil.copy(weights, w)
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(3):
        (images / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = tmp_path / "broken.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path / "data"), "train": "images", "val": "images",
                                    "names": ["circle", "square", "triangle"]}))
    done = run_export("--weights", str(w), "--include", "onnx", "openvino", "--int8", "--data", str(data))
    assert done.returncode == 1 and "none of the 3" in done.stderr and "could be read" in done.stderr
    assert "Traceback" not in done.stderr and "exporting" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml", "data", "w.pt"]


def test_calibration_images_are_letterboxed_as_inference_does(shapes_trained):
    """Calibration input equals what detect/val feed the exported model: letterbox to the export size, RGB."""
    import cv2

    from utils.datasets.augmentations import letterbox
    from utils.datasets.dataloaders import list_image_files
    from utils.datasets.dataset_config import check_dataset

    _, _, data = shapes_trained
    d = load_int8_data(str(data), 5, (160, 160))
    files = list_image_files(check_dataset(str(data))["train"])
    first = letterbox(cv2.imread(files[0]), (160, 160), auto=False)[0][:, :, ::-1].transpose(2, 0, 1)
    assert len(d.calibration) == 5 and np.array_equal(d.calibration[0], first)
    assert d.calibration[0].shape == (3, 160, 160) and d.calibration[0].dtype == np.uint8


def test_detect_runs_int8_files_like_any_other(int8_exports, tmp_path):
    """detect.py on the INT8 ONNX and OpenVINO models finds what the fp32 ONNX finds on real val images."""
    import detect
    from utils.datasets.dataloaders import list_image_files
    from utils.datasets.dataset_config import check_dataset

    results, _, data = int8_exports
    images = list_image_files(check_dataset(str(data))["val"])[:12]
    # 0.1, not 0.25: how many boxes the small trained model scores above 0.25 depends on the CPU it trained on (5 on
    # 12 images with AVX2 kernels); INT8 at half the threshold, as export's verification counts a box kept
    found = {fmt: detect.run(weights=str(results[fmt].file), source=images, imgsz=(160, 160), nosave=True,
                             conf_thres=0.1 * (KEPT_CONF_RATIO if "int8" in fmt else 1),
                             project=tmp_path, name=fmt.replace(" ", "_"))
             for fmt in ("onnx", "onnx int8", "openvino int8")}
    ref = [r.det for r in found["onnx"]]
    assert sum(len(d) for d in ref) >= 6
    for fmt in ("onnx int8", "openvino int8"):
        got = [r.det for r in found[fmt]]
        assert [r.path for r in found[fmt]] == [r.path for r in found["onnx"]]
        kept = sum(int((torch.from_numpy(g[:, 5]) == torch.from_numpy(r[:, 5])[:, None]).any(1).sum()) if len(g) and len(r)
                   else 0 for r, g in zip(ref, got))  # INT8 detections of a class the fp32 model also found there
        assert kept >= 0.8 * sum(len(d) for d in ref), fmt


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA and TensorRT the engine may build")
def test_int8_engine_fails_clearly_and_onnx_int8_still_exports(int8_exports, tmp_path):
    _, weights, data = int8_exports
    w = tmp_path / "w.pt"
    shutil.copy(weights, w)
    done = run_export("--weights", str(w), "--include", "onnx", "engine", "--int8", "--data", str(data),
                      "--imgsz", "160", "--calib-images", "16")
    log = done.stdout + done.stderr
    assert done.returncode == 1, log
    assert "engine int8: export failed" in log and "TensorRT" in log
    assert "onnx int8: saved" in log and w.with_name("w-int8.onnx").is_file()
    assert not w.with_name("w-int8.engine").exists()
