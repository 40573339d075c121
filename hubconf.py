"""PyTorch Hub entry points (YOLOv5's names and arguments).

    import torch
    model = torch.hub.load("path/to/this/repo", "custom", path="runs/train/exp/weights/best.pt", source="local")
    results = model(["data/images/bus.jpg", pil_image, rgb_array])   # paths, URLs, PIL, numpy (RGB), lists
    results.print(); results.save(); results.pandas().xyxy[0]

``custom(path)`` loads one of our checkpoints (folded or not), an official YOLOv5/YOLOv7 ``.pt`` (read as
data: ``utils.foreign_checkpoint``) or any exported format ``utils.deploy.backends`` reads (TorchScript,
ONNX, OpenVINO, TensorRT). The config constructors (``yolov5s()``, ..., ``yolov5s_RepVGG()``) build
untrained models; with ``pretrained=True`` they load ``<name>.pt`` from the working directory or this
repository's root (nothing is downloaded: a missing file says where the official one is published), and a
``classes`` other than the file's keeps every tensor whose shape still fits, as YOLOv5 does. With ``autoshape=True`` (the default) the model is
wrapped in ``AutoShape`` (thresholds as attributes: ``conf``, ``iou``, ``classes``, ``max_det``, ...).
"""
from __future__ import annotations

from pathlib import Path

import torch

dependencies = ["torch", "torchvision", "cv2", "numpy", "yaml", "PIL"]  # torch.hub checks these (pandas: only for .pandas())


def _device(device):
    from utils.torch_utils import select_device

    return select_device("" if device is None else str(device)) if not isinstance(device, torch.device) else device


def custom(path="path/to/model.pt", autoshape: bool = True, device=None, _verbose: bool = True):
    """A trained model from ``path``: a checkpoint of this project (.pt) or an exported model.

    A checkpoint loads as a ``models.yolo.Model``, folded for inference when ``autoshape`` (as YOLOv5
    fuses), unfolded as saved with ``autoshape=False`` (so it can be fine-tuned); other formats load
    through ``utils.deploy.backends.load_backend``. ``autoshape=False`` returns the model or backend unwrapped.
    """
    from utils.deploy.detections import AutoShape
    from utils.general import LOGGER, setup_logging

    if _verbose:
        setup_logging()
    from utils.deploy.backends import load_backend
    from utils.datasets.sources import is_url

    if is_url(str(path)):  # Path() would fold 'https://' into 'https:/' and report a missing file
        raise ValueError(f"custom(path={str(path)!r}): models are never downloaded; download the file yourself "
                         "and pass its local path")
    backend = load_backend(Path(path), _device(device), fuse=autoshape)  # folded for inference, as saved to train
    if _verbose:
        LOGGER.info(f"Loaded {path} ({type(backend).__name__}, {len(backend.names)} classes)")
    return AutoShape(backend) if autoshape else backend.native()


def _create(cfg: str, pretrained: bool = False, channels: int = 3, classes: int = 80, autoshape: bool = True,
            device=None):
    """An untrained model of config ``cfg`` (models/<cfg>.yaml)."""
    from models.yolo import Model
    from utils.deploy.detections import AutoShape

    if pretrained:
        return _pretrained(cfg, channels, classes, autoshape, device)
    try:
        model = Model(f"{cfg}.yaml", ch=channels, nc=classes)
    except ValueError as e:
        raise ValueError(f"{cfg}(classes={classes!r}): {e}") from None
    model = model.to(_device(device))
    if classes == 80:
        model.names = _coco_names() or model.names
    return AutoShape(model) if autoshape else model


def _pretrained(cfg: str, channels: int, classes: int, autoshape: bool, device):
    """``<cfg>.pt`` found locally (ours or the official file), with ``classes`` outputs."""
    from models.yolo import Model
    from utils.checkpoint import load_model, load_pretrained, missing_weights
    from utils.deploy.detections import AutoShape
    from utils.general import ROOT

    places = list(dict.fromkeys([Path.cwd() / f"{cfg}.pt", ROOT / f"{cfg}.pt"]))
    weights = next((p for p in places if p.is_file()), None)
    if weights is None:
        error = missing_weights(places[0], f"{cfg}(pretrained=True): weights (looked in "
                                f"{' and '.join(str(p.parent) for p in places)})")
        if "published" not in str(error):  # none is published for this config: one of your own runs
            error = type(error)(f"{error}; train one (python train.py --cfg {cfg}.yaml) and load it with "
                                "custom(path='runs/train/exp/weights/best.pt')")
        raise error
    model = load_model(weights)
    if channels != model.yaml["ch"] or classes != model.yaml["nc"]:  # YOLOv5's hub: transfer what still fits
        pretrained = model
        model = Model(pretrained.yaml, ch=channels, nc=classes)
        load_pretrained(model, weights, exclude=("anchors",))
        if classes == pretrained.yaml["nc"]:
            model.names = pretrained.names
    model = model.to(_device(device))
    return AutoShape(model.fuse()) if autoshape else model


def _coco_names() -> list[str] | None:
    """COCO's 80 class names from data/coco128.yaml, so untrained 80-class models print real names."""
    from utils.general import ROOT, load_yaml

    try:
        names = load_yaml(ROOT / "data" / "coco128.yaml").get("names")
    except (FileNotFoundError, ValueError):
        return None
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, list) and len(names) == 80 else None


def yolov5n(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-nano (YOLOv5 v7.0 architecture): models/yolov5n.yaml, untrained (``pretrained=True``: ``yolov5n.pt``)."""
    return _create("yolov5n", pretrained, channels, classes, autoshape, device)


def yolov5s(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-small: models/yolov5s.yaml, untrained (``pretrained=True``: ``yolov5s.pt``)."""
    return _create("yolov5s", pretrained, channels, classes, autoshape, device)


def yolov5m(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-medium: models/yolov5m.yaml, untrained (``pretrained=True``: ``yolov5m.pt``)."""
    return _create("yolov5m", pretrained, channels, classes, autoshape, device)


def yolov5l(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-large: models/yolov5l.yaml, untrained (``pretrained=True``: ``yolov5l.pt``)."""
    return _create("yolov5l", pretrained, channels, classes, autoshape, device)


def yolov5x(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-xlarge: models/yolov5x.yaml, untrained (``pretrained=True``: ``yolov5x.pt``)."""
    return _create("yolov5x", pretrained, channels, classes, autoshape, device)


def yolov5n6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-nano P6 (four levels, strides 8-64, for --imgsz 1280): models/yolov5n6.yaml, untrained (``pretrained=True``: ``yolov5n6.pt``)."""
    return _create("yolov5n6", pretrained, channels, classes, autoshape, device)


def yolov5s6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-small P6: models/yolov5s6.yaml, untrained (``pretrained=True``: ``yolov5s6.pt``)."""
    return _create("yolov5s6", pretrained, channels, classes, autoshape, device)


def yolov5m6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-medium P6: models/yolov5m6.yaml, untrained (``pretrained=True``: ``yolov5m6.pt``)."""
    return _create("yolov5m6", pretrained, channels, classes, autoshape, device)


def yolov5l6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-large P6: models/yolov5l6.yaml, untrained (``pretrained=True``: ``yolov5l6.pt``)."""
    return _create("yolov5l6", pretrained, channels, classes, autoshape, device)


def yolov5x6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv5-xlarge P6: models/yolov5x6.yaml, untrained (``pretrained=True``: ``yolov5x6.pt``)."""
    return _create("yolov5x6", pretrained, channels, classes, autoshape, device)


def yolov5s_RepVGG(pretrained=False, channels=3, classes=80, autoshape=True, device=None):  # noqa: N802
    """RepVGGBlock backbone with the YOLOv5s head (this project's seed config): models/yolov5s_RepVGG.yaml, untrained (``pretrained=True``: ``yolov5s_RepVGG.pt``)."""
    return _create("yolov5s_RepVGG", pretrained, channels, classes, autoshape, device)


def yolov5s6_RepVGG(pretrained=False, channels=3, classes=80, autoshape=True, device=None):  # noqa: N802
    """The seed RepVGG config with a P6 stage and a four-level head: models/yolov5s6_RepVGG.yaml, untrained (``pretrained=True``: ``yolov5s6_RepVGG.pt``)."""
    return _create("yolov5s6_RepVGG", pretrained, channels, classes, autoshape, device)


def yolov5s_QARepVGG(pretrained=False, channels=3, classes=80, autoshape=True, device=None):  # noqa: N802
    """QARepVGGBlock (quantization-aware RepVGG) backbone with the YOLOv5s head: models/yolov5s_QARepVGG.yaml, untrained (``pretrained=True``: ``yolov5s_QARepVGG.pt``)."""
    return _create("yolov5s_QARepVGG", pretrained, channels, classes, autoshape, device)


def yolov5s_OREPA(pretrained=False, channels=3, classes=80, autoshape=True, device=None):  # noqa: N802
    """OREPA backbone with the YOLOv5s head: models/yolov5s_OREPA.yaml, untrained (``pretrained=True``: ``yolov5s_OREPA.pt``)."""
    return _create("yolov5s_OREPA", pretrained, channels, classes, autoshape, device)


def yolov7_tiny(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv7-tiny: models/yolov7-tiny.yaml, untrained (``pretrained=True``: ``yolov7-tiny.pt``)."""
    return _create("yolov7-tiny", pretrained, channels, classes, autoshape, device)


def yolov7(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv7: models/yolov7.yaml, untrained (``pretrained=True``: ``yolov7.pt``)."""
    return _create("yolov7", pretrained, channels, classes, autoshape, device)


def yolov7x(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv7-X: models/yolov7x.yaml, untrained (``pretrained=True``: ``yolov7x.pt``)."""
    return _create("yolov7x", pretrained, channels, classes, autoshape, device)


def yolov7_w6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv7-W6 (P6, auxiliary heads while training; fuse() drops them): models/yolov7-w6.yaml, untrained (``pretrained=True``: ``yolov7-w6.pt``)."""
    return _create("yolov7-w6", pretrained, channels, classes, autoshape, device)


def yolov7_e6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv7-E6 (P6, auxiliary heads): models/yolov7-e6.yaml, untrained (``pretrained=True``: ``yolov7-e6.pt``)."""
    return _create("yolov7-e6", pretrained, channels, classes, autoshape, device)


def yolov7_d6(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv7-D6 (P6, auxiliary heads): models/yolov7-d6.yaml, untrained (``pretrained=True``: ``yolov7-d6.pt``)."""
    return _create("yolov7-d6", pretrained, channels, classes, autoshape, device)


def yolov7_e6e(pretrained=False, channels=3, classes=80, autoshape=True, device=None):
    """YOLOv7-E6E (P6, auxiliary heads): models/yolov7-e6e.yaml, untrained (``pretrained=True``: ``yolov7-e6e.pt``)."""
    return _create("yolov7-e6e", pretrained, channels, classes, autoshape, device)


if __name__ == "__main__":
    from utils.general import ROOT

    m = custom(ROOT / "runs/train/exp/weights/best.pt")
    m([str(ROOT / "data/images/zidane.jpg"), str(ROOT / "data/images/bus.jpg")]).print()
