"""TensorBoard: a run writes event files with its scalars and validation figures when enabled, none when
disabled; asking for it without the package is a one-line error."""

from __future__ import annotations

import pytest

import tools.engine.trainer as trainer
from tools.tasks.segmentation.task import SEGMENTATION
from tools.engine.cli import MissingExtra
from tools.train_seg import build_parser, run

from tests.tools.fixtures import single_thread, tiny_run_args  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def test_run_writes_scalars_and_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_run_args(tmp_path, "board", "--tensorboard", "--iters", "2", "--eval-interval", "2",
                      "--num-vis", "2"))
    events = list((tmp_path / "board").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "board"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/miou", "val/pixel_accuracy", "val_iou/background",
            "val_iou/cross"} <= scalars
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    miou = acc.Scalars("val/miou")[0].value
    assert 0 <= miou <= 100
    assert set(acc.Tags()["images"]) == {"val/0", "val/1"}
    assert acc.Images("val/0")[0].height >= 256


def test_disabled_writes_no_events(tmp_path):
    run(tiny_run_args(tmp_path, "quiet", "--no-tensorboard", "--iters", "1"))
    assert not list((tmp_path / "quiet").glob("events.out.tfevents.*"))


def test_default_follows_the_package_and_asking_without_it_is_an_error(monkeypatch):
    defaults = vars(build_parser().parse_args([]))
    assert defaults["tensorboard"] is None
    for installed in (True, False):
        monkeypatch.setattr(trainer, "tensorboard_available", lambda: installed)
        cfg = dict(defaults)
        trainer.check_config(cfg, SEGMENTATION)
        assert cfg["tensorboard"] is installed
    with pytest.raises(MissingExtra, match="pip install tensorboard"):
        trainer.check_config({**defaults, "tensorboard": True}, SEGMENTATION)
