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
    config, hyp, data, ckpt = prepare(config)
    device = select_device(config.device, config.batch_size)
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
