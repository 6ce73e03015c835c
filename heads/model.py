"""A segmentation model composed of a backbone, a head and an optional auxiliary head, and its builder."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from backbones.base import Backbone
from backbones.registry import UsageError, build_backbone

from .base import HEADS, build_head, head_out_strides, nominal_strides
from .fcn import FCNHead
from .layers import resize_to

__all__ = ["SegmentationModel", "build_segmentor", "AUX_STRIDE"]

# The auxiliary FCN head sits on the nominal stride-16 map (ResNet layer3), as in PSPNet and torchvision.
AUX_STRIDE = 16


class SegmentationModel(nn.Module):
    """Backbone -> head -> bilinear upsampling to the input size; optional auxiliary head in training.

    Args:
        backbone: a :class:`backbones.Backbone` (returns a list of maps described by ``feature_info``).
        head: a head built from ``backbone.feature_info``.
        aux_head: optional head built from the same feature_info (e.g. an FCN head on the stride-16 map) whose
            output is returned, and so trained, only in training mode.

    Shape:
        input ``(N, C, H, W)`` for any ``H, W``. Eval mode (or no aux head): logits ``(N, K, H, W)``.
        Training mode with an aux head: ``{"out": (N, K, H, W), "aux": (N, K, H, W)}``.

    Example::

        model = SegmentationModel(bb, build_head("fcn", feature_info=bb.feature_info, num_classes=21))
        logits = model.eval()(torch.randn(2, 3, 97, 131))  # (2, 21, 97, 131)
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: Optional[nn.Module] = None) -> None:
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if info is None:
            raise UsageError(f"backbone must expose feature_info (a backbones.Backbone), got {type(backbone).__name__}")
        num_classes = _num_classes(head, "head")
        for name, h in (("head", head), ("aux_head", aux_head)):
            if h is None:
                continue
            h_info = getattr(h, "feature_info", None)
            if h_info is not None and tuple(h_info) != tuple(info):
                raise ValueError(
                    f"{name} was built for {h_info!r} but the backbone provides {info!r}; build it with "
                    f"feature_info=backbone.feature_info"
                )
        if aux_head is not None and _num_classes(aux_head, "aux_head") != num_classes:
            raise ValueError(
                f"aux_head predicts {_num_classes(aux_head, 'aux_head')} classes but head predicts {num_classes}"
            )
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        size = x.shape[-2:]
        features = self.backbone(x)
        out = resize_to(self.head(features), size)
        if self.aux_head is not None and self.training:
            return {"out": out, "aux": resize_to(self.aux_head(features), size)}
        return out


def _num_classes(head: nn.Module, what: str) -> int:
    k = getattr(head, "num_classes", None)
    if not isinstance(k, int):
        raise UsageError(f"{what} must expose an int num_classes (a heads.Head), got {type(head).__name__}")
    return k


def build_segmentor(*, head: str = "deeplabv3plus", backbone: Union[str, Backbone] = "resnet50",
                    num_classes: int, output_stride: Optional[int] = None, aux_head: bool = False,
                    head_kwargs: Optional[Mapping[str, Any]] = None, **backbone_kwargs: Any) -> SegmentationModel:
    """Build backbone, head (and auxiliary head) in one call, requesting the maps the heads need.

    Args:
        head: a registered head name (see :func:`heads.list_heads`).
        backbone: a registered backbone name (``"resnet50"``, ``"timm:<model>"``, ``"torchvision:<model>"``) or
            an already built backbone (then ``output_stride``/``backbone_kwargs`` must be left out).
        num_classes: K >= 1.
        output_stride: backbone output stride (8, 16 or 32); ``None`` keeps the backbone's default (32).
        aux_head: add an FCN auxiliary head on the stride-16 map, returned only in training mode.
        head_kwargs: extra keyword arguments of the head (``channels``, ``norm``...).
        **backbone_kwargs: keyword arguments of the backbone builder (``pretrained``, ``norm``, ``frozen_stages``,
            ``out_strides``...). Without ``out_strides``, the head's ``default_out_strides`` (plus 16 for the
            auxiliary head) are requested.

    Returns:
        a :class:`SegmentationModel` whose eval-mode output is ``(N, K, H, W)`` for an ``(N, C, H, W)`` input.

    Example::

        model = build_segmentor(head="deeplabv3plus", backbone="resnet50", num_classes=21, output_stride=16)
    """
    if not isinstance(aux_head, bool):
        raise UsageError(f"aux_head must be True or False, got {aux_head!r}")
    head_kwargs = dict(head_kwargs or {})
    for reserved in ("feature_info", "num_classes"):
        if reserved in head_kwargs:
            raise UsageError(f"head_kwargs must not contain {reserved!r}; build_segmentor passes it")
    if isinstance(backbone, nn.Module):
        if output_stride is not None or backbone_kwargs:
            raise UsageError(
                "output_stride and backbone keyword arguments apply only when backbone is a name; got a built "
                f"{type(backbone).__name__} and "
                f"{sorted(backbone_kwargs) + (['output_stride'] if output_stride else [])}"
            )
        bb = backbone
    else:
        if "out_strides" not in backbone_kwargs:
            strides = _requested_strides(head, aux_head)
            if strides is not None:
                backbone_kwargs["out_strides"] = strides
        if output_stride is not None:
            backbone_kwargs["output_stride"] = output_stride
        bb = build_backbone(backbone, **backbone_kwargs)
    head_module = build_head(head, feature_info=bb.feature_info, num_classes=num_classes, **head_kwargs)
    aux = _build_aux_head(bb, num_classes) if aux_head else None
    return SegmentationModel(bb, head_module, aux)


def _requested_strides(head: str, aux_head: bool) -> Optional[Tuple[int, ...]]:
    HEADS.get(head)  # unknown names fail here, with close matches, before a backbone is built
    strides = head_out_strides(head)
    if strides is None:
        return None
    return tuple(sorted(set(strides) | ({AUX_STRIDE} if aux_head else set())))


def _build_aux_head(bb: nn.Module, num_classes: int) -> FCNHead:
    nominal = nominal_strides(bb.feature_info)
    if AUX_STRIDE not in nominal:
        raise ValueError(
            f"aux_head=True puts an FCN head on the stride-{AUX_STRIDE} map, but the backbone provides strides "
            f"{nominal}; include {AUX_STRIDE} in out_strides"
        )
    index = len(nominal) - 1 - nominal[::-1].index(AUX_STRIDE)
    return FCNHead(feature_info=bb.feature_info, num_classes=num_classes, in_index=index)
