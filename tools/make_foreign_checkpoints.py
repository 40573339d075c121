"""Regenerate tests/data/foreign/checkpoints/: .pt checkpoints written by YOLOv5's and YOLOv7's own code.

Fixtures for the restricted loader of official checkpoints (issue 20). Every file is pickled by the other
project's own classes and its own save path (the checkpoint dict its train.py builds, its torch.save, its
``strip_optimizer``, YOLOv7's reparameterization notebook), from a tiny random model of its own code
(``make_foreign_exports.tiny_model``: random weights and BatchNorm statistics, head calibrated on bus.jpg so
the outputs are not trivial). ``references.pt`` (plain data: ``torch.load(..., weights_only=True)``) holds the
fixed input ``x`` (``torch.rand(1, 3, 128, 128)``, seed 0) and, per file, the output their own code gives (a
fresh process: ``torch.load``, ``ckpt['ema'] or ckpt['model']``, ``.float().eval()``, ``model(x)[0]``), with
names, stride, Detect's ``anchors`` buffer as stored (fp16, grid units), nc, epoch, which of model/ema gave
the output and the model's ``yaml`` dict; ``references.json`` summarises them with each file's layout
(top-level keys, pickled class of ``model`` and of Detect, weight dtype, size, sha256, the command).

Run from the repo root, one project per process (their top-level ``models``/``utils`` packages clash with
ours and with each other; this repo is kept off sys.path). Environments: the venvs of
tools/make_yolov5_reference.py (it has the pip package yolov5 7.0.14 and the YOLOv5 deps) and
tools/make_yolov7_reference.py:

    for v in 7.0 6.2 6.1; do mkdir -p /tmp/y5src$v; git -C /work/.mirror/ultralytics+yolov5/repo archive v$v \\
        | tar -x -C /tmp/y5src$v; done
    mkdir -p /tmp/yolov7
    git -C /work/.mirror/WongKinYiu+yolov7/repo archive HEAD -- models utils cfg data train.py train_aux.py \\
        tools/reparameterization.ipynb | tar -x -C /tmp/yolov7
    /tmp/y5venv/bin/python tools/make_foreign_checkpoints.py yolov5 --src /tmp/y5src7.0 --version v7.0
    /tmp/y5venv/bin/python tools/make_foreign_checkpoints.py yolov5 --src /tmp/y5src6.2 --version v6.2
    /tmp/y5venv/bin/python tools/make_foreign_checkpoints.py yolov5 --src /tmp/y5src6.1 --version v6.1
    /tmp/y5venv/bin/python tools/make_foreign_checkpoints.py yolov5 --version pip
    /tmp/y7venv/bin/python tools/make_foreign_checkpoints.py yolov7 --src /tmp/yolov7

Each run writes its files, then computes their references in a fresh process (``--reference``) and loads each
file back in another fresh process with their own code (``--check``), which must reproduce the stored output
exactly. Re-running reproduces the files byte for byte (seeded; ``date`` is the release commit's date).
``--only FILE...`` writes just the training runs those files come from (e.g. ``--only y7_w6_train.pt`` writes
both W6 files), should a torch version change the bytes of the others. The YOLOv7 part lives in
tools/make_foreign_checkpoints_y7.py.

Written (tests/data/foreign/checkpoints/). YOLOv5: yolov5s.yaml at depth 0.33, width 1/64 (every channel count
at make_divisible's floor of 8 but the last C3's 16), nc 80 with COCO names. YOLOv7: yolov7.yaml (every layer,
RepConv included) at width 1/64, nc 80 with COCO names; cfg/training/yolov7-w6.yaml the same way.
  y5_v70_last.pt     YOLOv5 v7.0 (GitHub, models.yolo.DetectionModel): train.py's checkpoint dict as saved
                     mid-run (epoch 1, best_fitness from its ``fitness()``: a numpy float64 array, model, ema,
                     updates, optimizer state_dict with momentum buffers, opt = vars(opt) from its parse_opt
                     and main(), git, date); model and ema fp16 with different weights (outputs differ by ~40).
                     534 KB: two pickled models plus the optimizer state do not fit in 400 KB at any width.
  y5_v70_release.pt  the same file through v7.0's ``utils.general.strip_optimizer`` (model = ema, fp16,
                     optimizer/best_fitness/ema/updates None, epoch -1).
  y5_v62_release.pt  YOLOv5 v6.2 (its class is already models.yolo.DetectionModel; ``Model`` is an alias):
                     its train.py dict (wandb_id, opt, date; no git) through its strip_optimizer.
  y5_v61_release.pt  YOLOv5 v6.1 (models.yolo.Model): its train.py dict (wandb_id, date; no opt) with its
                     inline SGD groups, through its strip_optimizer. No optimizer steps: v6.1's ComputeLoss
                     fails on torch >= 1.12 (fixed in v6.2); the stripped file keeps the EMA either way.
  y5_pip_release.pt  pip yolov5 7.0.14 (yolov5.models.yolo.DetectionModel): its train.py dict (opt, date,
                     yolov5pip_version; no git) through its strip_optimizer.
  y5_v70_p6_release.pt  v7.0's models/hub/yolov5n6.yaml (P3-P6, stride 64, four anchor sets) at width 1/64, its
                     own training run like y5_v70_release.pt's, through the same strip_optimizer: the layout of
                     the yolov5n6.pt ... yolov5x6.pt releases.
  y7_train.pt        YOLOv7 (commit a207844, models.yolo.Model, IDetect, RepConv unfused: rbr_dense, rbr_1x1
                     and, where this width makes c1 == c2, rbr_identity): its train.py dict (epoch,
                     best_fitness, training_results, model, ema, updates, optimizer, wandb_id) through its
                     strip_optimizer, as train.py leaves last.pt/best.pt (and as yolov7_training.pt is
                     published): the unstripped dict is 0.98 MB (two models of ~100 layers and the optimizer).
  y7_deploy.pt       tools/reparameterization.ipynb's yolov7 cell run on y7_train.pt: Model from
                     cfg/deploy/yolov7.yaml (same width), intersecting tensors copied, ImplicitA/ImplicitM folded
                     into Detect's convs, saved as {'model': model.half(), 'optimizer': None,
                     'training_results': None, 'epoch': -1}. As in the notebook, RepConv stays unfused
                     (rbr_dense/rbr_1x1): YOLOv7 makes rbr_reparam only in ``fuse()`` at load time.
  y7_deploy_fused.pt y7_deploy.pt's model after their ``RepConv.fuse_repvgg_block()`` on each RepConv
                     (rbr_reparam, the layout of RepConv(deploy=True)), saved the notebook's way: the "RepConv
                     already folded" layout. No YOLOv7 script writes it; a user who saves a fused model does.
  y7_w6_train.pt     yolov7-w6 (ReOrg stem, IAuxDetect at 122 on lead maps 114-117 and auxiliary maps 118-121)
                     trained the way train_aux.py trains (its ComputeLossAuxOTA, which takes the images, and
                     data/hyp.scratch.p6.yaml), its dict through strip_optimizer: yolov7-w6_training.pt's layout.
                     485 KB: 675 tensors at width 1/64 (channels at the floor of 8, nc 80) pickle to that size.
  y7_w6_deploy.pt    the notebook's "YOLOv7-W6 reparameterization" cell run on y7_w6_train.pt: Model from
                     cfg/deploy/yolov7-w6.yaml (Detect at 118, the auxiliary rows gone), same-named tensors
                     copied, IAuxDetect's lead convs (122, m.0-m.3) moved to 118 with ImplicitA/ImplicitM folded
                     in; saved as the notebook saves yolov7-w6.pt.

Training steps: before saving, train.py's own pieces run a few optimizer steps (EPOCHS x STEPS) on bus.jpg with
fixed boxes: its ComputeLoss, ``smart_optimizer`` (YOLOv5 >= v6.2) or the SGD groups train.py builds inline,
LambdaLR, gradient clipping, ModelEMA, ``ema.update_attr``, every group at lr 1e-3 as during warmup (lr0 makes
the tiny model diverge). BatchNorm stays in eval mode (frozen), so its random
statistics stay random (batch statistics of two images would also blow the calibrated head up); the EMA starts
with ``updates`` 1000 (as ``smart_resume`` restores it), so model and ema differ.

Shims, this process only: ``torch.load`` defaults to weights_only=False (their strip_optimizer and loaders
unpickle their own files; torch >= 2.6 refuses by default). YOLOv5 v7.0's train.py calls ``check_git_info()``
at import, which needs gitpython (absent; it would pip-install it): it returns what it returns in a clone of
the repository at v7.0 on master. yolov5 7.0.14's train.py imports roboflow (absent; only for
--roboflow_upload): inert stand-ins for its two names; its ``attempt_download`` asks the Hugging Face hub
first: made to return None (a local file). YOLOv5 v6.1: ``np.int`` (removed in numpy 1.24) is restored as
``int``, and a temporary YOLOV5_CONFIG_DIR holds matplotlib's DejaVuSans.ttf as Arial.ttf (its utils.plots
downloads the font at import otherwise). YOLOv7's ``attempt_download`` lowercases the path (and would download
that), so its ``attempt_load`` reads a lowercase-named copy. Nothing downloads (YOLO_OFFLINE=1).

Worth knowing for a loader: numpy 2 pickles ``best_fitness`` through ``numpy._core.multiarray`` where files
written under numpy 1 name ``numpy.core.multiarray``; YOLOv5's and YOLOv7's ``attempt_load`` fuse
Conv+BatchNorm, which moves outputs by up to ~1e-4 (relative for pixels, absolute for probabilities) from the
stored unfused output (``attempt_load_fused_max_rel_diff`` in references.json).
"""
import argparse
import copy
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.modules.setdefault('make_foreign_checkpoints', sys.modules[__name__])  # one module for the YOLOv7 part's import
LOGGER = logging.getLogger('make_foreign_checkpoints')
_spec = importlib.util.spec_from_file_location('make_foreign_exports', ROOT / 'tools' / 'make_foreign_exports.py')
mfe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mfe)  # keeps this repo off sys.path, sets YOLO_OFFLINE

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

OUT = ROOT / 'tests' / 'data' / 'foreign' / 'checkpoints'
SIZE = 128
Y5 = {  # version: (tag commit, its commit date)
    'v7.0': ('915bbf294bb74c859f0b41f1c23bc395014ea679', '2022-11-22T16:23:47.000000'),
    'v6.2': ('d3ea0df8b9f923685ce5f2555c303b8eddbf83fd', '2022-08-17T11:59:01.000000'),
    'v6.1': ('3752807c0b8af03d42de478fbcbf338ec4546a6c', '2022-02-22T12:35:24.000000'),
    'pip': (None, '2023-04-03T12:00:00.000000')}
Y5_WIDTH, Y7_WIDTH = 1 / 64, 1 / 64
EMA_UPDATES = 1000  # EMA decay 0.9999 * (1 - exp(-updates / 2000)) ~ 0.39: the EMA lags the model
STEPS = 3  # optimizer steps per epoch
LR_STEPS = 1e-3  # every group's lr in those steps (a warmup-sized lr)
EPOCHS = 2
# fixed boxes on the 128x128 bus.jpg square (image, class, x, y, w, h normalised): bus, people, a car
BOXES = [[0, 5, 0.50, 0.45, 0.90, 0.60], [0, 0, 0.18, 0.62, 0.12, 0.45], [0, 0, 0.82, 0.60, 0.14, 0.50],
         [0, 2, 0.95, 0.70, 0.10, 0.12], [1, 5, 0.50, 0.45, 0.90, 0.60], [1, 0, 0.82, 0.62, 0.12, 0.45]]


def fixed_input() -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def sha256(f: Path) -> str:
    return hashlib.sha256(f.read_bytes()).hexdigest()


def class_path(obj) -> str:
    return f'{type(obj).__module__}.{type(obj).__qualname__}'


def train_steps(model, ema, optimizer, scheduler, compute_loss, x: torch.Tensor, with_imgs: bool = False) -> list:
    """A few of train.py's optimizer steps (SGD, gradient clipping at 10, EMA update) on [x, flipped x], BatchNorm in
    eval mode; returns the mean losses. ``with_imgs``: the loss takes the images too (YOLOv7's OTA losses)."""
    imgs = torch.cat([x, x.flip(-1)])
    targets = torch.tensor(BOXES)
    targets[4:, 2] = 1 - targets[4:, 2]
    mloss = torch.zeros(3)
    for epoch in range(EPOCHS):
        model.train()
        for m in model.modules():  # BatchNorm frozen: its random statistics stay (batch statistics of two
            if isinstance(m, torch.nn.BatchNorm2d):  # images would blow the calibrated head up)
                m.eval()
        for i in range(STEPS):
            for g in optimizer.param_groups:  # train.py interpolates lr during warmup; frozen random BatchNorm makes
                g['lr'] = LR_STEPS  # the tiny model diverge at lr0
            pred = model(imgs)
            loss, loss_items = compute_loss(pred, targets, imgs) if with_imgs else compute_loss(pred, targets)
            assert torch.isfinite(loss_items).all(), f'loss {loss_items.tolist()} at epoch {epoch} step {i}'
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            optimizer.step()
            optimizer.zero_grad()
            ema.update(model)
            mloss = (mloss * i + loss_items[:3]) / (i + 1)
        scheduler.step()
    return mloss.tolist()


def lambda_lr(optimizer, lrf: float, epochs: int):
    lf = lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf  # noqa: E731  train.py's linear schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)


# ---------------------------------------------------------------------------------------------- YOLOv5
def y5_modules(version: str, src: Path):
    """YOLOv5's own modules: GitHub sources (src first on sys.path, cwd src) or the installed pip package."""
    if version == 'pip':
        import yolov5
        roboflow_stub()
        assert yolov5.__version__ == '7.0.14', yolov5.__version__
        prefix, src = 'yolov5.', Path(yolov5.__file__).parent
        from yolov5.utils import downloads
        downloads.attempt_download_from_hub = lambda *args, **kwargs: None  # a local file; never ask the hub
    else:
        prefix = ''
        sys.path.insert(0, str(src))
        font_dir()
        if not hasattr(np, 'int'):  # v6.1's labels_to_class_weights: astype(np.int), an alias numpy 1.24 removed
            np.int = int
    os.chdir(src)
    return prefix, src


def font_dir() -> None:
    """YOLOv5 <= v6.1 imports utils.plots, whose class body calls check_font(), which downloads Arial.ttf unless
    YOLOV5_CONFIG_DIR has one: a temporary config dir with matplotlib's DejaVuSans.ttf under that name."""
    import atexit
    import shutil
    import matplotlib
    d = tempfile.mkdtemp(prefix='yolov5_config_')
    atexit.register(shutil.rmtree, d, True)
    shutil.copy(Path(matplotlib.__file__).parent / 'mpl-data' / 'fonts' / 'ttf' / 'DejaVuSans.ttf', Path(d) / 'Arial.ttf')
    os.environ['YOLOV5_CONFIG_DIR'] = d


def roboflow_stub() -> None:
    """yolov5 7.0.14's train.py imports its Roboflow uploader, which imports the roboflow package (not installed;
    used only with --roboflow_upload): inert stand-ins for the two names it imports."""
    import types
    for name in ('roboflow', 'roboflow.core', 'roboflow.core.version'):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules['roboflow'].Roboflow = type('Roboflow', (), {})
    sys.modules['roboflow.core.version'].Version = type('Version', (), {})


def y5_import(prefix: str, name: str):
    return importlib.import_module(prefix + name)


def y5_setup(version: str, src: Path):
    """YOLOv5's own modules for ``version`` (shims applied), as a namespace."""
    import types
    mfe.shim_torch()
    prefix, src = y5_modules(version, src)
    general = y5_import(prefix, 'utils.general')
    commit = Y5[version][0]
    if hasattr(general, 'check_git_info'):  # v7.0: train.py calls it at import (gitpython; pip-installs it)
        general.check_git_info = lambda path='.': {'remote': 'https://github.com/ultralytics/yolov5',
                                                   'branch': 'master', 'commit': commit}
    names = ('models.yolo', 'utils.augmentations', 'utils.torch_utils', 'utils.loss', 'utils.metrics', 'train')
    yolo, augmentations, torch_utils, loss_mod, metrics, train = (y5_import(prefix, n) for n in names)
    return types.SimpleNamespace(version=version, src=src, general=general, yolo=yolo, torch_utils=torch_utils,
                                 letterbox=augmentations.letterbox, loss_mod=loss_mod, metrics=metrics, train=train)


def y5_opt(y5, cfg: str):
    """opt as train.py's parse_opt + main() make it (relative paths: run from the repository root)."""
    general = y5.general
    sys.argv = ['train.py', '--weights', '', '--cfg', cfg, '--data', 'data/coco128.yaml',
                '--hyp', 'data/hyps/hyp.scratch-low.yaml', '--imgsz', str(SIZE), '--epochs', str(EPOCHS),
                '--batch-size', '16', '--device', 'cpu', '--project', 'runs/train']
    opt = y5.train.parse_opt(known=True)
    opt.data, opt.cfg, opt.hyp, opt.weights, opt.project = (general.check_file(opt.data), general.check_yaml(opt.cfg),
                                                            general.check_yaml(opt.hyp), str(opt.weights),
                                                            str(opt.project))
    opt.save_dir = str(general.increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    return opt


def y5_train_run(y5, cfg: str, seed: int) -> dict:
    """A tiny model of ``cfg`` (a path under the sources) through train.py's optimizer, steps, EMA and checkpoint
    dict; returns that dict unstripped."""
    version, general, torch_utils = y5.version, y5.general, y5.torch_utils
    opt = y5_opt(y5, cfg)
    hyp = yaml.safe_load(Path(opt.hyp).read_text())
    opt.hyp = hyp.copy()  # train(): "for saving hyps to checkpoints"
    names = yaml.safe_load(Path(opt.data).read_text())['names']
    if version == 'v7.0' or version == 'pip':
        names = dict(enumerate(names)) if isinstance(names, list) else names  # check_dataset's dict
    assert len(names) == 80
    model, xb = mfe.tiny_model(y5.yolo.Model, y5.src / cfg, y5.letterbox, seed=seed,
                               depth_multiple=0.33, width_multiple=Y5_WIDTH, nc=80)
    nbs, batch_size = 64, opt.batch_size
    accumulate = max(round(nbs / batch_size), 1)
    hyp['weight_decay'] *= batch_size * accumulate / nbs
    if hasattr(torch_utils, 'smart_optimizer'):  # v6.2+
        optimizer = torch_utils.smart_optimizer(model, opt.optimizer, hyp['lr0'], hyp['momentum'], hyp['weight_decay'])
    else:
        optimizer = sgd_groups(model, hyp)
    scheduler = lambda_lr(optimizer, hyp['lrf'], opt.epochs)
    ema = torch_utils.ModelEMA(model, updates=EMA_UPDATES)
    nl = model.model[-1].nl
    hyp['box'] *= 3 / nl
    hyp['cls'] *= 80 / 80 * 3 / nl
    hyp['obj'] *= (SIZE / 640) ** 2 * 3 / nl
    hyp['label_smoothing'] = opt.label_smoothing
    model.nc, model.hyp, model.names = 80, hyp, names
    labels = [np.array([b[1:] for b in BOXES if b[0] == i]) for i in range(2)]
    model.class_weights = general.labels_to_class_weights(labels, 80) * 80
    if version == 'v6.1':  # its ComputeLoss fails on torch >= 1.12 (build_targets clamps long grid indices with a
        mloss = [0.0, 0.0, 0.0]  # float tensor; fixed in v6.2): no steps, the stripped file keeps the EMA anyway
    else:
        mloss = train_steps(model, ema, optimizer, scheduler, y5.loss_mod.ComputeLoss(model), xb)
    ema.update_attr(model, include=['yaml', 'nc', 'hyp', 'names', 'stride', 'class_weights'])
    results = (0.012, 0.034, 0.0051, 0.0012, *mloss)  # P, R, mAP@.5, mAP@.5-.95, val losses
    ckpt = {'epoch': EPOCHS - 1,
            'best_fitness': y5.metrics.fitness(np.array(results).reshape(1, -1)),
            'model': copy.deepcopy(torch_utils.de_parallel(model)).half(),
            'ema': copy.deepcopy(ema.ema).half(),
            'updates': ema.updates,
            'optimizer': optimizer.state_dict()}
    if version in ('v6.1', 'v6.2'):
        ckpt['wandb_id'] = None
    if version != 'v6.1':
        ckpt['opt'] = vars(opt)
    if version == 'v7.0':
        ckpt['git'] = y5.train.GIT_INFO
    ckpt['date'] = Y5[version][1]
    if version == 'pip':
        ckpt['yolov5pip_version'] = importlib.import_module('yolov5').__version__
    return ckpt


def y5_runs(version: str) -> list:
    """(config under the sources, BatchNorm seed, files written) per training run of ``version``."""
    tag = {'v7.0': 'v70', 'v6.2': 'v62', 'v6.1': 'v61', 'pip': 'pip'}[version]
    seed = {'v7.0': 0, 'v6.2': 2, 'v6.1': 3, 'pip': 5}[version]  # BatchNorm draws: each file its own outputs
    runs = [('models/yolov5s.yaml', seed, ([f'y5_{tag}_last.pt'] if version == 'v7.0' else []) +
             [f'y5_{tag}_release.pt'])]
    if version == 'v7.0':
        runs.append(('models/hub/yolov5n6.yaml', 6, ['y5_v70_p6_release.pt']))
    return runs


def make_yolov5(version: str, src: Path, only=None) -> list:
    """The YOLOv5 files of ``version`` (``only``: the names to write, default all); returns their names."""
    y5 = y5_setup(version, src)
    OUT.mkdir(parents=True, exist_ok=True)
    written = []
    for cfg, seed, files in y5_runs(version):
        if only is not None and not set(only) & set(files):
            continue
        ckpt = y5_train_run(y5, cfg, seed)
        with tempfile.TemporaryDirectory() as tmp:
            last = Path(tmp) / 'last.pt'
            torch.save(ckpt, last)
            for name in files:
                if name.endswith('_last.pt'):
                    torch.save(ckpt, OUT / name)
                else:
                    y5.general.strip_optimizer(str(last), str(OUT / name))
        written += files
    LOGGER.info('YOLOv5 %s: wrote %s', version, ', '.join(written))
    return written


# ---------------------------------------------------------------------------------------------- shared
def sgd_groups(model, hyp: dict):
    """The SGD parameter groups YOLOv7's and YOLOv5 <= v6.1's train.py build inline (their loop, for the modules
    yolov7.yaml/yolov5s.yaml have): BatchNorm weights and implicit layers without decay, weights with decay,
    biases."""
    import torch.nn as nn
    pg0, pg1, pg2 = [], [], []
    for k, v in model.named_modules():
        if hasattr(v, 'bias') and isinstance(v.bias, nn.Parameter):
            pg2.append(v.bias)
        if isinstance(v, nn.BatchNorm2d):
            pg0.append(v.weight)
        elif hasattr(v, 'weight') and isinstance(v.weight, nn.Parameter):
            pg1.append(v.weight)
        for name in ('im', 'imc', 'imb', 'imo', 'ia'):
            if hasattr(v, name):
                attr = getattr(v, name)
                pg0.extend([attr.implicit] if hasattr(attr, 'implicit') else [iv.implicit for iv in attr])
    optimizer = torch.optim.SGD(pg0, lr=hyp['lr0'], momentum=hyp['momentum'], nesterov=True)
    optimizer.add_param_group({'params': pg1, 'weight_decay': hyp['weight_decay']})
    optimizer.add_param_group({'params': pg2})
    return optimizer


# ------------------------------------------------------------------------------------- references, checks
def their_output(f: Path) -> tuple:
    """The file loaded the way their code loads it: torch.load, ema or model, .float().eval(), model(x)[0].
    Returns (ckpt, which, output, stored) where stored holds what .float() changes in place: the weights' dtypes
    and Detect's anchors buffer as stored."""
    ckpt = torch.load(f, map_location='cpu')
    which = 'ema' if ckpt.get('ema') else 'model'
    stored = {'dtype': {k: str(next(ckpt[k].parameters()).dtype) for k in ('model', 'ema') if ckpt.get(k)},
              'anchors': ckpt[which].model[-1].anchors.clone()}
    model = ckpt[which].float().eval()
    with torch.no_grad():
        return ckpt, which, model(fixed_input())[0], stored


def reference(files: list, project: str, prefix: str, command: str) -> None:
    """In a fresh process: their outputs and what the loader must recover; updates references.pt/.json."""
    experimental = importlib.import_module(prefix + 'models.experimental')
    path_pt, path_json = OUT / 'references.pt', OUT / 'references.json'
    refs = torch.load(path_pt, weights_only=True) if path_pt.is_file() else {'x': fixed_input(), 'files': {}}
    summary = json.loads(path_json.read_text()) if path_json.is_file() else {}
    assert torch.equal(refs['x'], fixed_input())
    for name in files:
        f = OUT / name
        ckpt, which, out, before = their_output(f)
        stored = ckpt[which]
        detect = stored.model[-1]
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            if project == 'yolov7':  # its attempt_download lowercases the path (and would download): a lowercase copy
                lower = Path(tmp) / name.lower()
                lower.write_bytes(f.read_bytes())
                fused = experimental.attempt_load(str(lower), map_location='cpu')
            else:  # YOLOv5 <= v6.1: map_location
                kw = 'device' if 'device' in inspect.signature(experimental.attempt_load).parameters else 'map_location'
                fused = experimental.attempt_load(str(f), **{kw: 'cpu'})
            fused_out = fused(fixed_input())[0]
        rel = float(((fused_out - out).abs() / out.abs().clamp_min(1.0)).max())  # pixels relative, probabilities absolute
        names = stored.names
        entry = {
            'output': out.clone(), 'which': which, 'epoch': int(ckpt['epoch']), 'nc': int(stored.nc),
            'names': {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else [str(n) for n in names],
            'stride': stored.stride.clone(), 'anchors': before['anchors'], 'yaml': plain(stored.yaml)}
        conf = out[..., 4:5] * out[..., 5:]
        info = {
            'command': command, 'class': class_path(ckpt['model']), 'project': project, 'keys': list(ckpt.keys()),
            'size_bytes': f.stat().st_size, 'sha256': sha256(f),
            'weights_dtype': before['dtype']['model'],
            'ema': None if ckpt.get('ema') is None else {
                'class': class_path(ckpt['ema']), 'weights_dtype': before['dtype']['ema']},
            'optimizer': None if ckpt.get('optimizer') is None else {
                'param_groups': len(ckpt['optimizer']['param_groups']), 'state': len(ckpt['optimizer']['state'])},
            'best_fitness': None if ckpt.get('best_fitness') is None else repr(ckpt['best_fitness']),
            'detect': class_path(detect), 'which': which, 'epoch': entry['epoch'], 'nc': entry['nc'],
            'names': f'{len(names)} ({type(names).__name__}), first {names[0]!r}',
            'stride': entry['stride'].tolist(), 'anchors': before['anchors'].float().tolist(),
            'anchors_dtype': str(before['anchors'].dtype), 'yaml': entry['yaml'],
            'output_shape': list(out.shape), 'boxes_conf_over_0.25': int((conf.amax(-1) > 0.25).sum()),
            'max_conf': round(float(conf.max()), 4),
            'attempt_load_fused_max_rel_diff': rel}
        for k in ('opt', 'git', 'date', 'updates', 'wandb_id', 'yolov5pip_version'):
            if k in ckpt:
                info[k] = ckpt[k] if k != 'opt' else f'dict of {len(ckpt[k])} keys (vars(opt))'
        repconv = [m for m in stored.modules() if type(m).__name__ == 'RepConv']
        if repconv:
            info['repconv'] = sorted({','.join(n for n, _ in m.named_children()) for m in repconv})
        if which == 'ema':  # the other one: a loader that took `model` would give this
            with torch.no_grad():
                other = ckpt['model'].float().eval()(fixed_input())[0]
            info['model_vs_ema_output_max_abs_diff'] = float((other - out).abs().max())
        assert rel < 1e-3, (name, rel)  # fusing reorders the fp32 rounding (recorded, not zero)
        refs['files'][name] = entry
        summary[name] = info
        LOGGER.info('%s: %s, keys %s, %s, %.1f KB, output from %s, %d boxes > 0.25', name, info['class'], info['keys'],
                    info['weights_dtype'], info['size_bytes'] / 1e3, which, info['boxes_conf_over_0.25'])
    torch.save(refs, path_pt)
    path_json.write_text(json.dumps(dict(sorted(summary.items())), indent=1) + '\n')
    sys.stdout.flush()


def plain(obj):
    """The yaml dict as plain data (lists for tuples)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    assert obj is None or isinstance(obj, (str, int, float, bool)), type(obj)
    return obj


def check(files: list) -> None:
    """In a fresh process: their loading of each file reproduces references.pt exactly."""
    refs = torch.load(OUT / 'references.pt', weights_only=True)
    assert torch.equal(refs['x'], fixed_input())
    for name in files:
        ckpt, which, out, before = their_output(OUT / name)
        ref = refs['files'][name]
        assert which == ref['which'], name
        assert torch.equal(out, ref['output']), (name, float((out - ref['output']).abs().max()))
        assert torch.equal(before['anchors'], ref['anchors']) and before['anchors'].dtype == ref['anchors'].dtype, name
        LOGGER.info('%s: their output reproduced exactly (%s)', name, which)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('which', choices=('yolov5', 'yolov7'))
    parser.add_argument('--src', type=Path, help='YOLOv5 GitHub sources (v7.0, v6.2) or YOLOv7 sources')
    parser.add_argument('--version', choices=tuple(Y5), default='v7.0', help='YOLOv5 version')
    parser.add_argument('--reference', nargs='+', help=argparse.SUPPRESS)  # internal: fresh-process steps
    parser.add_argument('--check', nargs='+', help=argparse.SUPPRESS)
    parser.add_argument('--only', nargs='+', metavar='FILE', help='write only these files (and the runs they need)')
    opt = parser.parse_args()
    handler = logging.StreamHandler(sys.stdout)  # its own: YOLOv5 <= v6.2 configures the root logger too
    handler.setFormatter(logging.Formatter('%(message)s'))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    src = opt.src.resolve() if opt.src else None
    if opt.reference or opt.check:
        mfe.shim_torch()
        if opt.which == 'yolov5':
            prefix, _ = y5_modules(opt.version, src)
        else:
            prefix = ''
            sys.path.insert(0, str(src))
            os.chdir(src)
        if opt.which == 'yolov7':
            command = 'python tools/make_foreign_checkpoints.py yolov7 --src /tmp/yolov7'
        else:
            command = (f'python tools/make_foreign_checkpoints.py yolov5 --version {opt.version}' +
                       ('' if opt.version == 'pip' else f' --src /tmp/y5src{opt.version[1:]}'))
        reference(opt.reference, opt.which, prefix, command) if opt.reference else check(opt.check)
        return
    spec = importlib.util.spec_from_file_location('make_foreign_checkpoints_y7', Path(__file__).with_name(
        'make_foreign_checkpoints_y7.py'))  # the YOLOv7 part
    y7 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(y7)
    known = y7.Y7_FILES + y7.W6_FILES if opt.which == 'yolov7' else [f for *_, fs in y5_runs(opt.version) for f in fs]
    if opt.only and set(opt.only) - set(known):
        parser.error(f'--only: {sorted(set(opt.only) - set(known))} are not written by this run (it writes {known})')
    written = make_yolov5(opt.version, src, opt.only) if opt.which == 'yolov5' else y7.make_yolov7(src, opt.only)
    args = [sys.executable, str(Path(__file__).resolve()), opt.which, '--version', opt.version]
    args += ['--src', str(src)] if src else []
    for step in ('--reference', '--check'):
        subprocess.run(args + [step, *written], check=True, cwd=ROOT)


if __name__ == '__main__':
    main()
