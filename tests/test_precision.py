"""The reduced-precision branches a CUDA run takes (val --half, detect --half with and without --augment,
validation inside AMP training), run on the CPU with a model that really detects, compared with fp32.

The scripts refuse --half on a CPU (as YOLOv5 does); these tests call the functions behind them with the
precision set, which PyTorch runs on the CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detect
from utils.deploy.backends import load_backend
from utils.checkpoint import load_model
from utils.datasets.dataloaders import create_dataloader
from utils.datasets.dataset_config import check_dataset
from utils.evaluation.evaluator import validate
from utils.display import Viewer
from utils.ops import box_iou

MAP_TOL = 0.005  # mAP50-95, fp16 against fp32 (the GPU acceptance figure)


def _evaluate(model, loader, half: bool) -> dict:
    return validate(model, loader, names=["circle", "square", "triangle"], half=half).results


@pytest.mark.slow
def test_half_validation_matches_fp32_and_leaves_the_model_alone(shapes_trained):
    run_dir, _, data = shapes_trained
    data = check_dataset(str(data))
    model = load_model(run_dir / "weights" / "best.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = create_dataloader(data["val"], 160, 32, 32, pad=0.5, rect=True, workers=0, nc=3)[0]
    ref = _evaluate(model, loader, half=False)
    low = _evaluate(model, loader, half=True)
    print(f"\nval fp32 mAP50 {ref['map50']:.4f} mAP50-95 {ref['map']:.4f}; fp16 mAP50 {low['map50']:.4f} "
          f"mAP50-95 {low['map']:.4f}")  # the figures, with pytest -s
    assert ref["map50"] > 0.25  # a model that detects: the comparison means something
    assert abs(low["map"] - ref["map"]) < MAP_TOL and abs(low["map50"] - ref["map50"]) < MAP_TOL
    after = model.state_dict()  # the trainer validates its fp32 EMA this way: no rounding to fp16
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


# below detect's 0.25: how many boxes the 12-epoch fixture scores above 0.25 depends on the CPU it trained on
# (5 on 12 images with AVX2 kernels, ~30 with AVX-512); fp16 against fp32 is compared on the same boxes either way
CONF = 0.1


def _detections(weights: Path, source: Path, half: bool, augment: bool) -> list:
    backend = load_backend(weights, "cpu", fp16=half)
    dataset = detect.load_source(str(source), (160, 160), backend.stride, auto=True, vid_stride=1)
    outputs = detect.Outputs(Path("."), backend.names, False, False, False, False, 3, False, False)
    nms = dict(conf_thres=CONF, iou_thres=0.45, classes=None, agnostic=False, max_det=100, end2end=False)
    results, _ = detect._loop(dataset, backend, augment, nms, outputs, backend.names, Viewer(False))
    return results


def _assert_same_detections(ref: list, low: list) -> None:
    """Per image (n, 6) arrays: 90% of the fp32 boxes found in fp16 (same class, IoU > 0.9), counts within 10%.
    Measured: 25 of 26 and 31 of 32 (the miss is a box whose score crosses the 0.25 threshold)."""
    n_ref = sum(len(r) for r in ref)
    assert n_ref >= len(ref)  # a model that detects
    matched = 0
    for r, q in zip(ref, low):
        if len(r) and len(q):
            iou = box_iou(torch.as_tensor(r[:, :4]), torch.as_tensor(q[:, :4]))
            same_class = torch.as_tensor(r[:, 5:6]) == torch.as_tensor(q[:, 5]).view(1, -1)
            matched += int(((iou > 0.9) & same_class).any(1).sum())
    print(f"\n{matched} of {n_ref} fp32 detections found in fp16 (IoU > 0.9, same class)")  # with pytest -s
    assert matched >= 0.9 * n_ref, f"{matched} of {n_ref} fp32 detections found in fp16"
    assert abs(sum(len(q) for q in low) - n_ref) <= max(2, 0.1 * n_ref)


@pytest.fixture(scope="module")
def sample_images(shapes_trained, tmp_path_factory) -> Path:
    """12 validation images of the trained shapes model."""
    images = Path(check_dataset(str(shapes_trained[2]))["val"])
    source = tmp_path_factory.mktemp("images")
    for f in sorted(images.glob("*"))[:12]:
        (source / f.name).write_bytes(f.read_bytes())
    return source


@pytest.mark.slow
@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augment"])
def test_half_detect_matches_fp32(shapes_trained, sample_images, augment):
    """detect.py --half [--augment]: the half model's detections are the fp32 ones."""
    weights = shapes_trained[0] / "weights" / "best.pt"
    ref = _detections(weights, sample_images, half=False, augment=augment)
    low = _detections(weights, sample_images, half=True, augment=augment)
    assert [r.path for r in ref] == [r.path for r in low]
    _assert_same_detections([r.det for r in ref], [q.det for q in low])


@pytest.mark.slow
def test_hub_model_after_half_matches_fp32(shapes_trained, sample_images):
    import hubconf

    model = hubconf.custom(str(shapes_trained[0] / "weights" / "best.pt"), _verbose=False)
    model.conf = CONF
    files = [str(f) for f in sorted(sample_images.iterdir())]
    ref = model(files, size=160).xyxy
    low = model.half()(files, size=160).xyxy
    assert next(model.model.parameters()).dtype == torch.float16 and all(q.dtype == torch.float32 for q in low)
    _assert_same_detections([r.numpy() for r in ref], [q.numpy() for q in low])


# ------------------------------------------------------------------------------- on a CUDA device only
@pytest.mark.cuda
def test_cuda_nms_on_fp16_equals_fp32():
    """On CUDA, batched_nms offsets classes by class_id * (max_coord + 1): in fp16 that snaps boxes of high
    class ids to a 16-32 px grid. NMS must work in fp32 whatever it is given."""
    from utils.ops import non_max_suppression

    g = torch.Generator().manual_seed(0)
    n = 2000
    pred = torch.cat((torch.rand(1, n, 2, generator=g) * 1280, 20 + torch.rand(1, n, 2, generator=g) * 200,
                      torch.rand(1, n, 1, generator=g), torch.rand(1, n, 80, generator=g) ** 4), 2).cuda().half()
    got = non_max_suppression(pred, 0.05, 0.45, multi_label=True)[0]
    ref = non_max_suppression(pred.float(), 0.05, 0.45, multi_label=True)[0]
    assert got.dtype == torch.float32 and torch.equal(got, ref)


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", ["yolov5s_RepVGG.yaml", "yolov5s_OREPA.yaml"])
def test_cuda_amp_check_and_half_forward(cfg):
    from models.yolo import Model
    from utils.training.trainer import check_amp

    model = Model(cfg).cuda()
    assert check_amp(model, torch.device("cuda"))
    model.eval().fuse()
    x = torch.rand(2, 3, 320, 256, device="cuda")
    with torch.no_grad():
        ref = model(x)[0]
        low = model.half()(x.half())[0]
    assert low.dtype == torch.float16
    assert ((ref - low.float()).abs().max() / ref.abs().max()).item() < 1e-2


def test_ddp_processes_get_their_own_cuda_device():
    """Under DDP each local rank takes its own id from --device; too few ids is a clear error, not NCCL's
    'Duplicate GPU detected' from deep inside process-group setup."""
    from utils.torch_utils import ddp_device_index

    assert ddp_device_index([2, 3], -1) == 2  # single process: the first listed
    assert [ddp_device_index([2, 3], r) for r in (0, 1)] == [2, 3]
    with pytest.raises(ValueError, match="one device per process"):
        ddp_device_index([0], 1, "0")


@pytest.mark.cuda
def test_cuda_end2end_postprocess_with_class_filter():
    """Outputs of an export with NMS inside come back on the input's device; --classes must filter them there."""
    from utils.deploy.detections import postprocess

    dev = torch.device("cuda")
    num = torch.tensor([[2]], device=dev)
    boxes = torch.tensor([[[0, 0, 10, 10], [5, 5, 20, 20]]], device=dev, dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.8]], device=dev)
    classes = torch.tensor([[3, 7]], device=dev)
    (d,) = postprocess((num, boxes, scores, classes), 0.25, 0.45, classes=[7], end2end=True)
    assert d.device.type == "cuda" and d[:, 5].tolist() == [7.0]
