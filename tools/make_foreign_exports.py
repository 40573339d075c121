"""Regenerate tests/data/foreign/: files written by YOLOv5 v7.0's and YOLOv7's own export code.

The suite checks that val/detect/hub read what a team moving here brings (tests/deploy/test_foreign_exports.py).
Every model file here is written by the other project's exporter, from a tiny model of its own code
(random weights, random BatchNorm statistics, head rescaled so that about 10-40 boxes pass conf 0.25 on
bus.jpg), so each file stays under 300 KB. ``references.json`` holds, for each model and input size,
the detections its own PyTorch model and its own ``non_max_suppression`` (conf 0.25, IoU 0.45) give
on the central square of bus.jpg letterboxed to that size with its own ``letterbox`` (auto=False): the tests compare the
numbers our backends produce to them.

Run from the repo root, in two environments (the venvs of tools/make_yolov5_reference.py and
tools/make_yolov7_reference.py; see their docstrings for how to create them):

    /tmp/y5venv/bin/python tools/make_foreign_exports.py yolov5
    mkdir -p /tmp/yolov7
    git -C /work/.mirror/WongKinYiu+yolov7/repo archive HEAD -- models utils cfg export.py | tar -x -C /tmp/yolov7
    /tmp/y7venv/bin/python tools/make_foreign_exports.py yolov7 --src /tmp/yolov7

Written (tests/data/foreign/):
  yolov5/  yolov5 7.0.14 ``export.run`` of a yolov5s layout at depth 0.33, width 1/32, nc 80, COCO names:
      y5.onnx (fixed 1x3x128x128, as YOLOv5 writes it at 640: no --dynamic), y5.torchscript (128x128) and
      y5_openvino_model/ (y5.xml, y5.bin, y5.yaml). YOLOv5's OpenVINO step runs ``mo`` from openvino-dev
      through ``openvino.inference_engine``, neither of which exists in openvino >= 2024 (nor offline):
      the folder is made the way ``mo --data_type FP32`` made it, from YOLOv5's own ONNX, by
      ``openvino.convert_model``/``save_model``, and the metadata file by YOLOv5's ``yaml_save`` with
      the ``metadata`` dict its ``export.run`` builds (``<stem>.yaml``, names as {id: name}).
  yolov7/  YOLOv7 (commit a207844) ``export.py`` of yolov7-tiny at width 1/32, nc 80 (no names stored), 128x128:
      y7_grid.onnx (--grid: one decoded output), y7_end2end_ort.onnx (--grid --end2end --max-wh 640:
      ONNX Runtime NMS, (n, 7) rows), y7_raw.onnx (no --grid: three raw maps) and y7_end2end_trt.onnx
      (--grid --end2end: TensorRT's EfficientNMS_TRT plugin).

Shims, applied in this process only: ``torch.load`` defaults to weights_only=False (both exporters
unpickle the checkpoint written just before; torch >= 2.6 refuses that by default) and
``torch.onnx.export`` defaults to dynamo=False (torch >= 2.9 would use the dynamo exporter, which needs
onnxscript, where both projects were written for the TorchScript exporter). The pip package yolov5 adds a
Hugging Face lookup to ``attempt_download`` (not in YOLOv5's repository; needs huggingface_hub): it is
made to return None, as it does for a local file it cannot find on the hub.
"""
import argparse
import copy
import functools
import json
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this repo has its own top-level `models`/`utils` packages: keep it off sys.path
sys.path[:] = [p for p in sys.path if p not in ('', '.', str(ROOT), str(ROOT / 'tools'))]
os.environ.setdefault('YOLO_OFFLINE', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

OUT = ROOT / 'tests' / 'data' / 'foreign'
IMAGE = ROOT.parent / 'shared' / 'images' / 'bus.jpg'
YOLOV7_COMMIT = 'a207844b1ce82d204ab36d87d496728d3d2348e7'
CONF, IOU = 0.25, 0.45
# logit (mean, std) on bus.jpg per output group: xywh near cell centres and anchor sizes, objectness and
# classes spread over the image so that the detections depend on it
TARGETS = ((slice(0, 4), 0.0, 0.3), (slice(4, 5), -4.0, 1.5), (slice(5, None), -2.0, 1.5))


def shim_torch() -> None:
    torch.load = functools.partial(torch.load, weights_only=False)
    export = torch.onnx.export

    @functools.wraps(export)
    def onnx_export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    torch.onnx.export = onnx_export


def coco_names() -> list:
    names = yaml.safe_load((ROOT / 'data' / 'coco128.yaml').read_text())['names']
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights (default init, seeded) and random BatchNorm statistics, so folding changes kernels."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


def bus_square() -> np.ndarray:
    """The central 810x810 square of bus.jpg (BGR): no letterbox padding, whose flat grey gives many equal-score
    boxes that NMS would pick by order."""
    im = cv2.imread(str(IMAGE))
    s = min(im.shape[:2])
    y, x = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
    return np.ascontiguousarray(im[y:y + s, x:x + s])


def bus_input(letterbox, shape) -> torch.Tensor:
    """bus_square() letterboxed to ``shape`` (h, w) by the exporter's own letterbox: (1, 3, h, w) RGB 0..1."""
    im = letterbox(bus_square(), shape, auto=False)[0]
    return torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)[::-1]).copy())[None].float() / 255


@torch.no_grad()
def calibrate_head(model, detect, x: torch.Tensor) -> None:
    """Rescale the head's output convolutions so each output group has the TARGETS logit statistics on x.

    Raw map = im * (conv(x + ia)) for YOLOv7's IDetect (implicit layers), conv(x) for YOLOv5's Detect:
    a per-channel affine change a * raw + c is W' = a W, b' = a b + c / im."""
    model.eval()
    _, raw = model(x)
    na, no = detect.na, detect.no
    for i, (conv, r) in enumerate(zip(detect.m, raw)):
        z = r[0].permute(0, 3, 1, 2).reshape(na, no, -1)
        mu, sd = z.mean(-1), z.std(-1).clamp_min(1e-6)
        im = detect.im[i].implicit.view(na, no) if hasattr(detect, 'im') else torch.ones(na, no)
        w, b = conv.weight.view(na, no, -1), conv.bias.view(na, no)
        for sl, mean, std in TARGETS:
            a = std / sd[:, sl]
            c = mean - mu[:, sl] * a
            w[:, sl] *= a[..., None]
            b[:, sl] = b[:, sl] * a + c / im[:, sl]


def tiny_model(Model, cfg_file: Path, letterbox, seed: int, **cfg_updates) -> tuple:
    """The exporter's own Model from its own config with ``cfg_updates``: random weights and BatchNorm statistics,
    head calibrated on bus.jpg at 128x128 (``seed`` draws the BatchNorm parameters and statistics).
    Returns (model, that 128x128 input)."""
    torch.manual_seed(0)  # the layers' own initialisation
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg.update(cfg_updates)
    model = Model(cfg, ch=3, nc=cfg['nc'])
    randomize(model, seed=seed)
    x = bus_input(letterbox, (128, 128))
    calibrate_head(model, model.model[-1], x)
    return model, x


def fresh_folder(name: str) -> Path:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def detections(model, nms, x: torch.Tensor) -> list:
    with torch.no_grad():
        pred = model(x)[0]
    d = nms(pred, CONF, IOU)[0]
    return [[round(float(v), 4) for v in row] for row in d.tolist()]


def save_references(name: str, refs: dict) -> None:
    path = OUT / 'references.json'
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = refs
    path.write_text(json.dumps(data, indent=1) + '\n')


# ---------------------------------------------------------------------------------------------- YOLOv5
def make_yolov5() -> None:
    import yolov5
    from yolov5 import export
    from yolov5.models.yolo import Model
    from yolov5.utils.augmentations import letterbox
    from yolov5.utils.general import non_max_suppression, yaml_save

    assert yolov5.__version__ == '7.0.14', yolov5.__version__
    shim_torch()
    from yolov5.utils import downloads
    downloads.attempt_download_from_hub = lambda *args, **kwargs: None  # a local file; never ask the hub
    model, x = tiny_model(Model, Path(yolov5.__file__).parent / 'models' / 'yolov5s.yaml', letterbox, seed=0,
                          depth_multiple=0.33, width_multiple=0.03125, nc=80)
    model.names = coco_names()
    out = fresh_folder('yolov5')
    refs = {'exporter': f'yolov5 {yolov5.__version__}', 'torch': str(torch.__version__)}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / 'y5.pt'
        torch.save({'model': copy.deepcopy(model)}, weights)
        export.run(weights=str(weights), imgsz=(128, 128), batch_size=1, include=('torchscript', 'onnx'), device='cpu')
        shutil.copy(weights.with_suffix('.onnx'), out / 'y5.onnx')
        shutil.copy(weights.with_suffix('.torchscript'), out / 'y5.torchscript')
        openvino_folder(weights.with_suffix('.onnx'), out / 'y5_openvino_model', yaml_save,
                        {'stride': int(max(model.stride)), 'names': dict(enumerate(model.names))})
        fused = copy.deepcopy(model).fuse().eval()  # what export.run exports
        refs['128x128'] = detections(fused, non_max_suppression, x)
    save_references('yolov5', refs)


def openvino_folder(onnx_file: Path, folder: Path, yaml_save, metadata: dict) -> None:
    """What YOLOv5 7.0's export_openvino wrote: `mo --input_model <onnx> --data_type FP32` into <stem>_openvino_model/
    plus <stem>.yaml (its metadata) beside the .xml."""
    import openvino as ov

    folder.mkdir(parents=True)
    ov.save_model(ov.convert_model(str(onnx_file)), str(folder / 'y5.xml'), compress_to_fp16=False)
    yaml_save(folder / 'y5.yaml', metadata)


# ---------------------------------------------------------------------------------------------- YOLOv7
def make_yolov7(src: Path) -> None:
    shim_torch()
    sys.path.insert(0, str(src))  # YOLOv7's own `models`/`utils`
    os.chdir(src)  # its export.py appends './' to sys.path
    from models.yolo import Model  # YOLOv7's
    from utils.datasets import letterbox
    from utils.general import non_max_suppression

    model, x = tiny_model(Model, src / 'cfg' / 'training' / 'yolov7-tiny.yaml', letterbox, seed=1,
                          width_multiple=0.03125, nc=80)
    model.requires_grad_(False)  # as YOLOv7's trainer saves its EMA model (IDetect.fuse changes leaves in place)
    out = fresh_folder('yolov7')
    refs = {'exporter': f'yolov7 {YOLOV7_COMMIT}', 'torch': str(torch.__version__)}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / 'y7.pt'
        torch.save({'ema': copy.deepcopy(model)}, weights)
        for name, args in (('grid', ['--grid']), ('end2end_ort', ['--grid', '--end2end', '--max-wh', '640']),
                           ('raw', []), ('end2end_trt', ['--grid', '--end2end'])):
            sys.argv = ['export.py', '--weights', str(weights), '--img-size', '128', *args]
            runpy.run_path(str(src / 'export.py'), run_name='__main__')
            shutil.copy(weights.with_suffix('.onnx'), out / f'y7_{name}.onnx')
        fused = copy.deepcopy(model).fuse().eval()  # what export.py's attempt_load exports
        refs['128x128'] = detections(fused, non_max_suppression, x)
    save_references('yolov7', refs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('which', choices=('yolov5', 'yolov7'))
    parser.add_argument('--src', type=Path, default=Path('/tmp/yolov7'), help="YOLOv7's code (for yolov7)")
    opt = parser.parse_args()
    make_yolov5() if opt.which == 'yolov5' else make_yolov7(opt.src.resolve())
    for f in sorted(OUT.rglob('*')):
        if f.is_file():
            print(f'{f.relative_to(ROOT)}: {f.stat().st_size / 1e3:.1f} KB')


if __name__ == '__main__':
    main()
