"""torchvision detectors on our backbones: one training step, eval boxes, pyramid levels, frozen BN/stages."""

from __future__ import annotations

import pytest
import torch

from backbones import FrozenBatchNorm2d, build_backbone
from heads.detection import BackboneWithFPN, build_detector, list_detectors

# Score thresholds at 0 so a randomly initialised detector still returns its top candidates in eval mode.
ZERO_THRESH = {"retinanet": {"score_thresh": 0.0}, "fcos": {"score_thresh": 0.0},
               "fasterrcnn": {"box_score_thresh": 0.0}}
LEVELS = {"retinanet": ["layer2", "layer3", "layer4", "p6", "p7"], "fcos": ["layer2", "layer3", "layer4", "p6", "p7"],
          "fasterrcnn": ["layer1", "layer2", "layer3", "layer4", "pool"]}


def _sample():
    images = [torch.rand(3, 128, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 30.0, 100.0, 70.0]]),
                "labels": torch.tensor([1, 2])}]
    return images, targets


def test_detectors_are_listed():
    assert list_detectors() == ["fasterrcnn", "fcos", "retinanet"]


@pytest.mark.parametrize("name", ["retinanet", "fcos", "fasterrcnn"])
def test_train_step_and_eval_boxes(name):
    torch.manual_seed(0)
    model = build_detector(name, backbone="resnet18", num_classes=3, min_size=128, max_size=128,
                           fpn_channels=64, detector_kwargs=ZERO_THRESH[name])
    body = model.backbone
    assert isinstance(body, BackboneWithFPN) and body.level_names == LEVELS[name]
    # anchors: one entry per pyramid level, as torchvision requires
    anchor_gen = model.rpn.anchor_generator if name == "fasterrcnn" else model.anchor_generator
    assert len(anchor_gen.sizes) == len(body.level_names)

    images, targets = _sample()
    model.train()
    losses = model(images, targets)
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert body.body.conv1.weight.grad is not None and body.body.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert body.fpn.inner_blocks[0][0].weight.grad is not None

    model.eval()
    with torch.no_grad():
        (det,) = model(images)
    assert det["boxes"].ndim == 2 and det["boxes"].shape[1] == 4 and len(det["boxes"]) > 0
    assert det["labels"].shape == det["scores"].shape == det["boxes"].shape[:1]
    assert (det["boxes"][:, 2:] <= torch.tensor([112.0, 128.0])).all() and (det["boxes"] >= 0).all()


def test_frozen_bn_and_frozen_stages_pass_through():
    model = build_detector("fasterrcnn", backbone="resnet18", num_classes=3, min_size=128, max_size=128,
                           fpn_channels=32, norm="frozen_bn", frozen_stages=1)
    bb = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    model.train()
    assert not bb.layer1.training and bb.layer2.training
    images, targets = _sample()
    sum(model(images, targets).values()).backward()
    assert all(p.grad is None for p in bb.layer1.parameters()) and bb.conv1.weight.grad is None
    assert bb.layer2[0].conv1.weight.grad is not None


def test_pyramid_sizes_follow_level_strides():
    bb = build_backbone("resnet18", out_strides=(8, 16, 32))
    body = BackboneWithFPN(bb, out_channels=16, extra_blocks="p6p7").eval()
    assert body.level_strides == [8, 16, 32, 64, 128]
    with torch.no_grad():
        out = body(torch.randn(1, 3, 97, 131))
    assert list(out) == body.level_names
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 16, -(-97 // s), -(-131 // s)) for s in body.level_strides]


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_wrapped_backbone_detector_trains_and_detects(name):
    torch.manual_seed(0)
    model = build_detector("retinanet", backbone=name, num_classes=3, min_size=128, max_size=128, fpn_channels=32,
                           detector_kwargs=ZERO_THRESH["retinanet"])
    body = model.backbone
    assert body.level_strides == [8, 16, 32, 64, 128]
    with torch.no_grad():
        levels = body.eval()(torch.randn(1, 3, 128, 112))
    assert [tuple(v.shape) for v in levels.values()] == [(1, 32, -(-128 // s), -(-112 // s))
                                                         for s in body.level_strides]

    images, targets = _sample()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    # Gradients reach the wrapped network's stem and every stage it returns a map from.
    wrapped = body.body.model if name.startswith("timm:") else body.body.body
    for stage in ("conv1", "layer2", "layer3", "layer4"):
        grads = [p.grad for p in getattr(wrapped, stage).parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), stage
        assert sum(g.abs().sum() for g in grads) > 0, stage

    model.eval()
    with torch.no_grad():
        (det,) = model(images)
    assert det["boxes"].ndim == 2 and det["boxes"].shape[1] == 4 and len(det["boxes"]) > 0
    assert det["labels"].shape == det["scores"].shape == det["boxes"].shape[:1]
    assert ((det["labels"] >= 0) & (det["labels"] < 3)).all() and ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
    assert (det["boxes"][:, 2:] <= torch.tensor([112.0, 128.0])).all() and (det["boxes"] >= 0).all()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"name": "retina"}, ValueError, r"unknown detector 'retina'.*Did you mean: retinanet"),
    ({"name": "fcos", "output_stride": 16}, ValueError, r"strictly increasing strides.*output_stride=32"),
    ({"name": "fcos", "num_classes": 0}, ValueError, r"num_classes must be an int >= 1, got 0"),
    ({"name": "fcos", "detector_kwargs": {"anchor_generator": None}}, TypeError, r"must not contain"),
    ({"name": "fcos", "detector_kwargs": {"score_tresh": 0.1}}, TypeError, r"did you mean 'score_thresh'"),
])
def test_detector_errors(kwargs, error, match):
    kwargs = {"num_classes": 3, **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(error, match=match):
        build_detector(name, **kwargs)
