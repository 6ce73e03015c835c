"""The benchmark tool on tiny inputs: table contents, peers on the same weights, skipped peers, engine rows,
the peak column, the machine (CPU class) on every table and in the JSON, --info, bad input. No timing is
asserted."""

import importlib.util
import json
import sys

import pytest

import torch

import tools.benchmark as benchmark
from backbones.machine import machine_info
from tools.bench.inference import run_inference
from tools.bench.report import format_result
from tools.bench.training import run_training
from tools.benchmark import main
from tools.runtime.runners import cpu_supports_bf16
from tools.bench.peak import peak_rates
from tools.bench.peers import PeerUnavailable, build_peer

from tests.backbones.cpus import pretend_cpu  # noqa: F401

TINY = dict(size=(64, 96), batch=1, device=torch.device("cpu"), reps=1, warmup=0)


def rows_by_name(result):
    return {r["candidate"]: r for r in result["rows"]}


def model_rows(result):
    """The rows that time the model (not the matrix products)."""
    return {n: r for n, r in rows_by_name(result).items() if not n.startswith("gemm ")}


def test_inference_table_with_every_peer():
    result = run_inference("resnet18", precisions=["fp32"], output_stride=32, **TINY)
    rows = rows_by_name(result)
    assert {"dense eager", "dense deploy fp32", "torchvision ILG", "timm features_only", "smp encoder",
            "gemm 2048 fp32 torch.mm"} <= set(rows)
    # Every peer was loaded with our weights and gave our output; otherwise a note says so.
    assert not [n for n in result["notes"] if "differs" in n or "skipped" in n], result["notes"]
    assert result["reference"] in ("torchvision ILG", "timm features_only", "smp encoder")
    assert rows[result["reference"]]["speedup"] == pytest.approx(1.0)
    eager = rows["dense eager"]
    assert eager["gflops"] == pytest.approx(result["conv_gflop"] / (eager["median_ms"] / 1e3))
    assert 0 < eager["peak_mib"] and rows["gemm 2048 fp32 torch.mm"]["speedup"] is None
    text = format_result(result)
    assert "median ms" in text and "% of peak" in text and "smp encoder" in text


def test_unavailable_peers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch.encoders", None)
    # torchvision's BasicBlock cannot dilate, so ResNet-18 at output stride 8 has no torchvision peer.
    result = run_inference("resnet18", precisions=["fp32"], output_stride=8, **TINY)
    rows = rows_by_name(result)
    assert "torchvision ILG" not in rows and "smp encoder" not in rows and "timm features_only" in rows
    notes = " ".join(result["notes"])
    assert "torchvision: skipped" in notes and "smp: skipped" in notes and "not installed" in notes
    with pytest.raises(PeerUnavailable):
        build_peer("torchvision", "resnet34", output_stride=16, state_dict={})


def test_segmentation_model_is_compared_with_its_eager_form():
    result = run_inference("resnet18+fcn", precisions=["fp32"], output_stride=16, ablation=True, **TINY)
    rows = model_rows(result)
    assert result["reference"] == "dense eager" and set(rows) == {
        "dense eager", "dense deploy fp32", "dense deploy fp32 NCHW", "dense deploy fp32 unpacked",
        "dense deploy fp32 direct", "dense deploy fp32 unfused"}
    assert not result["notes"]  # the ablation variants compute the same function too


needs_engines = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnxruntime", "openvino", "onnx", "onnxscript")),
    reason="the deploy extra (onnxruntime, openvino, onnx) is not installed")


@needs_engines
def test_engines_join_the_table_for_a_segmentation_model():
    result = run_inference("resnet18+fcn", precisions=["fp32", "bf16", "int8"], output_stride=16, peers=(),
                           engines=("torch", "onnxruntime", "openvino"), **TINY)
    rows = model_rows(result)
    bf16 = cpu_supports_bf16("torch")
    expected = {"dense eager", "dense deploy fp32", "onnxruntime fp32", "onnxruntime int8", "openvino fp32",
                "openvino int8"} | ({"dense deploy bf16"} if bf16 else set()) | (
        {"openvino bf16"} if cpu_supports_bf16("openvino") else set())
    assert set(rows) == expected
    if not bf16:  # the class decides, and the note says what the CPU lacks
        assert "dense deploy bf16: skipped, deploy dtype=torch.bfloat16: this CPU" in " ".join(result["notes"])
    notes = " ".join(result["notes"])
    # fp32 engines run the same network (checked before timing); the pairs an engine cannot run are named.
    assert "differs" not in notes and "onnxruntime bf16: skipped" in notes and "dense deploy int8: skipped" in notes
    assert all(rows[n]["peak_mib"] is None for n in rows if not n.startswith("dense"))
    assert set(result["peaks"]) == ({"fp32", "bf16", "int8"} if bf16 else {"fp32", "int8"})
    text = format_result(result)
    assert "openvino int8" in text and "peak = fastest product per precision" in text


def test_compiled_deploy_rows():
    result = run_inference("resnet18", precisions=["fp32"], output_stride=32, peers=(), compile=True, **TINY)
    rows = model_rows(result)
    assert set(rows) == {"dense eager", "dense deploy fp32", "dense deploy fp32 compiled"}
    assert rows["dense deploy fp32 compiled"]["median_ms"] > 0 and rows["dense deploy fp32 compiled"]["peak_mib"] >= 0


def test_peak_column_is_the_fastest_product_of_each_precision():
    result = run_inference("resnet18", precisions=["fp32"], output_stride=32, peers=(), **TINY)
    rows = rows_by_name(result)
    gemms = {n: r for n, r in rows.items() if n.startswith("gemm 2048 fp32")}
    assert "gemm 2048 fp32 torch.mm" in gemms
    fastest = max(gemms, key=lambda n: rows[n]["gflops"])
    assert result["peaks"]["fp32"]["gemm"] == fastest
    assert rows[fastest]["peak_fraction"] == pytest.approx(1.0)
    assert all(r["peak_fraction"] <= 1.0 + 1e-9 for r in gemms.values())
    for name in ("dense eager", "dense deploy fp32"):
        assert rows[name]["peak_fraction"] == pytest.approx(rows[name]["gflops"] / rows[fastest]["gflops"])
    # The peak of each precision is its own fastest product, whichever library ran it.
    assert peak_rates({"gemm 2048 fp32 torch.mm": 2.0, "gemm 2048 fp32 onnxruntime": 4.0,
                       "gemm 2048 bf16 torch.mm": 9.0, "dense eager": 99.0}) == {
        "fp32": (4.0, "gemm 2048 fp32 onnxruntime"), "bf16": (9.0, "gemm 2048 bf16 torch.mm")}


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_missing_engine_package_is_a_one_line_error(engine, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, engine, None)  # as if not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["--models", "resnet18", "--size", "64x64", "--engines", f"torch,{engine}", "--reps", "1"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --engines") and engine in err and "[deploy]" in err


def test_training_table():
    result = run_training("resnet18", variants=["eager", "checkpoint", "channels_last+bf16"], output_stride=32,
                          **dict(TINY, batch=2))
    rows = rows_by_name(result)
    assert list(rows) == ["eager", "checkpoint", "channels_last+bf16"]
    # every ratio is against the eager row: its median time and its peak memory
    for r in rows.values():
        assert r["time_vs_base"] == pytest.approx(r["median_ms"] / rows["eager"]["median_ms"])
        assert r["memory_vs_base"] == pytest.approx(r["peak_mib"] / rows["eager"]["peak_mib"])
        assert r["peak_mib"] > 0 and r["images_per_s"] == pytest.approx(2e3 / r["median_ms"])
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    text = format_result(result)
    assert "images/s" in text
    assert text.splitlines()[1] == f"machine: {machine_info().describe()}" and result["machine"] in text


def test_every_table_starts_with_the_machine_and_its_class(pretend_cpu):
    pretend_cpu("sapphire_rapids")
    result = run_inference("resnet18", precisions=["fp32"], output_stride=32, peers=(), **TINY)
    lines = format_result(result).splitlines()
    assert lines[0] == "" and lines[1].startswith("machine: Intel(R) Xeon(R) Platinum 8480+ (amx: AVX-512, ")
    assert lines[2].startswith("resnet18  input 1x3x64x96")
    assert result["machine"] == machine_info().describe() and "\n" not in result["machine"]


def test_command_line_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["--models", "resnet18", "--size", "64x64", "--reps", "1", "--warmup", "0", "--peers", "none",
                 "--dtype", "fp32", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "torch threads" in out and "load average" in out
    info = machine_info()
    assert f"({info.isa_summary()}, " in out.splitlines()[0] and f"machine: {info.describe()}" in out
    report = json.loads(path.read_text())
    assert report["machine"]["threads"] >= 1 and report["results"][0]["model"] == "resnet18"
    # The CPU class, its flags and VNNI, the CUDA device: in the JSON's machine record and on each result.
    recorded = report["machine"]
    assert (recorded["cpu_class"], recorded["vnni"], recorded["flags"], recorded["cuda_device"]) == (
        info.isa, info.vnni, list(info.flags), info.cuda_device)
    assert recorded["description"] == info.describe() == report["results"][0]["machine"]
    assert report["load_start"] and report["load_end"]
    # --dtype still names the deploy precisions; --peers none leaves the peers out.
    rows = {r["candidate"] for r in report["results"][0]["rows"]}
    assert "dense deploy fp32" in rows and not rows & {"torchvision ILG", "timm features_only", "smp encoder"}


@pytest.mark.parametrize("cpu, expected", [
    ("zen3", ["AMD EPYC 7B13 (avx2: AVX2+FMA, no AVX-512, no bf16, no VNNI), ",
              "training --amp auto: fp32, since this CPU (AMD EPYC 7B13, class avx2) has no native bf16",
              "--precision bf16 on torch: refused", "OpenVINO bf16 (--engine openvino --precision bf16): refused",
              "int8 (onnxruntime, openvino): no VNNI", ">= 256 input and output channels"]),
    ("zen4", ["(avx512_bf16: AVX-512, AVX-512 BF16, AVX-512 VNNI)", "training --amp auto: bf16 autocast",
              "--precision bf16 on torch: available", "OpenVINO bf16 (--engine openvino --precision bf16): available",
              "int8 (onnxruntime, openvino): VNNI int8 dot products (AVX-512 VNNI)"]),
])
def test_info_prints_the_machine_and_times_nothing(pretend_cpu, monkeypatch, capsys, cpu, expected):
    pretend_cpu(cpu)
    for name in ("run_inference", "run_training"):
        monkeypatch.setattr(benchmark, name, lambda *a, **k: pytest.fail("--info must not time anything"))
    assert main(["--info"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == machine_info().describe()
    assert all(e in out for e in expected), out


@pytest.mark.parametrize("argv, message", [
    (["--size", "16x64"], "minimum input side 32"),
    (["--dtype", "fp8"], "fp8"),
    (["--precision", "int4"], "int4"),
    (["--engines", "tensorrt"], "tensorrt"),
    (["--peers", "keras"], "keras"),
    (["--mode", "train", "--train-variants", "eager,fast"], "fast"),
    (["--models", "resnet19"], "resnet18"),
])
def test_command_line_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--reps", "1", "--warmup", "0"])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


@needs_engines
def test_detector_rows_eager_deployed_backbone_and_onnxruntime():
    from tools.bench.detection import run_detection_inference

    result = run_detection_inference("resnet18+fcos", size=(64, 96), batch=1, device=torch.device("cpu"), reps=1,
                                     warmup=0, engines=("torch", "onnxruntime", "openvino"))
    rows = model_rows(result)
    assert set(rows) == {"dense eager", "dense deploy fp32 (backbone)", "onnxruntime fp32"}
    assert rows["dense eager"]["speedup"] == pytest.approx(1.0) and result["conv_gflop"] > 0
    assert rows["dense eager"]["peak_mib"] > 0 and rows["onnxruntime fp32"]["peak_mib"] is None
    assert "openvino: skipped" in " ".join(result["notes"])
    text = format_result(result)
    assert "resnet18+fcos" in text and "onnxruntime fp32" in text and text.lstrip().startswith("machine: ")
