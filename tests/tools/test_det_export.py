"""A tiny detector through dense-export (ONNX and TorchScript, verified against the eager detector), dense-eval
on the exported files (the same AP as the checkpoint) and dense-predict (labelled boxes and a JSON listing)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools import eval_seg, predict
from tools import export as export_tool
from tools.data.detection import build_detection_dataset
from tools.engine.visualize import save_png
from tools.train_det import run as train

from tests.tools.fixtures import single_thread  # noqa: F401
from tests.tools.test_train_det import tiny_det_args


@pytest.fixture(scope="module")
def best(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("det")
    train(tiny_det_args(out, "run", "--iters", "4"))
    return out / "run" / "best.pt"


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".ts")])
def test_export_verifies_and_scores_as_the_checkpoint(best, fmt, suffix, capsys):
    assert export_tool.run(["--checkpoint", str(best), "--format", fmt, "--size", "96x96"]) == 0
    out = capsys.readouterr().out
    assert "ok   " in out and "0 images with other detections" in out
    exported = best.with_suffix(suffix)
    assert exported.is_file()
    if fmt == "torchscript":
        return  # verified above; scoring it runs the same detections again
    reference = eval_seg.run(["--checkpoint", str(best), "--workers", "0"])
    scored = eval_seg.run(["--checkpoint", str(best), "--model", str(exported), "--workers", "0"])
    for key in ("ap", "ap50", "num_detections"):
        assert scored[key] == pytest.approx(reference[key], abs=1e-6), key


def test_what_a_detector_does_not_export_is_refused(best):
    for argv, message, default in (
            (["--format", "openvino"], "exports to --format onnx or torchscript, not openvino", "best.xml"),
            (["--precision", "int8"], "exports in fp32 without --deploy", "best.int8.onnx"),
            (["--deploy"], "exports in fp32 without --deploy", "best.deploy.onnx")):
        with pytest.raises(ValueError, match=message):
            export_tool.run(["--checkpoint", str(best), "--size", "96x96", *argv])
        assert not (best.parent / default).exists()


def test_predict_draws_boxes_and_lists_them(best, tmp_path):
    dataset = build_detection_dataset("synthetic", split="val", num_images=2, image_size=64)
    for i in range(2):
        save_png(tmp_path / "in" / f"img{i}.png", dataset.load(i)[0])
    written = predict.run(["--checkpoint", str(best), str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                           "--score-thresh", "0.0"])
    assert [p.name for p in written] == ["img0.png", "img1.png"]
    listing = json.loads((tmp_path / "out" / "img0.json").read_text())
    assert (listing["width"], listing["height"]) == (64, 64) and listing["detections"]
    first = listing["detections"][0]
    assert set(first) == {"box", "score", "label", "class"} and 1 <= first["label"] <= 4
    assert first["class"] == ["rectangle", "ellipse", "triangle", "cross"][first["label"] - 1]
    scores = [d["score"] for d in listing["detections"]]
    assert scores == sorted(scores, reverse=True)
    predict.run(["--checkpoint", str(best), str(tmp_path / "in"), "--output", str(tmp_path / "strict"),
                "--score-thresh", str(scores[0])])
    kept = json.loads((tmp_path / "strict" / "img0.json").read_text())["detections"]
    assert all(d["score"] >= scores[0] for d in kept) and len(kept) < len(scores)
    image = np.asarray(__import__("cv2").imread(str(written[0])))
    assert image.shape[0] >= 256  # small images are enlarged so the labels stay readable
    with pytest.raises(ValueError, match=r"is a detector: --mode slide, --scales, --flip and --save-mask apply "
                                         r"to segmentation checkpoints only"):
        predict.run(["--checkpoint", str(best), str(tmp_path / "in"), "--save-mask"])
