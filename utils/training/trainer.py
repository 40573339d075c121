"""The training loop behind train.py: one object, one method per stage, driven by a ``TrainConfig``.

Single process or DDP (one process per device; ``torch.distributed.run`` sets RANK/WORLD_SIZE).
Only rank 0 logs, validates, plots and saves. Checkpoints keep the EMA weights (what val, detect
and export use) plus everything an exact resume needs: the raw model, optimizer, scaler, EMA
update count, epoch and best fitness.
"""
from __future__ import annotations

import math
import os
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.yolo import Model
from utils.callbacks import as_callbacks
from utils.atomic import sweep_stale
from utils.training.autoanchor import check_anchors
from utils.checkpoint import (checkpoint_yaml, load_model, load_pretrained, model_from_record, save_checkpoint,
                              strip_checkpoint)
from utils.datasets.dataloaders import create_dataloader
from utils.evaluation.evaluator import score, validate
from utils.general import LOGGER, TrainingDiverged, check_imgsz
from utils.hyperparameters import DEFAULTS
from utils.loggers import attach_loggers
from utils.training.loss import ComputeLoss
from utils.training.loss_ota import ComputeLossAuxOTA, ComputeLossOTA
from utils.evaluation.metrics import class_weights, fitness, image_weights
from utils.plots import plot_images, plot_labels, plot_results
from utils.signals import signal_name
from utils.training.train_config import TrainConfig, require_config
from utils.torch_utils import EarlyStopping, ModelEMA, de_parallel, init_seeds, smart_optimizer, to_channels_last

def check_amp(model: nn.Module, device: torch.device) -> bool:
    """Mixed precision only where it reproduces fp32 on this model and device (else fall back)."""
    if device.type != "cuda":
        return False
    probe = deepcopy(de_parallel(model)).eval().to(device)
    x = torch.rand(1, 3, 256, 256, device=device)
    with torch.no_grad():
        ref = probe(x)[0]
        with torch.autocast("cuda"):
            low = probe(x)[0].float()
    ok = bool(torch.isfinite(low).all()) and torch.allclose(ref[..., 4:], low[..., 4:], atol=0.05)
    if not ok:
        LOGGER.warning("AMP check failed: autocast disagrees with fp32 on this device, training in fp32")
    return ok


def select_train_loss(model: nn.Module, hyp: dict):
    """The training loss for ``model``'s head, given the scaled loss ``hyp``. A head with auxiliary maps
    (``heads == 2``, YOLOv7's IAuxDetect) trains with YOLOv7's ``ComputeLossAuxOTA``, as YOLOv7's train_aux.py
    does whatever the hyp says; otherwise ``loss_ota: 1`` selects YOLOv7's ``ComputeLossOTA`` and ``0`` (the
    default) YOLOv5's ``ComputeLoss``."""
    model = de_parallel(model)
    heads = getattr(model.model[-1], "heads", 1)
    ota = hyp.get("loss_ota")
    if heads == 2:
        if ota is not None and not ota:
            raise ValueError(f"hyp loss_ota: {ota} cannot be honoured: {type(model.model[-1]).__name__} has auxiliary "
                             "heads, which train only with YOLOv7's auxiliary-head OTA loss; set loss_ota: 1 (or "
                             "remove it) in the hyp file, e.g. data/hyps/hyp.scratch.p6.yaml")
        return ComputeLossAuxOTA(model, hyp)
    if heads != 1:
        raise ValueError(f"no training loss for a detection head with {heads} heads (1, or 2 with auxiliary maps)")
    return ComputeLossOTA(model, hyp) if (DEFAULTS["loss_ota"] if ota is None else ota) else ComputeLoss(model, hyp)


class Trainer:
    """One training run: a single process, or one DDP process per device.

    Stages: the constructor builds every part (model, optimizer and LR schedule, EMA, AMP, dataloaders,
    the DDP wrapper, the loss) and restores the checkpoint when resuming; ``train()`` runs the epochs
    (``train_epoch``, validation of the EMA, logging, checkpoints) and ends with ``finish()`` (strip the
    checkpoints, validate best.pt with plots, draw results.png). ``hyp`` stays as the user gave it, which
    is what checkpoints store; the loss gets a scaled copy (``loss_hyp``) and the optimizer a scaled
    weight decay. ``callbacks`` (a ``utils.callbacks.Callbacks`` or a dict of hook -> callable) fire at YOLOv5's
    hooks; results.csv, TensorBoard and the experiment trackers are callbacks too (``utils.loggers``), on rank 0.
    """

    def __init__(self, config: TrainConfig, hyp: dict, data: dict, device: torch.device, ckpt: dict | None = None,
                 callbacks=None):
        require_config(config, "Trainer")
        self.config, self.data, self.device, self.ckpt = config, data, device, ckpt
        self.hyp = dict(hyp)
        self.rank = int(os.environ.get("RANK", -1))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.main = self.rank in (-1, 0)
        self.save_dir = Path(config.save_dir)
        self.wdir = self.save_dir / "weights"
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        self.data_nc = int(data["nc"])  # label files are checked against this; --single-cls then maps all to 0
        self.nc = 1 if config.single_cls else self.data_nc
        self.names = ["item"] if config.single_cls and len(data["names"]) != 1 else list(data["names"])
        self.start_epoch, self.best_fitness, self.lr = 0, 0.0, []
        self.saved_epoch = None  # the epoch last.pt holds (for the message when training is interrupted)
        self.maps = np.zeros(self.nc)  # mAP50-95 per class of the last validation (--image-weights)
        self.final_validation = None  # the last epoch's validation, while best.pt holds the weights it validated
        self.callbacks = as_callbacks(callbacks)  # a copy: the loggers are not added to the caller's object
        self.callbacks.run("on_pretrain_routine_start")
        self.loggers = attach_loggers(self.callbacks, self.save_dir, {**config.to_dict(), **self.hyp}, ckpt,
                                      config.track) if self.main else None

        self.model = self._build_model()
        self.gs = max(int(self.model.stride.max()), 32)
        self.imgsz = check_imgsz(config.imgsz, self.gs)[0]  # square: rounded up to a multiple of the stride
        self.batch_size = config.batch_size // self.world_size
        self.loss_hyp = self._loss_hyp(de_parallel(self.model).model[-1].nl)
        # validation losses stay ComputeLoss's on the lead maps, whatever trains (as YOLOv7's test.py)
        self.compute_loss = ComputeLoss(de_parallel(self.model), self.loss_hyp)
        self.train_loss = select_train_loss(de_parallel(self.model), self.loss_hyp)
        self.nbs = int(self.hyp.get("nbs", DEFAULTS["nbs"]))  # gradients accumulate up to it
        self.accumulate = max(round(self.nbs / config.batch_size), 1)
        weight_decay = self.hyp["weight_decay"] * config.batch_size * self.accumulate / self.nbs
        self.optimizer = smart_optimizer(self.model, config.optimizer, self.hyp["lr0"], self.hyp["momentum"], weight_decay)
        self.lf = self._lr_lambda()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = ModelEMA(self.model) if self.main else None
        self.set_amp(self.agree(check_amp(self.model, self.device)))
        if ckpt is not None:
            self.restore(ckpt)
        self.train_loader, self.dataset, self.val_loader = self._build_data()
        self.model = self._wrap_distributed(self.model)
        self.stopper = EarlyStopping(patience=config.patience)
        self.stopper.best_fitness, self.stopper.best_epoch = self.best_fitness, max(self.start_epoch - 1, 0)

    # ---- setup ----------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        config = self.config
        if self.ckpt is not None:  # resume: the exact model, raw (non-EMA) weights
            model = model_from_record(self.ckpt)
            model.load_state_dict(self.ckpt["train_state_dict"])
        else:
            # without --cfg a checkpoint of ours fine-tunes in its own architecture, with its own anchors
            cfg = config.cfg or checkpoint_yaml(config.weights)  # ours, or YOLOv5's/YOLOv7's
            anchors = self.hyp.get("anchors", DEFAULTS["anchors"])
            model = Model(cfg, ch=3, nc=self.nc, anchors=anchors)
            if config.weights:
                exclude = ("anchors",) if config.cfg or anchors else ()
                load_pretrained(model, config.weights, exclude=exclude)
        model.names = self.names
        freeze = [f"model.{x}." for x in (config.freeze if len(config.freeze) > 1 else range(config.freeze[0]))]
        for k, p in model.named_parameters():
            p.requires_grad = not any(k.startswith(f) for f in freeze)
            if freeze and not p.requires_grad:
                LOGGER.debug(f"freezing {k}")
        # channels-last trains 1.2-1.5x faster on CPU (benchmarks/README.md); the EMA copy inherits it
        return to_channels_last(model.to(self.device))

    def _lr_lambda(self):
        epochs, lrf = self.config.epochs, self.hyp["lrf"]
        if self.config.cos_lr:
            return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
        return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf

    def _loss_hyp(self, nl: int) -> dict:
        """The loss gains scaled to this run's layers, classes and image size (YOLOv5's rules)."""
        hyp = dict(self.hyp)
        hyp["box"] *= 3 / nl
        hyp["cls"] *= self.nc / 80 * 3 / nl
        hyp["obj"] *= (self.imgsz / 640) ** 2 * 3 / nl
        hyp["label_smoothing"] = self.config.label_smoothing
        return hyp

    def agree(self, flag: bool) -> bool:
        """Under DDP, True only if every process says True: ranks that differ on AMP would average scaled and
        unscaled gradients."""
        if self.rank == -1 or not dist.is_initialized():
            return flag
        t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def set_amp(self, enabled: bool) -> None:
        """Mixed precision: fp16 with loss scaling on CUDA, bf16 without it elsewhere (same code path)."""
        self.amp = enabled
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=enabled and self.amp_dtype == torch.float16)

    def restore(self, ckpt: dict) -> None:
        """Continue exactly where a checkpoint left off."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["state_dict"])
            self.ema.updates = int(ckpt["ema_updates"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.saved_epoch = int(ckpt["epoch"])
        self.best_fitness = float(ckpt.get("best_fitness", 0.0))
        if ckpt.get("maps") is not None and len(ckpt["maps"]) == self.nc:
            self.maps = np.asarray(ckpt["maps"], dtype=np.float64)
        self.scheduler.last_epoch = self.start_epoch  # one scheduler step per finished epoch
        LOGGER.info(f"Resuming training from {self.config.resume} at epoch {self.start_epoch} of {self.config.epochs}")

    def _build_data(self) -> tuple:
        """(train loader, train dataset, val loader or None); plots labels and runs AutoAnchor on a new run."""
        config, data = self.config, self.data
        train_loader, dataset = create_dataloader(
            data["train"], self.imgsz, self.batch_size, self.gs, config.single_cls, hyp=self.hyp, augment=True,
            cache=config.cache or "auto", rect=config.rect, rank=self.rank, workers=config.workers, prefix="train: ",
            shuffle=True, seed=config.seed, nc=self.data_nc, image_weights=config.image_weights, quad=config.quad)
        labels = np.concatenate(dataset.labels, 0) if len(dataset.labels) else np.zeros((0, 5))
        if not len(labels):  # nothing to learn from: fail now, not after an epoch of zero box loss
            raise ValueError(f"no labels in {data['train']}: all {len(dataset)} images lack label files or boxes "
                             "(YOLO labels go in a labels/ folder beside images/, one .txt per image)")
        if len(labels) and labels[:, 0].max() >= self.nc:
            raise ValueError(f"label class {int(labels[:, 0].max())} exceeds nc={self.nc} in {config.data}")
        val_loader = None
        if self.main:
            val_loader = create_dataloader(
                data["val"], self.imgsz, self.batch_size * 2, self.gs, config.single_cls, hyp=self.hyp,
                cache=config.cache if config.cache in ("ram", "disk") else None,  # auto: the training images only
                rect=True, rank=-1, workers=config.workers, pad=0.5, prefix="val: ", seed=config.seed, nc=self.data_nc)[0]
            if self.ckpt is None:
                if not config.noplots:
                    plot_labels(labels, self.names, self.save_dir)
                if not config.noautoanchor:
                    check_anchors(dataset, de_parallel(self.model), thr=self.hyp["anchor_t"], imgsz=self.imgsz, seed=config.seed)
                    self.ema.ema.load_state_dict(de_parallel(self.model).state_dict())  # anchors may have changed
            self.callbacks.run("on_pretrain_routine_end", labels, self.names)
        return train_loader, dataset, val_loader

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if self.rank == -1:
            return model
        if self.config.sync_bn and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            LOGGER.info("Using SyncBatchNorm")
        elif self.config.sync_bn and self.main:  # SyncBatchNorm's kernels exist for CUDA only
            LOGGER.warning(f"WARNING --sync-bn needs CUDA DDP; training on {self.device.type} with plain BatchNorm")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    # ---- training -------------------------------------------------------------------------
    def warmup(self, ni: int, nw: int, epoch: int) -> None:
        """Ramp accumulation, learning rates and momentum over the first ``nw`` iterations."""
        xi = [0, nw]
        self.accumulate = max(1, int(np.interp(ni, xi, [1, self.nbs / self.config.batch_size]).round()))
        for j, group in enumerate(self.optimizer.param_groups):
            start = self.hyp["warmup_bias_lr"] if j == 2 else 0.0
            group["lr"] = np.interp(ni, xi, [start, group["initial_lr"] * self.lf(epoch)])
            if "momentum" in group:
                group["momentum"] = np.interp(ni, xi, [self.hyp["warmup_momentum"], self.hyp["momentum"]])

    def multi_scale(self, imgs: torch.Tensor, epoch: int, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.config.seed, epoch, i, 7])  # reproducible across resume
        sz = int(rng.integers(int(self.imgsz * 0.5), int(self.imgsz * 1.5) + self.gs)) // self.gs * self.gs
        sf = sz / max(imgs.shape[2:])
        if sf != 1:
            ns = [math.ceil(x * sf / self.gs) * self.gs for x in imgs.shape[2:]]
            imgs = F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)
        return imgs

    def set_image_weights(self) -> None:
        """YOLOv5's --image-weights: rare classes, and classes the last validation scored low, drawn more."""
        labels = [lb.copy() for lb in self.dataset.labels]
        if self.config.single_cls:
            for lb in labels:
                lb[:, 0] = 0
        cw = class_weights(labels, self.nc) * (1 - self.maps) ** 2
        self.train_loader.sampler.inner.set_weights(image_weights(labels, self.nc, cw))

    def train_epoch(self, epoch: int, nw: int) -> torch.Tensor:
        model, config = self.model, self.config
        model.train()
        if config.image_weights:
            self.set_image_weights()
        self.train_loader.set_epoch(epoch)
        nb = len(self.train_loader)
        mloss = torch.zeros(3, device=self.device)
        self.optimizer.zero_grad()
        last_step = epoch * nb - 1
        bar = tqdm(enumerate(self.train_loader), total=nb, disable=not self.main,
                   bar_format="{l_bar}{bar:10}{r_bar}")
        for i, (imgs, targets, paths, _) in bar:
            self.callbacks.run("on_train_batch_start")
            ni = i + nb * epoch
            imgs = imgs.to(self.device, non_blocking=True).float() / 255
            if ni <= nw:
                self.warmup(ni, nw, epoch)
            if config.multi_scale:
                imgs = self.multi_scale(imgs, epoch, i)
            loss, loss_items = self.forward_loss(imgs, targets)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {i} ({len(targets)} targets; "
                    f"box/obj/cls = {loss_items.tolist()}): check the learning rate, hyperparameters and labels. "
                    f"{self.last.name} and {self.best.name} keep the last good epoch.")
            self.backward(loss)
            # step when enough gradient accumulated, and always at the epoch's end so a resume starts clean
            if ni - last_step >= self.accumulate or i == nb - 1:
                self.optimizer_step()
                last_step = ni
            mloss = (mloss * i + loss_items) / (i + 1)
            if self.main:
                mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
                bar.set_description(("%11s" * 2 + "%11.4g" * 5) % (
                    f"{epoch}/{config.epochs - 1}", mem, *mloss.tolist(), targets.shape[0], imgs.shape[-1]))
                if ni < 3 and not config.noplots:
                    plot_images(imgs, targets, paths, self.save_dir / f"train_batch{ni}.jpg", self.names)
                self.callbacks.run("on_train_batch_end", model, ni, imgs, targets, paths, mloss.tolist())
        self.lr = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step()
        return mloss

    def forward_loss(self, imgs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and loss for one batch, under autocast when AMP is on: (loss, loss items)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return self.train_loss(self.model(imgs), targets.to(self.device), imgs)

    def backward(self, loss: torch.Tensor) -> None:
        if self.rank != -1:
            loss = loss * self.world_size  # DDP averages gradients across processes
        if self.config.quad:  # the loss scales with the batch, which --quad makes 4x smaller (YOLOv5's factor)
            loss = loss * 4
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)

    def train(self) -> tuple:
        config = self.config
        if self.main:
            LOGGER.info(f"Image sizes {self.imgsz} train, {self.imgsz} val\nLogging results to {self.save_dir}\n"
                        f"Starting training for {config.epochs} epochs...")
            LOGGER.info(("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size"))
        t0 = time.time()
        try:
            self.callbacks.run("on_train_start")
            epoch, results = self.fit()
            if self.main:
                LOGGER.info(f"\n{epoch - self.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
                try:
                    results = self.finish(epoch)
                except KeyboardInterrupt as e:
                    LOGGER.warning(f"\nStopped by {signal_name(e)} after the last epoch, while finishing: the weights "
                                   f"in {self.wdir} are complete (check them with python val.py --weights {self.best})")
                    raise
        finally:
            self.callbacks.run("teardown")  # loggers close their files and tracker runs, also after Ctrl-C
        return results

    def fit(self) -> tuple:
        """The epochs: train, validate the EMA, log, save, stop early. (last epoch run, its results)."""
        config = self.config
        nb = len(self.train_loader)
        nw = max(round(self.hyp["warmup_epochs"] * nb), 100) if self.hyp["warmup_epochs"] > 0 else -1
        results, epoch = (0, 0, 0, 0, 0, 0, 0), self.start_epoch
        try:
            for epoch in range(self.start_epoch, config.epochs):
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                self.callbacks.run("on_train_epoch_start")
                t_epoch = time.perf_counter()
                mloss = self.train_epoch(epoch, nw)
                self.log_speed(epoch, time.perf_counter() - t_epoch)
                self.callbacks.run("on_train_epoch_end", epoch=epoch)
                stop = False
                if self.main:
                    final = epoch + 1 == config.epochs
                    validation = None
                    if not config.noval or final:  # the last epoch draws the batches best.pt's check would
                        validation = self.validate(self.ema.ema, plots=False, batch_plots=final and not config.noplots)
                        results, self.maps = validation.metrics, validation.maps
                    fi = float(fitness(np.array(results).reshape(1, -1))[0])
                    stop = self.stopper(epoch, fi)
                    self.best_fitness = max(self.best_fitness, fi)
                    self.callbacks.run("on_fit_epoch_end", [*mloss.tolist(), *results, *self.lr], epoch,
                                       self.best_fitness, fi)
                    if not config.nosave or final:
                        self.save(epoch, fi, validation if final else None)
                if self.rank != -1:  # every rank must agree on stopping
                    flag = [stop]
                    dist.broadcast_object_list(flag, 0)
                    stop = flag[0]
                if stop:
                    LOGGER.info(f"Stopping early: no improvement for {config.patience} epochs "
                                f"(best epoch {self.stopper.best_epoch})")
                    break
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under train.py: say what is saved, then stop
            self.log_interrupted(e, epoch)
            raise
        return epoch, results

    def validate(self, model: nn.Module, plots: bool, verbose: bool = False, batch_plots: bool | None = None):
        """``model`` on the validation set (a ``utils.evaluation.evaluator.Validation``: YOLOv5's result tuple in
        ``metrics``): a folded copy (1.4-2x faster, same function), in fp16 when training used AMP on CUDA."""
        return validate(model, self.val_loader, names=self.names, single_cls=self.config.single_cls,
                        half=self.amp and self.device.type == "cuda", fuse=True, compute_loss=self.compute_loss,
                        plots=plots, save_dir=self.save_dir, verbose=verbose, callbacks=self.callbacks,
                        batch_plots=batch_plots)

    # ---- outputs --------------------------------------------------------------------------
    def log_speed(self, epoch: int, seconds: float) -> None:
        """Training throughput of the epoch (all processes) and this process's peak CUDA memory."""
        if not self.main:
            return
        images = len(self.dataset)  # every image once per epoch, across all processes
        mem = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else 0.0
        LOGGER.info(f"Epoch {epoch} speed: {images / seconds:.1f} img/s, peak CUDA memory {mem:.2f} GiB")

    def save(self, epoch: int, fi: float, validation=None) -> None:
        """last.pt, best.pt when ``fi`` is the best fitness so far, epoch<N>.pt every --save-period epochs.
        ``validation``: the final epoch's, kept while best.pt holds the weights it validated."""
        extra = dict(epoch=epoch, best_fitness=self.best_fitness, ema_updates=self.ema.updates,
                     train_state_dict={k: v.detach().cpu().clone() for k, v in de_parallel(self.model).state_dict().items()},
                     optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                     opt=self.config.to_dict(), hyp=self.hyp, maps=self.maps.tolist(), date=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     trackers=self.loggers.run_ids())  # a resumed run continues these tracker runs
        self.ema.ema.names = self.names
        save_checkpoint(self.last, self.ema.ema, **extra)
        self.saved_epoch = epoch
        if fi >= self.best_fitness:
            save_checkpoint(self.best, self.ema.ema, **extra)
            self.final_validation = validation
        if self.config.save_period > 0 and epoch % self.config.save_period == 0:
            save_checkpoint(self.wdir / f"epoch{epoch}.pt", self.ema.ema, **extra)
        self.callbacks.run("on_model_save", self.last, epoch, epoch + 1 == self.config.epochs, self.best_fitness, fi)

    def log_interrupted(self, e: KeyboardInterrupt, epoch: int) -> None:
        """One warning: where training stopped, what last.pt holds and how to continue."""
        if not self.main:
            return
        stopped = f"\nTraining stopped by {signal_name(e)} at epoch {epoch}"
        if self.config.evolve:
            LOGGER.warning(f"{stopped}: run the same --evolve command again to continue the evolution")
        elif self.saved_epoch is None:
            why = "--nosave saves only the final epoch" if self.config.nosave else "no epoch finished"
            LOGGER.warning(f"{stopped}; nothing saved ({why})")
        else:
            LOGGER.warning(f"{stopped}; {self.last.name} saved at epoch {self.saved_epoch}: resume with "
                           f"python train.py --resume {self.last}")

    def finish(self, epoch: int) -> tuple:
        """Strip optimizer state, validate best.pt with plots, draw results.png; then ``on_train_end``."""
        results = None
        for f in (self.last, self.best):
            if f.exists():
                strip_checkpoint(f)
        if self.best.exists() and self.final_validation is not None:
            results = self.rescore_final_validation()
        elif self.best.exists():  # an earlier epoch's weights (or a resumed run's): run them again
            LOGGER.info(f"\nValidating {self.best}...")
            results = self.validate(load_model(self.best, self.device), plots=not self.config.noplots,
                                    verbose=True).metrics
        if not self.config.noplots:
            plot_results(self.save_dir / "results.csv")
        self.callbacks.run("on_train_end", self.last, self.best, epoch, results)  # trackers upload plots, best.pt
        LOGGER.info(f"Results saved to {self.save_dir}")
        return results

    def rescore_final_validation(self) -> tuple:
        """best.pt's validation when it holds the weights the last epoch validated (fp32, as saved, folded the
        same way): that pass's detections scored again with per-class results and plots, instead of running
        the model over the validation set a second time (YOLOv5 does; the numbers are the same, see
        tests/test_train.py). The on_val_start and batch hooks fired in that pass; on_val_end fires again."""
        v = self.final_validation
        LOGGER.info(f"\nValidating {self.best}: the weights the last epoch validated, their detections scored again")
        results = score(v.collector, len(v.maps), self.names, verbose=True, plots=not self.config.noplots,
                        save_dir=self.save_dir)
        self.callbacks.run("on_val_end", results)
        return v.metrics


def write_run_files(config: TrainConfig, hyp: dict) -> None:
    """hyp.yaml and opt.yaml (plain data, as YOLOv5 writes them) in the run folder."""
    import yaml

    save_dir = Path(config.save_dir)
    (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    with open(save_dir / "hyp.yaml", "w") as f:
        yaml.safe_dump(hyp, f, sort_keys=False)
    with open(save_dir / "opt.yaml", "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)


def train_once(config: TrainConfig, hyp: dict, data: dict, device: torch.device, ckpt: dict | None = None,
               rank: int = -1, callbacks=None) -> tuple:
    """One training run in ``config.save_dir`` (prepared by ``utils.training.train_config.prepare``): YOLOv5's 7 results."""
    init_seeds(config.seed + 1 + max(rank, 0), deterministic=config.deterministic)
    if rank in (-1, 0):
        write_run_files(config, hyp)
        sweep_stale(Path(config.save_dir) / "weights")  # a resumed run's folder may hold a SIGKILLed save's temporary
    return Trainer(config, hyp, data, device, ckpt, callbacks).train()
