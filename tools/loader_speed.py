"""Images/s the training dataloader delivers on its own (no model), with the training run's workers and sizes.

    python tools/loader_speed.py --data coco128 --imgsz 640 --batch-size 32 --workers 8 [--batches 30]

The training loader (``create_dataloader`` with augmentation, shuffling and the given --hyp, as train.py builds
it) is iterated for --warmup untimed and then --batches timed batches, over as many epochs as that takes;
one line says the figure. ``tools/gpu_check.py`` sets it beside each training run's img/s: a loader that
delivers barely more than training consumes is what bounds the epoch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LINE = "loader: {:.1f} img/s ({} images in {:.1f} s; {} workers, batch {}, imgsz {}, cache {})"


def measure(data: str, imgsz: int, batch_size: int, workers: int, hyp: str, batches: int, warmup: int,
            cache: str | None) -> float:
    """The loader's img/s over ``batches`` timed batches after ``warmup`` untimed ones."""
    from utils.datasets.dataloaders import create_dataloader
    from utils.datasets.dataset_config import check_dataset, resolve_data_yaml
    from utils.general import load_yaml
    from utils.hyperparameters import check_hyp

    train_path = check_dataset(resolve_data_yaml(data))["train"]
    loader, _ = create_dataloader(train_path, imgsz, batch_size, 32, hyp=check_hyp(load_yaml(hyp, "hyp file"), hyp),
                                  augment=True, cache=cache, workers=workers, prefix="", shuffle=True, seed=0)
    n, done, epoch, t0 = 0, 0, 0, None
    while done < warmup + batches:
        loader.set_epoch(epoch)
        for images, *_ in loader:
            done += 1
            if done == warmup:
                t0 = time.perf_counter()
            elif done > warmup:
                n += len(images)
            if done == warmup + batches:
                break
        epoch += 1
    seconds = time.perf_counter() - (t0 if t0 is not None else time.perf_counter())
    print(LINE.format(n / seconds, n, seconds, workers, batch_size, imgsz, cache or "none"), flush=True)
    return n / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / "data" / "shapes.yaml"))
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--hyp", default=str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    p.add_argument("--batches", type=int, default=30, help="timed batches")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (worker start, first decodes)")
    p.add_argument("--cache", default=None, choices=("ram", "disk"))
    opt = p.parse_args(argv)
    if opt.batches < 1 or opt.warmup < 1 or opt.workers < 0 or opt.batch_size < 1:
        p.error("--batches, --warmup and --batch-size must be >= 1, --workers >= 0")
    measure(opt.data, opt.imgsz, opt.batch_size, opt.workers, opt.hyp, opt.batches, opt.warmup, opt.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
