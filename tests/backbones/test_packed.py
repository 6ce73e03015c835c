"""PackedConv2d: equal to nn.Conv2d at several shapes and dtypes, repacked after in-place weight changes, and the
ordinary convolution wherever autograd or autocast is involved."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones import deploy
from backbones.packed import PackedConv2d
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
