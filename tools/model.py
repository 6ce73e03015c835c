"""The segmentation model of a run, built from the run's config (so evaluation rebuilds exactly what trained)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from torch import nn

from heads import build_segmentor

__all__ = ["MODEL_KEYS", "build_model", "describe_model"]

# The config keys that decide the model's parameters; a checkpoint only loads into a model built with the same.
MODEL_KEYS = ("backbone", "head", "head_kwargs", "output_stride", "norm", "frozen_stages", "aux_weight")


def build_model(config: Mapping[str, Any], num_classes: int, *, pretrained: Union[bool, str, None] = None
                ) -> nn.Module:
    """``heads.build_segmentor`` with the backbone, head and norm options of ``config``.

    ``norm="sync_bn"`` builds plain BatchNorm: the trainer converts every BatchNorm of the model (backbone and
    head) to SyncBatchNorm once the process group exists, and a single process needs no synchronization.
    Options left at their defaults are not passed, so backbones without them (``timm:<model>``) still build.

    Returns a :class:`heads.SegmentationModel`: ``(N, 3, H, W) -> (N, num_classes, H, W)`` logits in eval mode.
    """
    kwargs: Dict[str, Any] = {}
    norm = config.get("norm", "bn")
    if norm not in ("bn", "sync_bn"):
        kwargs["norm"] = norm
    if config.get("frozen_stages", -1) != -1:
        kwargs["frozen_stages"] = config["frozen_stages"]
    if pretrained:
        kwargs["pretrained"] = pretrained
    output_stride = config.get("output_stride", 32)
    return build_segmentor(head=config["head"], backbone=config["backbone"], num_classes=num_classes,
                           output_stride=None if output_stride == 32 else output_stride,
                           aux_head=float(config.get("aux_weight") or 0) > 0,
                           head_kwargs=dict(config.get("head_kwargs") or {}) or None, **kwargs)


def describe_model(config: Mapping[str, Any], num_classes: Optional[int] = None) -> str:
    """``"resnet18 + fpn (5 classes, output_stride 32, norm bn)"`` for messages."""
    classes = f"{num_classes} classes, " if num_classes is not None else ""
    return (f"{config.get('backbone')} + {config.get('head')} ({classes}output_stride "
            f"{config.get('output_stride', 32)}, norm {config.get('norm', 'bn')})")
