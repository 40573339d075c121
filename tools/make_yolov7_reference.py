"""Regenerate tests/data/yolov7_reference.pt with the official YOLOv7 code.

Run from the repo root:  /tmp/y7venv/bin/python tools/make_yolov7_reference.py [--src /tmp/yolov7]

The fixture lets the test suite check, without YOLOv7 installed, that models/<name>.yaml for every name in
tests/yolov7_reference.CONFIGS builds exactly YOLOv7's model of cfg/training/<name>.yaml (state-dict keys and
shapes, parameter counts, module types, strides, anchors) and gives the same eval outputs for the same
weights (P5 models on a 64x96 input, the P6 models on 64x128). No weights are stored: both sides build them
with tests/yolov7_reference.seeded_state_dict(template, seed=0). For the P6 models (IAuxDetect) it also
records YOLOv7's deploy model, cfg/deploy/<name>.yaml: its config dict, state-dict keys and shapes as built
and after YOLOv7's own Model.fuse() (Conv+BN folded, BatchNorm deleted), which a folded model here must match.
For E6, D6 and E6E only the decoded output is stored (yolov7_reference.DECODED_ONLY: their head is W6's, whose
raw maps are stored), to keep the file small.

Getting YOLOv7's code (commit a207844b1ce82d204ab36d87d496728d3d2348e7, 2023-11-03, from the bare
mirror; `git archive HEAD` of the whole tree fails because the paper PDF's blob is not in the mirror,
and only the Python packages and configs are needed):

    mkdir -p /tmp/yolov7
    git -C /work/.mirror/WongKinYiu+yolov7/repo archive HEAD -- models utils cfg | tar -x -C /tmp/yolov7

Environment: the system torch 2.14.1 (CPU build is enough) and its site-packages; YOLOv7's
utils/plots.py imports seaborn at module level, which the system python lacks:

    python3 -m venv --system-site-packages /tmp/y7venv
    /tmp/y7venv/bin/pip install --no-deps seaborn     # 0.13.2; its deps are already present

No patch to YOLOv7's code was needed on torch 2.14: model building and eval forward run as they
are (only a torch.meshgrid "indexing" UserWarning from IDetect._make_grid). YOLOv7's Model() sets
every BatchNorm2d to eps=1e-3, momentum=0.03, recorded as 'bn_eps'/'bn_momentum'.
"""
import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this repo has its own top-level `models`/`utils` packages: keep it off sys.path so they cannot shadow
# YOLOv7's; tests/ (no such packages) is appended for the fixture helpers
sys.path[:] = [p for p in sys.path if p not in ('', '.', str(ROOT), str(ROOT / 'tools'))]
sys.path.append(str(ROOT / 'tests'))

import torch  # noqa: E402

import yolov7_reference as ref  # noqa: E402

LOGGER = logging.getLogger('make_yolov7_reference')
YOLOV7_COMMIT = 'a207844b1ce82d204ab36d87d496728d3d2348e7'


def record(Model, heads: tuple, cfg: Path, x: torch.Tensor) -> dict:
    """Build YOLOv7's model for ``cfg`` at nc=80, load the seeded weights, run it in eval mode."""
    model = Model(str(cfg), ch=3, nc=80)
    template = model.state_dict()
    model.load_state_dict(ref.seeded_state_dict(template, seed=0), strict=True)
    model.eval()
    detect = model.model[-1]
    assert isinstance(detect, heads), type(detect)
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
        'raw': [] if cfg.stem in ref.DECODED_ONLY else [r.clone() for r in raw],
    }


def record_deploy(Model, cfg: Path) -> dict:
    """YOLOv7's deploy model of ``cfg`` at nc=80: its config, keys and shapes as built and after its fuse()."""
    model = Model(str(cfg), ch=3, nc=80).eval()
    built = model.state_dict()
    fused = model.fuse().state_dict()
    return {
        'yaml': dict(model.yaml),
        'keys': list(built), 'shapes': [list(v.shape) for v in built.values()],
        'fused_keys': list(fused), 'fused_shapes': [list(v.shape) for v in fused.values()],
        'fused_num_params': int(sum(p.numel() for p in model.parameters())),
    }


def main(src: Path) -> None:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    sys.path.insert(0, str(src))  # YOLOv7's own `models`/`utils`
    from models.yolo import IAuxDetect, IDetect, Model  # YOLOv7's, not this repo's

    data = {'yolov7_commit': YOLOV7_COMMIT, 'torch_version': str(torch.__version__), 'seed': 0,
            'input': ref.reference_input(seed=1), 'input_p6': ref.reference_input(seed=1, shape=ref.INPUT_SHAPE_P6),
            'configs': {}, 'deploy': {}}
    for name in ref.CONFIGS:
        x = data[ref.input_key(name)]
        data['configs'][name] = rec = record(Model, (IDetect, IAuxDetect), src / 'cfg' / 'training' / f'{name}.yaml', x)
        LOGGER.info(f"{name}: {rec['num_params']} parameters, output {tuple(rec['output'].shape)}")
    for name in ref.P6_CONFIGS:
        data['deploy'][name] = rec = record_deploy(Model, src / 'cfg' / 'deploy' / f'{name}.yaml')
        LOGGER.info(f"{name} deploy: {len(rec['keys'])} tensors, {len(rec['fused_keys'])} fused, "
                    f"{rec['fused_num_params']} parameters fused")
    ref.REFERENCE_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, ref.REFERENCE_PATH)
    LOGGER.info(f'saved {ref.REFERENCE_PATH} ({ref.REFERENCE_PATH.stat().st_size} bytes)')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--src', type=Path, default=Path('/tmp/yolov7'), help="checkout of YOLOv7's code")
    main(parser.parse_args().src.resolve())
