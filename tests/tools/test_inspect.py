"""The inspect tool: FLOP counts against a hand count, per-stage metadata, and the command line."""

import json
import math

import pytest

from backbones import build_backbone
from tools.inspect import main
from tools.bench.profiling import conv_flops, model_cost

BLOCKS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
          "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3))}


def hand_count(arch: str, height: int, width: int, *, output_stride: int = 32, fc: bool = False):
    """(conv + linear MACs, BatchNorm MACs) of a ResNet written out layer by layer, with BatchNorm counted as
    2 MACs per output element. Dilation does not change a convolution's cost (padding = dilation)."""
    kind, layers = BLOCKS[arch]
    conv = norm = 0

    def add_conv(cout, cin, k, h, w):
        nonlocal conv, norm
        conv += cout * cin * k * k * h * w
        norm += 2 * cout * h * w

    h, w = math.ceil(height / 2), math.ceil(width / 2)
    add_conv(64, 3, 7, h, w)
    h, w = math.ceil(h / 2), math.ceil(w / 2)  # max pool
    inp, stride_so_far = 64, 4
    for i, n in enumerate(layers):
        planes = 64 * 2 ** i
        stride = 1 if i == 0 else 2
        if stride_so_far >= output_stride:
            stride = 1
        stride_so_far *= stride
        for b in range(n):
            s = stride if b == 0 else 1
            ho, wo = math.ceil(h / s), math.ceil(w / s)
            out = planes if kind == "basic" else 4 * planes
            if kind == "basic":
                add_conv(planes, inp, 3, ho, wo)
                add_conv(planes, planes, 3, ho, wo)
            else:
                add_conv(planes, inp, 1, h, w)
                add_conv(planes, planes, 3, ho, wo)
                add_conv(out, planes, 1, ho, wo)
            if b == 0 and (s != 1 or inp != out):
                add_conv(out, inp, 1, ho, wo)
            inp, h, w = out, ho, wo
    if fc:
        conv += 1000 * inp
    return conv, norm


@pytest.mark.parametrize("arch, published", [("resnet18", 1.82), ("resnet50", 4.11)])
def test_classifier_networks_match_the_published_hand_counts(arch, published):
    torchvision = pytest.importorskip("torchvision")
    cost = model_cost(getattr(torchvision.models, arch)(), (1, 3, 224, 224), with_memory=False)
    conv, norm = hand_count(arch, 224, 224, fc=True)
    assert cost.total("conv_macs") == conv and cost.total("norm_macs") == norm
    assert round(cost.total("macs") / 1e9, 2) == published


@pytest.mark.parametrize("arch, output_stride, size", [("resnet18", 32, (224, 224)), ("resnet34", 16, (97, 131)),
                                                       ("resnet50", 8, (97, 131)), ("resnet101", 32, (64, 64))])
def test_backbone_counts_equal_the_hand_count(arch, output_stride, size):
    model = build_backbone(arch, out_strides=(4, 8, 16, 32), output_stride=output_stride)
    cost = model_cost(model, (1, 3, *size), with_memory=False)
    conv, norm = hand_count(arch, *size, output_stride=output_stride)
    assert (cost.total("conv_macs"), cost.total("norm_macs")) == (conv, norm)
    assert conv_flops(model, (2, 3, *size)) == 2 * 2 * conv  # batch 2, 2 FLOPs per MAC


def test_stage_rows_describe_output_stride_8():
    model = build_backbone("resnet50", output_stride=8)
    cost = model_cost(model, (2, 3, 128, 256))
    names = [s.name for s in cost.stages]
    assert names == ["conv1+bn1+relu+maxpool", "layer1", "layer2", "layer3", "layer4"]
    by_name = {s.name: s for s in cost.stages}
    assert [by_name[n].stride for n in names] == [4, 4, 8, 8, 8]
    assert [by_name[n].dilation for n in names] == [1, 1, 1, 2, 4]
    assert by_name["layer4"].out_shape == (2, 2048, 16, 32)
    assert by_name["layer4"].out_bytes == 2 * 2048 * 16 * 32 * 4
    assert cost.total("params") == sum(p.numel() for p in model.parameters())
    assert all(s.saved_bytes > 0 for s in cost.stages)
    # Dilating layer3/4 keeps their maps 4x/16x larger than at output stride 32, and so what they save.
    at32 = {s.name: s for s in model_cost(build_backbone("resnet50"), (2, 3, 128, 256)).stages}
    assert by_name["layer4"].saved_bytes > 10 * at32["layer4"].saved_bytes
    assert by_name["layer1"].saved_bytes == at32["layer1"].saved_bytes


def test_segmentation_model_rows_expand_the_backbone():
    pytest.importorskip("heads")
    from tools.tasks import build_named_model

    cost = model_cost(build_named_model("resnet18+deeplabv3plus", output_stride=16, num_classes=7),
                      (1, 3, 96, 96), with_memory=False)
    assert [s.name for s in cost.stages][:2] == ["backbone.conv1+bn1+relu+maxpool", "backbone.layer1"]
    assert cost.stages[-1].name == "head" and cost.stages[-1].out_shape == (1, 7, 24, 24)


def test_command_line(capsys, tmp_path):
    out_json = tmp_path / "cost.json"
    assert main(["resnet18", "--size", "224x224", "--out-strides", "4,8,16,32", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "1.82" in total  # GMAC of the backbone (no classifier) still rounds to the published figure
    report = json.loads(out_json.read_text())
    assert report[0]["conv_macs"] == hand_count("resnet18", 224, 224)[0]

    assert main(["resnet50", "--output-stride", "8,16,32", "--size", "256x512"]) == 0
    text = capsys.readouterr().out
    assert text.count(", output stride ") == 3 and "OS8:" in text and "relative to output stride 32" in text


@pytest.mark.parametrize("argv, message", [(["resnet18", "--size", "0x5"], "size"),
                                           (["resnet18", "--output-stride", "12"], "--output-stride"),
                                           (["resnet19"], "resnet18")])
def test_command_line_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
