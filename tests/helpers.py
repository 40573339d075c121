"""Small helpers shared by the tests: error measures and test-only model set-up."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """The script tools/<name>.py as a module (tools/ is not a package), e.g. for the inputs a fixture was made from."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Max absolute difference relative to the largest magnitude of ``reference``."""
    return ((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12)).item()


def export_onnx_and_compare(model: nn.Module, folder: Path, name: str, imgsz=(128, 192)) -> torch.Tensor:
    """Save ``model`` (unfolded) as a checkpoint, export it with export.py (folded, then ONNX, verified by the
    exporter), and check the ONNX output against the unfolded model's within 1e-4. Returns the ONNX output."""
    import export
    from utils.checkpoint import save_checkpoint
    from utils.deploy.backends import load_backend
    from utils.deploy.verify import TOLERANCE, example_input

    (result,) = export.run(weights=save_checkpoint(folder / f"{name}.pt", model), include=["onnx"], imgsz=imgsz)
    assert result.ok, result.error
    assert result.error_ratio <= TOLERANCE["fp32"]
    x = example_input(imgsz, 1, "cpu")
    with torch.no_grad():
        unfolded = model(x)[0]  # the training layout: branches, BatchNorm, implicit layers, auxiliary heads
    exported = load_backend(result.file)(x)
    assert exported.shape == unfolded.shape and rel_error(unfolded, exported) < 1e-4
    return exported


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters, in place.

    Equivalence checks (folding, export) run with these: the default mean 0 / var 1 / weight 1 /
    bias 0 make a missing or misplaced BatchNorm term invisible.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features

            def rand(lo, hi):
                return (torch.rand(n, generator=g) * (hi - lo) + lo).to(m.running_mean)

            m.running_mean.copy_(rand(-0.5, 0.5))
            m.running_var.copy_(rand(0.5, 2.0))
            if m.affine:
                m.weight.copy_(rand(0.5, 1.5))
                m.bias.copy_(rand(-0.3, 0.3))
    return model


def assert_reference_outputs(model: nn.Module, state_dict: dict, x: torch.Tensor, ref_out: torch.Tensor,
                             ref_raw, tol: float = 1e-5) -> None:
    """Load ``state_dict`` strictly and check eval outputs (decoded and raw maps) against a recorded reference."""
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    with torch.no_grad():
        out, raw = model(x)
    assert out.shape == ref_out.shape
    assert rel_error(ref_out, out) < tol
    for ref, ours in zip(ref_raw, raw):
        assert rel_error(ref, ours) < tol


def shapes_data(folder, name: str, n_train: int, n_val: int, imgsz: int, seed: int):
    """A generated shapes set in ``folder/shapes`` and its data YAML ``folder/<name>.yaml`` (returned)."""
    import yaml

    from utils.datasets.synthetic import generate_shapes

    root = folder / "shapes"
    generate_shapes(root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    data = folder / f"{name}.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": ["circle", "square", "triangle"]}))
    return data


@torch.no_grad()
def detecting_checkpoint(path, seed: int, names=("circle", "square", "triangle"), cfg: str = "yolov5n.yaml",
                         calib=None):
    """Save a random ``cfg`` checkpoint whose detections vary with the image (head logits spread around a low
    prior on the ``calib`` images, (b, 3, h, w) in 0-1, random ones by default): untrained, yet every inference
    flag has boxes to act on. Returns ``path``. (Random BatchNorm
    statistics would make the features nearly independent of the image in so small a model.)"""
    from models.yolo import Model
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = Model(cfg, nc=len(names))
    model.names = list(names)
    model.eval()
    head = model.model[-1]
    _, maps = model(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(seed)) if calib is None else calib)
    spread = torch.tensor([0.3] * 4 + [1.5] * (head.no - 4))  # box logits near the anchor, scores spread out
    centre = torch.tensor([0.0] * 4 + [-3.0] + [-1.0] * (head.no - 5))
    for conv, level in zip(head.m, maps):  # logits per (anchor, output) rescaled to the target spread and centre
        flat = level.permute(1, 4, 0, 2, 3).reshape(head.na, head.no, -1)  # (anchors, outputs, positions)
        gain = spread / flat.std(-1).clamp_min(1e-6)
        conv.weight.view(head.na, head.no, -1).mul_(gain[..., None])
        conv.bias.view(head.na, head.no).sub_(flat.mean(-1)).mul_(gain).add_(centre)
    save_checkpoint(path, model.eval())
    return path


def export_trained_int8(shapes_trained, folder: Path, include: tuple[str, ...]):
    """The shapes_trained model (the default recipe, 12 epochs) copied to ``folder/best.pt`` and exported at its 160 px
    to ``include`` with INT8 calibrated on 64 training images: ({format: ExportResult}, weights, data YAML)."""
    import shutil

    import export

    run, _, data = shapes_trained
    weights = folder / "best.pt"
    shutil.copy(run / "weights" / "best.pt", weights)
    results = export.run(weights=str(weights), include=include, imgsz=(160, 160), int8=True, data=str(data),
                         calib_images=64)
    return {r.format: r for r in results}, weights, data
