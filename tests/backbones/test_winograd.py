"""Winograd F(4x4, 3x3): equal to F.conv2d (float64 reference) at every size, including sizes that are not
multiples of the tile and after the scratch buffers held larger data; which layers deploy() routes to it, with
the channel floor of the CPU's class."""

import importlib
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones import build_backbone, deploy
from backbones.packed import PackedConv2d
from heads import build_segmentor, list_heads
from backbones.machine import ISA_CLASSES, cpu_class
from backbones.winograd import (AVX2_MIN_CHANNELS, AVX512_MIN_CHANNELS, MIN_CHANNELS_BY_CLASS, is_eligible,
                                min_channels, release_workspace, transform_weight, winograd_conv3x3)
from tests.backbones.cpus import pretend_cpu  # noqa: F401
from tests.backbones.helpers import BF16_OK

packed_module = importlib.import_module("backbones.packed")
winograd_module = importlib.import_module("backbones.winograd")


def reference(x, weight, bias):
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)


def rel_err(out, ref):
    return float((out.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("shape", [(1, 8, 16, 12), (2, 8, 9, 10), (3, 8, 5, 7), (1, 8, 1, 1), (2, 8, 2, 13)])
@pytest.mark.parametrize("out_channels, with_bias", [(8, True), (24, False)])
def test_matches_conv2d(shape, out_channels, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    weight = torch.randn(out_channels, shape[1], 3, 3, generator=gen) / 6
    bias = torch.randn(out_channels, generator=gen) if with_bias else None
    out = winograd_conv3x3(x, transform_weight(weight), bias)
    assert out.shape == (shape[0], out_channels, *shape[2:])
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, reference(x, weight, bias)) < 5e-5


@pytest.mark.parametrize("chunk_bytes", [1, 36 * 8 * 4 * 20, 36 * 8 * 4 * 27, 36 * 8 * 4 * 45, 36 * 8 * 4 * 90])
def test_chunks_of_tile_rows_match_conv2d(monkeypatch, chunk_bytes):
    # 5 rows of 9 tiles per image, 3 images: one row per chunk (the minimum), then rows 2+2+1, then 3+2, then one
    # whole image per chunk, then images 2+1.
    monkeypatch.setattr(winograd_module, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 19, 35, generator=gen)
    weight = torch.randn(8, 8, 3, 3, generator=gen)
    bias = torch.randn(8, generator=gen)
    assert rel_err(winograd_conv3x3(x, transform_weight(weight), bias), reference(x, weight, bias)) < 5e-5


def test_reused_buffers_do_not_leak_between_calls():
    # A large call leaves non-zero data in the scratch buffers; a smaller one must still see zero padding.
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(8, 8, 3, 3, generator=gen)
    u = transform_weight(weight)
    big = torch.randn(2, 8, 30, 31, generator=gen) + 5
    small = torch.randn(1, 8, 7, 6, generator=gen).contiguous(memory_format=torch.channels_last)
    for x in (big, small, big, small):
        assert rel_err(winograd_conv3x3(x, u, None), reference(x, weight, None)) < 5e-5
    release_workspace()
    assert rel_err(winograd_conv3x3(small, u, None), reference(small, weight, None)) < 5e-5


def test_threads_have_their_own_buffers():
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(8, 8, 3, 3, generator=gen)
    u = transform_weight(weight)
    inputs = [torch.randn(1, 8, 20 + i, 17, generator=gen) for i in range(4)]
    errors = []

    def work(x):
        for _ in range(20):
            errors.append(rel_err(winograd_conv3x3(x, u, None), reference(x, weight, None)))

    threads = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 80 and max(errors) < 5e-5


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        transform_weight(torch.randn(4, 4, 5, 5))
    with pytest.raises(ValueError, match="input channels"):
        winograd_conv3x3(torch.randn(1, 3, 8, 8), transform_weight(torch.randn(4, 4, 3, 3)), None)


@pytest.mark.parametrize("conv, eligible", [
    (nn.Conv2d(AVX512_MIN_CHANNELS, AVX512_MIN_CHANNELS, 3, padding=1), True),
    (nn.Conv2d(256, 512, 3, padding=1, bias=False), True),
    (nn.Conv2d(64, 256, 3, padding=1), False),  # too narrow: the transforms cost more than they save
    (nn.Conv2d(128, 128, 3, padding=1), False),  # faster only while memory bandwidth is free
    (nn.Conv2d(256, 256, 3, stride=2, padding=1), False),
    (nn.Conv2d(256, 256, 3, padding=2, dilation=2), False),
    (nn.Conv2d(256, 256, 3, padding=1, groups=2), False),
    (nn.Conv2d(256, 256, 3, padding=0), False),
    (nn.Conv2d(256, 256, 1), False),
    (nn.Conv2d(256, 256, 3, padding=1, padding_mode="reflect"), False),
])
def test_eligibility(conv, eligible):
    assert is_eligible(conv, isa="avx512") is eligible  # the floor measured on AVX-512


def test_the_floor_is_a_table_per_cpu_class():
    assert set(MIN_CHANNELS_BY_CLASS) == set(ISA_CLASSES)
    assert {MIN_CHANNELS_BY_CLASS[c] for c in ("avx512", "avx512_bf16", "amx")} == {AVX512_MIN_CHANNELS} == {256}
    assert MIN_CHANNELS_BY_CLASS["avx2"] == AVX2_MIN_CHANNELS
    assert min_channels() == MIN_CHANNELS_BY_CLASS[cpu_class()]
    with pytest.raises(ValueError, match="isa must be one of baseline, avx2, avx512, avx512_bf16, amx, got 'neon'"):
        min_channels("neon")


@pytest.mark.parametrize("cpu, floor, layers", [
    ("zen3", 128, ["layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2", "layer3.0.conv2", "layer3.1.conv1",
                   "layer3.1.conv2"]),
    ("skylake_x", 128, ["layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2"]),
])
def test_deploy_takes_the_floor_of_the_cpu_class(monkeypatch, pretend_cpu, randomize, cpu, floor, layers):
    # A lower AVX2 floor (as a measurement may set it) reaches deploy() on an AVX2 CPU only.
    monkeypatch.setitem(MIN_CHANNELS_BY_CLASS, "avx2", floor)
    pretend_cpu(cpu)
    model = randomize(build_backbone("resnet18", out_strides=(8, 16)))
    assert winograd_layers(deploy(model)) == layers


def winograd_layers(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, PackedConv2d) and m.winograd)


def test_deploy_routes_wide_3x3_layers_in_fp32_only(monkeypatch, randomize):
    monkeypatch.setitem(MIN_CHANNELS_BY_CLASS, cpu_class(), 256)  # the layers below are those of a 256 floor
    model = randomize(build_backbone("resnet18", out_strides=(8, 16)))
    fast = deploy(model)
    assert winograd_layers(fast) == ["layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2"], "on by default"
    assert winograd_layers(deploy(model, winograd=True)) == winograd_layers(fast)
    calls = []
    real = packed_module.winograd_conv3x3
    monkeypatch.setattr(packed_module, "winograd_conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 3, 70, 50)
    with torch.no_grad():
        out, ref = fast(x), model.eval()(x)
    assert len(calls) == 3
    assert all(rel_err(o, r.double()) < 1e-4 for o, r in zip(out, ref))
    assert winograd_layers(deploy(model, winograd=False)) == []
    assert winograd_layers(deploy(fast, winograd=False)) == [], "deploying again must honour the new setting"
    if BF16_OK:
        assert winograd_layers(deploy(model, dtype=torch.bfloat16, winograd=True)) == []
    with pytest.raises(TypeError, match="winograd must be a bool"):
        deploy(model, winograd="yes")


def test_weight_changed_in_place_is_transformed_again():
    conv = nn.Conv2d(min_channels(), min_channels(), 3, padding=1)
    fast = deploy(conv, winograd=True)
    assert fast.winograd
    x = torch.randn(1, min_channels(), 9, 9)
    with torch.no_grad():
        fast(x)
        fast.weight.mul_(-2)
        assert rel_err(fast(x), reference(x, fast.weight, fast.bias)) < 5e-5


@pytest.mark.parametrize("head", list_heads())
def test_segmentation_models_deploy_with_winograd(head, randomize):
    model = randomize(build_segmentor(head=head, backbone="resnet18", num_classes=5, output_stride=16))
    fast = deploy(model)
    assert winograd_layers(fast), "some layer must take the Winograd path"
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        assert rel_err(fast(x), model.eval()(x).double()) < 1e-4
