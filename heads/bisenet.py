"""BiSeNet V1 head (Yu et al. 2018): the context path on the stride-8/16/32 maps and the feature fusion module.

The backbone's stride-8 map stands in for the spatial path (the classic ResNet-18 BiSeNet layout). The stride-32
map gets the global context (image pooling) and attention refinement; it is upsampled onto the refined stride-16
map, and the result onto the stride-8 map, where the feature fusion module merges both paths.

The attention and global-context branches act on pooled 1x1 maps, so they use a conv bias instead of BatchNorm
(BatchNorm would fail there with batch size 1 in training mode).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import FeatureSpec

from .base import Head, register_head
from .layers import ImagePooling, check_head_norm, conv_norm_act

__all__ = ["AttentionRefinement", "FeatureFusion", "BiSeNetHead"]


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class AttentionRefinement(nn.Module):
    """3x3 conv-norm-ReLU, then reweight channels by ``sigmoid(1x1 conv(global mean))``.

    Shape: ``(N, in_channels, h, w) -> (N, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str) -> None:
        super().__init__()
        self.conv = conv_norm_act(in_channels, out_channels, 3, norm=norm)
        self.attention = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * torch.sigmoid(self.attention(x.mean((2, 3), keepdim=True)))


class FeatureFusion(nn.Module):
    """Concatenate the two paths, 1x1 conv-norm-ReLU, then ``y + y * SE-style channel attention(y)``.

    Shape: ``(N, C_a, h, w), (N, C_b, h, w) -> (N, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, reduction: int = 4, norm: str) -> None:
        super().__init__()
        self.conv = conv_norm_act(in_channels, out_channels, 1, norm=norm)
        hidden = max(1, out_channels // reduction)
        self.attention = nn.Sequential(
            nn.Conv2d(out_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out_channels, 1))

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.cat([spatial, context], dim=1))
        return y + y * torch.sigmoid(self.attention(y.mean((2, 3), keepdim=True)))


@register_head("bisenet")
class BiSeNetHead(Head):
    """BiSeNet V1 context path + feature fusion + output block on the nominal stride-8/16/32 maps.

    Args:
        feature_info: the backbone's feature_info; needs maps at nominal strides 8, 16 and 32.
        num_classes: K >= 1.
        context_channels: width of the context path (128 in the paper's ResNet-18 model).
        channels: width of the fused features and the output block (256).
        norm: "bn", "gn" or "sync_bn".

    Shape: list of maps -> ``(N, K, h, w)`` at the stride-8 map's size.
    """

    default_out_strides = (8, 16, 32)
    head_name = "bisenet"

    def __init__(self, *, feature_info: Sequence[FeatureSpec], num_classes: int, context_channels: int = 128,
                 channels: int = 256, norm: str = "bn") -> None:
        super().__init__(feature_info=feature_info, num_classes=num_classes)
        check_head_norm(norm, self.head_name)
        request = (8, 16, 32)
        self.index8 = self.find_map(8, need="the spatial path and the fusion", request=request)
        self.index16 = self.find_map(16, need="attention refinement", request=request)
        self.index32 = self.find_map(32, need="attention refinement and the global context", request=request)
        self.logits_stride = self.feature_info[self.index8].stride
        c8, c16, c32 = (self.in_channels[i] for i in (self.index8, self.index16, self.index32))
        self.global_context = ImagePooling(c32, context_channels)
        self.arm32 = AttentionRefinement(c32, context_channels, norm=norm)
        self.arm16 = AttentionRefinement(c16, context_channels, norm=norm)
        self.refine32 = conv_norm_act(context_channels, context_channels, 3, norm=norm)
        self.refine16 = conv_norm_act(context_channels, context_channels, 3, norm=norm)
        self.fusion = FeatureFusion(c8 + context_channels, channels, norm=norm)
        self.out_conv = conv_norm_act(channels, channels, 3, norm=norm)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_features(features)
        f8, f16, f32 = features[self.index8], features[self.index16], features[self.index32]
        c32 = self.arm32(f32) + self.global_context(f32)
        c16 = self.arm16(f16) + self.refine32(_upsample(c32, f16))
        c8 = self.refine16(_upsample(c16, f8))
        return self.classifier(self.out_conv(self.fusion(f8, c8)))
