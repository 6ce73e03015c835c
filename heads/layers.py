"""Small building blocks shared by the heads."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from backbones.norm import get_norm_layer

__all__ = ["HEAD_NORMS", "ImagePooling", "check_head_norm", "conv_norm_act", "resize_to"]

# Norms a head accepts; frozen BN makes no sense for a freshly initialised head.
HEAD_NORMS = ("bn", "gn", "sync_bn")


def check_head_norm(norm: str, head: str) -> str:
    if norm not in HEAD_NORMS:
        raise ValueError(f"{head} head: norm must be one of {', '.join(map(repr, HEAD_NORMS))}, got {norm!r}")
    return norm


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1,
                  norm: Optional[str] = "bn") -> Conv2dNormActivation:
    """Conv (``padding = dilation * (k - 1) / 2``, size preserving) -> norm -> ReLU; no norm when ``norm=None``.

    Shape: ``(N, in_channels, h, w) -> (N, out_channels, h, w)``.
    """
    norm_layer = None if norm is None else get_norm_layer(norm)
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, dilation=dilation, norm_layer=norm_layer)


def resize_to(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``(N, C, *size)`` (``align_corners=False``, export friendly)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv (with bias) -> ReLU, broadcast back to the map size.

    No norm layer: the pooled map is 1x1, so BatchNorm would see a single value per channel and fail with
    batch size 1 in training mode; the conv bias takes the norm's place.

    Shape: ``(N, C, h, w) -> (N, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over H, W rather than AdaptiveAvgPool2d: exports to ONNX/TorchScript with dynamic sizes.
        pooled = self.act(self.conv(x.mean((2, 3), keepdim=True)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])
