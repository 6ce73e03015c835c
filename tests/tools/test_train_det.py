"""The detection task on the training engine: a tiny detector trains, evaluates with COCO mAP, saves, resumes to
exactly the uninterrupted run, and refuses the other task's checkpoints and mismatched classes in one line."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

import tools.engine.trainer as trainer
from tools.engine.checkpoint import load_checkpoint
from tools.train_det import build_parser, run
from tools.train_seg import run as run_seg

from tests.tools.fixtures import single_thread, tiny_run_args  # noqa: F401

# 8 synthetic 64x64 images per split, FCOS on resnet18 with a 64-channel pyramid, batch 4 (2 iterations per
# epoch), fp32 and no TensorBoard; later flags override earlier ones.
TINY = ["--data-kwargs", "{num_images: 8, image_size: 64}", "--fpn-channels", "64", "--batch-size", "4",
        "--val-batch-size", "4", "--warmup-iters", "1", "--workers", "0", "--log-interval", "1", "--num-vis", "1",
        "--device", "cpu", "--no-progress", "--amp", "none", "--no-tensorboard"]


def tiny_det_args(out_dir: Path, name: str, *extra: str) -> list:
    return ["--output-dir", str(out_dir), "--name", name, *TINY, *extra]


def records(run_dir: Path, kind: str) -> list:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, single_thread):
    """An uninterrupted 6-iteration run with evaluations at 3 and 6."""
    out = tmp_path_factory.mktemp("det")
    result = run(tiny_det_args(out, "straight", "--iters", "6", "--eval-interval", "3"))
    return out / "straight", result


def test_a_run_writes_coco_metrics_checkpoints_and_figures(straight):
    run_dir, result = straight
    val = records(run_dir, "val")
    assert [r["iter"] for r in val] == [3, 6]
    for key in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "per_class_ap", "num_images"):
        assert key in val[-1], key
    assert set(val[-1]["per_class_ap"]) == {"rectangle", "ellipse", "triangle", "cross"}
    assert val[-1]["num_images"] == 8 and val[-1]["ap"] == pytest.approx(result["ap"])
    last = load_checkpoint(run_dir / "last.pt", resume=True, task="detection")
    assert last["task"] == "detection" and last["iteration"] == 6 and last["category_ids"] == [1, 2, 3, 4]
    assert last["best_ap"] == pytest.approx(max(r["ap"] for r in val))
    best = load_checkpoint(run_dir / "best.pt")
    assert best["metrics"]["ap"] == pytest.approx(last["best_ap"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    dests = {a.dest for a in build_parser()._actions} - {"help", "config", "resume"}
    # every flag resolved: no "auto" left for the model options
    assert set(saved) == dests and (saved["norm"], saved["frozen_stages"], saved["min_size"]) == ("bn", -1, 64)
    assert (run_dir / "vis" / "val_000.png").is_file() and (run_dir / "curves.png").is_file()


def test_resume_equals_the_uninterrupted_run(tmp_path, straight, monkeypatch, single_thread):
    straight_dir, _ = straight
    original = trainer.train_step

    def signalled_step(state, images, targets):
        if state.iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # stops the run after this step, with last.pt saved
        return original(state, images, targets)

    monkeypatch.setattr(trainer, "train_step", signalled_step)
    with pytest.raises(SystemExit) as exit_info:
        run(tiny_det_args(tmp_path, "resumed", "--iters", "6", "--eval-interval", "3"))
    assert exit_info.value.code == 143
    monkeypatch.setattr(trainer, "train_step", original)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["iteration"] == 2
    result = run(["--resume", str(tmp_path / "resumed")])
    assert result["iteration"] == 6
    ref, got = load_checkpoint(straight_dir / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, value in ref["model"].items():
        assert torch.equal(value, got["model"][key]), key
    for index, state in ref["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, got["optimizer"]["state"][index][name]), (index, name)
    for kind, key in (("train", "loss"), ("val", "ap")):
        assert [(r["iter"], r[key]) for r in records(tmp_path / "resumed", kind)] == \
            [(r["iter"], r[key]) for r in records(straight_dir, kind)], kind


def test_defaults_follow_the_initialization_as_torchvisions_references(tmp_path):
    from tools.train_det import resolve_config
    from tools.tasks.detection.model import resolve_model_options

    config, _ = resolve_config([])
    assert (config["detector"], config["backbone"], config["norm"], config["frozen_stages"]) == \
        ("fcos", "resnet18", "auto", "auto")
    resolve_model_options(config, image_size=96)
    assert (config["norm"], config["frozen_stages"], config["min_size"], config["max_size"]) == ("bn", -1, 96, 96)
    pretrained = {"pretrained": "imagenet", "norm": "auto", "frozen_stages": "auto", "min_size": "auto",
                  "max_size": "auto"}
    resolve_model_options(pretrained, image_size=None)  # a real dataset: torchvision's COCO sizes
    assert (pretrained["norm"], pretrained["frozen_stages"], pretrained["min_size"], pretrained["max_size"]) == \
        ("frozen_bn", 1, 800, 1333)


def test_the_other_tasks_checkpoints_are_refused_in_one_line(tmp_path, straight, single_thread):
    det_dir, _ = straight
    with pytest.raises(ValueError, match=r"holds a detection model \(written by dense-train-det\); this program "
                                         r"takes segmentation checkpoints"):
        run_seg(["--resume", str(det_dir)])
    seg = run_seg(tiny_run_args(tmp_path, "seg", iters=1))
    with pytest.raises(ValueError, match=r"holds a segmentation model \(written by dense-train\); this program "
                                         r"takes detection checkpoints"):
        run(["--resume", seg["run_dir"]])


def test_a_class_count_that_differs_from_the_checkpoint_is_refused(tmp_path, straight, single_thread):
    det_dir, _ = straight
    from tools import eval_seg

    yolo = tmp_path / "yolo"
    (yolo / "images" / "val").mkdir(parents=True)
    (yolo / "labels" / "val").mkdir(parents=True)
    (yolo / "classes.txt").write_text("cat\ndog\n")
    import numpy as np

    from tools.engine.visualize import save_png

    save_png(yolo / "images" / "val" / "a.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"detects 4 classes \['rectangle'.*but yolo.* has 2: \['cat', 'dog'\]"):
        eval_seg.run(["--checkpoint", str(det_dir / "best.pt"), "--dataset", "yolo", "--root", str(yolo)])
    with pytest.raises(ValueError, match=r"--dataset 'voc' is a segmentation layout, but checkpoint .* is a "
                                         r"detector; detection layouts: coco, synthetic, yolo"):
        eval_seg.run(["--checkpoint", str(det_dir / "best.pt"), "--dataset", "voc"])
    with pytest.raises(ValueError, match=r"is a detector: --flip apply to segmentation checkpoints only"):
        eval_seg.run(["--checkpoint", str(det_dir / "best.pt"), "--flip"])


DET_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "detection").glob("*.yaml"))


@pytest.mark.parametrize("path", DET_CONFIGS, ids=lambda p: p.name)
def test_detection_configs_hold_only_known_keys_and_valid_values(path):
    from tools.engine.config import load_config_file

    assert load_config_file(path, build_parser())


def test_the_default_runs_config_file_is_the_default_run():
    from tools.engine.optim import DEFAULT_LR
    from tools.train_det import resolve_config
    from tools.tasks.detection.task import DEFAULT_ITERS

    written, _ = resolve_config(["--config", str(DET_CONFIGS[0].parent / "synthetic_fcos_r18.yaml")])
    defaults, _ = resolve_config([])
    defaults.update(iters=DEFAULT_ITERS, lr=DEFAULT_LR[defaults["optimizer"]])  # as the trainer fills them
    assert {k: v for k, v in written.items() if k != "config"} == {k: v for k, v in defaults.items()
                                                                   if k != "config"}
