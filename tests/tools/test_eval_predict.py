"""Evaluation reproduces the training's validation score; sliding-window, multi-scale and flip inference are
exact where they must be; an exported file scores what the checkpoint scores, through every engine; prediction
writes overlays with a legend, skips unreadable files and shares images among ranks; mismatched checkpoints
and files are refused."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tools import eval_seg, predict
from tools.engine.checkpoint import load_checkpoint, save_checkpoint
from tools.tasks.segmentation.inference import predict_probs, slide_logits
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


def test_predict_skips_unreadable_inputs_and_writes_the_others(checkpoint, tmp_path, capsys):
    best, _ = checkpoint
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = write_image(tmp_path / "good.png", pair([0, 1], size=(40, 56))[0])
    out = tmp_path / "o"
    with pytest.raises(SystemExit, match="1"):
        predict.main([str(bad), str(tmp_path / "nothing.png"), str(good), "--checkpoint", str(best),
                      "--output", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    assert [line for line in err if line.startswith("warning: skipping")] == [
        f"warning: skipping {bad}: image file {str(bad)!r} is truncated: the JPEG end-of-image marker is missing",
        f"warning: skipping {tmp_path / 'nothing.png'}: image file not found: {str(tmp_path / 'nothing.png')!r}"]
    assert err[-1] == f"error: 2 of 3 images could not be read and were skipped (named above); the other 1 were " \
                      f"written to {out}"
    with pytest.raises(ValueError, match="alpha"):
        predict.run([str(bad), "--checkpoint", str(best), "--alpha", "2"])


def test_predict_shares_images_among_ranks(checkpoint, tmp_path, monkeypatch):
    best, _ = checkpoint
    folder, other = tmp_path / "in", tmp_path / "other"
    for k in range(5):
        write_image(folder / f"img{k}.png", pair([0, 1], size=(40, 48), seed=k)[0])
    write_image(other / "img0.png", pair([0, 1], size=(40, 48), seed=9)[0])  # a name taken in another folder
    out = tmp_path / "preds"
    written = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        written.append(predict.run([str(folder), str(other), "--checkpoint", str(best), "--output", str(out)]))
    names = [p.name for p in written[0] + written[1]]
    assert len(written[0]) == len(written[1]) == 3
    assert sorted(names) == sorted(set(names)) == sorted(p.name for p in out.iterdir())
    assert sorted(names) == ["img0.png", "img0_1.png", "img1.png", "img2.png", "img3.png", "img4.png"]


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """The tiny run's model as an fp32 ONNX file, the OpenVINO IR converted from it, and an int8 ONNX file
    calibrated on the run's training images (what tools.export writes, built by its library functions)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("openvino")
    from tools.tasks import model_from_checkpoint
    from tools.runtime.export import add_onnx_metadata, export_onnx, export_openvino
    from tools.runtime.quantize import calibration_batches, quantize_onnx

    best, _ = checkpoint
    model, ckpt = model_from_checkpoint(best)
    folder = tmp_path_factory.mktemp("exported")
    meta = {"classes": list(ckpt["classes"])}
    export_onnx(model, str(folder / "best.onnx"), example=torch.randn(2, 3, 80, 80), min_size=32)
    quantize_onnx(folder / "best.onnx", folder / "best.int8.onnx", calibration_batches(ckpt, num_images=4))
    add_onnx_metadata(str(folder / "best.onnx"), meta)
    export_openvino(str(folder / "best.onnx"), str(folder / "best.xml"), metadata=meta)
    return folder


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_exported_files_score_what_the_checkpoint_scores(checkpoint, exported, mode):
    best, _ = checkpoint
    # Windows smaller than the 64x64 images, so the slide mode stitches several per image.
    options = ["--workers", "0", "--mode", mode] + (["--crop-size", "40", "--stride", "24"] if mode == "slide" else [])
    torch_miou = eval_seg.run(["--checkpoint", str(best), *options])["miou"]
    for model, engine in (("best.onnx", None), ("best.onnx", "openvino"), ("best.xml", None)):
        extra = ["--engine", engine] if engine else []
        got = eval_seg.run(["--checkpoint", str(best), "--model", str(exported / model), *extra, *options])
        assert got["miou"] == pytest.approx(torch_miou, abs=1e-3), (model, engine)
    for engine in ("onnxruntime", "openvino"):
        got = eval_seg.run(["--checkpoint", str(best), "--model", str(exported / "best.int8.onnx"),
                            "--engine", engine, *options])
        assert 0 <= got["miou"] <= 1


def test_predict_through_an_engine_writes_the_same_masks(checkpoint, exported, tmp_path):
    best, _ = checkpoint
    image = write_image(tmp_path / "a.png", pair([0, 1], size=(37, 53))[0])
    masks = []
    for extra in ([], ["--model", str(exported / "best.xml")]):
        out = tmp_path / f"out{len(masks)}"
        predict.run([str(image), "--checkpoint", str(best), "--output", str(out), "--save-mask", *extra])
        masks.append(cv2.imread(str(out / "a_mask.png"), cv2.IMREAD_UNCHANGED))
    assert masks[0].shape == (37, 53) and np.array_equal(masks[0], masks[1])


def test_eval_refuses_a_file_of_another_model(checkpoint, exported, tmp_path, capsys):
    from tools.runtime.export import add_onnx_metadata

    best, _ = checkpoint
    other = tmp_path / "other.onnx"
    other.write_bytes((exported / "best.onnx").read_bytes())
    add_onnx_metadata(str(other), {"classes": ["sky", "road", "car", "person", "tree"]})
    with pytest.raises(SystemExit, match="1"):
        eval_seg.main(["--checkpoint", str(best), "--model", str(other)])
    err = capsys.readouterr().err
    assert "other.onnx was exported for classes ['sky'" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="--amp and --channels-last apply to the plain torch model only"):
        eval_seg.run(["--checkpoint", str(best), "--model", str(exported / "best.onnx"), "--amp", "bf16"])
    with pytest.raises(ValueError, match="best.int8.onnx.*quantized to int8"):
        eval_seg.run(["--checkpoint", str(best), "--model", str(exported / "best.int8.onnx"), "--precision", "fp32"])


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
