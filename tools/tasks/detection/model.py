"""A detection run's model: its flags, and the torchvision detector (:func:`heads.detection.build_detector`) its
config describes.

As torchvision's detection references do, the backbone's norms and stages follow its initialization: with
pretrained weights the BatchNorms are frozen and the stem and ``layer1`` do not train (``--norm auto``,
``--frozen-stages auto``); from scratch every BatchNorm and stage trains. The images' size follows the
dataset (``--min-size auto``): the built-in synthetic set is detected at its own size, any other dataset at
torchvision's COCO setting (shorter side 800, longer side at most 1333).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from torch import nn

from backbones.norm import NORMS
from heads.detection import build_detector, list_detectors

from ...engine.config import flag_defaults, yaml_mapping

__all__ = ["MODEL_KEYS", "MODEL_DEFAULTS", "COCO_SIZES", "add_model_args", "resolve_model_options", "build_model",
           "describe_model"]

# torchvision's detection references: shorter side 800, longer side at most 1333.
COCO_SIZES = (800, 1333)
# Detection thresholds for scoring: COCO's mAP counts every detection, so keep the low-scoring ones too (FCOS's
# own default, 0.2, would cut recall); the number per image is COCO's maximum.
SCORE_THRESH = 0.05


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The ``model`` flag group of ``tools.train_det``: every option that decides the model's parameters."""
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default="resnet18", help="registered backbone name")
    g.add_argument("--detector", default="fcos", choices=list_detectors(), help="torchvision detector")
    g.add_argument("--norm", default="auto", choices=("auto",) + NORMS,
                   help="backbone norm; auto: frozen_bn with --pretrained, else bn (torchvision's references)")
    g.add_argument("--frozen-stages", default="auto", type=_frozen_stages,
                   help="-1: none, 0: stem, k: stem and layer1..k; auto: 1 with --pretrained, else -1")
    g.add_argument("--fpn-channels", type=int, default=128, help="width of the feature pyramid and the heads")
    g.add_argument("--min-size", default="auto", type=_size,
                   help="the detector resizes images to this shorter side; auto: the synthetic set's image size, "
                        f"else {COCO_SIZES[0]}")
    g.add_argument("--max-size", default="auto", type=_size,
                   help=f"... and at most this longer side; auto: as --min-size for synthetic, else {COCO_SIZES[1]}")
    g.add_argument("--detector-kwargs", type=yaml_mapping, default={},
                   help="further options of the torchvision detector, e.g. '{nms_thresh: 0.6}'")


def _frozen_stages(text: Union[str, int]) -> Union[str, int]:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= -1 or 'auto', got {text!r}") from None


def _size(text: Union[str, int]) -> Union[str, int]:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'auto', got {text!r}")
    return value


MODEL_DEFAULTS: Dict[str, Any] = flag_defaults(add_model_args)
# The config keys that decide the model's parameters; a checkpoint only loads into a model built with the same.
MODEL_KEYS: Tuple[str, ...] = tuple(MODEL_DEFAULTS)


def resolve_model_options(cfg: Dict[str, Any], *, image_size: Optional[int] = None) -> None:
    """Turn the ``auto`` model options of a new run into values, in place (``config.yaml`` holds the values).

    ``image_size``: the synthetic set's side, which ``--min-size auto`` takes; ``None`` for other datasets.
    """
    pretrained = bool(cfg.get("pretrained"))
    if cfg.get("norm", "auto") == "auto":
        cfg["norm"] = "frozen_bn" if pretrained else "bn"
    if cfg.get("frozen_stages", "auto") == "auto":
        cfg["frozen_stages"] = 1 if pretrained else -1
    if cfg.get("min_size", "auto") == "auto":
        cfg["min_size"] = image_size or COCO_SIZES[0]
    if cfg.get("max_size", "auto") == "auto":
        cfg["max_size"] = max(cfg["min_size"], image_size or COCO_SIZES[1])
    if not cfg["frozen_stages"] >= -1:
        raise ValueError(f"--frozen-stages must be >= -1 or auto, got {cfg['frozen_stages']!r}")
    if cfg["max_size"] < cfg["min_size"]:
        raise ValueError(f"--max-size ({cfg['max_size']}) must be at least --min-size ({cfg['min_size']})")
    channels = cfg.get("fpn_channels", MODEL_DEFAULTS["fpn_channels"])
    if not channels > 0:
        raise ValueError(f"--fpn-channels must be > 0, got {channels!r}")
    if cfg.get("detector") == "fcos" and (channels % 32 or channels < 64):
        # FCOS's head normalizes with GroupNorm(32, C): C must split into groups, and a group of one channel
        # cannot normalize the 1x1 top level of one image
        raise ValueError(f"--fpn-channels {channels}: FCOS's head needs a multiple of 32, at least 64")


def build_model(config: Mapping[str, Any], num_classes: int, *, pretrained: Union[bool, str, None] = None
                ) -> nn.Module:
    """``heads.detection.build_detector`` with the model options of ``config`` (resolved: no ``auto`` left).

    ``num_classes`` counts the object classes; the detector gets one more, background, in torchvision's
    convention (labels 1..num_classes). Returns the detector: ``model(images, targets)`` -> losses in training,
    ``model(images)`` -> one ``{"boxes" (K, 4), "labels" (K,), "scores" (K,)}`` per image in eval mode.
    """
    opts = {k: config.get(k, MODEL_DEFAULTS[k]) for k in MODEL_KEYS}
    unresolved = [k for k in ("norm", "frozen_stages", "min_size", "max_size") if opts[k] == "auto"]
    if unresolved:
        raise ValueError(f"the model options {unresolved} are still 'auto': resolve them first "
                         f"(tools.tasks.detection.model.resolve_model_options)")
    kwargs: Dict[str, Any] = {"norm": "bn" if opts["norm"] == "sync_bn" else opts["norm"],
                              "frozen_stages": opts["frozen_stages"]}
    if pretrained:
        kwargs["pretrained"] = pretrained
    detector_kwargs = dict(opts["detector_kwargs"] or {})
    score_key = "box_score_thresh" if opts["detector"] == "fasterrcnn" else "score_thresh"
    detector_kwargs.setdefault(score_key, SCORE_THRESH)
    return build_detector(opts["detector"], backbone=opts["backbone"], num_classes=num_classes + 1,
                          min_size=opts["min_size"], max_size=opts["max_size"], fpn_channels=opts["fpn_channels"],
                          detector_kwargs=detector_kwargs, **kwargs)


def describe_model(config: Mapping[str, Any], num_classes: Optional[int] = None) -> str:
    """``"resnet18 + fcos (4 classes, norm bn, images 128-128)"`` for messages."""
    classes = f"{num_classes} classes, " if num_classes is not None else ""
    return (f"{config.get('backbone')} + {config.get('detector')} ({classes}norm {config.get('norm', 'auto')}, "
            f"images {config.get('min_size', 'auto')}-{config.get('max_size', 'auto')})")

