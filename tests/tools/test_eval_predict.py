"""Evaluation reproduces the training's validation score; sliding-window, multi-scale and flip inference are
exact where they must be; prediction writes overlays with a legend; mismatched checkpoints are refused."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tools import eval_seg, predict
from tools.engine.checkpoint import load_checkpoint, save_checkpoint
from tools.engine.inference import predict_probs, slide_logits
from tools.train_seg import run as train

from tests.tools.fixtures import pair, single_thread, tiny_run_args, write_folder, write_image  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = train(tiny_run_args(out, "run", "--iters", "4", "--eval-interval", "2"))
    return out / "run" / "best.pt", result


def test_eval_reproduces_the_best_validation_score(checkpoint, capsys):
    best, _ = checkpoint
    results = eval_seg.run(["--checkpoint", str(best), "--workers", "0", "--no-progress"])
    assert results["miou"] == pytest.approx(load_checkpoint(best)["metrics"]["miou"], abs=1e-9)
    out = capsys.readouterr().out
    for text in ("mIoU", "pixel accuracy", "background", "circle", "triangle", "synthetic/val (8 images)"):
        assert text in out


def test_slide_window_covering_the_image_equals_whole(checkpoint):
    best, _ = checkpoint
    whole = eval_seg.run(["--checkpoint", str(best), "--workers", "0"])
    slide = eval_seg.run(["--checkpoint", str(best), "--workers", "0", "--mode", "slide", "--crop-size", "64",
                          "--stride", "64"])
    assert slide == whole


def test_multiscale_flip_slide_from_the_command_line(checkpoint, tmp_path):
    best, _ = checkpoint
    out = tmp_path / "results.json"
    results = eval_seg.run(["--checkpoint", str(best), "--workers", "0", "--mode", "slide", "--crop-size", "48",
                            "--stride", "24", "--scales", "0.75", "1.0", "1.25", "--flip", "--output", str(out)])
    assert json.loads(out.read_text()) == results
    assert 0 <= results["miou"] <= 1 and set(results["iou"]) >= {"background", "cross"}


class Pointwise(nn.Module):
    """A 1x1 convolution: its output at a pixel depends on that pixel only, so windows and flips must not
    change it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_sliding_windows_stitch_exactly():
    torch.manual_seed(0)
    model = Pointwise().eval()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        expected = model(x)
        for crop, stride in (((16, 20), (10, 7)), ((37, 53), (5, 5)), ((64, 64), (32, 32)), ((8, 60), (8, 60))):
            got = slide_logits(model, x, crop_size=crop, stride=stride)
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-6), (crop, stride)


def test_flip_and_scales_average_probabilities():
    torch.manual_seed(0)
    model = Pointwise().eval()
    x = torch.randn(1, 3, 24, 30)
    with torch.no_grad():
        plain = predict_probs(model, x)
        assert torch.allclose(plain, model(x).softmax(1), atol=1e-6)
        assert torch.allclose(predict_probs(model, x, flip=True), plain, atol=1e-6)
        assert torch.allclose(predict_probs(model, x, scales=(1.0, 1.0)), plain, atol=1e-6)
        multi = predict_probs(model, x, scales=(0.5, 1.0, 1.5), flip=True, mode="slide", crop_size=(16, 16),
                              stride=(8, 8))
    assert multi.shape == (1, 4, 24, 30)
    assert torch.allclose(multi.sum(1), torch.ones(1, 24, 30), atol=1e-5)
    with pytest.raises(ValueError, match="crop_size"):
        predict_probs(model, x, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        predict_probs(model, x, mode="tiles")


def test_eval_refuses_another_class_count(checkpoint, tmp_path):
    best, _ = checkpoint
    write_folder(tmp_path / "folder")
    with pytest.raises(ValueError, match="predicts 5 classes.*folder/val has 3"):
        eval_seg.run(["--checkpoint", str(best), "--dataset", "folder", "--root", str(tmp_path / "folder")])


def test_eval_refuses_a_checkpoint_of_another_model(checkpoint, tmp_path, capsys):
    best, _ = checkpoint
    ckpt = load_checkpoint(best)
    ckpt["config"]["head"] = "fcn"  # what a checkpoint of another model looks like to the loader
    save_checkpoint(tmp_path / "other.pt", ckpt)
    with pytest.raises(ValueError, match=r"other\.pt.*resnet18 \+ fcn.*does not fit this model"):
        eval_seg.run(["--checkpoint", str(tmp_path / "other.pt")])
    with pytest.raises(SystemExit):
        eval_seg.main(["--checkpoint", str(tmp_path / "missing.pt")])
    assert "error: checkpoint not found" in capsys.readouterr().err


def test_predict_writes_overlays_with_a_legend(checkpoint, tmp_path):
    best, _ = checkpoint
    folder = tmp_path / "inputs"
    write_image(folder / "a.jpg", pair([0, 1], size=(40, 56))[0])
    write_image(folder / "b.png", pair([0, 1], size=(37, 53), seed=1)[0])
    single = write_image(tmp_path / "c.png", pair([0, 1], size=(64, 64), seed=2)[0])
    out = tmp_path / "preds"
    written = predict.run([str(folder), str(single), "--checkpoint", str(best), "--output", str(out),
                           "--save-mask", "--flip"])
    assert [p.name for p in written] == ["a.png", "b.png", "c.png"]
    for path, (h, w) in zip(written, [(40, 56), (37, 53), (64, 64)]):
        image = cv2.imread(str(path))
        assert image.shape[0] >= h and image.shape[1] > w + 20  # the legend panel sits on the right
        assert (image[:, w:] == 255).mean() > 0.5  # a mostly white legend panel
        mask = cv2.imread(str(out / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.max() < 5
    default = predict.run([str(single), "--checkpoint", str(best)])
    assert default == [best.parent / "predictions" / "c.png"] and default[0].is_file()


def test_predict_names_unreadable_or_missing_inputs(checkpoint, tmp_path):
    best, _ = checkpoint
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        predict.run([str(bad), "--checkpoint", str(best), "--output", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        predict.run([str(tmp_path / "nothing.png"), "--checkpoint", str(best)])
    with pytest.raises(ValueError, match="alpha"):
        predict.run([str(bad), "--checkpoint", str(best), "--alpha", "2"])


def test_overlay_and_palette():
    from tools.engine.visualize import add_legend, colorize, make_palette, overlay

    palette = make_palette(4)
    assert palette[:3].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert len({tuple(c) for c in make_palette(256)}) == 256  # every class its own colour
    image = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, 255], [2, 3, 1]], np.uint8)
    assert np.array_equal(overlay(image, mask, alpha=0.0, num_classes=4), image)
    full = overlay(image, mask, alpha=1.0, num_classes=4)
    assert np.array_equal(full[0, 1], palette[1]) and np.array_equal(full[0, 2], image[0, 2])  # 255 untouched
    assert colorize(mask, num_classes=4)[0, 2].tolist() == [255, 255, 255]
    with_legend = add_legend(full, ["a", "b", "c", "d"], labels=[1, 3])
    assert with_legend.shape[0] >= 2 and with_legend.shape[1] > 3
