"""Every way the programs get a model: a run's model from its config, a trained model from its checkpoint, and a
model from a short name (``"resnet50"``, ``"resnet18+fpn"``).

The model options of a run are declared once, in :func:`add_model_args`; :data:`MODEL_KEYS` (the options a
checkpoint must match to load) and :data:`MODEL_DEFAULTS` are read off that declaration.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from backbones import build_backbone
from backbones.norm import NORMS
from heads import build_segmentor

from .checkpoint import check_model_state, load_checkpoint
from .config import yaml_mapping

__all__ = ["MODEL_KEYS", "MODEL_DEFAULTS", "add_model_args", "build_model", "build_named_model", "describe_model",
           "model_from_checkpoint"]


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


def _model_actions() -> Dict[str, Any]:
    parser = argparse.ArgumentParser(add_help=False)
    add_model_args(parser)
    return {a.dest: a.default for a in parser._actions}


MODEL_DEFAULTS: Dict[str, Any] = _model_actions()
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


def model_from_checkpoint(path: Union[str, Path], *, device: Union[str, torch.device] = "cpu"
                          ) -> Tuple[nn.Module, Dict[str, Any]]:
    """The eval-mode model stored in training checkpoint ``path`` and the checkpoint (config, classes...).

    Loads the file, checks that it names its classes, rebuilds the model from its config, checks the stored
    weights against that model (a report of missing/unexpected/mis-shaped keys) and loads them.
    """
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    classes = list(checkpoint.get("classes") or [])
    if not classes:
        raise ValueError(f"checkpoint {str(path)!r} records no class names")
    model = build_model(config, len(classes))
    check_model_state(model, checkpoint["model"], where=f"{str(path)!r} ({describe_model(config, len(classes))})")
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


def build_named_model(name: str, *, output_stride: int = 32, num_classes: int = 19,
                      out_strides: Optional[Sequence[int]] = None, **backbone_kwargs: Any) -> nn.Module:
    """``"resnet50"`` -> the backbone; ``"resnet50+fpn"`` -> that backbone with the head, as a SegmentationModel.

    ``out_strides`` (backbones only; default: the backbone's own) and ``backbone_kwargs`` (``norm``,
    ``checkpoint_stages``...) go to the backbone builder; ``num_classes`` to the head. Random weights.
    """
    arch, plus, head = name.partition("+")
    if not arch or (plus and not head):
        raise ValueError(f"model name must be '<backbone>' or '<backbone>+<head>', got {name!r}")
    if out_strides is not None:
        backbone_kwargs["out_strides"] = tuple(out_strides)
    if not head:
        return build_backbone(arch, output_stride=output_stride, **backbone_kwargs)
    return build_segmentor(head=head, backbone=arch, num_classes=num_classes, output_stride=output_stride,
                           **backbone_kwargs)
