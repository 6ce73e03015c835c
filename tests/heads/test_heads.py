"""Segmentation heads: the head x backbone x output-stride matrix, head metadata, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backbones import FeatureInfo, FeatureSpec, build_backbone
from heads import build_head, build_segmentor, head_out_strides, list_heads
from heads.aspp import aspp_rates

HEADS = list_heads()


def test_registry_lists_the_five_heads():
    assert HEADS == ["bisenet", "deeplabv3", "deeplabv3plus", "fcn", "fpn"]


def _assert_every_parameter_has_a_finite_grad(model: nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"


# resnet18 at the odd size 97x131; resnet50 (heavier) at a smaller odd size.
@pytest.mark.parametrize("backbone, size", [("resnet18", (97, 131)), ("resnet50", (37, 45))])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("head", HEADS)
def test_head_matrix_shapes_gradients_batch_size_one(head, backbone, size, output_stride):
    torch.manual_seed(0)
    model = build_segmentor(head=head, backbone=backbone, num_classes=3, output_stride=output_stride)
    assert [s.stride for s in model.backbone.feature_info] == [
        min(s, output_stride) for s in head_out_strides(head)]
    x = torch.randn(1, 3, *size)  # batch size 1 in training mode: image pooling must not hit BatchNorm
    out = model.train()(x)
    assert out.shape == (1, 3, *size)
    out.square().mean().backward()
    _assert_every_parameter_has_a_finite_grad(model)

    with torch.no_grad():
        features = model.backbone.eval()(x)
        logits = model.head.eval()(features)
        assert model.eval()(x).shape == (1, 3, *size)
    stride = model.head.logits_stride
    assert logits.shape == (1, 3, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("backbone, kwargs", [
    ("timm:efficientnet_b0", {}),
    ("torchvision:resnet50", {"output_stride": 16}),
])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_works_with_wrapped_backbones(head, backbone, kwargs):
    model = build_segmentor(head=head, backbone=backbone, num_classes=4, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 37, 45)).shape == (2, 4, 37, 45)


@pytest.mark.parametrize("head", HEADS)
def test_heads_script_and_match_eager(head):
    model = build_segmentor(head=head, backbone="resnet18", num_classes=2, output_stride=16).eval()
    x = torch.randn(1, 3, 41, 53)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("output_stride, rates", [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
@pytest.mark.parametrize("head", ["deeplabv3", "deeplabv3plus"])
def test_aspp_rates_scale_with_output_stride(head, output_stride, rates):
    bb = build_backbone("resnet18", out_strides=(4, 32), output_stride=output_stride)
    h = build_head(head, feature_info=bb.feature_info, num_classes=2)
    assert h.atrous_rates == rates == aspp_rates(output_stride)
    dilated = [m.dilation[0] for m in h.aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert dilated == list(rates)


def test_explicit_atrous_rates_and_group_norm():
    bb = build_backbone("resnet18", out_strides=(4, 32))
    h = build_head("deeplabv3plus", feature_info=bb.feature_info, num_classes=2, atrous_rates=(1, 2), norm="gn")
    assert h.atrous_rates == (1, 2)
    assert any(isinstance(m, nn.GroupNorm) for m in h.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in h.modules())


def test_deeplabv3plus_prefers_stride_4_and_falls_back_to_stride_8():
    bb4 = build_backbone("resnet18", out_strides=(4, 8, 32))
    assert build_head("deeplabv3plus", feature_info=bb4.feature_info, num_classes=2).low_index == 0
    bb8 = build_backbone("resnet18", out_strides=(8, 32))
    h8 = build_head("deeplabv3plus", feature_info=bb8.feature_info, num_classes=2)
    assert h8.low_index == 0 and h8.logits_stride == 8


def test_fcn_in_index_selects_the_map():
    bb = build_backbone("resnet18", out_strides=(8, 16, 32))
    h = build_head("fcn", feature_info=bb.feature_info, num_classes=5, in_index=1)
    feats = [torch.randn(1, c, 9, 9) for c in bb.feature_info.channels]
    assert h.eval()(feats).shape == (1, 5, 9, 9)
    assert h.logits_stride == 16


def test_head_accepts_plain_sequence_of_specs():
    specs = [FeatureSpec("a", 16, 8), FeatureSpec("b", 32, 16), FeatureSpec("c", 64, 32)]
    h = build_head("bisenet", feature_info=specs, num_classes=3)
    assert isinstance(h.feature_info, FeatureInfo)
    out = h.eval()([torch.randn(1, 16, 12, 10), torch.randn(1, 32, 6, 5), torch.randn(1, 64, 3, 3)])
    assert out.shape == (1, 3, 12, 10)


# --- bad inputs --------------------------------------------------------------------------------------------

INFO = FeatureInfo([FeatureSpec("layer1", 64, 4), FeatureSpec("layer2", 128, 8), FeatureSpec("layer3", 256, 16),
                    FeatureSpec("layer4", 512, 32)])


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_bad_num_classes(head, num_classes):
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1"):
        build_head(head, feature_info=INFO, num_classes=num_classes)


@pytest.mark.parametrize("head", HEADS)
def test_wrong_feature_list_names_expected_and_got(head):
    h = build_head(head, feature_info=INFO, num_classes=2).eval()
    feats = [torch.randn(1, c, 8, 8) for c in INFO.channels]
    with pytest.raises(ValueError, match=r"built for 4 maps with channels \[64, 128, 256, 512\].*got 3 maps"):
        h(feats[1:])
    feats[2] = torch.randn(1, 255, 8, 8)
    with pytest.raises(ValueError, match=r"channels \[64, 128, 256, 512\].*got 4 maps with channels \[64, 128, 255"):
        h(feats)


def test_unknown_head_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown head 'deeplab3'.*Did you mean: deeplabv3"):
        build_head("deeplab3", feature_info=INFO, num_classes=2)
    with pytest.raises(ValueError, match=r"unknown head 'fnp'.*Did you mean:.*fpn"):
        build_segmentor(head="fnp", backbone="resnet18", num_classes=2)


def test_unknown_head_kwarg_is_a_type_error():
    with pytest.raises(TypeError, match=r"'chanels' \(did you mean 'channels'\?\)"):
        build_head("fpn", feature_info=INFO, num_classes=2, chanels=64)


@pytest.mark.parametrize("head, strides, request_", [
    ("deeplabv3plus", (16, 32), r"out_strides=\(4, 32\)"),
    ("deeplabv3plus", (4,), r"out_strides=\(4, 32\)"),
    ("bisenet", (16, 32), r"out_strides=\(8, 16, 32\)"),
    ("bisenet", (8, 16), r"out_strides=\(8, 16, 32\)"),
])
def test_head_missing_a_map_names_out_strides(head, strides, request_):
    bb = build_backbone("resnet18", out_strides=strides)
    with pytest.raises(ValueError, match=request_):
        build_head(head, feature_info=bb.feature_info, num_classes=2)
    with pytest.raises(ValueError, match=request_):
        build_segmentor(head=head, backbone="resnet18", num_classes=2, out_strides=strides)


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "frozen_bn"}, r"norm must be one of 'bn', 'gn', 'sync_bn', got 'frozen_bn'"),
    ({"atrous_rates": (0, 6)}, r"atrous_rates must be positive ints"),
    ({"low_level_stride": 16}, r"low_level_stride must be 4, 8 or None, got 16"),
])
def test_bad_head_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_head("deeplabv3plus", feature_info=INFO, num_classes=2, **kwargs)


def test_feature_info_must_be_feature_specs():
    with pytest.raises(TypeError, match=r"FeatureInfo"):
        build_head("fcn", feature_info="layer4", num_classes=2)
    with pytest.raises(ValueError, match=r"in_index must be an int in \[-4, 3\]"):
        build_head("fcn", feature_info=INFO, num_classes=2, in_index=4)
