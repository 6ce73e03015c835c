"""Engines: a tiny model exported once runs on ONNX Runtime and OpenVINO (ONNX and IR) with PyTorch's outputs at
any size, int8 really quantizes, bf16 follows fp32, and every bad input is a one-line error naming the file."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from tools.engine.cli import MissingExtra
from tools.runtime import runners
from tools.runtime.runners import load_runner, onnx_is_quantized, openvino_is_quantized
from tools.runtime.export import add_onnx_metadata, export_onnx, export_openvino

from tests.backbones.cpus import pretend_cpu  # noqa: F401
from tests.tools.fixtures import single_thread  # noqa: F401

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
ov = pytest.importorskip("openvino")

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = ["bg", "a", "b", "c"]
# Sizes below the export's example, odd ones, and batch 2: the files have dynamic batch, height and width.
SHAPES = [(1, 3, 40, 56), (2, 3, 33, 47), (1, 3, 96, 80)]


class Tiny(nn.Module):
    """Conv-BN-ReLU, a stride-2 stage and bilinear upsampling back to the input size: the operators of a
    segmentation model (and BatchNorm to fold) at a fraction of the export time of a ResNet."""

    num_classes = len(CLASSES)

    def __init__(self, features: bool = False) -> None:
        super().__init__()
        self.features = features
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.classifier = nn.Conv2d(16, self.num_classes, 1)

    def forward(self, x):
        f1 = self.stem(x)
        f2 = self.down(f1)
        if self.features:
            return [f1, f2]
        logits = self.classifier(f2)
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model, its ONNX file (with recorded classes) and the OpenVINO IR converted from it."""
    from tests.conftest import randomize_norms

    torch.manual_seed(0)
    model = randomize_norms(Tiny()).eval()
    folder = tmp_path_factory.mktemp("engines")
    onnx_path = folder / "tiny.onnx"
    export_onnx(model, str(onnx_path), example=torch.randn(2, 3, 72, 72), min_size=16)
    add_onnx_metadata(str(onnx_path), {"classes": CLASSES, "precision": "fp32"})
    xml_path = folder / "tiny.xml"
    export_openvino(str(onnx_path), str(xml_path), metadata={"classes": CLASSES, "precision": "fp32"})
    return model, onnx_path, xml_path


def _rel_err(out, ref):
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("engine, which", [("onnxruntime", "onnx"), ("openvino", "onnx"), ("openvino", "xml")])
def test_fp32_engines_equal_torch_at_any_size(files, engine, which):
    model, onnx_path, xml_path = files
    run = load_runner(onnx_path if which == "onnx" else xml_path, engine=engine)
    assert (run.kind, run.precision, run.output_channels, run.input_channels) == (engine, "fp32", 4, 3)
    assert run.metadata["classes"] == CLASSES
    run.check_compatible(classes=CLASSES)
    for shape in SHAPES:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = model(x)
        out = run(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert _rel_err(out, ref) < 1e-4, (engine, which, shape)


def test_feature_lists_and_torch_engines(tmp_path):
    torch.manual_seed(0)
    model = Tiny(features=True).eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        ref = model(x)
    onnx_path = tmp_path / "features.onnx"
    export_onnx(model, str(onnx_path), example=torch.randn(2, 3, 72, 72), min_size=16)
    for run in (load_runner(onnx_path, engine="onnxruntime"), load_runner(onnx_path, engine="openvino"),
                load_runner(model), load_runner(model, deploy=True)):
        outs = run(x)
        assert isinstance(outs, list) and len(outs) == 2, run
        assert all(o.shape == r.shape and _rel_err(o, r) < 1e-4 for o, r in zip(outs, ref)), run
    with pytest.raises(ValueError, match="2 outputs.*backbone"):
        load_runner(onnx_path, engine="onnxruntime").check_compatible(classes=CLASSES)


def test_int8_from_a_module_is_quantized_and_follows_fp32():
    torch.manual_seed(0)
    model = Tiny().eval()
    calibration = [torch.randn(1, 3, 48, 48) for _ in range(4)]
    for engine in ("onnxruntime", "openvino"):
        run = load_runner(model, engine=engine, precision="int8", calibration=calibration)
        assert run.precision == "int8"
        x = torch.randn(2, 3, 48, 64)
        with torch.no_grad():
            ref = model(x)
        r = torch.corrcoef(torch.stack([run(x).flatten(), ref.flatten()]))[0, 1]
        assert r > 0.95, (engine, float(r))
    with pytest.raises(ValueError, match="calibration"):
        load_runner(model, engine="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="int8 runs on onnxruntime or openvino"):
        load_runner(model, precision="int8")


def test_quantized_files_are_detected(files, tmp_path):
    from tools.runtime.quantize import quantize_onnx

    _, onnx_path, _ = files
    assert not onnx_is_quantized(onnx_path)
    int8 = tmp_path / "tiny.int8.onnx"
    quantize_onnx(onnx_path, int8, [torch.randn(1, 3, 48, 48) for _ in range(2)])
    assert onnx_is_quantized(int8)
    xml = tmp_path / "tiny.int8.xml"
    export_openvino(str(int8), str(xml), metadata={})
    assert openvino_is_quantized(ov.Core().read_model(str(xml)))
    # precision=None takes what the file holds; an explicit precision must agree with it.
    assert load_runner(int8, engine="onnxruntime").precision == "int8"
    assert load_runner(xml, engine="openvino").precision == "int8"
    with pytest.raises(ValueError, match="tiny.int8.onnx.*quantized to int8"):
        load_runner(int8, engine="onnxruntime", precision="fp32")
    with pytest.raises(ValueError, match="tiny.onnx.*not quantized.*--precision int8"):
        load_runner(onnx_path, engine="openvino", precision="int8")


@pytest.mark.skipif(not runners.cpu_supports_bf16("openvino"), reason="this CPU has no native bf16")
def test_bf16_follows_fp32(files):
    model, onnx_path, xml_path = files
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    for run in (load_runner(xml_path, engine="openvino", precision="bf16"), load_runner(model, precision="bf16")):
        assert run.precision == "bf16"
        out = run(x)
        assert out.dtype == torch.float32 and 0 < _rel_err(out, ref) < 5e-2, run


def test_openvino_fp32_is_not_silently_bf16(files):
    # OpenVINO's default on a bf16-capable CPU is bf16; the engine must ask for f32 explicitly.
    _, _, xml_path = files
    run = load_runner(xml_path, engine="openvino")
    assert str(run.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")


def test_bad_inputs_name_the_file(files, tmp_path, monkeypatch):
    _, onnx_path, xml_path = files
    with pytest.raises(ValueError, match="engine must be one of"):
        load_runner(onnx_path, engine="tensorrt")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_runner(tmp_path / "missing.onnx", engine="onnxruntime")
    with pytest.raises(ValueError, match="ONNX file: run it with --engine onnxruntime or openvino"):
        load_runner(onnx_path)
    with pytest.raises(ValueError, match="OpenVINO IR: run it with --engine openvino"):
        load_runner(xml_path, engine="onnxruntime")
    with pytest.raises(ValueError, match="ONNX Runtime has no bf16 CPU kernels"):
        load_runner(onnx_path, engine="onnxruntime", precision="bf16")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_path.read_bytes()[:5000])
    for engine in ("onnxruntime", "openvino"):
        with pytest.raises(ValueError, match=r"cannot (load|read) .*corrupt\.onnx") as info:
            load_runner(corrupt, engine=engine)
        assert "\n" not in str(info.value)
    lonely = tmp_path / "lonely.xml"  # an IR without its .bin
    lonely.write_bytes(xml_path.read_bytes())
    with pytest.raises(ValueError, match=r"lonely\.xml.*\.bin"):
        load_runner(lonely, engine="openvino")
    run = load_runner(onnx_path, engine="onnxruntime")
    with pytest.raises(ValueError, match="tiny.onnx predicts 4 classes but the checkpoint has 5"):
        run.check_compatible(classes=CLASSES + ["d"])
    with pytest.raises(ValueError, match="tiny.onnx was exported for classes"):
        run.check_compatible(classes=["w", "x", "y", "z"])
    with pytest.raises(ValueError, match="tiny.onnx takes 3-channel inputs but the checkpoint feeds 4-channel"):
        run.check_compatible(classes=CLASSES, in_channels=4)
    monkeypatch.setattr(runners, "cpu_supports_bf16", lambda engine="torch": False)
    with pytest.raises(ValueError, match="tiny.xml.*no native bf16.*--precision fp32 or int8"):
        load_runner(xml_path, engine="openvino", precision="bf16")


def test_bf16_on_a_cpu_without_it_names_its_class(files, pretend_cpu, monkeypatch):
    model, _, xml_path = files
    pretend_cpu("zen3")
    assert not runners.cpu_supports_bf16("openvino") and not runners.cpu_supports_bf16("torch")
    for engine, source in (("openvino", xml_path), ("torch", model)):
        with pytest.raises(ValueError) as info:
            load_runner(source, engine=engine, precision="bf16")
        message = str(info.value)
        assert "\n" not in message and message.startswith("precision bf16 for ")
        assert f"class avx2) has no native bf16 (no AVX-512 BF16, no AMX), so {engine} would emulate" in message
        assert message.endswith("use --precision fp32 or int8")
    pretend_cpu("zen4")
    assert runners.cpu_supports_bf16("openvino") and runners.cpu_supports_bf16("torch")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # OpenVINO has its own kernels
    assert runners.cpu_supports_bf16("openvino") and not runners.cpu_supports_bf16("torch")
    with pytest.raises(ValueError, match="engine must be one of torch, onnxruntime, openvino, got 'tensorrt'"):
        runners.cpu_supports_bf16("tensorrt")


@pytest.mark.parametrize("package, engine", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_engine_package_names_the_extra(files, monkeypatch, package, engine):
    _, onnx_path, _ = files
    monkeypatch.setitem(sys.modules, package, None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingExtra, match=rf"needs the {package} package.*pip install -e \"\.\[deploy\]\"") as info:
        load_runner(onnx_path, engine=engine)
    assert "\n" not in str(info.value)
