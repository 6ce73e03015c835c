"""The models the benchmark times: a name to a model, and the smallest input it is meant for."""

from __future__ import annotations

from typing import Any, Dict

from torch import nn

from heads.base import nominal_strides

from ..tasks import build_named_model

__all__ = ["NUM_CLASSES", "build", "check_size", "min_size"]

NUM_CLASSES = 19  # Cityscapes-sized heads


def build(spec: str, *, output_stride: int, checkpoint: bool = False) -> nn.Module:
    """``"resnet50"`` -> our backbone (strides 4-32); ``"resnet50+fpn"`` -> a SegmentationModel."""
    kwargs: Dict[str, Any] = {"checkpoint_stages": True} if checkpoint else {}
    return build_named_model(spec, output_stride=output_stride, num_classes=NUM_CLASSES,
                             out_strides=None if "+" in spec else (4, 8, 16, 32), **kwargs)


def min_size(model: nn.Module) -> int:
    """Smallest input side the network is meant for: its largest stride in the undilated network."""
    backbone = getattr(model, "backbone", model)
    return max(nominal_strides(backbone.feature_info))


def check_size(model: nn.Module, spec: str, height: int, width: int) -> None:
    smallest = min_size(model)
    if min(height, width) < smallest:
        raise ValueError(f"--size {height}x{width} is smaller than {spec}'s minimum input side {smallest} (its "
                         f"largest stride); use at least --size {smallest}x{smallest}")
