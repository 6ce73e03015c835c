"""The same ResNet as built by torchvision, timm and segmentation_models_pytorch, for side-by-side benchmarks.

Each peer is the library's own feature extractor in its default eager form (torchvision's ResNet through
``IntermediateLayerGetter``, timm's ``features_only`` model, smp's encoder), loaded with *our* backbone's weights
so that every candidate computes the same function; :func:`same_output` checks that before anything is timed.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = ["PEERS", "PeerUnavailable", "build_peer", "same_output", "deepest"]

PEERS = ("torchvision", "timm", "smp")


class PeerUnavailable(Exception):
    """A peer cannot be built here (library missing, or it does not support the configuration)."""


def build_peer(kind: str, arch: str, *, output_stride: int, state_dict: Dict[str, torch.Tensor]) -> nn.Module:
    """The ``kind`` library's ``arch`` feature extractor at ``output_stride``, loaded with ``state_dict``.

    Raises:
        PeerUnavailable: the library is not installed or does not build ``arch`` at ``output_stride``.
        ValueError: unknown ``kind``.
    """
    if kind not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(PEERS)}, got {kind!r}")
    builder = {"torchvision": _torchvision, "timm": _timm, "smp": _smp}[kind]
    model = builder(arch, output_stride)
    # nn.Module's own method: smp's override drops the return value this check needs.
    missing, unexpected = nn.Module.load_state_dict(model, state_dict, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise PeerUnavailable(f"{kind} {arch} does not use torchvision's parameter names "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def _torchvision(arch: str, output_stride: int) -> nn.Module:
    try:
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter
    except ImportError as err:
        raise PeerUnavailable(f"torchvision is not installed ({err})") from None
    if not hasattr(torchvision.models, arch):
        raise PeerUnavailable(f"torchvision has no {arch}")
    dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
    try:
        net = getattr(torchvision.models, arch)(weights=None, replace_stride_with_dilation=dilate)
    except NotImplementedError as err:  # BasicBlock (ResNet-18/34) refuses dilation
        raise PeerUnavailable(f"torchvision {arch} cannot run at output stride {output_stride}: {err}") from None
    layers = {f"layer{i}": str(i) for i in range(1, 5)}
    return IntermediateLayerGetter(net, return_layers=layers)


def _timm(arch: str, output_stride: int) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise PeerUnavailable(f"timm is not installed ({err})") from None
    try:
        return timm.create_model(arch, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4),
                                 output_stride=output_stride)
    except (RuntimeError, ValueError) as err:
        raise PeerUnavailable(f"timm cannot build {arch}: {err}") from None


def _smp(arch: str, output_stride: int) -> nn.Module:
    try:
        from segmentation_models_pytorch.encoders import get_encoder
    except ImportError as err:
        raise PeerUnavailable(f"segmentation_models_pytorch is not installed ({err})") from None
    try:
        return get_encoder(arch, weights=None, output_stride=output_stride)
    except (KeyError, ValueError) as err:
        raise PeerUnavailable(f"smp has no encoder {arch}: {err}") from None


def deepest(output) -> torch.Tensor:
    """The deepest map of a feature extractor's output (a list, or torchvision's dict)."""
    if isinstance(output, dict):
        output = list(output.values())
    return output[-1]


def same_output(models: Dict[str, nn.Module], x: torch.Tensor) -> List[Tuple[str, float]]:
    """``(name, relative error)`` of each model's deepest map against the first model's, on ``x``."""
    with torch.inference_mode():
        outs = {name: deepest(m(x)).float() for name, m in models.items()}
    ref = next(iter(outs.values()))
    scale = ref.abs().max().clamp_min(1e-12)
    return [(name, float((o - ref).abs().max() / scale)) if o.shape == ref.shape else (name, float("inf"))
            for name, o in outs.items()]
