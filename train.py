"""Train a detector on a YOLO-format dataset.

    python train.py                                   # embedded default: yolov5s_RepVGG on generated shapes
    python train.py --cfg yolov5s_RepVGG.yaml --data their_data.yaml --epochs 100 --imgsz 640
    python -m torch.distributed.run --nproc_per_node 2 train.py --data their_data.yaml --device 0,1
    python train.py --resume                          # continue the most recent run
    python train.py --data their_data.yaml --epochs 10 --evolve 300   # hyperparameter evolution
    # two machines, one process per GPU (run on each, --node_rank 0 on the one at --master_addr):
    python -m torch.distributed.run --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr 10.0.0.1 \
        --master_port 29500 train.py --data their_data.yaml --device 0,1,2,3,4,5,6,7 --batch-size 128

``run(**kwargs)`` takes the same options as the command line and returns the final metrics.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from utils.atomic import sweep_stale
from utils.checkpoint import CheckpointError, read_checkpoint
from utils.dataset_config import check_dataset
from models.yolo import check_model_config
from utils.general import LOGGER, ROOT, TrainingDiverged, increment_path, load_yaml, setup_logging
from utils.hyperparameters import check_hyp
from utils.torch_utils import init_seeds, select_device

DEFAULT_CFG = "yolov5s_RepVGG.yaml"
DEFAULT_DATA = ROOT / "data/shapes.yaml"
DEFAULT_HYP = ROOT / "data/hyps/hyp.scratch-low.yaml"
OPTIMIZERS = ("SGD", "Adam", "AdamW")


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a YOLO detector (plain, RepVGG or OREPA configs).")
    p.add_argument("--weights", type=str, default="", help="initial weights: a checkpoint of ours or a YOLOv5 v7.0 state dict")
    p.add_argument("--cfg", type=str, default="", help=f"model YAML (path or bare name; default {DEFAULT_CFG})")
    p.add_argument("--data", type=str, default=str(DEFAULT_DATA), help="dataset YAML")
    p.add_argument("--hyp", type=str, default=None, help="hyperparameters YAML (default: data YAML's 'hyp', else scratch-low)")
    p.add_argument("--epochs", type=int, default=None, help="default: the data YAML's 'epochs', else 100")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all GPUs")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=None, help="train/val size (default: data YAML's 'imgsz', else 640)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume the most recent run, or the given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--cache", nargs="?", const="ram", default=None, choices=("ram", "disk"), help="cache images in ram (default) or disk")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=OPTIMIZERS, default=None, help="default: the data YAML's 'optimizer', else SGD")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm, DDP only")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per process in DDP)")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="early stopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save a checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--image-weights", action="store_true", help="sample images weighted by their classes' rarity and "
                   "past mAP (single process)")
    p.add_argument("--evolve", type=int, nargs="?", const=300, default=None,
                   help="evolve hyperparameters for this many generations (300 if no number); same --name continues")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exactly reproducible runs)")
    opt = p.parse_args(argv)
    check_options(p, opt)
    return opt


def check_options(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> None:
    """Reject values argparse accepts but training cannot use, with the flag's name."""
    if opt.epochs is not None and opt.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {opt.epochs}")
    if opt.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {opt.batch_size}")
    if opt.imgsz is not None and opt.imgsz < 32:
        parser.error(f"--imgsz must be >= 32, got {opt.imgsz}")
    if not 0.0 <= opt.label_smoothing < 1.0:
        parser.error(f"--label-smoothing must be in [0, 1), got {opt.label_smoothing}")
    if opt.workers < 0:
        parser.error(f"--workers must be >= 0, got {opt.workers}")
    if opt.evolve is not None and opt.evolve < 1:
        parser.error(f"--evolve must be >= 1 generations, got {opt.evolve}")
    if opt.evolve and opt.resume:
        parser.error("--evolve and --resume cannot be combined: run the same --evolve command again (same "
                     "--project/--name) to continue an evolution")


def latest_run(search_dir: str | Path) -> Path:
    runs = sorted(Path(search_dir).rglob("last*.pt"), key=os.path.getmtime)
    if not runs:
        raise FileNotFoundError(f"--resume: no last.pt found under {search_dir}; pass the checkpoint path")
    return runs[-1]


def resolve_resume(opt: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """Options and checkpoint of the run to continue: the saved options, same folder."""
    last = Path(opt.resume) if isinstance(opt.resume, str) else latest_run(opt.project)
    ckpt = read_checkpoint(last)
    if ckpt.get("final") or "optimizer" not in ckpt:
        raise CheckpointError(f"{last} is from a finished run (optimizer state stripped): nothing to resume")
    weights_dir = last.resolve().parent
    if weights_dir.name != "weights":
        raise CheckpointError(f"--resume {last}: expected a checkpoint in a run's weights/ folder (e.g. "
                              "runs/train/exp/weights/last.pt), where the resumed run keeps writing")
    defaults = vars(parse_opt([]))
    ignored = sorted(k for k, v in vars(opt).items() if k not in ("resume", "device") and v != defaults.get(k))
    if ignored:
        LOGGER.warning(f"WARNING --resume continues with the run's saved options; ignoring "
                       f"{', '.join('--' + k.replace('_', '-') for k in ignored)}")
    saved = argparse.Namespace(**{**defaults, **ckpt["opt"]})  # options added since the run started: defaults
    saved.resume, saved.weights = str(last), str(last)
    saved.save_dir = str(weights_dir.parent)  # the folder holding the file given, not the path saved in it
    if opt.device:  # the hardware may differ from the original run's
        saved.device = opt.device
    return saved, ckpt


def prepare(opt: argparse.Namespace) -> tuple[argparse.Namespace, dict, dict, dict | None]:
    """Resolve defaults, resume state, hyperparameters, dataset and the run folder."""
    ckpt = None
    if opt.resume:
        opt, ckpt = resolve_resume(opt)
    data = check_dataset(opt.data)
    if opt.imgsz is None:
        opt.imgsz = int(data.get("imgsz", 640))
    if opt.epochs is None:
        opt.epochs = int(data.get("epochs", 100))
    if opt.optimizer is None:
        opt.optimizer = data.get("optimizer", "SGD")
        if opt.optimizer not in OPTIMIZERS:
            raise ValueError(f"{opt.data}: optimizer must be one of {OPTIMIZERS}, got {opt.optimizer!r}")
    if opt.hyp is None:  # a data YAML's recommendation is relative to that YAML
        base = Path(opt.data).parent if isinstance(opt.data, (str, Path)) else Path.cwd()
        opt.hyp = str(base / data["hyp"]) if data.get("hyp") else str(DEFAULT_HYP)
    if not opt.cfg and not opt.weights:
        opt.cfg = DEFAULT_CFG
    hyp = check_hyp(ckpt["hyp"] if ckpt is not None else load_yaml(opt.hyp, "hyperparameter file"), opt.hyp)
    if ckpt is None and opt.cfg:  # a config that cannot train fails now, not after the run folder exists
        check_model_config(opt.cfg, nc=1 if opt.single_cls else int(data["nc"]), anchors=hyp.get("anchors"))
    if ckpt is None:  # rank 0 claims the folder (mkdir); other DDP ranks never write to it
        main_rank = int(os.environ.get("RANK", -1)) in (-1, 0)
        exist_ok = opt.exist_ok or bool(opt.evolve)  # an evolution continues in its folder
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=exist_ok, mkdir=main_rank))
    return opt, hyp, data, ckpt


def write_run_files(opt, hyp: dict) -> None:
    save_dir = Path(opt.save_dir)
    (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    with open(save_dir / "hyp.yaml", "w") as f:
        yaml.safe_dump(hyp, f, sort_keys=False)
    with open(save_dir / "opt.yaml", "w") as f:
        yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()}, f, sort_keys=False)


def main(opt: argparse.Namespace):
    # Under torch.distributed.run, RANK is the process's rank among all nodes (it decides who logs, saves
    # and validates: rank 0 only) and LOCAL_RANK its rank on this node (it picks this node's GPU).
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    rank = int(os.environ.get("RANK", -1))
    setup_logging(verbose=rank in (-1, 0))
    if local_rank != -1:
        for flag in ("evolve", "image_weights"):
            if getattr(opt, flag):
                raise ValueError(f"--{flag.replace('_', '-')} is not supported with DDP (torch.distributed.run): "
                                 "run it as a single process")
    opt, hyp, data, ckpt = prepare(opt)
    device = select_device(opt.device, opt.batch_size)
    if local_rank != -1:
        world = int(os.environ["WORLD_SIZE"])
        if opt.batch_size % world:
            raise ValueError(f"--batch-size {opt.batch_size} must be a multiple of the {world} DDP processes")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
        shared = [opt.save_dir]  # rank 0 claimed the folder; another node cannot see which name it got
        dist.broadcast_object_list(shared, src=0)
        opt.save_dir = shared[0]
    try:
        # Denormal floats appear in the first steps from scratch and slow CPU backward 20-30x; flushing
        # them to zero changes no result that matters (values below 1e-38).
        torch.set_flush_denormal(True)
        if opt.evolve:
            from utils.evolve import evolve

            return evolve(opt, hyp, lambda run_opt, child: train_once(run_opt, child, data, device, None, rank))
        return train_once(opt, hyp, data, device, ckpt, rank)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def train_once(opt: argparse.Namespace, hyp: dict, data: dict, device: torch.device, ckpt: dict | None, rank: int):
    """One training run in ``opt.save_dir``; an evolution generation validates only at the end, keeps
    only the final checkpoint and draws no plots."""
    from utils.trainer import Trainer  # heavy imports only when training

    if opt.evolve:
        opt = argparse.Namespace(**{**vars(opt), "noval": True, "nosave": True, "noplots": True})
    init_seeds(opt.seed + 1 + max(rank, 0), deterministic=opt.deterministic)
    if rank in (-1, 0):
        write_run_files(opt, hyp)
        sweep_stale(Path(opt.save_dir) / "weights")  # a resumed run's folder may hold a SIGKILLed save's temporary
    return Trainer(opt, hyp, data, device, ckpt).train()


def run(**kwargs):
    """Python entry point: ``train.run(data='coco128.yaml', imgsz=320, epochs=1)``."""
    opt = parse_opt([])
    for k, v in kwargs.items():
        if not hasattr(opt, k):
            raise TypeError(f"run() got an unknown option {k!r}")
        setattr(opt, k, v)
    return main(opt)


if __name__ == "__main__":
    from utils.signals import exit_code, handle_termination

    handle_termination()  # SIGTERM unwinds like Ctrl-C: checkpoints stay whole, temporaries are removed
    try:
        main(parse_opt())
    except KeyboardInterrupt as e:  # the trainer logged what was saved; 130 (Ctrl-C) or 143 (SIGTERM), no traceback
        sys.exit(exit_code(e))
    except (CheckpointError, FileNotFoundError, ValueError, TrainingDiverged) as e:  # the message, no traceback
        LOGGER.error(f"ERROR: {e}")
        sys.exit(1)
