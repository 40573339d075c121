"""The YOLOv7 part of tools/make_foreign_checkpoints.py (its docstring describes the files, run it, not this).

Two training runs of YOLOv7's own code at width 1/64, each saved as its train.py/train_aux.py saves a checkpoint
and stripped by its ``strip_optimizer``, then converted to the deploy layout as tools/reparameterization.ipynb
does it:
  yolov7.yaml    (IDetect, train.py, ComputeLoss)            -> y7_train.pt, y7_deploy.pt, y7_deploy_fused.pt
  yolov7-w6.yaml (IAuxDetect, train_aux.py, ComputeLossAuxOTA) -> y7_w6_train.pt, y7_w6_deploy.pt
Runs inside YOLOv7's sources (their ``models``/``utils`` first on sys.path, cwd there).
"""
import copy
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

import make_foreign_checkpoints as mfc

LOGGER = logging.getLogger('make_foreign_checkpoints')
Y7_FILES = ('y7_train.pt', 'y7_deploy.pt', 'y7_deploy_fused.pt')
W6_FILES = ('y7_w6_train.pt', 'y7_w6_deploy.pt')
W6_LEAD, W6_AUX_HEAD = 118, 122  # Detect's index in cfg/deploy/yolov7-w6.yaml, IAuxDetect's in cfg/training


@torch.no_grad()
def notebook_deploy(ckpt_file: Path, deploy_cfg: dict, Model, is_parallel, lead: int, trained_head: int) -> dict:
    """What the notebook's "YOLOv7 reparameterization" (lead = trained_head = 105) and "YOLOv7-W6
    reparameterization" (lead 118, trained_head 122) cells do, on CPU, the deploy cfg given as a dict: the deploy
    Model takes every tensor of the training ``model`` with the same name and shape (Detect keeps its anchors from
    the cfg), its output convs at ``lead`` take the lead convs of the trained head at ``trained_head``
    (``m.0``...; IAuxDetect's auxiliary convs ``m2`` and the layers feeding them are left behind) with the
    implicit layers folded in: ``bias += sum_c(W[:, c] * ia[c])``, then weight rows and bias scaled by ``im`` (the
    fold uses the unscaled training W), in the notebook's order of operations. Returned as the notebook saves it."""
    ckpt = torch.load(ckpt_file, map_location=torch.device('cpu'))
    trained = ckpt['model'].float().state_dict()
    model = Model(deploy_cfg, ch=3, nc=80)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in trained.items() if k in own and v.shape == own[k].shape}, strict=False)
    model.names, model.nc = ckpt['model'].names, ckpt['model'].nc
    for j, conv in enumerate(model.model[lead].m):
        head = f'model.{trained_head}.'
        w, b = trained[f'{head}m.{j}.weight'], trained[f'{head}m.{j}.bias']
        ia, im = trained[f'{head}ia.{j}.implicit'], trained[f'{head}im.{j}.implicit']
        conv.weight.copy_(w * im.reshape(-1, 1, 1, 1))
        conv.bias.copy_((b + w.mul(ia).sum(1).squeeze()) * im.squeeze())
    return {'model': copy.deepcopy(model.module if is_parallel(model) else model).half(), 'optimizer': None,
            'training_results': None, 'epoch': -1}


def train_run(y7, cfg: str, hyp_file: str, seed: int, loss_class, with_imgs: bool) -> dict:
    """A tiny model of ``cfg`` through train.py's (or train_aux.py's: same pieces, its loss takes the images)
    optimizer groups, steps, EMA and checkpoint dict; returns that dict unstripped."""
    src = Path.cwd()
    hyp = yaml.safe_load((src / 'data' / hyp_file).read_text())
    names = yaml.safe_load((src / 'data' / 'coco.yaml').read_text())['names']
    model, xb = mfc.mfe.tiny_model(y7.Model, src / 'cfg' / 'training' / cfg, y7.letterbox, seed=seed,
                                   width_multiple=mfc.Y7_WIDTH, nc=80)
    batch_size, nbs = 16, 64
    accumulate = max(round(nbs / batch_size), 1)
    hyp['weight_decay'] *= batch_size * accumulate / nbs
    optimizer = mfc.sgd_groups(model, hyp)
    scheduler = mfc.lambda_lr(optimizer, hyp['lrf'], mfc.EPOCHS)
    ema = y7.ModelEMA(model, updates=mfc.EMA_UPDATES)
    nl = model.model[-1].nl
    hyp['box'] *= 3. / nl
    hyp['cls'] *= 80 / 80. * 3. / nl
    hyp['obj'] *= (mfc.SIZE / 640) ** 2 * 3. / nl
    hyp['label_smoothing'] = 0.0
    model.nc, model.hyp, model.gr, model.names = 80, hyp, 1.0, names
    labels = [np.array([b[1:] for b in mfc.BOXES if b[0] == i]) for i in range(2)]
    model.class_weights = y7.labels_to_class_weights(labels, 80) * 80
    mloss = mfc.train_steps(model, ema, optimizer, scheduler, loss_class(model), xb, with_imgs=with_imgs)
    ema.update_attr(model, include=['yaml', 'nc', 'hyp', 'gr', 'names', 'stride', 'class_weights'])
    results = (0.012, 0.034, 0.0051, 0.0012, *mloss)
    best_fitness = y7.fitness(np.array(results).reshape(1, -1))
    epochs = mfc.EPOCHS
    training_results = ''.join(  # results.txt: train.py's progress line + '%10.4g' * 7 % results, per epoch
        ('%10s' * 2 + '%10.4g' * 6) % (f'{e}/{epochs - 1}', '0G', *mloss, sum(mloss), len(mfc.BOXES), mfc.SIZE) +
        '%10.4g' * 7 % results + '\n' for e in range(epochs))
    return {'epoch': epochs - 1,
            'best_fitness': best_fitness,
            'training_results': training_results,
            'model': copy.deepcopy(model.module if y7.is_parallel(model) else model).half(),
            'ema': copy.deepcopy(ema.ema).half(),
            'updates': ema.updates,
            'optimizer': optimizer.state_dict(),
            'wandb_id': None}


def deploy_cfg(name: str) -> dict:
    cfg = yaml.safe_load((Path.cwd() / 'cfg' / 'deploy' / name).read_text())
    cfg.update(width_multiple=mfc.Y7_WIDTH, nc=80)
    return cfg


def stripped(ckpt: dict, strip_optimizer, out: Path) -> None:
    """What train.py/train_aux.py leave at the end of a run: last.pt through their strip_optimizer."""
    with tempfile.TemporaryDirectory() as tmp:
        last = Path(tmp) / 'last.pt'
        torch.save(ckpt, last)
        strip_optimizer(str(last), str(out))


def make_yolov7(src: Path, only=None) -> list:
    """The YOLOv7 files (``only``: the names to write, default all), written to mfc.OUT; returns their names."""
    mfc.mfe.shim_torch()
    sys.path.insert(0, str(src))  # YOLOv7's own `models`/`utils`
    os.chdir(src)
    import types
    from models.common import RepConv
    from models.yolo import Model
    from utils.datasets import letterbox
    from utils.general import labels_to_class_weights, strip_optimizer, fitness
    from utils.loss import ComputeLoss, ComputeLossAuxOTA
    from utils.torch_utils import ModelEMA, is_parallel
    y7 = types.SimpleNamespace(Model=Model, letterbox=letterbox, labels_to_class_weights=labels_to_class_weights,
                               fitness=fitness, ModelEMA=ModelEMA, is_parallel=is_parallel)
    out = mfc.OUT
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if only is None or set(only) & set(Y7_FILES):
        ckpt = train_run(y7, 'yolov7.yaml', 'hyp.scratch.p5.yaml', 1, ComputeLoss, with_imgs=False)
        stripped(ckpt, strip_optimizer, out / 'y7_train.pt')
        torch.manual_seed(0)
        deploy = notebook_deploy(out / 'y7_train.pt', deploy_cfg('yolov7.yaml'), Model, is_parallel, 105, 105)
        torch.save(deploy, out / 'y7_deploy.pt')
        fused = deploy['model'].float()
        for m in fused.modules():
            if isinstance(m, RepConv):
                m.fuse_repvgg_block()
        torch.save({'model': fused.half(), 'optimizer': None, 'training_results': None, 'epoch': -1},
                   out / 'y7_deploy_fused.pt')
        written += Y7_FILES
    if only is None or set(only) & set(W6_FILES):
        ckpt = train_run(y7, 'yolov7-w6.yaml', 'hyp.scratch.p6.yaml', 7, ComputeLossAuxOTA, with_imgs=True)
        stripped(ckpt, strip_optimizer, out / 'y7_w6_train.pt')  # train_aux.py's end of run, yolov7-w6_training.pt
        torch.manual_seed(0)
        deploy = notebook_deploy(out / 'y7_w6_train.pt', deploy_cfg('yolov7-w6.yaml'), Model, is_parallel,
                                 W6_LEAD, W6_AUX_HEAD)
        torch.save(deploy, out / 'y7_w6_deploy.pt')  # the notebook's cfg/deploy/yolov7-w6.pt
        written += W6_FILES
    LOGGER.info('YOLOv7: wrote %s', ', '.join(written))
    return written
