"""Training options as one frozen, validated object: ``TrainConfig``.

``make_config(**options)`` builds it from the command line (train.py passes the flags it parsed) and from
``train.run(**kwargs)`` alike, so both are checked by the same rules, with the flag named in the message.
``prepare(config)`` then resolves what depends on files: a run to ``--resume`` (its saved options), the data
YAML's recommendations (imgsz, epochs, optimizer, hyp), the hyperparameters and the run folder. Each step
returns a new config (``dataclasses.replace``); library code never rewrites one. ``to_dict()`` is the plain
data written to opt.yaml and stored in checkpoints (YOLOv5 users read opt.yaml; resume reads it back).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Union

from utils.general import ANY, LOGGER, OPTION_RULES, ROOT, Rule, check_against, increment_path, load_yaml
from utils.loggers import TRACKERS

DEFAULT_CFG = "yolov5s_RepVGG.yaml"
DEFAULT_DATA = str(ROOT / "data/shapes.yaml")
DEFAULT_HYP = ROOT / "data/hyps/hyp.scratch-low.yaml"
DEFAULT_PROJECT = str(ROOT / "runs/train")
OPTIMIZERS = ("SGD", "Adam", "AdamW")
CACHES = ("ram", "disk", "auto", "off")
RESOLVED = ("save_dir",)  # set by prepare(), not an option a user gives


@dataclass(frozen=True)
class TrainConfig:
    """Every option of train.py, typed; ``None`` means "decided by prepare()" (data YAML, then a default)."""
    weights: str = ""
    cfg: str = ""
    data: Union[str, dict] = DEFAULT_DATA
    hyp: Union[str, None] = None
    epochs: Union[int, None] = None
    batch_size: int = 16
    imgsz: Union[int, None] = None
    rect: bool = False
    resume: Union[bool, str] = False
    nosave: bool = False
    noval: bool = False
    noautoanchor: bool = False
    noplots: bool = False
    cache: Union[str, None] = None
    device: str = ""
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: Union[str, None] = None
    sync_bn: bool = False
    workers: int = 8
    project: str = DEFAULT_PROJECT
    name: str = "exp"
    exist_ok: bool = False
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    freeze: tuple = (0,)
    save_period: int = -1
    image_weights: bool = False
    quad: bool = False
    evolve: Union[int, None] = None
    seed: int = 0
    deterministic: bool = False
    track: tuple = ()  # experiment trackers to log to (utils.loggers.TRACKERS), beside those configured by env
    save_dir: str = ""  # the run folder, once prepare() claimed it

    def __post_init__(self):
        check_against(RULES, {f.name: getattr(self, f.name) for f in fields(self)})
        if self.evolve and self.resume:
            raise ValueError("--evolve and --resume cannot be combined: run the same --evolve command again (same "
                             "--project/--name) to continue an evolution")
        if self.quad and self.batch_size != -1 and self.batch_size % 4:
            raise ValueError(f"--quad merges groups of 4 images: --batch-size must be a multiple of 4, got "
                             f"batch_size={self.batch_size}")

    def to_dict(self) -> dict:
        """Plain data (lists, not tuples) for opt.yaml and checkpoints."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def require_config(config, user: str) -> TrainConfig:
    """``config`` if it is a ``TrainConfig``, else a TypeError for ``user`` (an argparse Namespace is the usual
    mistake: library code takes the checked, frozen config only)."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{user} takes a TrainConfig (utils.training.train_config.make_config), not {type(config).__name__}")
    return config


def _one_of(choices: tuple) -> Rule:
    return Rule(str, lambda v: v in choices, f"one of {', '.join(choices)}", optional=True)


_BOOL = Rule(bool, ANY, "True or False")
_STR = Rule(str, ANY, "a string")
RULES = {  # the flags val.py and detect.py share keep their rules from utils.general
    **{f.name: _BOOL for f in fields(TrainConfig) if f.type == "bool"},
    **{f.name: _STR for f in fields(TrainConfig) if f.type == "str"},
    "data": Rule(None, lambda v: isinstance(v, (str, dict)), "a dataset YAML path or dict"),
    "hyp": Rule(str, ANY, "a hyperparameter YAML path", optional=True),
    "epochs": Rule(int, lambda v: v >= 1, ">= 1", optional=True),
    "batch_size": Rule(int, lambda v: v >= 1 or v == -1, ">= 1, or -1 for AutoBatch (CUDA)"),
    "imgsz": Rule(int, lambda v: v >= 32, ">= 32", optional=True),
    "resume": Rule(None, lambda v: isinstance(v, (bool, str)), "True, False or a last.pt path"),
    "cache": _one_of(CACHES),
    "optimizer": _one_of(OPTIMIZERS),
    "workers": OPTION_RULES["workers"],
    "label_smoothing": Rule(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "patience": Rule(int, ANY, "an integer"),
    "freeze": Rule(tuple, lambda v: len(v) >= 1 and all(isinstance(i, int) and i >= 0 for i in v),
                   "layer indices >= 0 (one number: the first n layers)"),
    "save_period": Rule(int, ANY, "an integer"),
    "evolve": Rule(int, lambda v: v >= 1, ">= 1 generations", optional=True),
    "seed": Rule(int, ANY, "an integer"),
    "track": Rule(tuple, lambda v: all(t in TRACKERS for t in v), f"trackers among {', '.join(TRACKERS)}"),
}
FLAGS = tuple(f.name for f in fields(TrainConfig) if f.name not in RESOLVED)


def _normalized(options: dict) -> dict:
    """Paths as strings and sequences as tuples, so a config holds plain, comparable values."""
    out = {}
    for k, v in options.items():
        if isinstance(v, Path):
            v = str(v)
        elif k == "freeze" and isinstance(v, (list, int)):
            v = tuple(v) if isinstance(v, list) else (v,)
        elif k == "track" and isinstance(v, (list, str)):
            v = tuple(v) if isinstance(v, list) else (v,)
        elif k == "device" and isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # run(device=0), as YOLOv5 allows
        out[k] = v
    return out


def make_config(**options) -> TrainConfig:
    """The validated config of ``options`` (train.py's flags by their Python names; the rest default).

    The one way in for the command line and ``train.run(**kwargs)``: an unknown name is a TypeError, a bad
    value a ValueError naming its flag."""
    unknown = sorted(set(options) - set(FLAGS))
    if unknown:
        raise TypeError(f"unknown training option(s) {', '.join(map(repr, unknown))}; train.py takes "
                        f"{', '.join(FLAGS)}")
    return TrainConfig(**_normalized(options))


def config_from_saved(saved: dict, **changes) -> TrainConfig:
    """The config a run saved (opt.yaml, a checkpoint's ``opt``): options added since take their defaults,
    options since removed are dropped."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**_normalized({**{k: v for k, v in saved.items() if k in known}, **changes}))


def latest_run(search_dir: str | Path) -> Path:
    runs = sorted(Path(search_dir).rglob("last*.pt"), key=os.path.getmtime)
    if not runs:
        raise FileNotFoundError(f"--resume: no last.pt found under {search_dir}; pass the checkpoint path")
    return runs[-1]


def resume_config(config: TrainConfig) -> tuple[TrainConfig, dict]:
    """Config and checkpoint of the run to continue: its saved options, in the folder holding the file."""
    from utils.checkpoint import CheckpointError, PickledObjectsError, read_checkpoint

    last = Path(config.resume) if isinstance(config.resume, str) else latest_run(config.project)
    try:
        ckpt = read_checkpoint(last)
    except PickledObjectsError:
        raise CheckpointError(f"--resume {last}: a YOLOv5/YOLOv7 checkpoint cannot be resumed here (its optimizer and "
                              f"schedule are theirs); start a run from its weights: --weights {last}") from None
    if ckpt.get("final") or "optimizer" not in ckpt:
        raise CheckpointError(f"{last} is from a finished run (optimizer state stripped): nothing to resume")
    weights_dir = last.resolve().parent
    if weights_dir.name != "weights":
        raise CheckpointError(f"--resume {last}: expected a checkpoint in a run's weights/ folder (e.g. "
                              "runs/train/exp/weights/last.pt), where the resumed run keeps writing")
    defaults = TrainConfig()
    ignored = [k for k in FLAGS if k not in ("resume", "device") and getattr(config, k) != getattr(defaults, k)]
    if ignored:
        LOGGER.warning(f"WARNING --resume continues with the run's saved options; ignoring "
                       f"{', '.join('--' + k.replace('_', '-') for k in ignored)}")
    changes = dict(resume=str(last), weights=str(last), save_dir=str(weights_dir.parent))  # the copy's folder
    if config.device:  # the hardware may differ from the original run's
        changes["device"] = config.device
    return config_from_saved(ckpt["opt"], **changes), ckpt


def recommended(config: TrainConfig, data: dict) -> TrainConfig:
    """Options left unset take the data YAML's recommendation (imgsz, epochs, optimizer, hyp), else the
    defaults; a recommendation a flag would refuse is refused naming the YAML."""
    changes = {}
    for key, default in (("imgsz", 640), ("epochs", 100), ("optimizer", "SGD")):
        if getattr(config, key) is None:
            value = data.get(key, default)
            changes[key] = int(value) if key != "optimizer" and isinstance(value, float) and value.is_integer() else value
    if config.hyp is None:  # a data YAML's recommendation is relative to that YAML
        base = Path(data["yaml_file"]).parent if data.get("yaml_file") else Path.cwd()
        changes["hyp"] = str(base / data["hyp"]) if data.get("hyp") else str(DEFAULT_HYP)
    if not config.cfg and not config.weights:
        changes["cfg"] = DEFAULT_CFG
    try:
        return replace(config, **changes)
    except ValueError as e:
        where = data.get("yaml_file", "the dataset dict")
        raise ValueError(f"{where} recommends a value train.py refuses: {e}") from None


def prepare(config: TrainConfig) -> tuple[TrainConfig, dict, dict, dict | None]:
    """(config, hyperparameters, dataset, checkpoint or None): resume, recommendations, checks, run folder.

    A config or hyperparameter file that cannot train fails here, before the run folder exists."""
    from models.yolo import check_model_config
    from utils.datasets.dataset_config import check_dataset
    from utils.hyperparameters import check_hyp

    ckpt = None
    if config.resume:
        config, ckpt = resume_config(config)
    data = check_dataset(config.data)
    config = recommended(config, data)
    hyp = check_hyp(ckpt["hyp"] if ckpt is not None else load_yaml(config.hyp, "hyperparameter file"), config.hyp)
    if ckpt is None and config.cfg:
        check_model_config(config.cfg, nc=1 if config.single_cls else int(data["nc"]), anchors=hyp.get("anchors"))
    if ckpt is None:  # rank 0 claims the folder (mkdir); other DDP ranks never write to it
        main_rank = int(os.environ.get("RANK", -1)) in (-1, 0)
        exist_ok = config.exist_ok or bool(config.evolve)  # an evolution continues in its folder
        save_dir = increment_path(Path(config.project) / config.name, exist_ok=exist_ok, mkdir=main_rank)
        config = replace(config, save_dir=str(save_dir))
    return config, hyp, data, ckpt

