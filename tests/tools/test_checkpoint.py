"""Atomic, weights-only checkpoints; RNG state round trips; YAML configs held to the command line's rules."""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tools.engine.checkpoint import check_model_state, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tools.engine.config import explicit_dests, load_config_file, parse_config, save_config, yaml_mapping
from tools.train_seg import build_parser

MODEL = {"backbone": "resnet18", "head": "fpn"}  # what a checkpoint's config must hold at least


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = torch.nn.Conv2d(3, 4, 3)
    state = {"model": model.state_dict(), "config": {**MODEL, "lr": 0.1, "crop_size": [64, 64], "name": None},
             "rng": rng_state(), "iteration": 7}
    save_checkpoint(tmp_path / "last.pt", state)
    # torch.load with weights_only=True reads it: no pickled code anywhere in the file
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw["iteration"] == 7 and torch.equal(raw["model"]["weight"], model.weight)
    assert load_checkpoint(tmp_path / "last.pt")["config"]["crop_size"] == [64, 64]
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(3)}, "config": MODEL, "iteration": 1})
    before = (tmp_path / "last.pt").read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(3)}, "config": MODEL, "iteration": 2})
    assert (tmp_path / "last.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1


def test_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(3)}, "config": MODEL, "iteration": 1})
    before = (tmp_path / "last.pt").read_bytes()

    def full_disk_save(obj, f, *args, **kwargs):
        f.write(b"the first few blocks")
        # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(OSError, match=r"could not write checkpoint '.*last\.pt' \(\d+ MiB free on its disk\): "
                                      r"RuntimeError: .*file write failed\. The previous checkpoint"):
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(3)}, "config": MODEL, "iteration": 2})
    assert (tmp_path / "last.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


class NotATensor:
    pass


def test_load_refuses_pickled_code_and_foreign_files(tmp_path):
    torch.save({"model": {}, "config": MODEL, "evil": NotATensor()}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match=r"refusing to load '.*code\.pt': it holds pickled Python code "
                                         r"\(tests\.tools\.test_checkpoint\.NotATensor\)") as info:
        load_checkpoint(tmp_path / "code.pt")
    assert "weights_only" not in str(info.value)  # never advise loading untrusted code
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint written by tools.train_seg"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"cannot read checkpoint '.*cut\.pt': not a checkpoint written by "
                                         r"tools\.train_seg, or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_are_not_a_checkpoint_and_no_advice_to_unpickle(tmp_path, seed):
    # Random bytes read as the legacy pickle format, whose failure message tells the user to retry with
    # weights_only=False: a tool must never suggest running a file's code.
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ValueError, match=r"cannot read checkpoint '.*noise\.pt': not a checkpoint written by "
                                         r"tools\.train_seg, or corrupt") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["backbone", "head"])
def test_config_without_the_model_name_is_refused(tmp_path, key):
    config = {**MODEL, "output_stride": 32}
    del config[key]
    save_checkpoint(tmp_path / "best.pt", {"model": {}, "config": config, "classes": ["a"]})
    with pytest.raises(ValueError, match=rf"checkpoint '.*best\.pt' is damaged: its config lacks '{key}'"):
        load_checkpoint(tmp_path / "best.pt")
    save_checkpoint(tmp_path / "list.pt", {"model": {}, "config": [1, 2]})
    with pytest.raises(ValueError, match=r"list\.pt' is damaged: its config is a list"):
        load_checkpoint(tmp_path / "list.pt")


def test_resume_needs_the_training_state(tmp_path):
    last = {"model": {}, "config": MODEL, "optimizer": {}, "scheduler": {}, "scaler": {}, "iteration": 3,
            "best_miou": 0.5, "rng": rng_state()}
    save_checkpoint(tmp_path / "last.pt", last)
    assert load_checkpoint(tmp_path / "last.pt", resume=True)["iteration"] == 3
    save_checkpoint(tmp_path / "no_rng.pt", {k: v for k, v in last.items() if k != "rng"})
    load_checkpoint(tmp_path / "no_rng.pt")  # enough to evaluate
    with pytest.raises(ValueError, match=r"cannot resume from '.*no_rng\.pt': it lacks 'rng'\. Resume from a "
                                         r"run's last\.pt"):
        load_checkpoint(tmp_path / "no_rng.pt", resume=True)
    save_checkpoint(tmp_path / "best.pt", {"model": {}, "config": MODEL, "classes": ["a"], "iteration": 3})
    with pytest.raises(ValueError, match="it lacks 'optimizer', 'scheduler', 'scaler', 'best_miou', 'rng'"):
        load_checkpoint(tmp_path / "best.pt", resume=True)


def test_rng_state_round_trip():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rng_state()
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], torch.randn(2))
    set_rng_state(state)
    second = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], torch.randn(2))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])


def test_model_mismatch_lists_keys_and_shapes():
    small, other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1))
    with pytest.raises(ValueError, match=r"x\.pt.*shape mismatches: 0\.weight: checkpoint \(5, 3, 1, 1\)"):
        check_model_state(small, other.state_dict(), where="x.pt")
    with pytest.raises(ValueError, match="missing keys: 0.bias"):
        check_model_state(small, {"0.weight": small[0].weight}, where="x.pt")


# ----------------------------------------------------------------------------------------------- config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_sets_defaults_and_explicit_flags_win(tmp_path):
    path = write(tmp_path, "lr: 1e-3\ncrop_size: [96, 128]\nhead: deeplabv3\nchannels_last: true\n"
                           "data_kwargs: {num_images: 16}\nweight-decay: 0\n")
    args = parse_config(build_parser(), ["--config", str(path), "--head", "fcn"])
    assert args.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; the flag's type converts it
    assert args.crop_size == [96, 128] and args.channels_last is True and args.weight_decay == 0.0
    assert args.head == "fcn"  # the flag beats the file
    assert args.data_kwargs == {"num_images": 16}
    assert args.backbone == "resnet18"  # untouched default
    args = parse_config(build_parser(), ["--config", str(path), "--no-channels-last"])
    assert args.channels_last is False


def test_unknown_key_names_it_and_close_matches(tmp_path):
    path = write(tmp_path, "lr: 0.1\nbatchsize: 4\n")
    with pytest.raises(ValueError, match=r"unknown key 'batchsize'.*did you mean 'batch_size'"):
        parse_config(build_parser(), ["--config", str(path)])


@pytest.mark.parametrize("text, message", [
    ("lr: fast", "key 'lr': expected a number"),
    ("batch_size: 2.5", "expected an integer"),
    ("amp: fp8", "'fp8' is not one of"),
    ("channels_last: 1", "expected true or false"),
    ("crop_size: [1, 2, 3, 4]", "key 'crop_size' takes 1 or 2 values, got 4"),
    ("crop_size: '96,x'", "expected an integer, got 'x'"),
    ("scale_range: [0.5]", "takes 2 values, got 1"),
    ("data_kwargs: [1, 2]", "expected a mapping"),
    ("- just a list", "must hold a mapping"),
])
def test_bad_values_are_refused_like_on_the_command_line(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ValueError, match=message):
        load_config_file(path, build_parser())


def test_duplicate_key_names_the_key_and_the_file(tmp_path):
    # PyYAML keeps the last value of a repeated key without a word; the run would silently use lr 0.2.
    path = write(tmp_path, "lr: 0.1\nbatch_size: 2\nlr: 0.2\n")
    with pytest.raises(ValueError, match=r"config file '.*c\.yaml' is not valid YAML: key 'lr' is given twice: "
                                         r"first at line 1, again at line 3"):
        load_config_file(path, build_parser())
    with pytest.raises(argparse.ArgumentTypeError, match="key 'seed' is given twice"):
        yaml_mapping("{seed: 1, num_images: 8, seed: 2}")
    with pytest.raises(argparse.ArgumentTypeError, match="key 'a' is given twice"):
        yaml_mapping("{outer: {a: 1, a: 2}}")  # nested mappings too
    # a merge key is not a duplicate: explicit keys override merged ones, as YAML intends
    assert yaml_mapping("{base: &b {a: 1, c: 3}, x: {<<: *b, a: 2}}")["x"] == {"a": 2, "c": 3}


def test_binary_config_file_names_the_file(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x08\xff\xfe binary")
    with pytest.raises(ValueError, match=r"config file '.*weights\.pt' is not a text file: byte 0xff at offset 8 "
                                         r"is not UTF-8"):
        load_config_file(path, build_parser())


def test_saved_config_loads_back_identically(tmp_path):
    parser = build_parser()
    args = vars(parse_config(parser, ["--lr", "0.005", "--crop-size", "48", "64", "--data-kwargs", "{seed: 2}"]))
    config = {k: v for k, v in args.items() if k not in ("config", "resume")}
    save_config(tmp_path / "config.yaml", config)
    again = vars(parse_config(build_parser(), ["--config", str(tmp_path / "config.yaml")]))
    assert {k: again[k] for k in config} == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["crop_size"] == [48, 64]


def test_explicit_dests_sees_only_written_flags():
    assert explicit_dests(build_parser(), ["--lr", "0.1", "--no-hflip"]) == {"lr", "hflip"}
    with pytest.raises(argparse.ArgumentTypeError):
        yaml_mapping("[1, 2]")


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_hold_only_known_keys_and_valid_values(path):
    values = load_config_file(path, build_parser())
    assert values, path


def test_the_synthetic_config_is_the_default_run():
    path = next(p for p in CONFIGS if p.name.startswith("synthetic"))
    defaults = vars(parse_config(build_parser(), []))
    written = load_config_file(path, build_parser())
    # the file documents the defaults: every value it sets is the parser's own, except the resolved lr and
    # iterations, which the parser leaves to the optimizer and the trainer
    from tools.engine.optim import DEFAULT_LR
    from tools.tasks.segmentation.task import DEFAULT_ITERS

    defaults.update(lr=DEFAULT_LR[defaults["optimizer"]], iters=DEFAULT_ITERS)
    assert {k: defaults[k] for k in written} == written
