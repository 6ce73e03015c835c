"""timm: and torchvision: backbones: conformance, actual strides, equivalence with our ResNet, errors."""

from __future__ import annotations

import pytest
import torch

from backbones import FrozenBatchNorm2d, build_backbone
from backbones.testing import check_backbone
from backbones.wrappers import TimmBackbone

from tests.conftest import randomize_norms, save_state_dict

# Small inputs keep the conformance checks fast; one odd size exercises ceil rounding.
SIZES = ((1, 3, 37, 45), (2, 3, 32, 32))


@pytest.mark.parametrize("name, kwargs, strides, dilations", [
    ("timm:resnet18", {}, [8, 16, 32], [1, 1, 1]),
    ("timm:resnet18", {"output_stride": 8}, [8, 8, 8], [1, 2, 4]),
    ("timm:efficientnet_b0", {"output_stride": 16}, [8, 16, 16], [1, 1, 2]),
    ("torchvision:resnet18", {"out_strides": (2, 4, 8, 16, 32)}, [2, 4, 8, 16, 32], [1, 1, 1, 1, 1]),
    ("torchvision:resnet50", {"out_strides": (4, 16, 32), "output_stride": 8}, [4, 8, 8], [1, 2, 4]),
])
def test_wrapper_conforms_with_actual_strides(name, kwargs, strides, dilations):
    bb = build_backbone(name, **kwargs)
    assert bb.feature_info.strides == strides
    assert [s.dilation for s in bb.feature_info] == dilations
    check_backbone(bb, sizes=SIZES)


def test_timm_floor_size_model_is_padded_to_honour_ceil_sizes():
    # ConvNeXt's 4x4/stride-4 stem floors odd sizes; the wrapper pads and crops so the contract still holds.
    bb = build_backbone("timm:convnext_atto", out_strides=(4, 8, 16, 32))
    assert isinstance(bb, TimmBackbone) and bb.pad_multiple == 32
    check_backbone(bb, sizes=SIZES, check_grads=False)
    x = torch.randn(1, 3, 64, 96)  # a multiple of 32: padding is a no-op, outputs equal timm's own
    with torch.no_grad():
        ours, theirs = bb.eval()(x), bb.model(x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_timm_resnet_equals_our_resnet_on_same_weights(tmp_path):
    bb = randomize_norms(build_backbone("timm:resnet18", output_stride=8)).eval()
    path = save_state_dict(bb.model.state_dict(), tmp_path / "timm_r18.pth")
    ours = build_backbone("resnet18", output_stride=8, pretrained=str(path)).eval()
    assert ours.feature_info.strides == bb.feature_info.strides
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        for a, b in zip(ours(x), bb(x)):
            torch.testing.assert_close(a, b)


def test_torchvision_resnet50_equals_our_resnet50_on_same_weights(tmp_path):
    bb = randomize_norms(build_backbone("torchvision:resnet50", out_strides=(4, 16, 32), output_stride=16)).eval()
    path = save_state_dict(bb.body.state_dict(), tmp_path / "tv_r50.pth")
    ours = build_backbone("resnet50", out_strides=(4, 16, 32), output_stride=16, pretrained=str(path)).eval()
    assert ours.feature_info == bb.feature_info
    x = torch.randn(1, 3, 65, 47)
    with torch.no_grad():
        for a, b in zip(ours(x), bb(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_torchvision_frozen_bn_and_frozen_stages():
    bb = build_backbone("torchvision:resnet18", norm="frozen_bn", frozen_stages=1).train()
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert not any(p.requires_grad for p in bb.body.layer1.parameters())
    assert all(p.requires_grad for p in bb.body.layer2.parameters())
    assert not bb.body.layer1.training and bb.body.layer2.training
    check_backbone(bb, sizes=SIZES)


def test_timm_frozen_bn_converts_every_batchnorm():
    bb = build_backbone("timm:resnet18", norm="frozen_bn")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("timm:resnet81", {}, ValueError, r"unknown timm model 'resnet81'.*resnet18"),
    ("timm:resnet18", {"out_strides": (8, 64)}, ValueError, r"\(2, 4, 8, 16, 32\).*\[64\]"),
    ("timm:resnet18", {"output_stride": 4}, ValueError, r"output_stride must be 8, 16 or 32, got 4"),
    ("timm:resnet18", {"norm": "gn"}, ValueError, r"'bn' or 'frozen_bn', got 'gn'"),
    ("torchvision:resnet5", {}, ValueError, r"unknown torchvision ResNet 'resnet5'.*resnet50"),
    ("torchvision:resnet18", {"output_stride": 16}, ValueError, r"BasicBlock.*build_backbone\('resnet18'"),
    ("torchvision:resnet50", {"out_strides": (32, 8)}, ValueError, r"increasing"),
    ("torchvision:resnet18", {"outstrides": (8,)}, TypeError, r"did you mean 'out_strides'"),
    ("torchvision:resnet18", {"frozen_stages": 5}, ValueError, r"frozen_stages must be an int from -1 to 4"),
    ("nosuch:resnet18", {}, ValueError, r"unknown backbone prefix 'nosuch'.*timm, torchvision"),
])
def test_wrapper_errors(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_backbone(name, **kwargs)
