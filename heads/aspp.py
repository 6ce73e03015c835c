"""DeepLabV3 (ASPP with image pooling) and DeepLabV3+ (ASPP + low-level skip) heads.

ASPP rates follow the map's actual stride: 6/12/18 at stride 16, 12/24/36 at stride 8 (the papers), and 3/6/9 at
stride 32 (the same receptive field in input pixels, i.e. ``rate = r16 * 16 / stride``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from backbones.base import FeatureSpec

from .base import Head, nominal_strides, register_head
from .layers import ImagePooling, check_head_norm, conv_norm_act, resize_to

__all__ = ["ASPP", "DeepLabV3Head", "DeepLabV3PlusHead", "aspp_rates"]

RATES_AT_16 = (6, 12, 18)


def aspp_rates(stride: int, rates_at_16: Sequence[int] = RATES_AT_16) -> Tuple[int, ...]:
    """Atrous rates for a map of actual ``stride``: ``rates_at_16`` scaled by ``16 / stride`` (at least 1)."""
    return tuple(max(1, round(r * 16 / stride)) for r in rates_at_16)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch, fused by a 1x1.

    Shape: ``(N, in_channels, h, w) -> (N, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], *, norm: str = "bn",
                 dropout: float = 0.1) -> None:
        super().__init__()
        branches: List[nn.Module] = [conv_norm_act(in_channels, out_channels, 1, norm=norm)]
        branches += [conv_norm_act(in_channels, out_channels, 3, dilation=r, norm=norm) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            conv_norm_act(out_channels * len(branches), out_channels, 1, norm=norm), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def _check_rates(rates: Optional[Sequence[int]], stride: int, head: str) -> Tuple[int, ...]:
    if rates is None:
        return aspp_rates(stride)
    rates = tuple(rates)
    if not rates or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates):
        raise ValueError(f"{head} head: atrous_rates must be positive ints, got {rates!r}")
    return rates


@register_head("deeplabv3")
class DeepLabV3Head(Head):
    """DeepLabV3: ASPP on the deepest map, a 3x3 conv and a 1x1 classifier.

    Args:
        feature_info: the backbone's feature_info; only the deepest map is used.
        num_classes: K >= 1.
        channels: ASPP width.
        atrous_rates: dilation rates of the 3x3 branches; default scales with the deepest map's stride
            (6/12/18 at 16, 12/24/36 at 8, 3/6/9 at 32).
        norm: "bn", "gn" or "sync_bn" (the image-pooling branch has none, so batch size 1 trains).

    Shape: list of maps -> ``(N, K, h, w)`` at the deepest map's size.
    """

    default_out_strides = (32,)
    head_name = "deeplabv3"

    def __init__(self, *, feature_info: Sequence[FeatureSpec], num_classes: int, channels: int = 256,
                 atrous_rates: Optional[Sequence[int]] = None, norm: str = "bn") -> None:
        super().__init__(feature_info=feature_info, num_classes=num_classes)
        check_head_norm(norm, self.head_name)
        self.atrous_rates = _check_rates(atrous_rates, self.feature_info[-1].stride, self.head_name)
        self.aspp = ASPP(self.in_channels[-1], channels, self.atrous_rates, norm=norm)
        self.conv = conv_norm_act(channels, channels, 3, norm=norm)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_features(features)
        return self.classifier(self.conv(self.aspp(features[-1])))


@register_head("deeplabv3plus")
class DeepLabV3PlusHead(Head):
    """DeepLabV3+: ASPP on the deepest map, upsampled and fused with a low-level map (stride 4, else 8).

    Args:
        feature_info: the backbone's feature_info; uses the deepest map and the low-level map.
        num_classes: K >= 1.
        channels: ASPP and decoder width.
        low_level_stride: nominal stride of the skip map, 4 or 8; ``None`` picks 4 if present, else 8.
        low_level_channels: width the skip is projected to (48 in the paper).
        atrous_rates: see :class:`DeepLabV3Head`.
        norm: "bn", "gn" or "sync_bn".

    Shape: list of maps -> ``(N, K, h, w)`` at the low-level map's size.
    """

    default_out_strides = (4, 32)
    head_name = "deeplabv3plus"

    def __init__(self, *, feature_info: Sequence[FeatureSpec], num_classes: int, channels: int = 256,
                 low_level_stride: Optional[int] = None, low_level_channels: int = 48,
                 atrous_rates: Optional[Sequence[int]] = None, norm: str = "bn") -> None:
        super().__init__(feature_info=feature_info, num_classes=num_classes)
        check_head_norm(norm, self.head_name)
        if low_level_stride not in (None, 4, 8):
            raise ValueError(f"deeplabv3plus head: low_level_stride must be 4, 8 or None, got {low_level_stride!r}")
        request = (low_level_stride or 4, 32)
        if low_level_stride is None:
            low_level_stride = 4 if 4 in nominal_strides(self.feature_info) else 8
        self.low_index = self.find_map(low_level_stride, need="its low-level skip (a stride-4 or stride-8 map)",
                                       request=request)
        if self.low_index == len(self.feature_info) - 1:
            raise ValueError(
                f"deeplabv3plus head needs a deeper map than its stride-{low_level_stride} skip for the ASPP, but "
                f"that is the deepest map ({self.feature_info!r}); build the backbone with "
                f"out_strides=({low_level_stride}, 32)"
            )
        self.logits_stride = self.feature_info[self.low_index].stride
        self.atrous_rates = _check_rates(atrous_rates, self.feature_info[-1].stride, self.head_name)
        self.aspp = ASPP(self.in_channels[-1], channels, self.atrous_rates, norm=norm)
        self.low_level = conv_norm_act(self.in_channels[self.low_index], low_level_channels, 1, norm=norm)
        self.fuse = nn.Sequential(
            conv_norm_act(channels + low_level_channels, channels, 3, norm=norm),
            conv_norm_act(channels, channels, 3, norm=norm),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_features(features)
        low = self.low_level(features[self.low_index])
        context = resize_to(self.aspp(features[-1]), low.shape[-2:])
        return self.classifier(self.fuse(torch.cat([context, low], dim=1)))
