"""PackedConv2d: equal to nn.Conv2d at several shapes and dtypes, repacked after in-place weight changes, and the
ordinary convolution wherever autograd or autocast is involved."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones import deploy
from backbones.packed import PackedConv2d
from backbones.winograd import min_channels
from tests.backbones.helpers import BF16_OK, rel_err


@pytest.mark.parametrize("conv", [nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, padding=2,
                                  dilation=2, groups=4), nn.Conv2d(16, 8, 1, bias=False)],
                         ids=["strided", "dilated-grouped", "1x1-nobias"])
def test_packed_conv_matches_conv2d(conv):
    packed = deploy(conv)
    assert type(packed) is PackedConv2d
    for shape in [(1, 16, 33, 47), (3, 16, 20, 20), (1, 16, 33, 47)]:
        x = torch.randn(shape)
        with torch.no_grad():
            out = packed(x)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert rel_err(out, conv(x)) < 1e-5
    if BF16_OK:
        packed16 = deploy(conv, dtype=torch.bfloat16)
        with torch.no_grad():
            assert rel_err(packed16(x.bfloat16()), conv(x)) < 2e-2


def test_packed_conv_follows_weight_changes_and_falls_back_for_autograd():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    packed = deploy(conv)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        packed(x)
        packed.weight.mul_(2)  # in place: the packed copy must be refreshed
        assert rel_err(packed(x), F.conv2d(x, packed.weight, packed.bias, padding=1)) < 1e-5
    # Input gradients (saliency maps) take the ordinary, differentiable path.
    x.requires_grad_(True)
    packed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed(x).dtype == torch.bfloat16  # autocast is honoured (ordinary path)


@pytest.mark.parametrize("channels, size", [(16, (9, 11)), (256, (8, 12)), (256, (9, 10))],
                         ids=["direct", "winograd-whole-tiles", "winograd-partial-tiles"])
def test_fused_relu_and_residual_equal_the_separate_ops(channels, size):
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    packed = deploy(conv)
    assert packed.winograd == (channels >= min_channels())
    packed.fused_relu = True
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, *size, generator=gen)
    residual = torch.randn(2, channels, *size, generator=gen)
    with torch.no_grad():
        ref = conv(x)
        assert rel_err(packed(x), F.relu(ref)) < 5e-5
        assert rel_err(packed.forward_add(x, residual), F.relu(ref + residual)) < 5e-5
        packed.fused_relu = False
        assert rel_err(packed.forward_add(x, residual), ref + residual) < 5e-5
    packed.fused_relu = True
    x.requires_grad_(True)  # the ordinary path computes the same function
    assert rel_err(packed.forward_add(x, residual).detach(), F.relu(ref + residual)) < 1e-5
    if BF16_OK and channels < 256:
        packed16 = deploy(conv, dtype=torch.bfloat16)
        packed16.fused_relu = True
        with torch.no_grad():
            out = packed16.forward_add(x.detach().bfloat16(), residual.bfloat16())
        assert out.dtype == torch.bfloat16 and rel_err(out, F.relu(ref + residual)) < 2e-2
