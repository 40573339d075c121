"""TrainConfig: one frozen, validated object built the same way from the command line and from train.run()."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
import torch
import yaml

import train
from conftest import ROOT
from models.yolo import Model
from utils.checkpoint import save_checkpoint
from utils.training.evolve import evolve
from utils.training.train_config import TrainConfig, config_from_saved, make_config, prepare, resume_config
from utils.training.trainer import Trainer
from utils.training.launch import train as train_library

BAD = [("--imgsz", "-3"), ("--epochs", "0"), ("--batch-size", "0"), ("--workers", "-1"), ("--label-smoothing", "1.0"),
       ("--evolve", "0"), ("--freeze", "-2")]


def cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        train.parse_opt(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1].split(": error: ", 1)[1]


def test_cli_and_run_give_the_same_message_for_imgsz():
    """The acceptance case, in a real process: python train.py --imgsz -3 and train.run(imgsz=-3)."""
    done = subprocess.run([sys.executable, "train.py", "--imgsz", "-3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    cli_message = done.stderr.strip().splitlines()[-1].removeprefix("train.py: error: ")
    with pytest.raises(ValueError) as info:
        train.run(imgsz=-3)
    assert str(info.value) == cli_message
    assert cli_message.startswith("--imgsz must be")


@pytest.mark.parametrize("flag,value", BAD)
def test_every_checked_flag_says_the_same_from_cli_and_run(flag, value, capsys):
    message = cli_error(capsys, flag, value)
    name = flag[2:].replace("-", "_")
    typed = [int(value)] if flag == "--freeze" else (float if "." in value else int)(value)
    with pytest.raises(ValueError) as info:
        train.run(**{name: typed})
    assert str(info.value) == message and message.startswith(f"{flag} must be")


def test_values_only_run_can_pass_are_checked_too():
    for options, message in [(dict(imgsz="640"), "--imgsz must be an integer"), (dict(rect=1), "--rect must be True or False"),
                             (dict(cache="gpu"), "--cache must be one of ram, disk"),
                             (dict(optimizer="Lion"), "--optimizer must be one of SGD, Adam, AdamW"),
                             (dict(evolve=3, resume=True), "--evolve and --resume cannot be combined")]:
        with pytest.raises(ValueError, match=message):
            train.run(**options)
    with pytest.raises(TypeError, match="unknown training option.*'img_size'"):
        train.run(img_size=320)


def test_aliases_and_types():
    base = train.parse_opt(["--imgsz", "320"])
    assert base == train.parse_opt(["--img", "320"]) == train.parse_opt(["--img-size", "320"]) == make_config(imgsz=320)
    assert train.parse_opt([]) == TrainConfig()  # the parser keeps no defaults of its own
    config = train.parse_opt(["--freeze", "0", "1", "2", "--resume", "--cache"])
    assert (config.freeze, config.resume, config.cache) == ((0, 1, 2), True, "ram")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_opt_yaml_data_round_trips_and_old_saved_options_load():
    config = make_config(imgsz=320, freeze=[10], data=ROOT / "data" / "shapes.yaml", device=0)
    plain = config.to_dict()
    assert plain["freeze"] == [10] and plain["device"] == "0" and isinstance(plain["data"], str)
    assert config_from_saved(yaml.safe_load(yaml.safe_dump(plain))) == config
    old = {**plain, "removed_option": 1}  # a run saved by an older version: extra keys, missing new ones
    del old["deterministic"]
    assert config_from_saved(old).deterministic is False


def test_resume_reads_an_old_style_checkpoint(tmp_path, yolo_logs):
    """A checkpoint whose options are vars(Namespace) as our earlier train.py saved them resumes."""
    last = tmp_path / "exp" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    saved = {**vars(argparse.Namespace(**TrainConfig().to_dict())), "imgsz": 64, "epochs": 3, "optimizer": "SGD",
             "save_dir": "/elsewhere/exp", "hyp": "h.yaml", "freeze": [0]}
    save_checkpoint(last, Model("yolov5n.yaml", nc=3), optimizer={}, opt=saved, hyp={}, epoch=0)
    config, ckpt = resume_config(make_config(resume=str(last), epochs=7, device="cpu"))
    assert (config.imgsz, config.epochs, config.freeze, config.device) == (64, 3, (0,), "cpu")
    assert config.save_dir == str(tmp_path / "exp") and config.weights == config.resume == str(last)
    assert ckpt["epoch"] == 0 and "ignoring --epochs" in yolo_logs.text


def test_data_yaml_recommendations_are_applied_and_checked(tiny_data, tmp_path):
    data = yaml.safe_load(tiny_data.read_text())
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**data, "imgsz": 96, "epochs": 2, "optimizer": "AdamW"}))
    config, hyp, _, ckpt = prepare(make_config(data=str(good), project=str(tmp_path / "runs"), epochs=5))
    assert (config.imgsz, config.epochs, config.optimizer, config.cfg) == (96, 5, "AdamW", "yolov5s_RepVGG.yaml")
    assert config.save_dir == str(tmp_path / "runs" / "exp") and ckpt is None and "lr0" in hyp
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "imgsz": 16}))
    with pytest.raises(ValueError, match=r"bad.yaml recommends a value train.py refuses: --imgsz must be >= 32"):
        prepare(make_config(data=str(bad), project=str(tmp_path / "runs2")))
    assert not (tmp_path / "runs2").exists()


def test_training_library_refuses_a_namespace():
    opt = argparse.Namespace(**TrainConfig().to_dict())
    for call in (lambda: Trainer(opt, {}, {}, torch.device("cpu")), lambda: evolve(opt, {}, {}, torch.device("cpu")),
                 lambda: train_library(opt)):
        with pytest.raises(TypeError, match="takes a TrainConfig"):
            call()
