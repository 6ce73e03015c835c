"""Training runs: the loss falls, the run folder is complete, resuming after a kill is exact, bad input stops
the run with a message and leaves checkpoints alone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tools.engine.checkpoint import load_checkpoint
from tools.engine.losses import SegLoss
from tools.train_seg import build_parser, main, run

from tests.tools.fixtures import single_thread, subprocess_env, tiny_run_args, write_folder  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("single_thread")


def records(run_dir: Path, kind: str):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("runs")
    result = run(tiny_run_args(out, "base", "--iters", "10", "--eval-interval", "5"))
    return out / "base", result


def test_a_few_iterations_lower_the_loss(trained):
    run_dir, result = trained
    losses = [r["loss"] for r in records(run_dir, "train")]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    assert result["iteration"] == 10 and 0 <= result["miou"] <= 1


def test_run_folder_holds_everything(trained):
    run_dir, result = trained
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "vis/val_000.png"):
        assert (run_dir / name).is_file(), name
    val = records(run_dir, "val")
    assert [r["iter"] for r in val] == [5, 10]
    assert val[-1]["miou"] == pytest.approx(result["miou"])
    assert set(val[-1]["iou"]) == {"background", "circle", "square", "triangle", "cross"}
    last = load_checkpoint(run_dir / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "iteration", "epoch", "rng", "config", "classes"):
        assert key in last, key
    assert last["iteration"] == 10 and last["epoch"] == 5  # 8 images / batch 4 = 2 iterations per epoch
    best = load_checkpoint(run_dir / "best.pt")
    assert best["metrics"]["miou"] == pytest.approx(max(r["miou"] for r in val))
    # the saved config holds every flag (resolved) and nothing else, so it works as --config
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    dests = {a.dest for a in build_parser()._actions} - {"help", "config", "resume"}
    assert set(saved) == dests and saved["iters"] == 10 and saved["name"] == "base"


def test_saved_config_reproduces_the_run(trained, tmp_path):
    run_dir, _ = trained
    again = run(["--config", str(run_dir / "config.yaml"), "--output-dir", str(tmp_path), "--name", "again"])
    first = load_checkpoint(run_dir / "last.pt")["model"]
    second = load_checkpoint(tmp_path / "again" / "last.pt")["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again["miou"] == pytest.approx(trained[1]["miou"])


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    args = ["--iters", "8", "--ckpt-interval", "1", "--eval-interval", "4"]
    run(tiny_run_args(tmp_path, "straight", *args))

    proc = subprocess.Popen([sys.executable, "-m", "tools.train_seg", *tiny_run_args(tmp_path, "killed", *args)],
                            cwd=REPO, env=subprocess_env(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the worst case
    _, stderr = proc.communicate()
    assert last.exists(), stderr.decode()[-2000:]
    killed_at = load_checkpoint(last)["iteration"]
    assert 1 <= killed_at < 8, "the run must be killed before its end for this test to mean anything"

    result = run(["--resume", str(tmp_path / "killed")])
    assert result["iteration"] == 8
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(last)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for index, state in straight["optimizer"]["state"].items():  # AdamW moments and step counts
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][name]), (index, name)
    # the resumed log reads like the uninterrupted one: no duplicated iterations
    assert [r["loss"] for r in records(tmp_path / "killed", "train")] == \
        [r["loss"] for r in records(tmp_path / "straight", "train")]


def test_options_run_together(tmp_path):
    result = run(tiny_run_args(
        tmp_path, "opts", "--epochs", "1", "--amp", "bf16", "--channels-last", "--aux-weight", "0.4",
        "--ohem-thresh", "0.7", "--ohem-min-kept", "100", "--clip-grad", "1.0", "--backbone-lr-mult", "0.1",
        "--norm", "gn", "--head", "fcn", "--head-kwargs", "{norm: gn}", "--workers", "1", iters=None))
    assert result["iteration"] == 2  # one epoch of 8 images in batches of 4
    ckpt = load_checkpoint(tmp_path / "opts" / "last.pt")
    assert any(k.startswith("aux_head.") for k in ckpt["model"])
    groups = ckpt["optimizer"]["param_groups"]
    backbone = {g["lr_mult"] for g in groups if g["name"].startswith("backbone")}
    assert backbone == {0.1} and {g["lr_mult"] for g in groups if not g["name"].startswith("backbone")} == {1.0}
    # the multiplier reaches the optimizer: each group's schedule starts from base lr (AdamW: 1e-3) x lr_mult
    assert all(g["initial_lr"] == pytest.approx(1e-3 * g["lr_mult"]) for g in groups)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records(tmp_path / "opts", "train"))


# ------------------------------------------------------------------------------------------------ bad input


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = SegLoss.forward
    calls = {"n": 0}

    def poisoned(self, output, target):
        calls["n"] += 1
        loss = original(self, output, target)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(SegLoss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 3.*last.pt from iteration 2 is kept"):
        run(tiny_run_args(tmp_path, "nan", "--iters", "6", "--ckpt-interval", "1"))
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["iteration"] == 2


def test_command_line_errors_are_one_line_messages(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("batch_size: 2\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown key 'learning_rate'" in err and "Traceback" not in err


def test_missing_dataset_root_fails_before_writing_anything(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(tiny_run_args(tmp_path, "noroot", "--dataset", "voc", "--root", str(tmp_path / "nowhere"),
                          "--data-kwargs", "{}"))
    assert not (tmp_path / "noroot").exists()


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        run(tiny_run_args(tmp_path, "fp16", "--amp", "fp16"))


def test_existing_run_folder_is_not_overwritten(trained):
    run_dir, _ = trained
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        run(tiny_run_args(run_dir.parent, "base"))
    assert (run_dir / "last.pt").read_bytes() == before


def test_resume_with_another_model_or_class_count_is_refused(trained, tmp_path):
    run_dir, _ = trained
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"last.pt.*resnet18 \+ bisenet.*head='fcn' \(saved 'bisenet'\)"):
        run(["--resume", str(run_dir), "--head", "fcn", "--iters", "20"])
    write_folder(tmp_path / "folder", count=8)
    with pytest.raises(ValueError, match="trained on 5 classes.*has 3"):
        run(["--resume", str(run_dir), "--dataset", "folder", "--root", str(tmp_path / "folder"),
             "--data-kwargs", "{}", "--iters", "20"])
    with pytest.raises(ValueError, match="iteration 10, the run's end"):
        run(["--resume", str(run_dir)])
    assert (run_dir / "last.pt").read_bytes() == before


def test_bad_flags_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="--iters or --epochs, not both"):
        run(tiny_run_args(tmp_path, "x", "--epochs", "2"))
    with pytest.raises(SystemExit):
        run(tiny_run_args(tmp_path, "x", "--crop-size", "1", "2", "3"))
    assert "--crop-size takes 1 or 2 values, got 3" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unexpected keyword.*num_image"):
        run(tiny_run_args(tmp_path, "x", "--data-kwargs", "{num_image: 3}"))
