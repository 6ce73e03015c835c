"""segmentation_models_pytorch interop: the project's backbones as smp encoders (``"dense-resnet18"``...).

smp builds an encoder as ``encoders[name]["encoder"](**params, depth=d, output_stride=os)``, then calls
``set_in_channels`` and, for ``output_stride != 32``, ``make_dilated``; it expects ``out_channels`` and a forward
returning ``depth + 1`` maps, from the input itself (stride 1) down to stride ``2 ** depth``. Our encoder builds
the backbone already dilated (timm's rule: a dilated stage's first block keeps the previous dilation), so
``make_dilated`` only checks the stride matches.

Weights: smp downloads its own checkpoints for ``encoder_weights``; pass ``encoder_weights=None`` and load ours
with ``backbones.load_pretrained(model.encoder.backbone, ...)``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from segmentation_models_pytorch.encoders._base import EncoderMixin

from backbones.registry import build_backbone, list_backbones

__all__ = ["DenseEncoder", "register_smp_encoders"]

NOMINAL_STRIDES = (2, 4, 8, 16, 32)


class DenseEncoder(nn.Module, EncoderMixin):
    """A registered backbone following smp's encoder protocol.

    Args:
        backbone: registered backbone name whose ``out_strides`` reach 2, 4, 8, 16, 32 (our ResNets,
            ``torchvision:`` ResNets).
        depth: number of downsampling stages returned (1..5); smp's PSPNet uses 3.
        output_stride: 8, 16 or 32.
        **backbone_kwargs: passed to the backbone builder (``norm``, ``frozen_stages``...).

    Shape: ``(N, C, H, W)`` -> ``depth + 1`` maps: the input, then ``(N, C_i, ceil(H / s_i), ceil(W / s_i))``
    with ``s_i = min(2 ** i, output_stride)``.
    """

    def __init__(self, *, backbone: str, depth: int = 5, output_stride: int = 32, **backbone_kwargs: Any) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5:
            raise ValueError(f"{type(self).__name__} depth must be an int in [1, 5], got {depth!r}")
        self.backbone = build_backbone(backbone, out_strides=NOMINAL_STRIDES[:depth],
                                       output_stride=output_stride, **backbone_kwargs)
        self._depth = depth
        self._in_channels = 3
        self._output_stride = output_stride
        self._out_channels: List[int] = [3] + list(self.backbone.feature_info.channels)

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Adapt the first convolution to ``in_channels`` (smp's weight-repeating patch)."""
        if in_channels == 3:
            return
        super().set_in_channels(in_channels, pretrained=pretrained)
        self.backbone.in_chans = in_channels

    def make_dilated(self, output_stride: int) -> None:
        """smp's dilation hook: the backbone was built at ``output_stride`` already, so only check it."""
        if output_stride != self._output_stride:
            raise ValueError(
                f"{type(self).__name__} was built with output_stride={self._output_stride}, smp asks for "
                f"{output_stride}; pass output_stride to the smp model instead"
            )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x] + self.backbone(x)


def register_smp_encoders(prefix: str = "dense-", names: Optional[Sequence[str]] = None) -> List[str]:
    """Register backbones as smp encoders named ``prefix + name``; calling it again is harmless.

    Args:
        prefix: prepended to each backbone name.
        names: backbone names to register (default: every registered backbone).

    Returns:
        the smp encoder names registered.

    Example::

        register_smp_encoders()
        model = smp.DeepLabV3Plus("dense-resnet50", encoder_weights=None, classes=21, encoder_output_stride=16)
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    names = list_backbones() if names is None else list(names)
    unknown = [n for n in names if n not in list_backbones()]
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}; registered: {', '.join(list_backbones())}")
    registered = []
    for name in names:
        key = prefix + name
        existing = SMP_ENCODERS.get(key)
        if existing is not None and existing["encoder"] is not DenseEncoder:
            raise ValueError(f"smp encoder {key!r} already exists and is not ours; pick another prefix")
        # smp's lookup table is a plain dict; we add entries and never change smp's own.
        SMP_ENCODERS[key] = {"encoder": DenseEncoder, "params": {"backbone": name}, "pretrained_settings": {}}
        registered.append(key)
    return registered
