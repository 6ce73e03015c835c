"""int8 quantization: calibration images come seeded from the run's own training split through its evaluation
preprocessing; the quantizers write QDQ files with per-channel weights and leave the named layers in fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tools.data import build_dataset
from tools.data.transforms import eval_transform
from tools.runtime.quantize import calibration_batches, conv_nodes, quantize_onnx

from tests.tools.fixtures import single_thread, write_folder  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

SYNTHETIC = {"dataset": "synthetic", "train_split": "train", "data_kwargs": {"num_images": 6, "image_size": 48},
             "crop_size": [32, 40]}


def test_calibration_images_come_from_the_training_split_seeded():
    batches = calibration_batches({"config": SYNTHETIC}, num_images=4, seed=1)
    assert len(batches) == 4 and all(b.shape == (1, 3, 32, 40) and b.dtype == torch.float32 for b in batches)
    again = calibration_batches({"config": SYNTHETIC}, num_images=4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = calibration_batches({"config": SYNTHETIC}, num_images=4, seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))
    # Every crop is a window of a normalized training image (the evaluation transform, no resizing).
    train = build_dataset("synthetic", split="train", transform=eval_transform(), num_images=6, image_size=48)
    images = [train[i][0] for i in range(len(train))]
    for crop in batches:
        assert any((img.unfold(1, 32, 1).unfold(2, 40, 1) == crop[0][:, None, None]).all(0).flatten(2)
                   .all(-1).any() for img in images)
    # A split smaller than asked for gives all of its images; a larger crop is zero-padded (the mean colour).
    everything = calibration_batches({"config": {**SYNTHETIC, "crop_size": [64]}}, num_images=100)
    assert len(everything) == 6 and everything[0].shape == (1, 3, 64, 64)
    assert (everything[0][..., 48:, :] == 0).all()


def test_calibration_without_a_readable_dataset_is_refused(tmp_path):
    missing = {"config": {"dataset": "folder", "root": str(tmp_path / "gone"), "crop_size": [32]}}
    with pytest.raises(ValueError, match=r"'train' split of folder.*gone.*--calib-root"):
        calibration_batches(missing)
    write_folder(tmp_path / "moved")
    assert len(calibration_batches(missing, num_images=2, root=str(tmp_path / "moved"))) == 2
    with pytest.raises(ValueError, match="names none"):
        calibration_batches({"config": {}})
    with pytest.raises(ValueError, match="--calib-images must be >= 1"):
        calibration_batches({"config": SYNTHETIC}, num_images=0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.classifier(self.body(x))


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tools.runtime.export import export_onnx

    torch.manual_seed(0)
    model = Net().eval()
    path = tmp_path_factory.mktemp("quantize") / "net.onnx"
    export_onnx(model, str(path), example=torch.randn(2, 3, 40, 40), min_size=16)
    return model, path


@pytest.mark.parametrize("method", ["ort", "nncf"])
def test_quantizers_write_per_channel_qdq_and_keep_named_layers(fp32_file, tmp_path, method):
    if method == "nncf":
        pytest.importorskip("nncf")
    import onnx
    from onnx import numpy_helper

    model, path = fp32_file
    calibration = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    out = tmp_path / "net.int8.onnx"
    report = quantize_onnx(path, out, calibration, method=method, keep_last_conv=True)
    assert report.method == method and report.calibration_images == 4
    convs = conv_nodes(out)
    assert report.kept_fp32 == [convs[-1]] and report.quantized_convs == len(convs) - 1 == 2
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    for conv in graph.node:
        if conv.op_type != "Conv":
            continue
        weight = producers.get(conv.input[1])
        if conv.name == convs[-1]:  # left in fp32: its weight is a plain float tensor
            assert weight is None or weight.op_type != "DequantizeLinear"
            continue
        assert weight is not None and weight.op_type == "DequantizeLinear"
        q = weight.input[0] if weight.input[0] in inits else producers[weight.input[0]].input[0]
        scale = numpy_helper.to_array(inits[weight.input[1]])
        assert scale.size == 8, "weights are quantized per output channel"
        assert numpy_helper.to_array(inits[q]).dtype.itemsize == 1 or method == "nncf"
    x = torch.randn(1, 3, 32, 48)
    from tools.runtime.runners import load_runner

    with torch.no_grad():
        ref = model(x)
    got = load_runner(out, engine="onnxruntime")(x)
    assert torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1] > 0.95
    with pytest.raises(ValueError, match="not Conv nodes"):
        quantize_onnx(path, tmp_path / "bad.onnx", calibration, method=method, keep_fp32=["nope"])
