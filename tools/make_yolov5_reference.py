"""Regenerate tests/data/yolov5s_v7_reference.pt with the real YOLOv5 v7.0 code.

Run from the repo root:  /tmp/y5venv/bin/python tools/make_yolov5_reference.py

The fixture lets the test suite check, without YOLOv5 installed, that our
yolov5s.yaml builds exactly YOLOv5 v7.0's yolov5s (state-dict keys, shapes,
parameter count, module types) and gives the same eval outputs for the same
weights. No weights are stored: both sides build them with
tests/yolov5_reference.seeded_state_dict(template, seed=0).

Venv setup (reuses the system torch 2.15 CPU; also used for the issue-3
throughput benchmark):

    python3 -m venv --system-site-packages /tmp/y5venv
    /tmp/y5venv/bin/pip install 'setuptools<70'      # venv's own 65.5.0 already satisfies it
    # NOT a plain `pip install yolov5==7.0.14`: its deps (ultralytics, sahi,
    # roboflow, thop, ...) pull torch 2.12.1 + torchvision 0.27.1 + ~2 GB of CUDA
    # wheels. Install it without deps and add only what import needs:
    /tmp/y5venv/bin/pip install --no-deps yolov5==7.0.14
    /tmp/y5venv/bin/pip install psutil                  # yolov5.utils.dataloaders
    /tmp/y5venv/bin/pip install --no-deps seaborn ultralytics==8.4.190
    #   seaborn: yolov5.utils.plots; ultralytics: yolov5.utils.general only imports
    #   ultralytics.utils.checks.check_requirements. Everything else (torchvision,
    #   opencv, numpy, pandas, pyyaml, tqdm, matplotlib, Pillow, requests, scipy)
    #   comes from the system site-packages. thop is optional (no GFLOPs printed).
    # Font: yolov5 plotting wants CONFIG_DIR/Arial.ttf (CONFIG_DIR is
    # $YOLOV5_CONFIG_DIR or ~/.config/Ultralytics) and would download it. Any TTF
    # works; model building/inference alone does not need it:
    mkdir -p ~/.config/Ultralytics
    cp "$(python3 -c 'import matplotlib,os;print(os.path.dirname(matplotlib.__file__))')/mpl-data/fonts/ttf/DejaVuSans.ttf" \
       ~/.config/Ultralytics/Arial.ttf

On first import, ultralytics writes ~/.config/Ultralytics/settings.json (prints
"Creating new Ultralytics Settings ..."); YOLO_OFFLINE=1 is set below so it never
tries the network. Model() prints its layer table and "YOLOv5s summary".

Note: YOLOv5's Model() sets every BatchNorm2d to eps=1e-3, momentum=0.03
(utils.torch_utils.initialize_weights); recorded as 'bn_eps'/'bn_momentum'.
"""
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# /work/main has its own top-level `models`/`utils` packages: keep them off sys.path
# so nothing can shadow the yolov5 package's modules.
sys.path[:] = [p for p in sys.path if p not in ('', '.', str(ROOT), str(ROOT / 'tools'))]
os.environ.setdefault('YOLO_OFFLINE', '1')

import torch  # noqa: E402
import yolov5  # noqa: E402
from yolov5.models.yolo import Detect, Model  # noqa: E402


def _load_reference_helpers():
    spec = importlib.util.spec_from_file_location('yolov5_reference', ROOT / 'tests' / 'yolov5_reference.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ref = _load_reference_helpers()
    version = getattr(yolov5, '__version__', None)
    assert version == '7.0.14', f'expected yolov5 7.0.14, got {version}'

    cfg = Path(yolov5.__file__).parent / 'models' / 'yolov5s.yaml'
    model = Model(str(cfg), ch=3, nc=80)
    template = model.state_dict()
    model.load_state_dict(ref.seeded_state_dict(template, seed=0), strict=True)
    model.eval()

    detect = model.model[-1]
    assert isinstance(detect, Detect)
    module_types = [type(m).__name__ for m in model.model]
    for i, name in enumerate(module_types):
        print(f'model.{i}: {name}')
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    x = torch.rand((1, 3, 128, 160), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, raw = model(x)

    data = {
        'yolov5_version': '7.0.14',
        'keys': list(template.keys()),
        'shapes': [list(v.shape) for v in template.values()],
        'num_params': int(sum(p.numel() for p in model.parameters())),
        'module_types': module_types,
        'anchors': detect.anchors.clone(),
        'stride': detect.stride.clone(),
        'bn_eps': float(bns[0].eps),
        'bn_momentum': float(bns[0].momentum),
        'input': x.clone(),
        'output': out.clone(),
        'raw': [r.clone() for r in raw],
    }
    ref.REFERENCE_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, ref.REFERENCE_PATH)
    print(f"saved {ref.REFERENCE_PATH} ({ref.REFERENCE_PATH.stat().st_size} bytes): "
          f"num_params={data['num_params']} output={tuple(out.shape)} raw={[tuple(r.shape) for r in raw]}")


if __name__ == '__main__':
    main()
