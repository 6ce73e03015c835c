"""dense-backbones: ResNet feature extractors for dense prediction behind one registry.

Example::

    from backbones import build_backbone
    bb = build_backbone("resnet18", out_strides=(8, 16, 32))
    f8, f16, f32 = bb(images)   # list of tensors, shallow to deep
    bb.feature_info             # channels and actual stride of each map
"""

from . import wrappers  # noqa: F401  (registers the "timm:" and "torchvision:" prefixes)
from .base import Backbone, FeatureInfo, FeatureSpec
from .deploy import deploy
from .machine import MachineInfo, machine_info
from .norm import FrozenBatchNorm2d, freeze_batchnorm, unfreeze_batchnorm
from .param_groups import param_groups
from .registry import MissingExtraError, UsageError, build_backbone, list_backbones, register_backbone
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .weights import load_pretrained

__all__ = [
    "Backbone", "FeatureInfo", "FeatureSpec",
    "FrozenBatchNorm2d", "freeze_batchnorm", "unfreeze_batchnorm",
    "MissingExtraError", "UsageError", "build_backbone", "list_backbones", "register_backbone",
    "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "load_pretrained", "param_groups", "deploy", "MachineInfo", "machine_info",
]
