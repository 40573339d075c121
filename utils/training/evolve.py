"""Hyperparameter evolution (``train.py --evolve N``), YOLOv5's genetic search.

Each generation takes the best rows of ``evolve.csv`` (fitness = 0.1 mAP50 + 0.9 mAP50-95), picks a
parent, mutates its hyperparameters (each with probability 0.8, by a factor drawn around 1 and clipped
to [0.3, 3]), clamps them to YOLOv5's bounds and trains once, validating only the final epoch and
keeping no checkpoints but the final one. Its metrics and hyperparameters become a new row of
``evolve.csv``; ``hyp_evolve.yaml`` always holds the best row and ``evolve.png`` plots every
hyperparameter against fitness. The CSV is the whole state: running the same command again (same
``--project/--name``) counts its rows and trains only the generations still missing, so a killed
evolution continues where it stopped. Mutations are drawn from (``--seed``, generation), so a
continued evolution draws what an uninterrupted one would have.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from utils.general import LOGGER
from utils.evaluation.metrics import fitness
from utils.training.train_config import TrainConfig, require_config

# YOLOv5 v7.0's (mutation gain, lower limit, upper limit); a gain of 0 keeps the value fixed. Only keys the
# training reads: not iou_t (nothing reads it) nor copy_paste (only 0 is accepted); YOLOv7's mosaic9 and paste_in
MUTATION_BOUNDS = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98), "weight_decay": (1, 0.0, 0.001),
    "warmup_epochs": (1, 0.0, 5.0), "warmup_momentum": (1, 0.0, 0.95), "warmup_bias_lr": (1, 0.0, 0.2),
    "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0), "obj": (1, 0.2, 4.0),
    "obj_pw": (1, 0.5, 2.0), "anchor_t": (1, 2.0, 8.0), "anchors": (2, 2.0, 10.0),
    "fl_gamma": (0, 0.0, 2.0), "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9),
    "degrees": (1, 0.0, 45.0), "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9), "shear": (1, 0.0, 10.0),
    "perspective": (0, 0.0, 0.001), "flipud": (1, 0.0, 1.0), "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0),
    "mixup": (1, 0.0, 1.0), "mosaic9": (1, 0.0, 1.0), "paste_in": (1, 0.0, 1.0),
}
RESULT_COLUMNS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
                  "val/box_loss", "val/obj_loss", "val/cls_loss")
PARENTS = 5  # the best rows a parent is chosen from
MUTATION_PROBABILITY, MUTATION_SIGMA = 0.8, 0.2


def evolvable_keys(hyp: dict) -> list[str]:
    """The keys of ``hyp`` that evolution mutates (and ``evolve.csv`` has columns for), in ``hyp``'s order."""
    return [k for k in hyp if k in MUTATION_BOUNDS]


def read_evolve_csv(file: Path, keys: list[str]) -> np.ndarray:
    """Rows of ``evolve.csv`` as (n, 7 + len(keys)); its hyperparameter columns must be ``keys``."""
    if not file.exists():
        return np.zeros((0, len(RESULT_COLUMNS) + len(keys)))
    with file.open(newline="") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r]
    header, rows = rows[0], rows[1:]
    expected = [*RESULT_COLUMNS, *keys]
    if header != expected:
        raise ValueError(f"{file} was written for other hyperparameters ({', '.join(header[len(RESULT_COLUMNS):])}); "
                         f"this run evolves {', '.join(keys)}. Use another --name or the same --hyp.")
    try:
        return np.array([[float(c) for c in r] for r in rows], dtype=np.float64).reshape(-1, len(expected))
    except ValueError as e:
        raise ValueError(f"{file} has a malformed row ({e}); remove it to continue the evolution") from None


def mutate(rows: np.ndarray, keys: list[str], base: dict, rng: np.random.Generator) -> dict:
    """Hyperparameters of the next generation: ``base`` for the first, else a mutated parent from ``rows``."""
    hyp = dict(base)
    if len(rows):
        fit = fitness(rows)
        best = rows[np.argsort(-fit)][:PARENTS]
        w = fitness(best) - fitness(best).min() + 1e-6
        parent = best[rng.choice(len(best), p=w / w.sum())]  # YOLOv5's 'single' parent selection
        gains = np.array([MUTATION_BOUNDS[k][0] for k in keys], dtype=np.float64)
        v = np.ones(len(keys))
        while np.all(v == 1):  # mutate until something changes
            v = (gains * (rng.random(len(keys)) < MUTATION_PROBABILITY) * rng.standard_normal(len(keys))
                 * rng.random() * MUTATION_SIGMA + 1).clip(0.3, 3.0)
        for i, k in enumerate(keys):
            hyp[k] = float(parent[len(RESULT_COLUMNS) + i] * v[i])
    for k in keys:
        _, lo, hi = MUTATION_BOUNDS[k]
        hyp[k] = round(min(max(float(hyp[k]), lo), hi), 5)
    if "anchors" in hyp:  # anchors per level: a count
        hyp["anchors"] = int(round(hyp["anchors"]))
    return hyp


def append_row(file: Path, keys: list[str], results, hyp: dict) -> None:
    new = not file.exists()
    with file.open("a", newline="") as f:
        if new:
            f.write(",".join("%20s" % c for c in (*RESULT_COLUMNS, *keys)) + "\n")
        f.write(",".join("%20.5g" % float(v) for v in (*results, *(hyp[k] for k in keys))) + "\n")


def write_best_yaml(file: Path, rows: np.ndarray, keys: list[str], hyp: dict) -> dict:
    """``hyp_evolve.yaml``: the fittest row's hyperparameters (the others as trained), with a header."""
    fit = fitness(rows)
    i = int(np.argmax(fit))
    best = dict(hyp)
    best.update({k: round(float(rows[i, len(RESULT_COLUMNS) + j]), 5) for j, k in enumerate(keys)})
    header = (f"# Hyperparameter evolution: best of {len(rows)} generations (generation {i}), fitness {fit[i]:.5g}\n"
              + "".join(f"# {c.strip()}: {rows[i, j]:.5g}\n" for j, c in enumerate(RESULT_COLUMNS))
              + "# Train with it: python train.py --hyp hyp_evolve.yaml\n\n")
    file.write_text(header + yaml.safe_dump(best, sort_keys=False))
    return best


def plot_evolve(file: Path, keys: list[str]) -> Path | None:
    """``evolve.png``: every hyperparameter against fitness, coloured by fitness, the best marked."""
    from utils.plots import new_figure, save_figure

    rows = read_evolve_csv(file, keys)
    if not len(rows):
        return None
    fit = fitness(rows)
    best = int(np.argmax(fit))
    cols = 5
    nrows = int(np.ceil(len(keys) / cols))
    fig, ax = new_figure(nrows, cols, (3 * cols, 2.6 * nrows), dict(left=0.05, right=0.98, bottom=0.05, top=0.95,
                                                                        wspace=0.35, hspace=0.6))
    order = np.argsort(fit)
    for a, (j, k) in zip(ax, enumerate(keys)):
        v = rows[:, len(RESULT_COLUMNS) + j]
        a.scatter(v[order], fit[order], c=fit[order], cmap="viridis", s=12, alpha=0.8, edgecolors="none")
        a.plot(v[best], fit[best], "k+", markersize=14)
        a.set_title(f"{k} = {v[best]:.3g}", fontsize=9)
        a.tick_params(labelsize=7)
    for a in ax[len(keys):]:
        a.axis("off")
    out = save_figure(fig, file.with_suffix(".png"))
    LOGGER.info(f"Saved {out}")
    return out


def evolve(config: TrainConfig, hyp: dict, data: dict, device, rank: int = -1) -> dict:
    """Run the generations still missing from ``config.save_dir/evolve.csv`` (``config.evolve`` in all).

    Each generation is one ``utils.training.trainer.train_once`` in ``save_dir/generation`` that validates only at the
    end, keeps only the final checkpoint and draws no plots. Returns the best hyperparameters so far.
    """
    from utils.training.trainer import train_once  # heavy imports only when training

    require_config(config, "evolve")
    save_dir = Path(config.save_dir)
    keys = evolvable_keys(hyp)
    fixed = [k for k in hyp if k not in keys]
    if fixed:
        LOGGER.info(f"evolve: kept fixed (no mutation bounds): {', '.join(fixed)}")
    csv_file, yaml_file = save_dir / "evolve.csv", save_dir / "hyp_evolve.yaml"
    done = len(read_evolve_csv(csv_file, keys))
    if done:
        LOGGER.info(f"evolve: {csv_file} has {done} of {config.evolve} generations; continuing")
    generation_dir = save_dir / "generation"
    generation = replace(config, save_dir=str(generation_dir), noval=True, nosave=True, noplots=True)
    for g in range(done, config.evolve):
        rows = read_evolve_csv(csv_file, keys)
        child = mutate(rows, keys, hyp, np.random.default_rng([config.seed, g]))
        LOGGER.info(f"\nevolve: generation {g + 1}/{config.evolve}: "
                    + ", ".join(f"{k}={child[k]:g}" for k in keys))
        shutil.rmtree(generation_dir, ignore_errors=True)  # the previous generation's (or a killed one's) files
        results = train_once(generation, child, data, device, None, rank)
        append_row(csv_file, keys, results[:len(RESULT_COLUMNS)], child)
    rows = read_evolve_csv(csv_file, keys)
    best = write_best_yaml(yaml_file, rows, keys, hyp) if len(rows) else hyp
    plot_evolve(csv_file, keys)
    LOGGER.info(f"evolve: {len(rows)} generations in {csv_file}; best hyperparameters in {yaml_file}\n"
                f"Use them: python train.py --hyp {yaml_file}")
    return best
