"""segmentation_models_pytorch interop: the project's backbones as smp encoders (``"dense-resnet18"``...).

smp builds an encoder as ``encoders[name]["encoder"](**params, depth=d, output_stride=os)``, then calls
``set_in_channels`` and, for ``output_stride != 32``, ``make_dilated``; it expects ``out_channels`` and a forward
returning ``depth + 1`` maps, from the input itself (stride 1) down to stride ``2 ** depth``. Our encoder builds
the backbone already dilated (timm's rule: a dilated stage's first block keeps the previous dilation), so
``make_dilated`` only checks the stride matches.

Weights: smp's default ``encoder_weights="imagenet"`` gives our ResNets torchvision's ImageNet weights
(IMAGENET1K_V1), from smp's own copy of them on the Hugging Face hub (the repository and revision smp pins for
its encoder of the same name): smp always reads named weights from there. We fetch the files first with
:func:`backbones.weights.hf_weights_file`, so an offline run fails at once naming the folder to place them in,
and :meth:`DenseEncoder.load_state_dict` checks every key and shape. For other weights pass
``encoder_weights=None`` and ``backbones.load_pretrained(model.encoder.backbone, "tv2")`` (or a timm tag, a path).
With ``in_channels != 3`` the pretrained RGB input convolution is adapted as timm adapts it (see
:meth:`DenseEncoder.set_in_channels`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from segmentation_models_pytorch.encoders._base import EncoderMixin

from backbones.registry import UsageError, build_backbone, list_backbones
from backbones.weights import (WEIGHT_URLS, adapt_input_conv, hf_cached_file, hf_snapshot_dir, hf_url,
                               hf_weights_file, hub_unreachable, input_conv_name, load_checked)

__all__ = ["DenseEncoder", "register_smp_encoders"]

logger = logging.getLogger(__name__)

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
        self._in_channels = self.backbone.in_chans
        self._output_stride = output_stride
        self._out_channels: List[int] = [self._in_channels] + list(self.backbone.feature_info.channels)
        self._has_pretrained = bool(backbone_kwargs.get("pretrained"))

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """smp's hook for ``in_channels``: rebuild the backbone's input convolution for them, adapting pretrained
        weights (smp's ``encoder_weights``, or ``pretrained=`` of the backbone) as timm does
        (:func:`backbones.weights.adapt_input_conv`: sum for 1 channel, repeat and scale by 3/N otherwise), said
        in one log line; without weights it is initialised afresh."""
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if in_channels == self._in_channels:
            return
        name = input_conv_name(self.backbone)
        parent_name, _, attr = name.rpartition(".")
        parent = self.backbone.get_submodule(parent_name)
        old = getattr(parent, attr)
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                         old.groups, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
        if pretrained or self._has_pretrained:
            with torch.no_grad():
                conv.weight.copy_(adapt_input_conv(old.weight, in_chans=in_channels))
                if old.bias is not None:
                    conv.bias.copy_(old.bias)
            logger.info("%s: adapted the pretrained %s.weight from %d to %d input channels (as timm does)",
                        type(self).__name__, name, old.in_channels, in_channels)
        else:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        setattr(parent, attr, conv)
        self.backbone.in_chans = in_channels
        self._in_channels = in_channels
        self._out_channels[0] = in_channels

    def make_dilated(self, output_stride: int) -> None:
        """smp's dilation hook: the backbone was built at ``output_stride`` already, so only check it."""
        if output_stride != self._output_stride:
            raise ValueError(
                f"{type(self).__name__} was built with output_stride={self._output_stride}, smp asks for "
                f"{output_stride}; pass output_stride to the smp model instead"
            )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x] + self.backbone(x)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load this encoder's own state dict, or a torchvision-format one (smp's pretrained weights, keys without
        ``backbone.``) into the backbone with every key and shape checked (see :func:`backbones.load_pretrained`).
        """
        if any(k.startswith("backbone.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        load_checked(self.backbone, state_dict, where="smp's pretrained weights")
        return torch.nn.modules.module._IncompatibleKeys([], [])


# What smp's get_encoder reads from the hub for named weights, besides the settings below.
SMP_WEIGHT_FILES = ("model.safetensors", "config.json")


class _PretrainedSettings(dict):
    """smp's ``pretrained_settings`` of one encoder. Looking weights up (smp does it right before downloading
    them) fetches their files through our hub loader, so an offline run fails at once with the folder to place
    them in, instead of after huggingface_hub's retries; smp then finds them in the cache."""

    def __getitem__(self, weights: str) -> Dict[str, str]:
        settings = super().__getitem__(weights)
        if "repo_id" not in settings:  # smp before 0.5 downloads settings["url"] into the torch.hub cache
            return settings
        repo, revision = settings["repo_id"], settings["revision"]
        missing = [f for f in SMP_WEIGHT_FILES if hf_cached_file(repo, (f,), revision=revision) is None]
        unreachable = hub_unreachable() if missing else None
        if unreachable:
            raise ConnectionError(
                f"smp's {weights!r} weights ({repo}) are not in the Hugging Face cache and {unreachable}. Download "
                f"{' and '.join(hf_url(repo, f, revision) for f in missing)} elsewhere and place them in "
                f"{hf_snapshot_dir(repo, revision)} (or pass encoder_weights=None and load a local file with "
                f"backbones.load_pretrained(model.encoder.backbone, path))."
            )
        for f in missing:
            hf_weights_file(repo, (f,), revision=revision)
        return settings


def _pretrained_settings(name: str) -> _PretrainedSettings:
    """smp's ImageNet settings for our backbone ``name``: those of smp's own encoder of that name (torchvision's
    IMAGENET1K_V1 weights), with torchvision's URL for smp versions that read ``url``."""
    theirs = SMP_ENCODERS.get(name, {}).get("pretrained_settings", {}).get("imagenet")
    if name not in WEIGHT_URLS or not theirs:
        return _PretrainedSettings()
    return _PretrainedSettings(imagenet={**theirs, "url": WEIGHT_URLS[name]})


def register_smp_encoders(prefix: str = "dense-", names: Optional[Sequence[str]] = None,
                          **backbone_kwargs: Any) -> List[str]:
    """Register backbones as smp encoders named ``prefix + name``; calling it again is harmless.

    Args:
        prefix: prepended to each backbone name.
        names: backbone names to register (default: every registered backbone).
        **backbone_kwargs: passed to every backbone smp builds under these names (smp passes none of its own),
            e.g. ``norm="frozen_bn", frozen_stages=1``, or ``pretrained="tv2"`` with ``encoder_weights=None``.

    Returns:
        the smp encoder names registered.

    Example::

        register_smp_encoders()
        model = smp.DeepLabV3Plus("dense-resnet50", classes=21, encoder_output_stride=16)  # ImageNet weights
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    reserved = sorted({"backbone", "depth", "out_strides", "output_stride"} & set(backbone_kwargs))
    if reserved:
        raise UsageError(f"{reserved} are set by smp (encoder_depth, encoder_output_stride), not by keyword here")
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
        SMP_ENCODERS[key] = {"encoder": DenseEncoder, "params": {"backbone": name, **backbone_kwargs},
                             "pretrained_settings": _pretrained_settings(name)}
        registered.append(key)
    return registered
