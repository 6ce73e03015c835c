"""SegmentationModel and build_segmentor: sizes, auxiliary head, requested strides, composition errors."""

from __future__ import annotations

import pytest
import torch

from backbones import FrozenBatchNorm2d, build_backbone
from heads import SegmentationModel, build_head, build_segmentor, list_heads
from heads.fcn import FCNHead


def test_output_is_at_input_size():
    model = build_segmentor(head="fcn", backbone="resnet18", num_classes=3).eval()
    with torch.no_grad():
        for size in [(97, 131), (64, 64), (1, 1), (33, 7)]:
            assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


@pytest.mark.parametrize("head", list_heads())
def test_fx_symbolic_trace_equals_eager(head):
    model = build_segmentor(head=head, backbone="resnet18", num_classes=3, output_stride=16, aux_head=True,
                            head_kwargs={"channels": 32}).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    with pytest.raises(ValueError, match="head was built for"):  # real calls keep the head's feature check
        model.head([torch.randn(1, 5, 8, 8)])


def test_aux_head_only_in_training_and_on_stride_16():
    model = build_segmentor(head="deeplabv3plus", backbone="resnet18", num_classes=4, aux_head=True)
    assert [s.stride for s in model.backbone.feature_info] == [4, 16, 32]  # (4, 32) + 16 for the aux head
    assert isinstance(model.aux_head, FCNHead) and model.aux_head.in_index == 1
    x = torch.randn(1, 3, 45, 61)
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and out["out"].shape == out["aux"].shape == (1, 4, 45, 61)
    out["aux"].sum().backward()  # the aux loss reaches layer3 but not layer4
    assert model.backbone.layer3[0].conv1.weight.grad is not None
    assert model.backbone.layer4[0].conv1.weight.grad is None
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 4, 45, 61)
    assert build_segmentor(head="fcn", backbone="resnet18", num_classes=4).train()(x).shape == (1, 4, 45, 61)


def test_aux_head_with_dilated_backbone_finds_layer3():
    model = build_segmentor(head="fcn", backbone="resnet18", num_classes=2, output_stride=8, aux_head=True)
    assert [s.stride for s in model.backbone.feature_info] == [8, 8]
    assert model.aux_head.in_index == 0
    assert model.num_classes == 2


def test_requested_strides_and_user_override():
    fpn = build_segmentor(head="fpn", backbone="resnet18", num_classes=2)
    assert fpn.backbone.feature_info.strides == [4, 8, 16, 32]
    bisenet = build_segmentor(head="bisenet", backbone="resnet18", num_classes=2)
    assert bisenet.backbone.feature_info.strides == [8, 16, 32]
    model = build_segmentor(head="fpn", backbone="resnet18", num_classes=2, out_strides=(8, 16, 32))
    assert model.backbone.feature_info.strides == [8, 16, 32]
    assert model.head.logits_stride == 8


def test_backbone_kwargs_pass_through():
    model = build_segmentor(head="deeplabv3", backbone="resnet50", num_classes=2, output_stride=16,
                            norm="frozen_bn", frozen_stages=2, head_kwargs={"channels": 32})
    assert model.backbone.feature_info.strides == [16]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.layer2.parameters())
    assert model.head.aspp.branches[0][0].out_channels == 32


def test_prebuilt_backbone_is_used_as_is():
    bb = build_backbone("resnet18", out_strides=(4, 32))
    model = build_segmentor(head="deeplabv3plus", backbone=bb, num_classes=2)
    assert model.backbone is bb
    with pytest.raises(TypeError, match=r"apply only when backbone is a name"):
        build_segmentor(head="deeplabv3plus", backbone=bb, num_classes=2, output_stride=16)


def test_composition_errors():
    bb = build_backbone("resnet18", out_strides=(16, 32))
    other = build_backbone("resnet18", out_strides=(8, 32))
    with pytest.raises(ValueError, match=r"head was built for .*layer2.* but the backbone provides .*layer3"):
        SegmentationModel(bb, build_head("fcn", feature_info=other.feature_info, num_classes=2))
    aux = FCNHead(feature_info=bb.feature_info, num_classes=3, in_index=0)
    with pytest.raises(ValueError, match=r"aux_head predicts 3 classes but head predicts 2"):
        SegmentationModel(bb, build_head("fcn", feature_info=bb.feature_info, num_classes=2), aux)
    with pytest.raises(TypeError, match=r"feature_info"):
        SegmentationModel(torch.nn.Conv2d(3, 3, 1), build_head("fcn", feature_info=bb.feature_info, num_classes=2))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_classes": 0}, ValueError, r"num_classes must be an int >= 1, got 0"),
    ({"num_classes": 2, "aux_head": True, "out_strides": (8, 32)}, ValueError, r"include 16 in out_strides"),
    ({"num_classes": 2, "aux_head": "yes"}, TypeError, r"aux_head must be True or False"),
    ({"num_classes": 2, "head_kwargs": {"num_classes": 3}}, TypeError, r"must not contain 'num_classes'"),
    ({"num_classes": 2, "ouput_stride": 8}, TypeError, r"did you mean 'output_stride'"),
    ({"num_classes": 2, "backbone": "resnet81"}, ValueError, r"unknown backbone 'resnet81'"),
])
def test_build_segmentor_errors(kwargs, error, match):
    kwargs = {"head": "fcn", "backbone": "resnet18", **kwargs}
    with pytest.raises(error, match=match):
        build_segmentor(**kwargs)
