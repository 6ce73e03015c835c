"""Object detection with torchvision's detectors on any registered backbone.

torchvision's ``RetinaNet``, ``FCOS`` and ``FasterRCNN`` bring the box coding, anchors, losses and NMS; this file
only adapts a backbone to what they expect (a module with ``out_channels`` returning an ``OrderedDict`` of
pyramid levels) and sizes the anchors to the levels it produces.
"""

from __future__ import annotations

import difflib
import inspect
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from backbones.base import Backbone
from backbones.registry import Registry, UsageError, build_backbone

__all__ = ["DETECTORS", "BackboneWithFPN", "build_detector", "list_detectors"]


class BackboneWithFPN(nn.Module):
    """A backbone followed by torchvision's ``FeaturePyramidNetwork``, as torchvision's detectors expect.

    Args:
        backbone: a :class:`backbones.Backbone`; every map it returns becomes a pyramid level. Its strides must
            increase strictly (RoI pooling and anchors assume one scale per level).
        out_channels: width of every pyramid level.
        extra_blocks: ``"p6p7"`` (RetinaNet/FCOS: two stride-2 convs on the last level), ``"pool"`` (Faster
            R-CNN: a stride-2 subsampling of the last level), or ``None``.

    Attributes:
        out_channels: what torchvision's detectors read to size their heads.
        level_names / level_strides: the keys of the output and the stride of each level.
        featmap_names: the levels computed from backbone maps (those RoI pooling uses).

    Shape: ``(N, C, H, W)`` -> ``OrderedDict`` name -> ``(N, out_channels, ceil(H / s), ceil(W / s))``.
    """

    def __init__(self, backbone: nn.Module, *, out_channels: int = 256, extra_blocks: Optional[str] = None) -> None:
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if info is None:
            raise UsageError(f"backbone must expose feature_info (a backbones.Backbone), got {type(backbone).__name__}")
        strides = list(info.strides)
        if any(b <= a for a, b in zip(strides, strides[1:])):
            raise ValueError(
                f"detection needs strictly increasing strides (one scale per pyramid level), got {strides} from "
                f"{info!r}; build the backbone with output_stride=32"
            )
        extras: Dict[Optional[str], Tuple[Optional[Callable[[], ExtraFPNBlock]], List[str]]] = {
            None: (None, []),
            "p6p7": (lambda: LastLevelP6P7(out_channels, out_channels), ["p6", "p7"]),
            "pool": (LastLevelMaxPool, ["pool"]),
        }
        if extra_blocks not in extras:
            raise ValueError(f"extra_blocks must be 'p6p7', 'pool' or None, got {extra_blocks!r}")
        make_extra, extra_names = extras[extra_blocks]
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(list(info.channels), out_channels,
                                         extra_blocks=make_extra() if make_extra else None)
        self.out_channels = out_channels
        self.featmap_names: List[str] = list(info.names)
        self.level_names: List[str] = self.featmap_names + extra_names
        self.level_strides: List[int] = strides + [strides[-1] * 2 ** (i + 1) for i in range(len(extra_names))]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.body(x)
        inputs: Dict[str, torch.Tensor] = OrderedDict()
        for name, f in zip(self.featmap_names, features):
            inputs[name] = f
        return self.fpn(inputs)


DETECTORS = Registry("detector")


@DETECTORS.register("retinanet")
def _retinanet(body: BackboneWithFPN, num_classes: int, **kwargs: Any) -> RetinaNet:
    # torchvision's COCO setting: 3 scales x 3 ratios per level, base size 4x the level stride (32 at P3).
    sizes = tuple(tuple(int(4 * s * 2 ** (i / 3)) for i in range(3)) for s in body.level_strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(body, num_classes, anchor_generator=anchors, **kwargs)


@DETECTORS.register("fcos")
def _fcos(body: BackboneWithFPN, num_classes: int, **kwargs: Any) -> FCOS:
    # FCOS has one point per location; torchvision encodes it as one square anchor of the level's stride.
    sizes = tuple((s,) for s in body.level_strides)
    return FCOS(body, num_classes, anchor_generator=AnchorGenerator(sizes, ((1.0,),) * len(sizes)), **kwargs)


@DETECTORS.register("fasterrcnn")
def _fasterrcnn(body: BackboneWithFPN, num_classes: int, **kwargs: Any) -> FasterRCNN:
    # torchvision's FPN setting: one size per level, 8x the level stride (32 at P2), 3 ratios.
    sizes = tuple((8 * s,) for s in body.level_strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    roi_pool = MultiScaleRoIAlign(featmap_names=body.featmap_names, output_size=7, sampling_ratio=2)
    return FasterRCNN(body, num_classes, rpn_anchor_generator=anchors, box_roi_pool=roi_pool, **kwargs)


# Per detector: torchvision class (for keyword checking), extra pyramid levels, default backbone out_strides.
_SETUP: Dict[str, Tuple[type, str, Tuple[int, ...]]] = {
    "retinanet": (RetinaNet, "p6p7", (8, 16, 32)),
    "fcos": (FCOS, "p6p7", (8, 16, 32)),
    "fasterrcnn": (FasterRCNN, "pool", (4, 8, 16, 32)),
}


def _check_detector_kwargs(cls: type, kwargs: Mapping[str, Any], name: str) -> None:
    # torchvision forwards unknown keywords to GeneralizedRCNNTransform, which silently ignores most of them,
    # so a typo like score_tresh would be lost; accept only named parameters (+ the transform's own).
    params = inspect.signature(cls.__init__).parameters
    accepted = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    accepted += ["size_divisible", "fixed_size"]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"detector {name!r} got unexpected keyword argument {key!r}{hint}; accepted: "
                            f"{', '.join(accepted)}")


def list_detectors(pattern: str = "*") -> List[str]:
    """Detector names accepted by :func:`build_detector`."""
    return DETECTORS.list(pattern)


def build_detector(name: str, *, backbone: Union[str, Backbone] = "resnet18", num_classes: int,
                   min_size: int = 800, max_size: int = 1333, fpn_channels: int = 256,
                   detector_kwargs: Optional[Mapping[str, Any]] = None, **backbone_kwargs: Any) -> nn.Module:
    """A torchvision detector (``"retinanet"``, ``"fcos"`` or ``"fasterrcnn"``) on a registered backbone with FPN.

    Args:
        name: the detector.
        backbone: a registered backbone name or a built backbone (then ``backbone_kwargs`` must be empty).
        num_classes: number of classes in torchvision's convention, background included (labels of the targets
            run from 1 to ``num_classes - 1``).
        min_size, max_size: torchvision's resizing of the input images (shorter side to ``min_size``, longer side
            at most ``max_size``).
        fpn_channels: width of the pyramid.
        detector_kwargs: further keyword arguments of the torchvision class (``score_thresh``, ``image_mean``...).
        **backbone_kwargs: keyword arguments of the backbone builder, e.g. ``norm="frozen_bn", frozen_stages=1,
            pretrained=True`` (the usual detection setting). Without ``out_strides``: strides 8/16/32 (+ P6, P7)
            for RetinaNet and FCOS, 4/8/16/32 (+ a pooled level) for Faster R-CNN.

    Returns:
        the torchvision detector: in training ``model(images, targets)`` returns a dict of losses; in eval
        ``model(images)`` returns one ``{"boxes": (K, 4), "labels": (K,), "scores": (K,)}`` per image.

    Example::

        model = build_detector("retinanet", backbone="resnet50", num_classes=91, norm="frozen_bn", frozen_stages=1)
    """
    builder = DETECTORS.get(name)
    cls, extra, default_strides = _SETUP[name]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    detector_kwargs = dict(detector_kwargs or {})
    reserved = {"backbone", "num_classes", "min_size", "max_size", "anchor_generator", "rpn_anchor_generator",
                "box_roi_pool"}
    clash = sorted(reserved & set(detector_kwargs))
    if clash:
        raise UsageError(f"detector_kwargs must not contain {clash}; build_detector sets them")
    _check_detector_kwargs(cls, detector_kwargs, name)
    if isinstance(backbone, nn.Module):
        if backbone_kwargs:
            raise UsageError(f"backbone keyword arguments {sorted(backbone_kwargs)} apply only when backbone is a name")
        bb = backbone
    else:
        backbone_kwargs.setdefault("out_strides", default_strides)
        bb = build_backbone(backbone, **backbone_kwargs)
    body = BackboneWithFPN(bb, out_channels=fpn_channels, extra_blocks=extra)
    return builder(body, num_classes, min_size=min_size, max_size=max_size, **detector_kwargs)
