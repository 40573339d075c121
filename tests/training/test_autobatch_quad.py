"""train.py --batch-size -1 (AutoBatch) and --quad: the fit on recorded memory figures, the CPU fallback, the
quad collate's merged images and labels, and a real 1-epoch run with each."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import train
from utils.datasets.dataloaders import LoadImagesAndLabels, QuadCollate, create_dataloader
from utils.training.autobatch import DEFAULT_BATCH, autobatch, fit_batch_size
from utils.training.train_config import make_config

# a yolov5s at 640 with AMP measured on a 24 GiB card: 0.45 GiB of weights and workspace, 0.36 GiB per image
SIZES = [1, 2, 4, 8, 16]
MEASURED = [0.81, 1.17, 1.89, 3.33, 6.21]


def test_fit_aims_at_the_fraction_of_free_memory():
    fit = fit_batch_size(SIZES, MEASURED, free_gib=8.0)
    assert fit.slope_gib == pytest.approx(0.36, abs=1e-6) and fit.intercept_gib == pytest.approx(0.45, abs=1e-6)
    assert fit.batch_size == int((8.0 * 0.8 - 0.45) / 0.36) == 16  # 6.4 GiB of 8: 16.5 images, rounded down
    assert fit.predicted_gib <= 0.8 * 8.0 < fit.predicted_gib + fit.slope_gib
    assert fit_batch_size(SIZES, MEASURED, free_gib=20.0).batch_size == 43
    assert fit_batch_size(SIZES, MEASURED, free_gib=20.0, fraction=0.6).batch_size == 32


def test_fit_stays_below_a_size_that_ran_out_of_memory_and_refuses_noise():
    # 8 GiB free but batch 16 failed (fragmentation): the fit says 16, the largest size that ran is taken
    fit = fit_batch_size(SIZES[:4], MEASURED[:4], free_gib=8.0, failed_at=16)
    assert fit.batch_size == 8 and "out of memory" in fit.reason
    flat = fit_batch_size(SIZES, [2.0, 1.9, 2.0, 1.9, 2.0], free_gib=8.0)  # no growth: noise, not a fit
    assert flat.batch_size == DEFAULT_BATCH and "out of range" in flat.reason
    with pytest.raises(ValueError, match="fraction"):
        fit_batch_size(SIZES, MEASURED, free_gib=8.0, fraction=1.5)
    with pytest.raises(ValueError, match="5 batch sizes but 4"):
        fit_batch_size(SIZES, MEASURED[:4], free_gib=8.0)


def test_autobatch_on_cpu_says_so_and_uses_the_default(yolo_logs):
    assert autobatch(None, 640, torch.device("cpu")) == DEFAULT_BATCH
    assert "needs a CUDA device" in yolo_logs.text


def test_batch_size_and_quad_options_are_checked():
    assert make_config(batch_size=-1).batch_size == -1
    with pytest.raises(ValueError, match="--batch-size must be >= 1, or -1 for AutoBatch"):
        make_config(batch_size=-2)
    with pytest.raises(ValueError, match="--quad .* multiple of 4, got batch_size=6"):
        make_config(quad=True, batch_size=6)
    assert train.parse_opt(["--quad", "--batch-size", "8"]).quad


def test_quad_collate_tiles_four_images_and_their_labels():
    ims = [torch.full((3, 8, 12), v, dtype=torch.uint8) for v in (10, 20, 30, 40)]
    labels = [torch.tensor([[0, k, 0.5, 0.5, 0.2, 0.4]]) for k in range(4)]
    batch = [(im, lb, f"im{k}.jpg", None) for k, (im, lb) in enumerate(zip(ims, labels))]
    tiled = upsampled = 0
    for seed in range(12):  # the draw is even odds: both forms appear
        im, lb, paths, _ = QuadCollate(seed)([(i, b.clone(), p, s) for i, b, p, s in batch])
        assert im.shape == (1, 3, 16, 24) and im.dtype == torch.uint8 and paths == ("im0.jpg",)
        if len(lb) == 4:
            tiled += 1
            # first top-left, second below it, third right of it, fourth bottom-right
            assert [int(im[0, 0, y, x]) for y, x in ((0, 0), (8, 0), (0, 12), (8, 12))] == [10, 20, 30, 40]
            expected = torch.tensor([[0, 0, .25, .25, .1, .2], [0, 1, .25, .75, .1, .2],
                                     [0, 2, .75, .25, .1, .2], [0, 3, .75, .75, .1, .2]])
            torch.testing.assert_close(lb, expected)
        else:
            upsampled += 1
            assert (im == 10).all()
            torch.testing.assert_close(lb, labels[0])
    assert tiled and upsampled


def test_quad_loader_gives_quarter_batches_of_double_size(tiny_data):
    from utils.datasets.dataset_config import check_dataset

    data = check_dataset(str(tiny_data))
    plain, _ = create_dataloader(data["train"], 64, 8, 32, workers=0, augment=False, nc=3)
    quad, dataset = create_dataloader(data["train"], 64, 8, 32, workers=0, augment=False, nc=3, quad=True)
    (im, lb, paths, _), (im4, lb4, paths4, _) = next(iter(plain)), next(iter(quad))
    assert im.shape == (8, 3, 64, 64) and im4.shape == (2, 3, 128, 128) and len(paths4) == 2
    assert set(lb4[:, 0].tolist()) <= {0, 1} and ((lb4[:, 2:] >= 0) & (lb4[:, 2:] <= 1)).all()
    for j in range(2):  # a tile holds its 4 images' boxes, an upsampled image its first image's
        group = lb[(lb[:, 0] >= 4 * j) & (lb[:, 0] < 4 * j + 4)]
        first = lb[lb[:, 0] == 4 * j]
        assert (lb4[:, 0] == j).sum().item() in (len(group), len(first))
    assert len(quad) == 3 and isinstance(dataset, LoadImagesAndLabels)  # 24 images, 8 per batch
    with pytest.raises(ValueError, match="--quad merges groups of 4 images"):
        create_dataloader(data["train"], 64, 2, 32, workers=0, nc=3, quad=True)


def test_train_with_autobatch_on_cpu_and_quad(tiny_data, tmp_path, yolo_logs):
    results = train.run(cfg="yolov5n.yaml", data=str(tiny_data), epochs=1, imgsz=64, batch_size=-1, quad=True,
                        workers=0, project=str(tmp_path), name="q", noplots=True, noautoanchor=True)
    assert np.isfinite(np.asarray(results[:3], dtype=float)).all()
    opt = (tmp_path / "q" / "opt.yaml").read_text()
    assert "batch_size: 16" in opt and "quad: true" in opt  # AutoBatch's choice is what the run saved
    assert "needs a CUDA device" in yolo_logs.text
