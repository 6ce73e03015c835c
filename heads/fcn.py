"""FCN head: a few convolutions and a 1x1 classifier on one map (the deepest by default).

Also serves as the auxiliary head of :class:`heads.SegmentationModel` (on the stride-16 map, as in
PSPNet/torchvision training).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from backbones.base import FeatureSpec

from .base import Head, register_head
from .layers import check_head_norm, conv_norm_act

__all__ = ["FCNHead"]


@register_head("fcn")
class FCNHead(Head):
    """``num_convs`` 3x3 conv-norm-ReLU blocks, dropout and a 1x1 classifier on map ``in_index``.

    Args:
        feature_info: the backbone's feature_info.
        num_classes: K >= 1.
        in_index: which map to use (Python indexing; -1 = the deepest).
        channels: width of the hidden convolutions.
        num_convs: number of 3x3 blocks (>= 0; 0 puts the classifier directly on the map).
        dropout: dropout probability before the classifier.
        norm: "bn", "gn" or "sync_bn".

    Shape: list of maps -> ``(N, K, h, w)`` at the size of map ``in_index`` (``logits_stride`` its stride).
    """

    default_out_strides = (32,)
    head_name = "fcn"

    def __init__(self, *, feature_info: Sequence[FeatureSpec], num_classes: int, in_index: int = -1,
                 channels: int = 256, num_convs: int = 1, dropout: float = 0.1, norm: str = "bn") -> None:
        super().__init__(feature_info=feature_info, num_classes=num_classes)
        check_head_norm(norm, self.head_name)
        n = len(self.feature_info)
        if isinstance(in_index, bool) or not isinstance(in_index, int) or not -n <= in_index < n:
            raise ValueError(f"fcn head: in_index must be an int in [{-n}, {n - 1}] for {n} maps, got {in_index!r}")
        if not isinstance(num_convs, int) or num_convs < 0:
            raise ValueError(f"fcn head: num_convs must be an int >= 0, got {num_convs!r}")
        self.in_index = in_index % n
        self.logits_stride = self.feature_info[self.in_index].stride
        width = self.in_channels[self.in_index]
        blocks: List[nn.Module] = []
        for _ in range(num_convs):
            blocks.append(conv_norm_act(width, channels, 3, norm=norm))
            width = channels
        self.convs = nn.Sequential(*blocks)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_features(features)
        x = features[self.in_index]
        return self.classifier(self.dropout(self.convs(x)))
