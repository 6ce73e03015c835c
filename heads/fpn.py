"""Semantic FPN head (Panoptic FPN's semantic branch, Kirillov et al. 2019).

A top-down feature pyramid (torchvision's ``FeaturePyramidNetwork``) over every given map, then one branch per
level of 3x3 conv-norm-ReLU blocks, each followed by 2x bilinear upsampling, until the level reaches the finest
map; the branches are summed and classified at the finest stride.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from backbones.base import FeatureSpec
from backbones.norm import get_norm_layer

from .base import Head, register_head
from .layers import check_head_norm, conv_norm_act, resize_to

__all__ = ["SemanticFPNHead"]


class UpsampleBranch(nn.Module):
    """``max(1, n)`` conv-norm-ReLU blocks, each of the first ``n`` followed by a bilinear upsampling.

    The first ``n - 1`` upsamplings double the size; the last one lands exactly on ``size`` (the finest map's),
    which 2x steps alone miss for odd input sizes.

    Shape: ``(N, C_in, h, w) -> (N, C_out, *size)``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_upsamples: int, *, norm: str) -> None:
        super().__init__()
        self.num_upsamples = num_upsamples
        count = max(1, num_upsamples)
        self.blocks = nn.ModuleList(
            [conv_norm_act(in_channels if i == 0 else out_channels, out_channels, 3, norm=norm) for i in range(count)])

    def forward(self, x: torch.Tensor, size: List[int]) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < self.num_upsamples - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            elif i == self.num_upsamples - 1:
                x = resize_to(x, size)
        return x


@register_head("fpn")
class SemanticFPNHead(Head):
    """Semantic FPN over all given maps, merged at the finest one.

    Args:
        feature_info: the backbone's feature_info; every map is used (typically strides 4, 8, 16, 32).
        num_classes: K >= 1.
        fpn_channels: width of the pyramid.
        channels: width of the per-level branches.
        dropout: dropout probability before the classifier.
        norm: "bn", "gn" or "sync_bn" (used in the pyramid and the branches).

    Shape: list of maps -> ``(N, K, h, w)`` at the finest map's size.
    """

    default_out_strides = (4, 8, 16, 32)
    head_name = "fpn"

    def __init__(self, *, feature_info: Sequence[FeatureSpec], num_classes: int, fpn_channels: int = 256,
                 channels: int = 128, dropout: float = 0.1, norm: str = "bn") -> None:
        super().__init__(feature_info=feature_info, num_classes=num_classes)
        check_head_norm(norm, self.head_name)
        self.logits_stride = self.feature_info[0].stride
        self.names = [str(i) for i in range(len(self.feature_info))]
        self.fpn = FeaturePyramidNetwork(self.in_channels, fpn_channels, norm_layer=get_norm_layer(norm))
        finest = self.feature_info[0].stride
        # Number of 2x steps from each level to the finest one; levels sharing a stride (dilated) need none.
        self.branches = nn.ModuleList([
            UpsampleBranch(fpn_channels, channels, round(math.log2(s.stride / finest)), norm=norm)
            for s in self.feature_info
        ])
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_features(features)
        inputs: Dict[str, torch.Tensor] = OrderedDict()
        for name, f in zip(self.names, features):
            inputs[name] = f
        pyramid = self.fpn(inputs)
        size = features[0].shape[-2:]
        outs: List[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            outs.append(branch(pyramid[self.names[i]], size))
        out = outs[0]
        for y in outs[1:]:
            out = out + y
        return self.classifier(self.dropout(out))
