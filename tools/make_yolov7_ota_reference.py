"""Regenerate tests/data/yolov7_ota_reference.pt with YOLOv7's own ComputeLossOTA, and
tests/data/yolov7_aux_ota_reference.pt with its ComputeLossAuxOTA (``--loss aux``).

Run from the repo root (the system Python with torch, torchvision, yaml, matplotlib, pandas and scipy
imports YOLOv7's code as it is; no separate environment is needed)::

    python tools/make_yolov7_ota_reference.py [--yolov7 /tmp/yolov7_b] [--out tests/data/yolov7_ota_reference.pt]
    python tools/make_yolov7_ota_reference.py --loss aux [--yolov7 /tmp/yolov7_b]

How YOLOv7's code is run (nothing in it is edited):

- A working copy of the official repository (WongKinYiu/yolov7, commit recorded in the fixture) is taken
  from the bare mirror when ``--yolov7`` does not exist yet: ``git -C <mirror> archive HEAD utils models
  cfg data | tar -x -C <dir>`` (a whole-tree archive fails on the mirror's absent paper PDF).
- YOLOv7 has top-level ``models`` and ``utils`` packages, like this repository. ``load_yolov7`` imports
  them with YOLOv7's folder first on ``sys.path`` and this repository's modules out of ``sys.modules``,
  then puts everything back, so both can live in one process (the benchmark uses the same function).
- ``models.common`` imports ``utils.plots``, which imports seaborn (not installed here, used only for
  plots): an empty ``seaborn`` module is put in ``sys.modules`` for the import. Nothing else needed a
  workaround on torch 2.14. YOLOv7's ``utils.general`` changes torch/numpy print options at import.
- The model is YOLOv7's own ``Model('cfg/training/yolov7-tiny.yaml', nc=80)`` (its anchors, in grid units,
  and strides 8/16/32) with ``model.hyp`` = data/hyp.scratch.tiny.yaml scaled as YOLOv7's train.py does,
  and ``model.gr = 1.0``. The predictions are seeded tensors (``seeded_predictions``; the test rebuilds
  them from the seed and checks a fingerprint), the targets are written below.

The fixture holds, per case: the inputs (seed, shapes, targets, hyp, anchors, strides), YOLOv7's loss and
loss items, and its matches per level (image, anchor, gj, gi, matched target rows, anchors).

The auxiliary-head fixture (``AUX_CASES``) is made the same way with data/hyp.scratch.p6.yaml (what YOLOv7's
train_aux.py trains with), ``2 * nl`` seeded maps (the lead maps, then the auxiliary maps) and two of YOLOv7's
models: ``cfg/training/yolov7-w6.yaml`` (IAuxDetect, four levels, strides 8-64, P6 anchors) and, for three
levels, ``yolov7-tiny.yaml`` (YOLOv7 cannot build a three-level IAuxDetect: its stride probe reads four maps;
the loss reads only the head's anchors, strides, na, nc and nl). Per case it also holds the matches of all
``2 * nl`` maps (``build_targets`` then ``build_targets2``) and, per map, the absolute sum and the sum of squares
of the loss's gradient with respect to the map.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path("/work/.mirror/WongKinYiu+yolov7/repo")
LOGGER = logging.getLogger("make_yolov7_ota_reference")
NC = 80
# Three cases: YOLOv7-tiny's own hyp at 160 px, focal loss + label smoothing at 128 px with an image
# that has no targets, and a crowded image. Targets: crowded groups (shared candidate cells), boxes touching each border and
# corner, tiny and large boxes, repeated classes.
CASES = {
    "tiny_160": dict(seed=0, bs=2, imgsz=160, fl_gamma=0.0, label_smoothing=0.0, targets=[
        [0, 0, 0.50, 0.50, 0.30, 0.40], [0, 0, 0.53, 0.48, 0.25, 0.35], [0, 17, 0.47, 0.55, 0.10, 0.12],
        [0, 2, 0.02, 0.03, 0.04, 0.05], [0, 5, 0.97, 0.50, 0.06, 0.50], [0, 79, 0.50, 0.985, 0.90, 0.03],
        [0, 3, 0.30, 0.30, 0.05, 0.04], [0, 3, 0.33, 0.31, 0.06, 0.05],
        [1, 1, 0.25, 0.75, 0.45, 0.45], [1, 40, 0.99, 0.01, 0.02, 0.02], [1, 1, 0.70, 0.30, 0.20, 0.10],
        [1, 62, 0.50, 0.50, 0.98, 0.98], [1, 7, 0.0125, 0.60, 0.025, 0.30], [1, 7, 0.60, 0.62, 0.08, 0.09],
    ]),
    "focal_smooth_128": dict(seed=1, bs=3, imgsz=128, fl_gamma=1.5, label_smoothing=0.1, targets=[
        [0, 9, 0.40, 0.40, 0.20, 0.20], [0, 9, 0.42, 0.41, 0.18, 0.22], [0, 9, 0.45, 0.38, 0.22, 0.18],
        [0, 14, 0.80, 0.80, 0.35, 0.35], [0, 0, 0.05, 0.95, 0.10, 0.10],
        [2, 56, 0.5, 0.5, 0.12, 0.6], [2, 56, 0.985, 0.985, 0.03, 0.03], [2, 21, 0.2, 0.1, 0.4, 0.2],
        [2, 60, 0.65, 0.35, 0.5, 0.3], [2, 60, 0.66, 0.36, 0.45, 0.32],
    ]),
    # twelve overlapping boxes in one image: many cells reached through several targets (equal costs) and
    # cells matched to two targets (YOLOv7's objectness target: the last one written)
    "crowded_96": dict(seed=2, bs=1, imgsz=96, fl_gamma=0.0, label_smoothing=0.0, targets=[
        [0, 16, 0.550, 0.444, 0.295, 0.118], [0, 0, 0.561, 0.548, 0.205, 0.236], [0, 52, 0.563, 0.442, 0.153, 0.178],
        [0, 62, 0.450, 0.536, 0.133, 0.153], [0, 36, 0.430, 0.574, 0.109, 0.198], [0, 9, 0.516, 0.510, 0.259, 0.249],
        [0, 19, 0.436, 0.524, 0.294, 0.112], [0, 11, 0.532, 0.512, 0.188, 0.297], [0, 47, 0.572, 0.523, 0.216, 0.172],
        [0, 2, 0.433, 0.563, 0.110, 0.247], [0, 36, 0.525, 0.464, 0.276, 0.280], [0, 54, 0.431, 0.543, 0.284, 0.220],
    ]),
}


# The auxiliary-head loss: three levels (YOLOv7-tiny's geometry) and four (YOLOv7-W6's), each with many
# targets, with targets on or near the borders (one centre exactly on the right border: its cell and its
# left neighbour coincide after clamping), and with an image without targets.
_BORDERS = [[0, 2, 0.02, 0.03, 0.04, 0.05], [0, 5, 0.97, 0.50, 0.06, 0.50], [0, 79, 0.50, 0.985, 0.90, 0.03],
            [0, 40, 0.99, 0.01, 0.02, 0.02], [0, 4, 1.0, 0.40, 0.05, 0.10], [0, 62, 0.50, 0.50, 0.98, 0.98]]
AUX_CASES = {
    "tiny_aux_160": dict(cfg="yolov7-tiny.yaml", seed=3, bs=2, imgsz=160, fl_gamma=0.0, label_smoothing=0.0,
                         targets=CASES["tiny_160"]["targets"]),
    "tiny_aux_crowded_96": dict(cfg="yolov7-tiny.yaml", seed=4, bs=3, imgsz=96, fl_gamma=1.5, label_smoothing=0.1,
                                targets=[[1, *t[1:]] for t in CASES["crowded_96"]["targets"]]
                                + [[2, *t[1:]] for t in _BORDERS]),  # image 0 has no targets
    "w6_aux_256": dict(cfg="yolov7-w6.yaml", seed=5, bs=2, imgsz=256, fl_gamma=0.0, label_smoothing=0.0,
                       targets=CASES["crowded_96"]["targets"] + [[1, *t[1:]] for t in _BORDERS]),
    "w6_aux_128": dict(cfg="yolov7-w6.yaml", seed=6, bs=3, imgsz=128, fl_gamma=1.5, label_smoothing=0.1,
                       targets=CASES["focal_smooth_128"]["targets"] + [[2, *t[1:]] for t in _BORDERS]),  # 1: none
}


def seeded_predictions(seed: int, bs: int, imgsz: int, strides, na: int = 3, nc: int = NC) -> list[torch.Tensor]:
    """Raw head outputs ``(bs, na, ny, nx, nc + 5)`` per level that look like a partly trained detector's:
    box logits around 0, objectness mostly low, class logits low with a spread."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in strides:
        n = imgsz // int(s)
        p = torch.randn(bs, na, n, n, nc + 5, generator=g)
        p[..., :4] *= 0.8
        p[..., 4] = p[..., 4] * 2.0 - 3.0
        p[..., 5:] = p[..., 5:] * 2.0 - 4.0
        out.append(p)
    return out


def fingerprint(preds: list[torch.Tensor]) -> list[float]:
    """Per-level sum and sum of squares: catches a change in torch's random stream."""
    return [v for p in preds for v in (float(p.double().sum()), float(p.double().square().sum()))]


def grad_fingerprint(preds: list[torch.Tensor]) -> list[float]:
    """Per map, the absolute sum and the sum of squares of its gradient."""
    return [v for p in preds for v in (float(p.grad.double().abs().sum()), float(p.grad.double().square().sum()))]


def ensure_working_copy(path: Path) -> None:
    if (path / "utils" / "loss.py").is_file():
        return
    path.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(MIRROR), "archive", "HEAD", "utils", "models", "cfg", "data"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)


@contextlib.contextmanager
def _yolov7_imports(path: Path):
    """YOLOv7's top-level ``models``/``utils`` importable for the duration, this repository's put back after."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ("models", "utils")}
    sys.path.insert(0, str(path))
    had_seaborn = "seaborn" in sys.modules
    sys.modules.setdefault("seaborn", types.ModuleType("seaborn"))  # imported by utils.plots, used for plots only
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for k in [k for k in sys.modules if k.split(".")[0] in ("models", "utils")]:
            del sys.modules[k]
        if not had_seaborn:
            del sys.modules["seaborn"]
        sys.modules.update(ours)


def load_yolov7(path: Path = Path("/tmp/yolov7_b"), loss: str = "ComputeLossOTA", hyp: str = "hyp.scratch.tiny.yaml"):
    """YOLOv7's ``(Model, its loss class named loss, hyp dict of data/<hyp>)`` from a working copy."""
    import yaml

    ensure_working_copy(path)
    with _yolov7_imports(path):
        from models.yolo import Model
        from utils import loss as loss_module  # YOLOv7's own layout, not this repository's
    hyp_dict = yaml.safe_load((path / "data" / hyp).read_text())
    return Model, getattr(loss_module, loss), hyp_dict


def yolov7_model(Model, path: Path, hyp: dict, imgsz: int, nc: int = NC, cfg: str = "yolov7-tiny.yaml"):
    """YOLOv7's model of ``cfg`` with ``hyp`` scaled as YOLOv7's train.py scales it, attached as ``model.hyp``."""
    model = Model(str(path / "cfg" / "training" / cfg), ch=3, nc=nc)
    nl = model.model[-1].nl
    hyp = dict(hyp)
    hyp["box"] *= 3.0 / nl
    hyp["cls"] *= nc / 80.0 * 3.0 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3.0 / nl
    model.hyp, model.gr = hyp, 1.0
    return model


def run_case(Model, ComputeLossOTA, path: Path, base_hyp: dict, case: dict) -> dict:
    hyp = dict(base_hyp, fl_gamma=case["fl_gamma"], label_smoothing=case["label_smoothing"])
    model = yolov7_model(Model, path, hyp, case["imgsz"])
    det = model.model[-1]
    preds = seeded_predictions(case["seed"], case["bs"], case["imgsz"], det.stride.tolist(), det.na, det.nc)
    targets = torch.tensor(case["targets"], dtype=torch.float32)
    imgs = torch.zeros(case["bs"], 3, case["imgsz"], case["imgsz"])
    loss_fn = ComputeLossOTA(model)
    loss, items = loss_fn([p.clone() for p in preds], targets, imgs)
    matches = _match_dicts(loss_fn.build_targets(preds, targets, imgs))
    return dict(seed=case["seed"], bs=case["bs"], imgsz=case["imgsz"], targets=targets, hyp=model.hyp,
                anchors=det.anchors.clone(), stride=det.stride.clone(), fingerprint=fingerprint(preds),
                loss=loss.detach().clone(), loss_items=items.clone(), matches=matches)


def _match_dicts(built) -> list[dict]:
    """YOLOv7's ``build_targets`` result as one dict per map."""
    return [dict(b=b, a=a, gj=gj, gi=gi, targets=t.float(), anchors=an.float()) for b, a, gj, gi, t, an in zip(*built)]


def run_aux_case(Model, ComputeLossAuxOTA, path: Path, base_hyp: dict, case: dict) -> dict:
    """YOLOv7's ComputeLossAuxOTA on ``2 * nl`` seeded maps: loss, items, matches and gradient fingerprints."""
    hyp = dict(base_hyp, fl_gamma=case["fl_gamma"], label_smoothing=case["label_smoothing"])
    model = yolov7_model(Model, path, hyp, case["imgsz"], cfg=case["cfg"])
    det = model.model[-1]
    preds = seeded_predictions(case["seed"], case["bs"], case["imgsz"], det.stride.tolist() * 2, det.na, det.nc)
    targets = torch.tensor(case["targets"], dtype=torch.float32)
    imgs = torch.zeros(case["bs"], 3, case["imgsz"], case["imgsz"])
    loss_fn = ComputeLossAuxOTA(model)
    inputs = [p.clone().requires_grad_() for p in preds]
    loss, items = loss_fn(inputs, targets, imgs)
    loss.backward()
    lead = _match_dicts(loss_fn.build_targets(preds[:det.nl], targets, imgs))
    aux = _match_dicts(loss_fn.build_targets2(preds[:det.nl], targets, imgs))
    return dict(cfg=case["cfg"], seed=case["seed"], bs=case["bs"], imgsz=case["imgsz"], targets=targets,
                hyp=model.hyp, anchors=det.anchors.clone(), stride=det.stride.clone(), head=type(det).__name__,
                fingerprint=fingerprint(preds), loss=loss.detach().clone(), loss_items=items.clone(),
                matches=lead + aux, grad=grad_fingerprint(inputs))


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yolov7", type=Path, default=Path("/tmp/yolov7_b"), help="YOLOv7 working copy (made if absent)")
    ap.add_argument("--loss", choices=("ota", "aux"), default="ota", help="ComputeLossOTA or ComputeLossAuxOTA")
    ap.add_argument("--out", type=Path, help="default tests/data/yolov7_ota_reference.pt (aux: yolov7_aux_ota_...)")
    opt = ap.parse_args(argv)
    aux = opt.loss == "aux"
    opt.out = opt.out or ROOT / "tests" / "data" / ("yolov7_aux_ota_reference.pt" if aux else "yolov7_ota_reference.pt")
    Model, loss_cls, base_hyp = (load_yolov7(opt.yolov7, "ComputeLossAuxOTA", "hyp.scratch.p6.yaml") if aux
                                 else load_yolov7(opt.yolov7))
    commit = subprocess.run(["git", "-C", str(MIRROR), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    run = run_aux_case if aux else run_case
    cases = {name: run(Model, loss_cls, opt.yolov7, base_hyp, case) for name, case in (AUX_CASES if aux else CASES).items()}
    torch.save(dict(yolov7_commit=commit, torch=str(torch.__version__), cases=cases), opt.out)
    for name, c in cases.items():
        LOGGER.info(f"{name}: loss {c['loss'].tolist()} items {c['loss_items'].tolist()} "
                    f"matches per level {[len(m['b']) for m in c['matches']]}")
    LOGGER.info(f"wrote {opt.out} ({opt.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
