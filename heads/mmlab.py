"""OpenMMLab interop: the project's backbones in mmengine's ``MODELS`` registry, for mmsegmentation 1.x and
mmdetection 3.x configs.

Importing this module registers ``DenseBackbone``; a config loads it with ``custom_imports``::

    custom_imports = dict(imports=["heads.mmlab"], allow_failed_imports=False)
    model = dict(
        type="EncoderDecoder",   # mmseg; mmdet's detectors take the same backbone dict
        backbone=dict(type="DenseBackbone", name="resnet50", out_strides=(4, 8, 16, 32), output_stride=8,
                      norm="sync_bn", frozen_stages=1, pretrained="imagenet"),
        decode_head=dict(type="PSPHead", in_channels=2048, in_index=3, ...))

It is registered in mmengine's root registry, which mmseg's and mmdet's ``MODELS`` registries fall back to, so
it builds under either default scope. mmengine is an optional extra (``pip install "dense-backbones[openmmlab]"``),
imported by this module only; mmseg and mmdet themselves need a compiled mmcv (see the README).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from backbones.registry import UsageError, build_backbone, require_extra
from backbones.weights import torchvision_url

require_extra("mmengine", extra="openmmlab", purpose="heads.mmlab (the OpenMMLab adapter)")

from mmengine.model import BaseModule  # noqa: E402
from mmengine.registry import MODELS  # noqa: E402

__all__ = ["DenseBackbone"]

_TORCHVISION_SCHEME = "torchvision://"  # mmengine's name for torchvision's ImageNet checkpoints
InitCfg = Union[Dict[str, Any], List[Dict[str, Any]], None]


@MODELS.register_module()
class DenseBackbone(BaseModule):
    """A backbone of the project's registry as an OpenMMLab backbone: ``forward`` returns a tuple of maps.

    Args:
        name: a registered backbone name (``"resnet50"``, ``"timm:convnext_tiny"``, ``"torchvision:resnet50"``).
        out_strides: the maps to return, by nominal stride; the default is mmseg's/mmdet's ``out_indices=(0, 1,
            2, 3)`` of a ResNet.
        output_stride, norm, frozen_stages: the backbone's options (see :class:`backbones.ResNet`): dilation
            past ``output_stride`` (mmseg's ``dilations``/``strides``), ``"bn"``/``"sync_bn"``/``"frozen_bn"``/
            ``"gn"`` (mmseg's ``norm_cfg``), and the stem plus layer1..k frozen, kept so by every ``train()``.
        pretrained: weights loaded by :meth:`init_weights` (which mmengine's runner calls before training, not
            when it loads a checkpoint to test or resume): ``"imagenet"``, ``"tv2"``, ``"timm:<model>.<tag>"``, a
            path or URL, or mmengine's ``"torchvision://<arch>"``; checked key by key and shape by shape.
        init_cfg: mmengine's initialisers; ``dict(type="Pretrained", checkpoint=...)`` is read as
            ``pretrained=checkpoint``.
        **backbone_kwargs: further keyword arguments of the backbone's builder (``norm_eval``, ``in_chans``...).

    Attributes:
        backbone: the backbone; ``feature_info``, ``out_channels`` (what necks take as ``in_channels``).

    Shape: ``(N, in_chans, H, W)`` -> tuple of ``(N, C_i, ceil(H / s_i), ceil(W / s_i))``.
    """

    def __init__(self, name: str, out_strides: Sequence[int] = (4, 8, 16, 32), output_stride: int = 32,
                 norm: str = "bn", frozen_stages: int = -1, pretrained: Optional[str] = None,
                 init_cfg: InitCfg = None, **backbone_kwargs: Any) -> None:
        checkpoint, init_cfg = _split_pretrained(init_cfg)
        if pretrained and checkpoint:
            raise UsageError(f"pass pretrained= or init_cfg=dict(type='Pretrained', ...), not both (got "
                             f"pretrained={pretrained!r} and checkpoint={checkpoint!r})")
        super().__init__(init_cfg=init_cfg)
        if "pretrained" in backbone_kwargs:
            raise UsageError("pretrained is taken by DenseBackbone itself")
        self.name = name
        self.pretrained = pretrained or checkpoint
        self.build_kwargs: Dict[str, Any] = dict(out_strides=tuple(out_strides), output_stride=output_stride,
                                                 norm=norm, frozen_stages=frozen_stages, **backbone_kwargs)
        self.backbone = build_backbone(name, **self.build_kwargs)
        self.out_channels: List[int] = list(self.backbone.feature_info.channels)

    def init_weights(self) -> None:
        """Run mmengine's initialisers, then load ``pretrained`` (if any) into the backbone."""
        super().init_weights()
        if self.pretrained:
            source = self.pretrained
            if isinstance(source, str) and source.startswith(_TORCHVISION_SCHEME):
                source = torchvision_url(source[len(_TORCHVISION_SCHEME):])
            # A copy built with the weights loads into this one strictly: every kind of backbone (ours, timm's,
            # torchvision's) reads its checkpoints its own way, and this keeps that way.
            loaded = build_backbone(self.name, pretrained=source, **self.build_kwargs)
            self.backbone.load_state_dict(loaded.state_dict(), strict=True)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(N, in_chans, H, W)`` -> tuple of maps, shallow to deep, one per ``out_strides`` entry."""
        return tuple(self.backbone(x))


def _split_pretrained(init_cfg: InitCfg) -> Tuple[Optional[str], InitCfg]:
    """The checkpoint of a ``type="Pretrained"`` entry of ``init_cfg``, and the other entries."""
    if init_cfg is None:
        return None, None
    cfgs = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
    checkpoint, rest = None, []
    for cfg in cfgs:
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise UsageError(f"init_cfg entries must be dicts with a 'type', got {cfg!r}")
        if cfg["type"] != "Pretrained":
            rest.append(cfg)
            continue
        extra = sorted(set(cfg) - {"type", "checkpoint", "map_location"})
        if extra or "checkpoint" not in cfg:
            raise UsageError(f"init_cfg=dict(type='Pretrained') takes checkpoint= only here (it is loaded into the "
                             f"backbone as pretrained=), got {cfg!r}")
        checkpoint = cfg["checkpoint"]
    return checkpoint, rest or None
