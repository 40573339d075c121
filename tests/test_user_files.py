"""Files the user owns: what we write gets the mode a plain open()/mkdir would (the umask), and what the user
writes is read the same whether their editor added a UTF-8 byte-order mark and Windows line ends or not."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

import export
from conftest import ROOT
from models.yolo import Model
from utils.deploy.backends import write_engine_file
from utils.checkpoint import save_checkpoint
from utils.datasets.dataloaders import list_image_files
from utils.datasets.dataset_config import check_dataset, resolve_data_yaml
from utils.general import load_yaml
from utils.datasets.label_cache import parse_label_file
from utils.datasets.sources import expand_files


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def plain_modes(folder: Path) -> tuple[int, int]:
    """(file, folder) modes that open() and mkdir give in ``folder`` under the current umask."""
    with open(folder / "plain.txt", "w"):
        pass
    (folder / "plain_dir").mkdir()
    return mode(folder / "plain.txt"), mode(folder / "plain_dir")


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True)
def test_checkpoints_and_exports_get_the_umask_mode(umask, tmp_path):
    file_mode, dir_mode = plain_modes(tmp_path)
    assert (file_mode, dir_mode) == (0o666 & ~umask, 0o777 & ~umask)  # 0644/0755, 0640/0750
    weights = save_checkpoint(tmp_path / "m.pt", Model("yolov5n.yaml", nc=3))
    engine = write_engine_file(tmp_path / "m.engine", {"stride": 32}, b"engine bytes")
    results = export.run(weights=weights, include=["fused", "openvino"], imgsz=64)
    assert all(r.ok for r in results)
    files = [weights, engine, *(r.file for r in results if r.file.is_file())]
    folders = [r.file for r in results if r.file.is_dir()]
    assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(file_mode) for f in files}
    assert {f.name: oct(mode(f)) for f in folders} == {f.name: oct(dir_mode) for f in folders} != {}
    inside = [f for d in folders for f in d.rglob("*")]
    assert inside and all(mode(f) == file_mode for f in inside)


def test_rewritten_file_keeps_the_mode_its_owner_gave_it(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", Model("yolov5n.yaml", nc=3))
    os.chmod(path, 0o640)  # as open(path, "w") over an existing file does, the owner's choice stays
    save_checkpoint(path, Model("yolov5n.yaml", nc=3))
    assert mode(path) == 0o640


# --------------------------------------------------------------------------- text with a BOM and CRLF
def windows(text: str) -> bytes:
    """What Notepad saves: a UTF-8 byte-order mark and CRLF line ends."""
    return b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8")


def twins(folder: Path, name: str, text: str) -> tuple[Path, Path]:
    """The same text as a plain file and as a Windows file (``win_<name>``)."""
    plain, win = folder / name, folder / f"win_{name}"
    plain.write_text(text, encoding="utf-8")
    win.write_bytes(windows(text))
    return plain, win


def test_label_files_with_bom_and_crlf(tmp_path):
    plain, win = twins(tmp_path, "a.txt", "0 0.5 0.5 0.2 0.3\n2 0.25 0.75 0.1 0.1\n1 0.6 0.4 0.3 0.2\n")
    rows, counts, problems = parse_label_file(str(plain), 3)
    assert len(rows) == 3 and not problems
    assert parse_label_file(str(win), 3)[:2] == (rows, counts)
    assert parse_label_file(str(win), 3)[2] == []


def test_config_yamls_with_bom_and_crlf(tmp_path):
    hyp = (ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text(encoding="utf-8")
    plain, win = twins(tmp_path, "hyp.yaml", hyp)
    assert load_yaml(win) == load_yaml(plain) and "lr0" in load_yaml(win)
    cfg = (ROOT / "models" / "yolov5n.yaml").read_text(encoding="utf-8")
    plain, win = twins(tmp_path, "yolov5n.yaml", cfg)
    a, b = Model(str(plain)).yaml, Model(str(win)).yaml
    assert b.pop("yaml_file") == win.name and a.pop("yaml_file") == plain.name and a == b


def test_data_yaml_and_its_image_lists_with_bom_and_crlf(tiny_data, tmp_path):
    root = Path(load_yaml(tiny_data)["path"])
    images = sorted(p.relative_to(root).as_posix() for p in (root / "images" / "train").iterdir())
    listing = "# written by hand: comment lines are skipped, not counted as missing images\n"
    listing += "".join(f"{p}\n" for p in images)
    plain_list, win_list = twins(root, f"train_{tmp_path.name}.txt", listing)
    data = {"path": str(root), "val": "images/val", "names": ["circle", "square", "triangle"]}
    plain, win = twins(tmp_path, "data.yaml", yaml.safe_dump({**data, "train": plain_list.name}))
    win.write_bytes(windows(yaml.safe_dump({**data, "train": win_list.name})))
    a, b = check_dataset(plain), check_dataset(win)
    listed = list_image_files(a["train"])
    assert list_image_files(b["train"]) == listed and len(listed) == len(images)
    assert a["names"] == b["names"]


def test_detect_source_lists_with_bom_and_crlf(tmp_path):
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copyfile(ROOT / "data" / "images" / name, tmp_path / name)
    plain, win = twins(tmp_path, "sources.txt", "bus.jpg\n# a comment\nzidane.jpg\n")
    files, ignored = expand_files(str(plain))
    assert expand_files(str(win)) == (files, ignored) and len(files) == 2 and all(Path(f).is_file() for f in files)


def test_a_bare_dataset_name_finds_the_repo_data_yaml_as_yolov5_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("coco128", "coco128.yaml"):
        assert resolve_data_yaml(name) == ROOT / "data" / "coco128.yaml"
    (tmp_path / "coco128.yaml").write_text("path: mine\ntrain: a\nval: a\nnames: [x]\n")
    assert resolve_data_yaml("coco128.yaml") == Path("coco128.yaml")  # a file of the user's own comes first
    assert resolve_data_yaml("sub/missing.yaml") == Path("sub/missing.yaml")  # a path is never searched for
    with pytest.raises(FileNotFoundError, match="nope"):
        check_dataset("nope")
