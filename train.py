"""Train a detector on a YOLO-format dataset.

    python train.py                                   # embedded default: yolov5s_RepVGG on generated shapes
    python train.py --cfg yolov5s_RepVGG.yaml --data their_data.yaml --epochs 100 --imgsz 640
    python -m torch.distributed.run --nproc_per_node 2 train.py --data their_data.yaml --device 0,1
    python train.py --resume                          # continue the most recent run
    python train.py --data their_data.yaml --epochs 10 --evolve 300   # hyperparameter evolution
    # two machines, one process per GPU (run on each, --node_rank 0 on the one at --master_addr):
    python -m torch.distributed.run --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr 10.0.0.1 \
        --master_port 29500 train.py --data their_data.yaml --device 0,1,2,3,4,5,6,7 --batch-size 128

``run(**kwargs)`` takes the same options as the command line (checked by the same rules: both build a
``utils.training.train_config.TrainConfig`` with ``make_config``) and returns the final metrics; the training itself is
``utils.training.launch.train(config)``.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.checkpoint import CheckpointError
from utils.general import LOGGER, TrainingDiverged, freeze_long_lived_objects, setup_logging
from utils.loggers import TRACKERS
from utils.training.train_config import CACHES, DEFAULT_CFG, OPTIMIZERS, TrainConfig, make_config
from utils.training.launch import train


def parse_opt(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description="Train a YOLO detector (plain, RepVGG or OREPA configs).",
                                argument_default=argparse.SUPPRESS)  # defaults: TrainConfig's, one place
    p.add_argument("--weights", type=str, help="initial weights: a checkpoint of ours or a YOLOv5 v7.0 state dict")
    p.add_argument("--cfg", type=str, help=f"model YAML (path or bare name; default {DEFAULT_CFG})")
    p.add_argument("--data", type=str, help="dataset YAML")
    p.add_argument("--hyp", type=str, help="hyperparameters YAML (default: data YAML's 'hyp', else scratch-low)")
    p.add_argument("--epochs", type=int, help="default: the data YAML's 'epochs', else 100")
    p.add_argument("--batch-size", type=int, help="total batch size for all GPUs; -1: AutoBatch (fills 0.8 of the "
                   "free CUDA memory; the default 16 on a CPU)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, help="train/val size (default: data YAML's 'imgsz', else 640)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--resume", nargs="?", const=True, help="resume the most recent run, or the given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--cache", nargs="?", const="ram", choices=CACHES, help="decoded training images: ram (a bare "
                   "--cache), disk (.npy beside them), off, or auto, the default: RAM when they take at most a quarter "
                   "of the free memory")
    p.add_argument("--device", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=OPTIMIZERS, help="default: the data YAML's 'optimizer', else SGD")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm, DDP only")
    p.add_argument("--workers", type=int, help="max dataloader workers (per process in DDP)")
    p.add_argument("--project", help="save to project/name")
    p.add_argument("--name", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, help="early stopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, help="save a checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--image-weights", action="store_true", help="sample images weighted by their classes' rarity and "
                   "past mAP (single process)")
    p.add_argument("--quad", action="store_true", help="quad dataloader: each 4 images merged into one of twice the "
                   "size (batch size a multiple of 4)")
    p.add_argument("--evolve", type=int, nargs="?", const=300,
                   help="evolve hyperparameters for this many generations (300 if no number); same --name continues")
    p.add_argument("--seed", type=int, help="global training seed")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exactly reproducible runs)")
    p.add_argument("--track", nargs="+", choices=TRACKERS, help="log to these experiment trackers (also on when "
                   "installed and configured: README 'Tracking experiments')")
    try:
        return make_config(**vars(p.parse_args(argv)))
    except ValueError as e:  # the message run(**kwargs) raises, as a usage error (exit code 2)
        p.error(str(e))


def main(config: TrainConfig, callbacks=None):
    setup_logging(verbose=int(os.environ.get("RANK", -1)) in (-1, 0))  # DDP: rank 0 alone logs
    return train(config, callbacks)


def run(callbacks=None, **kwargs):
    """Python entry point: ``train.run(data='coco128.yaml', imgsz=320, epochs=1)``. ``callbacks``: a
    ``utils.callbacks.Callbacks`` or a dict of hook -> callable (see utils/callbacks.py for the hooks)."""
    return main(make_config(**kwargs), callbacks)


if __name__ == "__main__":
    from utils.signals import exit_code, handle_termination

    handle_termination()  # SIGTERM unwinds like Ctrl-C: checkpoints stay whole, temporaries are removed
    try:
        config = parse_opt()
        import utils.training.trainer  # noqa: F401  (the heavy imports, before their objects are frozen)

        freeze_long_lived_objects()
        main(config)
    except KeyboardInterrupt as e:  # the trainer logged what was saved; 130 (Ctrl-C) or 143 (SIGTERM), no traceback
        sys.exit(exit_code(e))
    except (CheckpointError, FileNotFoundError, ValueError, TrainingDiverged) as e:  # the message, no traceback
        LOGGER.error(f"ERROR: {e}")
        sys.exit(1)
