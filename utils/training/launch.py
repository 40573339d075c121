"""The library's training entry point: ``train(config)`` for one run, one DDP process, or an evolution.

train.py parses flags into a ``TrainConfig`` and calls this; so does ``train.run(**kwargs)``. Under
``torch.distributed.run``, RANK is the process's rank among all nodes (it decides who logs, saves and
validates: rank 0 only) and LOCAL_RANK its rank on this node (it picks this node's GPU).
"""
from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.torch_utils import select_device
from utils.training.train_config import TrainConfig, prepare, require_config

SINGLE_PROCESS_ONLY = ("evolve", "image_weights")


def train(config: TrainConfig, callbacks=None):
    """Train as ``config`` says: YOLOv5's 7 final results, or with ``--evolve`` the best hyperparameters.
    ``callbacks``: a ``utils.callbacks.Callbacks`` or a dict of hook -> callable, fired by the trainer
    (not under ``--evolve``)."""
    from utils.callbacks import as_callbacks
    from utils.loggers import check_trackers

    require_config(config, "train")
    as_callbacks(callbacks)  # an unknown hook or a non-callable fails now, before any work
    check_trackers(config.track)
    if callbacks is not None and config.evolve:
        raise ValueError("callbacks are not supported with --evolve (each generation is its own training)")
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    rank = int(os.environ.get("RANK", -1))
    if local_rank != -1:
        for flag in SINGLE_PROCESS_ONLY:
            if getattr(config, flag):
                raise ValueError(f"--{flag.replace('_', '-')} is not supported with DDP (torch.distributed.run): "
                                 "run it as a single process")
    if config.batch_size == -1 and local_rank != -1:
        raise ValueError("--batch-size -1 (AutoBatch) is not supported with DDP (torch.distributed.run): "
                         "give the total batch size")
    config, hyp, data, ckpt = prepare(config)
    device = select_device(config.device, max(config.batch_size, 0))
    config = resolve_batch_size(config, hyp, data, device)
    if local_rank != -1:
        config = join_process_group(config, device)
    try:
        # Denormal floats appear in the first steps from scratch and slow CPU backward 20-30x; flushing
        # them to zero changes no result that matters (values below 1e-38).
        torch.set_flush_denormal(True)
        if config.evolve:
            from utils.training.evolve import evolve

            return evolve(config, hyp, data, device, rank)
        from utils.training.trainer import train_once  # heavy imports only when training

        return train_once(config, hyp, data, device, ckpt, rank, callbacks)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def resolve_batch_size(config: TrainConfig, hyp: dict, data: dict, device: torch.device) -> TrainConfig:
    """``config`` with ``--batch-size -1`` replaced by AutoBatch's choice for this model, image size and device."""
    if config.batch_size != -1:
        return config
    from models.yolo import Model
    from utils.checkpoint import checkpoint_yaml
    from utils.general import check_imgsz
    from utils.hyperparameters import DEFAULTS
    from utils.training.autobatch import autobatch

    model = None
    if device.type == "cuda":  # the CPU needs no model: autobatch says so and returns the default
        nc = 1 if config.single_cls else int(data["nc"])
        model = Model(config.cfg or checkpoint_yaml(config.weights), ch=3, nc=nc, anchors=hyp.get("anchors", DEFAULTS["anchors"]))
        imgsz = check_imgsz(config.imgsz, max(int(model.stride.max()), 32))[0]
    else:
        imgsz = config.imgsz
    batch_size = autobatch(model, imgsz, device)
    if config.quad:  # the quad collate merges groups of 4 images
        batch_size = max(4, batch_size // 4 * 4)
    return replace(config, batch_size=batch_size)


def join_process_group(config: TrainConfig, device: torch.device) -> TrainConfig:
    """Join the DDP group; every process gets rank 0's run folder (another node cannot see which name it got)."""
    world = int(os.environ["WORLD_SIZE"])
    if config.batch_size % world:
        raise ValueError(f"--batch-size {config.batch_size} must be a multiple of the {world} DDP processes")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    shared = [config.save_dir]
    dist.broadcast_object_list(shared, src=0)
    return replace(config, save_dir=shared[0])
