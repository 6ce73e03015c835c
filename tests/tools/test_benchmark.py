"""The benchmark tool on tiny inputs: table contents, peers on the same weights, skipped peers, bad input.
No timing is asserted."""

import json
import sys

import pytest

from tools.bench.inference import run_inference
from tools.bench.report import format_result
from tools.bench.training import run_training
from tools.benchmark import main
from tools.bench.peers import PeerUnavailable, build_peer

TINY = dict(size=(64, 96), batch=1, device=__import__("torch").device("cpu"), reps=1, warmup=0)


def rows_by_name(result):
    return {r["candidate"]: r for r in result["rows"]}


def test_inference_table_with_every_peer():
    result = run_inference("resnet18", dtypes=["fp32"], output_stride=32, **TINY)
    rows = rows_by_name(result)
    assert {"dense eager", "dense deploy fp32", "torchvision ILG", "timm features_only", "smp encoder",
            "matmul 2048 fp32"} <= set(rows)
    # Every peer was loaded with our weights and gave our output; otherwise a note says so.
    assert not [n for n in result["notes"] if "differs" in n or "skipped" in n], result["notes"]
    assert result["reference"] in ("torchvision ILG", "timm features_only", "smp encoder")
    assert rows[result["reference"]]["speedup"] == pytest.approx(1.0)
    eager = rows["dense eager"]
    assert eager["gflops"] == pytest.approx(result["conv_gflop"] / (eager["median_ms"] / 1e3))
    assert 0 < eager["peak_mib"] and rows["matmul 2048 fp32"]["speedup"] is None
    text = format_result(result)
    assert "median ms" in text and "% of mm" in text and "smp encoder" in text


def test_unavailable_peers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch.encoders", None)
    # torchvision's BasicBlock cannot dilate, so ResNet-18 at output stride 8 has no torchvision peer.
    result = run_inference("resnet18", dtypes=["fp32"], output_stride=8, **TINY)
    rows = rows_by_name(result)
    assert "torchvision ILG" not in rows and "smp encoder" not in rows and "timm features_only" in rows
    notes = " ".join(result["notes"])
    assert "torchvision: skipped" in notes and "smp: skipped" in notes and "not installed" in notes
    with pytest.raises(PeerUnavailable):
        build_peer("torchvision", "resnet34", output_stride=16, state_dict={})


def test_segmentation_model_is_compared_with_its_eager_form():
    result = run_inference("resnet18+fcn", dtypes=["fp32"], output_stride=16, ablation=True, **TINY)
    rows = rows_by_name(result)
    assert result["reference"] == "dense eager" and set(rows) == {
        "dense eager", "dense deploy fp32", "dense deploy fp32 NCHW", "dense deploy fp32 unpacked",
        "dense deploy fp32 direct", "matmul 2048 fp32"}
    assert not result["notes"]  # the ablation variants compute the same function too


def test_training_table():
    result = run_training("resnet18", variants=["eager", "checkpoint", "channels_last+bf16"], output_stride=32,
                          **dict(TINY, batch=2))
    rows = rows_by_name(result)
    assert list(rows) == ["eager", "checkpoint", "channels_last+bf16"]
    assert rows["eager"]["time_vs_base"] == 1.0 and rows["eager"]["memory_vs_base"] == 1.0
    assert all(r["peak_mib"] > 0 and r["images_per_s"] > 0 for r in rows.values())
    assert "images/s" in format_result(result)


def test_command_line_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["--models", "resnet18", "--size", "64x64", "--reps", "1", "--warmup", "0", "--peers", "timm",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "torch threads" in out and "load average" in out
    report = json.loads(path.read_text())
    assert report["machine"]["threads"] >= 1 and report["results"][0]["model"] == "resnet18"


@pytest.mark.parametrize("argv, message", [
    (["--size", "16x64"], "minimum input side 32"),
    (["--dtype", "fp8"], "fp8"),
    (["--peers", "keras"], "keras"),
    (["--mode", "train", "--train-variants", "eager,fast"], "fast"),
    (["--models", "resnet19"], "resnet18"),
])
def test_command_line_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--reps", "1", "--warmup", "0"])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
