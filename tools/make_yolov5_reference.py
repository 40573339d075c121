"""Regenerate tests/data/yolov5s_v7_reference.pt (or, with --p6, tests/data/yolov5_p6_reference.pt) with the
real YOLOv5 v7.0 code.

Run from the repo root:  /tmp/y5venv/bin/python tools/make_yolov5_reference.py [--p6]

--p6 records YOLOv5's models/hub/yolov5{n,s,m,l,x}6.yaml at nc=80: keys, shapes, parameter counts,
module types, strides, anchors and the first columns of the eval output for the seeded weights on
tests/yolov5_reference.p6_input() (see P6_COLUMNS there: the fixture stays small). Recorded
2026-12 with yolov5 7.0.14 on torch 2.14.1 (venv as below; `pip install yolov5==7.0.14 --no-deps`
works offline through the configured registry).

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
    cp "$(python3 -c 'import matplotlib,os;LOGGER.info(os.path.dirname(matplotlib.__file__))')/mpl-data/fonts/ttf/DejaVuSans.ttf" \
       ~/.config/Ultralytics/Arial.ttf

On first import, ultralytics writes ~/.config/Ultralytics/settings.json (prints
"Creating new Ultralytics Settings ..."); YOLO_OFFLINE=1 is set below so it never
tries the network. Model() prints its layer table and "YOLOv5s summary".

Note: YOLOv5's Model() sets every BatchNorm2d to eps=1e-3, momentum=0.03
(utils.torch_utils.initialize_weights); recorded as 'bn_eps'/'bn_momentum'.
"""
import argparse
import importlib.util
import logging
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

LOGGER = logging.getLogger('make_yolov5_reference')


def _load_reference_helpers():
    spec = importlib.util.spec_from_file_location('yolov5_reference', ROOT / 'tests' / 'yolov5_reference.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def record(ref, cfg: Path, x: torch.Tensor) -> dict:
    """YOLOv5's model for ``cfg`` at nc=80 with the seeded weights, in eval mode, and what it looks like."""
    model = Model(str(cfg), ch=3, nc=80)
    template = model.state_dict()
    model.load_state_dict(ref.seeded_state_dict(template, seed=0), strict=True)
    model.eval()
    detect = model.model[-1]
    assert isinstance(detect, Detect)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        out, raw = model(x.clone())
    return {
        'keys': list(template.keys()),
        'shapes': [list(v.shape) for v in template.values()],
        'num_params': int(sum(p.numel() for p in model.parameters())),
        'module_types': [type(m).__name__ for m in model.model],
        'anchors': detect.anchors.clone(),
        'stride': detect.stride.clone(),
        'bn_eps': float(bns[0].eps),
        'bn_momentum': float(bns[0].momentum),
        'output': out.clone(),
        'raw': [r.clone() for r in raw],
    }


def main():
    ref = _load_reference_helpers()
    x = torch.rand((1, 3, 128, 160), generator=torch.Generator().manual_seed(1))
    data = record(ref, Path(yolov5.__file__).parent / 'models' / 'yolov5s.yaml', x)
    for i, name in enumerate(data['module_types']):
        LOGGER.info(f'model.{i}: {name}')
    data = {'yolov5_version': '7.0.14', **data, 'input': x.clone()}
    save(data, ref.REFERENCE_PATH, f"num_params={data['num_params']} output={tuple(data['output'].shape)} "
                                   f"raw={[tuple(r.shape) for r in data['raw']]}")


def main_p6():
    ref = _load_reference_helpers()
    x = ref.p6_input(seed=1)
    data = {'yolov5_version': '7.0.14', 'torch_version': str(torch.__version__), 'seed': 0, 'input_seed': 1,
            'input_shape': list(x.shape), 'input_sum': float(x.double().sum()), 'columns': ref.P6_COLUMNS,
            'configs': {}}
    for name in ref.P6_CONFIGS:
        rec = record(ref, Path(yolov5.__file__).parent / 'models' / 'hub' / f'{name}.yaml', x)
        rec['output'] = rec['output'][..., :ref.P6_COLUMNS].clone()
        rec['output_shape'] = [*rec['output'].shape[:-1], 85]
        del rec['raw']  # the decoded output is compared; raw maps would double the file
        data['configs'][name] = rec
        LOGGER.info(f"{name}: {rec['num_params']} parameters, strides {rec['stride'].tolist()}")
    save(data, ref.P6_REFERENCE_PATH, f"{len(data['configs'])} configs")


def save(data: dict, path: Path, summary: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    LOGGER.info(f'saved {path} ({path.stat().st_size} bytes): {summary}')


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--p6', action='store_true', help="record the P6 models instead of yolov5s")
    main_p6() if parser.parse_args().p6 else main()
