"""The synthetic shapes dataset: deterministic, well-formed, tight labels, atomic, idempotent."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.datasets import synthetic
from utils.datasets.synthetic import CLASS_NAMES, generate_shapes, render_scene, sample_rng, yolo_labels

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(n_train=24, n_val=6)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_labels(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines()]
    assert all(len(r) == 5 for r in rows), f"{path}: expected 5 columns"
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _smooth(im: np.ndarray) -> np.ndarray:
    return cv2.blur(im.astype(np.float32), (5, 5))


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory) -> Path:
    """The dataset exactly as train.py gets it (default arguments)."""
    return generate_shapes(tmp_path_factory.mktemp("default") / "shapes")


def test_default_counts_and_layout(default_dataset):
    for split, n in (("train", 400), ("val", 100)):
        images = sorted(p.stem for p in (default_dataset / "images" / split).glob("*.jpg"))
        labels = sorted(p.stem for p in (default_dataset / "labels" / split).glob("*.txt"))
        assert len(images) == n and images == labels
    assert (default_dataset / "README.txt").is_file()
    assert sorted(p.name for p in default_dataset.iterdir()) == ["README.txt", "images", "labels"]


def test_labels_are_valid(default_dataset):
    counts = np.zeros(len(CLASS_NAMES), int)
    for path in (default_dataset / "labels").rglob("*.txt"):
        lab = _read_labels(path)
        assert 1 <= len(lab) <= 4, path
        cls, xc, yc, w, h = lab.T
        assert np.all(cls == cls.round()) and np.all((cls >= 0) & (cls < len(CLASS_NAMES))), path
        assert np.all((lab[:, 1:] > 0) & (lab[:, 1:] <= 1)), path
        eps = 1e-6  # 6-decimal rounding
        assert np.all(xc - w / 2 >= -eps) and np.all(xc + w / 2 <= 1 + eps), path
        assert np.all(yc - h / 2 >= -eps) and np.all(yc + h / 2 <= 1 + eps), path
        assert np.all(w * 160 >= 6) and np.all(w * 160 <= 62) and np.all(h * 160 <= 62), path
        counts += np.bincount(cls.astype(int), minlength=len(CLASS_NAMES))
    assert counts.min() > 0.25 * counts.sum()  # classes roughly balanced


def test_images_are_decodable_rgb(default_dataset):
    for path in list((default_dataset / "images" / "val").glob("*.jpg"))[:10]:
        im = cv2.imread(str(path))
        assert im is not None and im.shape == (160, 160, 3)


def test_generation_is_deterministic(tmp_path):
    a = generate_shapes(tmp_path / "a" / "shapes", **SMALL)
    b = generate_shapes(tmp_path / "b" / "shapes", **SMALL)
    ha, hb = _hashes(a), _hashes(b)
    assert len(ha) == 2 * (SMALL["n_train"] + SMALL["n_val"]) + 1
    assert ha == hb
    # a sample does not depend on how many were generated; another seed gives other images
    c = generate_shapes(tmp_path / "c" / "shapes", n_train=5, n_val=2)
    assert all(hc == ha[k] for k, hc in _hashes(c).items() if k != "README.txt")
    d = generate_shapes(tmp_path / "d" / "shapes", n_train=5, n_val=2, seed=1)
    assert _hashes(d)["images/train/train_00000.jpg"] != ha["images/train/train_00000.jpg"]


def test_files_match_rendered_scenes(default_dataset):
    """What is on disk is render_scene's output, so the tightness tests below cover the files."""
    for split, i in (("train", 0), ("train", 123), ("val", 7)):
        scene = render_scene(sample_rng(0, split, i), 160)
        stem = f"{split}_{i:05d}"
        assert (default_dataset / "labels" / split / f"{stem}.txt").read_text() == yolo_labels(scene.boxes, 160)
        decoded = cv2.imread(str(default_dataset / "images" / split / f"{stem}.jpg"))
        # JPEG's chroma subsampling smears the per-pixel grain; compare at a 5x5 scale (another
        # scene differs by 50+ there)
        assert np.abs(_smooth(decoded) - _smooth(scene.image)).mean() < 2


@pytest.mark.parametrize("seed", range(40))
def test_single_shape_box_is_tight_on_plain_background(seed):
    plain = np.full((160, 160, 3), 128.0)
    scene = render_scene(np.random.default_rng(seed), 160, n_objects=(1, 1), background=plain)
    ys, xs = np.nonzero(np.any(scene.image != 128, axis=2))
    ((cls, x0, y0, x1, y1),) = scene.boxes
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    # and the normalized label round-trips to the same pixel box
    _, xc, yc, w, h = (float(v) for v in yolo_labels(scene.boxes, 160).split())
    np.testing.assert_allclose(np.array([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]) * 160,
                               [x0, y0, x1, y1], atol=1e-3)


@pytest.mark.parametrize("seed", range(20))
def test_multi_shape_boxes_cover_exactly_the_drawn_pixels(seed):
    plain = np.full((160, 160, 3), 40.0)
    scene = render_scene(np.random.default_rng(100 + seed), 160, n_objects=(2, 4), background=plain)
    drawn = np.any(scene.image != 40, axis=2)
    covered = np.zeros_like(drawn)
    for _, x0, y0, x1, y1 in scene.boxes:
        covered[y0:y1, x0:x1] = True
        assert drawn[y0:y1, x0:x1].any()
        # the box edges each touch a drawn pixel (tight, not just containing)
        assert drawn[y0, x0:x1].any() and drawn[y1 - 1, x0:x1].any()
        assert drawn[y0:y1, x0].any() and drawn[y0:y1, x1 - 1].any()
    assert not (drawn & ~covered).any()  # no drawn pixel outside every box


@pytest.mark.parametrize("seed", range(20))
def test_overlapping_shapes_stay_mostly_visible(seed):
    scene = render_scene(np.random.default_rng(200 + seed), 160, n_objects=(4, 4))
    assert len(scene.boxes) >= 2
    for k, (_, x0, y0, x1, y1) in enumerate(scene.boxes):
        visible = np.count_nonzero(scene.instances == k)
        assert visible >= 0.2 * (x1 - x0) * (y1 - y0)  # a real part of the shape, not a sliver


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch, exc):
    calls = []
    real = synthetic._write_sample

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise exc("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_sample", failing)
    with pytest.raises(exc):
        generate_shapes(tmp_path / "shapes", **SMALL)
    assert len(calls) == 7
    assert list(tmp_path.iterdir()) == []  # neither root nor the temporary folder
    monkeypatch.setattr(synthetic, "_write_sample", real)
    assert len(_hashes(generate_shapes(tmp_path / "shapes", **SMALL))) == 61  # a later run succeeds


def test_complete_dataset_is_left_alone(tmp_path, monkeypatch):
    root = generate_shapes(tmp_path / "shapes", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(synthetic, "_write_sample", must_not_run)
    assert generate_shapes(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")]} == before
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]


def test_existing_folders(tmp_path):
    root = generate_shapes(tmp_path / "shapes", **SMALL)
    with pytest.raises(FileExistsError, match="other parameters"):
        generate_shapes(root, n_train=10, n_val=2)
    next((root / "images" / "val").glob("*.jpg")).unlink()
    with pytest.raises(FileExistsError, match="expected 6"):
        generate_shapes(root, **SMALL)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a shapes dataset"):
        generate_shapes(foreign, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(_hashes(generate_shapes(empty, n_train=2, n_val=1))) == 7


def test_import_writes_nothing_and_knows_no_dataset_config(tmp_path, monkeypatch):
    """dataset_config looks 'shapes' up itself; importing synthetic pulls in no dataset_config and writes nothing."""
    from utils.datasets.dataset_config import GENERATORS
    assert GENERATORS["shapes"] is synthetic.generate_shapes
    monkeypatch.delitem(sys.modules, "utils.datasets.dataset_config")  # restored at teardown
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("synthetic_probe", ROOT / "utils" / "datasets" / "synthetic.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert "utils.datasets.dataset_config" not in sys.modules
    assert list(tmp_path.iterdir()) == []


def test_data_yaml():
    d = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())
    assert d["names"] == dict(enumerate(CLASS_NAMES))
    assert (d["train"], d["val"], d["generate"]) == ("images/train", "images/val", "shapes")
    path = (ROOT / "data" / d["path"]).resolve()
    assert path == ROOT / "datasets" / "shapes"  # inside the repository (gitignored)
