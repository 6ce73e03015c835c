"""Training runs: the loss falls, the run folder is complete, resuming after a kill or an interrupt is exact,
a run that died before its first checkpoint starts again, the log times training and evaluation apart, bad
input stops the run with a message and leaves checkpoints alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import tools.engine.trainer as trainer
import tools.tasks.segmentation.task as seg_task
from tools.engine.checkpoint import load_checkpoint
from tools.tasks.segmentation.losses import SegLoss
from tools.train_seg import build_parser, main, run

from tests.backbones.cpus import pretend_cpu  # noqa: F401
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
    assert not list(run_dir.glob("events.out.tfevents.*"))  # --no-tensorboard
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


# The resume tests' run: FCN's dropout draws from the global RNG at every step, so a resume that does not restore
# the RNG state diverges; the evaluation at iteration 4 lies between the interruption and the end.
RESUME_ARGS = ("--iters", "8", "--eval-interval", "4", "--head", "fcn")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run the resumed ones must equal."""
    out = tmp_path_factory.mktemp("straight")
    run(tiny_run_args(out, "straight", *RESUME_ARGS))
    return out / "straight"


def assert_same_run(resumed_dir: Path, straight_dir: Path) -> None:
    """Bit-identical weights and optimizer state, and the same log of losses and validation scores."""
    straight, resumed = load_checkpoint(straight_dir / "last.pt"), load_checkpoint(resumed_dir / "last.pt")
    assert resumed["iteration"] == straight["iteration"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for index, state in straight["optimizer"]["state"].items():  # AdamW moments and step counts
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][name]), (index, name)
    # the resumed log reads like the uninterrupted one: no duplicated iterations
    for kind, key in (("train", "loss"), ("val", "miou")):
        assert [(r["iter"], r[key]) for r in records(resumed_dir, kind)] == \
            [(r["iter"], r[key]) for r in records(straight_dir, kind)], kind


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, straight):
    proc = subprocess.Popen([sys.executable, "-m", "tools.train_seg",
                             *tiny_run_args(tmp_path, "killed", *RESUME_ARGS, "--ckpt-interval", "1")],
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
    assert_same_run(tmp_path / "killed", straight)


def wait_for_iteration(run_dir: Path, proc: subprocess.Popen, iteration: int, timeout: float = 120) -> None:
    """Until the child has logged ``iteration`` (it logs every iteration)."""
    log, deadline = run_dir / "metrics.jsonl", time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            try:
                if json.loads(line).get("iter", 0) >= iteration:
                    return
            except ValueError:  # a line still being written
                pass
        time.sleep(0.01)
    raise AssertionError(f"the run ended or stalled before iteration {iteration}: {proc.poll()}")


def test_ctrl_c_saves_the_current_iteration_and_resume_equals_an_uninterrupted_run(tmp_path, straight):
    run_dir = tmp_path / "interrupted"
    # No periodic checkpoint before the evaluation at 4: the last.pt found afterwards is the interrupt's. Loader
    # workers, and the signal sent to the whole process group as a terminal's Ctrl-C is, reach them too.
    proc = subprocess.Popen([sys.executable, "-m", "tools.train_seg",
                             *tiny_run_args(tmp_path, "interrupted", *RESUME_ARGS, "--ckpt-interval", "100",
                                            "--workers", "2")],
                            cwd=REPO, env=subprocess_env(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    wait_for_iteration(run_dir, proc, 1)
    assert not (run_dir / "last.pt").exists()
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    # one line, no traceback, saying how to continue
    assert stderr.strip().splitlines() == [stderr.strip()] and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.startswith("interrupted: SIGINT at iteration ") and f"--resume {run_dir}" in stderr
    stopped_at = load_checkpoint(run_dir / "last.pt")["iteration"]
    assert f"at iteration {stopped_at}/8: saved {run_dir / 'last.pt'}" in stderr
    assert 1 <= stopped_at < 4, "the resumed run must cross the evaluation at iteration 4"

    result = run(["--resume", str(run_dir)])
    assert result["iteration"] == 8
    assert_same_run(run_dir, straight)


def test_sigterm_stops_after_the_step_it_arrives_in(tmp_path, monkeypatch, capsys):
    original = trainer.train_step

    def signalled_step(state, images, masks):
        if state.iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered in the middle of the second step
        return original(state, images, masks)

    monkeypatch.setattr(trainer, "train_step", signalled_step)
    with pytest.raises(SystemExit) as exit_info:
        run(tiny_run_args(tmp_path, "term", "--iters", "6", "--ckpt-interval", "100", "--eval-interval", "100"))
    assert exit_info.value.code == 143
    assert load_checkpoint(tmp_path / "term" / "last.pt")["iteration"] == 2
    assert capsys.readouterr().err == (f"interrupted: SIGTERM at iteration 2/6: saved {tmp_path / 'term' / 'last.pt'}"
                                       f"; continue with --resume {tmp_path / 'term'}\n")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back


def test_training_continues_in_train_mode_after_an_evaluation(tmp_path, monkeypatch):
    original, modes = trainer.train_step, []

    def recording_step(state, images, masks):
        modes.append((state.iteration + 1, all(m.training for m in state.model.modules())))
        return original(state, images, masks)

    monkeypatch.setattr(trainer, "train_step", recording_step)
    run(tiny_run_args(tmp_path, "modes", "--iters", "3", "--eval-interval", "1", "--head", "fcn"))
    assert modes == [(1, True), (2, True), (3, True)]


# ------------------------------------------------------------------------------------- run folders and logs


def test_a_run_that_died_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    original = SegLoss.forward

    def crash(name):
        calls = {"n": 0}

        def nan_at_second_step(self, output, target):
            calls["n"] += 1
            loss = original(self, output, target)
            return loss * float("nan") if calls["n"] == 2 else loss

        with monkeypatch.context() as m:
            m.setattr(SegLoss, "forward", nan_at_second_step)
            with pytest.raises(FloatingPointError, match="no checkpoint was written yet; the same command starts"):
                run(tiny_run_args(tmp_path, name, *args))
        assert (tmp_path / name / "config.yaml").is_file() and not (tmp_path / name / "last.pt").exists()
        assert [r["iter"] for r in records(tmp_path / name, "train")] == [1]

    args = ("--iters", "2", "--eval-interval", "100")
    # the same command again reuses the folder, and its log starts afresh
    crash("again")
    result = run(tiny_run_args(tmp_path, "again", *args))
    assert result["iteration"] == 2 and result["run_dir"] == str(tmp_path / "again")
    assert [r["iter"] for r in records(tmp_path / "again", "train")] == [1, 2]
    # --resume on such a folder starts its run again from its config.yaml, explicit flags still winning
    crash("resumed")
    result = run(["--resume", str(tmp_path / "resumed"), "--log-interval", "2"])
    assert result["iteration"] == 2 and result["run_dir"] == str(tmp_path / "resumed")
    assert [r["iter"] for r in records(tmp_path / "resumed", "train")] == [2]
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["config"]["log_interval"] == 2


def test_a_run_saved_before_an_option_existed_resumes_as_it_trained(trained, tmp_path):
    from tools.engine.checkpoint import save_checkpoint
    from tools.train_seg import resolve_config

    checkpoint = load_checkpoint(trained[0] / "last.pt")
    for key in ("dice_weight", "bias_weight_decay"):
        del checkpoint["config"][key]
    checkpoint["config"]["norm_weight_decay"] = 0.01
    save_checkpoint(tmp_path / "old.pt", checkpoint)
    config, _ = resolve_config(["--resume", str(tmp_path / "old.pt")])
    # cross-entropy alone (no Dice term), and biases decayed like norm parameters, as such runs trained
    assert config["dice_weight"] == 0.0 and config["bias_weight_decay"] == 0.01
    assert resolve_config([])[0]["dice_weight"] == 1.0  # a new run adds the Dice term


def test_the_default_runs_config_file_is_the_default_run():
    from tools.train_seg import resolve_config

    written_out, _ = resolve_config(["--config", str(REPO / "configs" / "synthetic_bisenet_r18.yaml")])
    defaults, _ = resolve_config([])
    defaults["iters"] = defaults["iters"] or seg_task.DEFAULT_ITERS  # as setup() fills it
    trainer.check_config(written_out, seg_task.SEGMENTATION)
    trainer.check_config(defaults, seg_task.SEGMENTATION)
    assert {k: v for k, v in written_out.items() if k != "config"} == {k: v for k, v in defaults.items()
                                                                     if k != "config"}


def test_log_times_training_and_evaluation_apart(tmp_path, monkeypatch, capsys):
    original = seg_task.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(1.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(seg_task, "evaluate", slow_evaluate)
    run(tiny_run_args(tmp_path, "timed", "--iters", "4", "--eval-interval", "2"))
    train, val = records(tmp_path / "timed", "train"), records(tmp_path / "timed", "val")
    assert [r["evals_left"] for r in train] == [2, 2, 1, 1]  # evaluations at 2 and 4, each after its log line
    assert [r["iter"] for r in val] == [2, 4] and all(r["eval_sec"] >= 1.0 for r in val)
    # the iteration after an evaluation is timed without it, and the ETA adds the evaluations still to come
    after = train[2]
    assert after["sec_per_iter"] < 1.0
    assert after["eta_sec"] >= after["sec_per_iter"] * 1 + 1 * 1.0
    assert train[0]["eta_sec"] == pytest.approx(train[0]["sec_per_iter"] * 3)  # no evaluation timed yet
    out = capsys.readouterr().out
    assert " + 2 evals" in out.splitlines()[1]
    assert [ln for ln in out.splitlines() if ln.startswith("eval at iter 2:")][0].rsplit("eval ", 1)[1][0] != "0"


@pytest.mark.parametrize("end, interval, expected", [
    (10, 5, {1: 2, 5: 2, 6: 1, 10: 1, 11: 0}), (10, 4, {1: 3, 8: 2, 9: 1, 10: 1}), (3, 100, {1: 1, 3: 1})])
def test_evaluations_left(end, interval, expected):
    state = SimpleNamespace(eval_interval=interval, max_iters=end)
    assert {it: trainer.evals_from(state, it) for it in expected} == expected


def test_amp_auto_is_resolved_printed_and_saved(tmp_path, monkeypatch, capsys):
    from tools.engine import precision

    monkeypatch.setattr(precision, "fast_bf16", lambda device: True)
    run(tiny_run_args(tmp_path, "auto", "--amp", "auto", "--iters", "1"))
    assert "bf16 autocast + channels_last (--amp auto: this CPU has native bf16)" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert (saved["amp"], saved["channels_last"]) == ("bf16", True)
    # a resumed run keeps the saved choice, even where auto would now choose otherwise
    monkeypatch.setattr(precision, "fast_bf16", lambda device: False)
    run(["--resume", str(tmp_path / "auto"), "--iters", "2"])
    config = load_checkpoint(tmp_path / "auto" / "last.pt")["config"]
    assert (config["amp"], config["channels_last"]) == ("bf16", True)


def test_amp_bf16_on_a_cpu_without_it_is_one_warning_line_and_trains(tmp_path, pretend_cpu, capsys):
    pretend_cpu("zen3")
    run(tiny_run_args(tmp_path, "emulated", "--amp", "bf16", "--iters", "1"))
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "--amp bf16" in line]
    assert warned == [
        "warning: --amp bf16: this CPU (AMD EPYC 7B13, class avx2) has no native bf16 (no AVX-512 BF16, no AMX), so "
        "autocast emulates bf16, slower than fp32; --amp none (or auto, which picks fp32 here) is faster"]
    assert "bf16 autocast + channels_last" in captured.out  # the run kept the asked precision
    assert (tmp_path / "emulated" / "last.pt").is_file()


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
    # the multiplier reaches the optimizer: each group's schedule starts from AdamW's default base lr x lr_mult
    from tools.engine.optim import DEFAULT_LR

    assert all(g["initial_lr"] == pytest.approx(DEFAULT_LR["adamw"] * g["lr_mult"]) for g in groups)
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
    with pytest.raises(ValueError, match="cannot resume from .*best.pt.*lacks 'optimizer'.*Resume from a run's last"):
        run(["--resume", str(run_dir / "best.pt"), "--iters", "20"])
    assert (run_dir / "last.pt").read_bytes() == before


def test_bad_flags_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="--iters or --epochs, not both"):
        run(tiny_run_args(tmp_path, "x", "--epochs", "2"))
    with pytest.raises(SystemExit):
        run(tiny_run_args(tmp_path, "x", "--crop-size", "1", "2", "3"))
    assert "--crop-size takes 1 or 2 values, got 3" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unexpected keyword.*num_image"):
        run(tiny_run_args(tmp_path, "x", "--data-kwargs", "{num_image: 3}"))
