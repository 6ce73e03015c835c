"""A segmentation run's model: its flags, and the model its config describes.

The model options of a run are declared once, in :func:`add_model_args`; :data:`MODEL_KEYS` (the options a
checkpoint must match to load) and :data:`MODEL_DEFAULTS` are read off that declaration.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from torch import nn

from backbones.norm import NORMS
from heads import build_segmentor

from ...engine.config import flag_defaults, yaml_mapping

__all__ = ["MODEL_KEYS", "MODEL_DEFAULTS", "add_model_args", "build_model", "describe_model"]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The ``model`` flag group of ``tools.train_seg``: every option that decides the model's parameters."""
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default="resnet18", help="registered backbone name")
    g.add_argument("--head", default="bisenet", help="registered head: fcn, deeplabv3, deeplabv3plus, fpn, bisenet")
    g.add_argument("--head-kwargs", type=yaml_mapping, default={}, help="head options, e.g. '{dropout: 0.0}'")
    g.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    g.add_argument("--norm", default="bn", choices=NORMS,
                   help="backbone norm; sync_bn turns every BatchNorm (backbone and head) into SyncBatchNorm "
                        "under DDP on CUDA")
    g.add_argument("--frozen-stages", type=int, default=-1, help="-1: none, 0: stem, k: stem and layer1..k")
    g.add_argument("--aux-weight", type=float, default=0.0, help="> 0 adds an auxiliary FCN head on stride 16 "
                                                                  "with this loss weight")


MODEL_DEFAULTS: Dict[str, Any] = flag_defaults(add_model_args)
# The config keys that decide the model's parameters; a checkpoint only loads into a model built with the same.
MODEL_KEYS: Tuple[str, ...] = tuple(MODEL_DEFAULTS)


def build_model(config: Mapping[str, Any], num_classes: int, *, pretrained: Union[bool, str, None] = None
                ) -> nn.Module:
    """``heads.build_segmentor`` with the model options of ``config`` (missing keys take their defaults).

    ``norm="sync_bn"`` builds plain BatchNorm: the trainer converts every BatchNorm of the model (backbone and
    head) to SyncBatchNorm once the process group exists, and a single process needs no synchronization.

    Returns a :class:`heads.SegmentationModel`: ``(N, 3, H, W) -> (N, num_classes, H, W)`` logits in eval mode.
    """
    opts = {k: config.get(k, MODEL_DEFAULTS[k]) for k in MODEL_KEYS}
    backbone_kwargs: Dict[str, Any] = {"norm": "bn" if opts["norm"] == "sync_bn" else opts["norm"],
                                       "frozen_stages": opts["frozen_stages"]}
    if pretrained:
        backbone_kwargs["pretrained"] = pretrained
    return build_segmentor(head=opts["head"], backbone=opts["backbone"], num_classes=num_classes,
                           output_stride=opts["output_stride"], aux_head=float(opts["aux_weight"] or 0) > 0,
                           head_kwargs=dict(opts["head_kwargs"] or {}) or None, **backbone_kwargs)


def describe_model(config: Mapping[str, Any], num_classes: Optional[int] = None) -> str:
    """``"resnet18 + fpn (5 classes, output_stride 32, norm bn)"`` for messages."""
    classes = f"{num_classes} classes, " if num_classes is not None else ""
    return (f"{config.get('backbone')} + {config.get('head')} ({classes}output_stride "
            f"{config.get('output_stride', 32)}, norm {config.get('norm', 'bn')})")
