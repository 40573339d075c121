"""Dataset YAML -> checked dict with absolute split paths, a ``names`` list and ``nc``.

YOLOv5 keys: ``path`` (dataset root; relative to the YAML's folder), ``train``, ``val``, optional
``test``, ``names`` (list or ``{id: name}``), ``nc``. A split is a folder, an image file, a ``.txt``
list of images, or a list of those. Nothing is ever downloaded: a missing split either comes from a
generator named in ``GENERATORS`` (``generate: <name>``, for synthetic data) or is a
``FileNotFoundError`` that says what to fetch by hand.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from utils.general import LOGGER, ROOT, excerpt, is_whole, load_yaml, yaml_file_names
from utils.datasets.synthetic import generate_shapes
from utils.textfiles import read_list

SPLITS = ("train", "val", "test")

# name -> fn(dataset_root) that writes the dataset. A plain lookup: the generators know nothing of this
# module (dependencies point one way); register_generator adds more at run time.
GENERATORS: dict[str, Callable[[Path], None]] = {"shapes": generate_shapes}


def register_generator(name: str, fn: Callable[[Path], None]) -> None:
    """Make ``generate: <name>`` in a dataset YAML build the dataset with ``fn(root)``."""
    if not callable(fn):
        raise TypeError(f"generator {name!r} must be callable, got {type(fn).__name__}")
    GENERATORS[name] = fn


def resolve_data_yaml(data: str | Path) -> Path:
    """A dataset YAML: an existing path, else a bare name (with or without .yaml) under this repo's data/,
    as YOLOv5's ``--data coco128.yaml`` finds its own files. Anything else is returned as given (the loader
    then says it is missing)."""
    file = Path(data)
    if file.is_file() or file.parent != Path("."):
        return file
    for name in yaml_file_names(file):
        if (ROOT / "data" / name).is_file():
            return ROOT / "data" / name
    return file


def _load(data: str | Path | dict) -> tuple[dict, Path]:
    """Return (a copy of the config, the folder relative paths start from)."""
    if isinstance(data, dict):
        return dict(data), Path.cwd()  # a dict has no file: relative paths follow the working directory
    file = resolve_data_yaml(data)
    cfg = load_yaml(file, "dataset YAML")
    cfg["yaml_file"] = str(file.resolve())
    return cfg, file.resolve().parent


def _names_and_nc(cfg: dict, where: str) -> tuple[list[str], int]:
    """(class names, nc) of a config dict: ``names`` as a list or ``{id: name}``, or ``nc`` alone
    (names ``class0``...). Raises ``ValueError`` naming ``where`` when they disagree or are malformed."""
    names, nc = cfg.get("names"), cfg.get("nc")
    if nc is not None and not is_whole(nc):
        raise ValueError(f"{where}: 'nc' must be a positive whole number, got {excerpt(nc, 60)}")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: 'names' dict keys must be integer class ids") from e
        if ids != list(range(len(ids))):
            raise ValueError(f"{where}: 'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [str(names[k] if k in names else names[str(k)]) for k in ids]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    elif names is None:
        if nc is None:
            raise ValueError(f"{where}: needs 'names' (list or {{id: name}}) or at least 'nc'")
        names = [f"class{i}" for i in range(int(nc))]
    else:
        raise ValueError(f"{where}: 'names' must be a list or a dict, got {type(names).__name__}")
    if nc is not None and int(nc) != len(names):
        raise ValueError(f"{where}: nc={nc} but {len(names)} names are listed")
    return names, len(names)


def load_names(data: str | Path | dict) -> list[str]:
    """Class names of a dataset YAML (path) or dict, parsed as ``check_dataset`` does; splits unchecked."""
    cfg, _ = _load(data)
    return _names_and_nc(cfg, "dataset dict" if isinstance(data, dict) else str(data))[0]


def _read_list(txt: Path, root: Path) -> list[str]:
    """Image paths from a ``.txt`` split; relative entries are relative to the dataset root."""
    return [str(p if p.is_absolute() else (root / p).resolve()) for p in map(Path, read_list(txt))]


def _all_missing(entries: dict[str, list[Path]]) -> list[Path]:
    """Missing split paths, each once (train and val are often the same folder)."""
    return list(dict.fromkeys(p for ps in entries.values() for p in ps if not p.exists()))


def _generate(cfg: dict, root: Path, where: str) -> bool:
    """Run the YAML's ``generate:`` generator if one is named; False when there is none."""
    name = cfg.get("generate")
    if not name:
        return False
    fn = GENERATORS.get(str(name))
    if fn is None:
        raise ValueError(f"{where}: unknown generator {name!r}; registered: {sorted(GENERATORS) or 'none'}")
    LOGGER.info(f"{where}: generating dataset {name!r} under {root}")
    fn(root)
    return True


def _missing_message(missing: list[Path], cfg: dict, where: str) -> str:
    shown = ", ".join(str(p) for p in missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
    msg = f"{where}: dataset split not found: {shown}"
    download = cfg.get("download")
    if isinstance(download, str) and download.strip():
        # never fetched or run here (offline machines; YOLOv5 YAMLs may hold a Python script): say what to do
        urls = re.findall(r"https?://[^\s'\"]+", download)
        if urls:
            more = f" (the YAML's 'download:' lists {len(urls) - 1} more URLs)" if len(urls) > 1 else ""
            msg += f". To get it, download {urls[0]} and unzip it so that {missing[0]} exists{more}"
        else:
            msg += f". The YAML's 'download:' entry says how to get it (not run automatically): {download.strip()[:200]}"
    return msg


def check_dataset(data: str | Path | dict, required: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """Validate a dataset YAML (path or dict) and resolve its splits to absolute paths.

    Returns the config with ``path`` (str), ``train``/``val``/``test`` (absolute str, or list of str
    for lists and ``.txt`` files), ``names`` (list) and ``nc`` (int). Raises ``ValueError`` for an
    inconsistent config or a missing ``required`` split key and ``FileNotFoundError`` for a missing
    split that no generator can make.
    """
    cfg, base = _load(data)
    where = cfg.get("yaml_file", "dataset dict")
    names, nc = _names_and_nc(cfg, where)
    for key in required:
        if not cfg.get(key):
            raise ValueError(f"{where}: missing required key {key!r}")
    root = Path(cfg.get("path") or "")
    root = (root if root.is_absolute() else base / root).resolve()

    entries = {k: [root / p for p in _as_list(cfg[k])] for k in SPLITS if cfg.get(k)}
    missing = _all_missing(entries)
    if missing and _generate(cfg, root, where):
        missing = _all_missing(entries)
    if missing:
        raise FileNotFoundError(_missing_message(missing, cfg, where))

    out = {**cfg, "path": str(root), "names": names, "nc": nc}
    for k in SPLITS:
        if k not in entries:
            out.pop(k, None)
            continue
        resolved: list[str] = []
        for p in entries[k]:
            p = p.resolve()
            resolved += _read_list(p, root) if p.suffix == ".txt" else [str(p)]
        single = not isinstance(cfg[k], (list, tuple)) and entries[k][0].suffix != ".txt"  # keep the YAML's shape
        out[k] = resolved[0] if single else resolved
    return out


def _as_list(x) -> list[str]:
    return [str(v) for v in x] if isinstance(x, (list, tuple)) else [str(x)]
