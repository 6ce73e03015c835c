"""The head contract and the head registry.

A head is an ``nn.Module`` built from a backbone's ``feature_info`` and a number of classes. Its
``forward(features)`` takes the backbone's list of maps (shallow to deep, aligned with that ``feature_info``) and
returns ``(N, num_classes, h, w)`` logits at the resolution of the finest map the head consumes (its
``logits_stride``). :class:`heads.SegmentationModel` upsamples them to the input size.

Heads locate the maps they need by *nominal* stride (``spec.stride * spec.dilation``): the stride the map would
have in the undilated network, which is also what a backbone's ``out_strides`` argument counts in. So
"layer3" is nominal stride 16 whether the backbone runs at output stride 8, 16 or 32.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch import nn

from backbones.base import FeatureInfo, FeatureSpec, is_symbolic_tracing
from backbones.registry import Registry, UsageError

__all__ = ["HEADS", "Head", "register_head", "build_head", "list_heads", "head_out_strides", "nominal_strides"]

F = TypeVar("F", bound=Callable[..., Any])

HEADS = Registry("head")


def register_head(name: Optional[str] = None) -> Callable[[F], F]:
    """Decorator registering a head class (or builder function) under ``name``.

    The builder is called as ``builder(feature_info=..., num_classes=..., **kwargs)``. Give it a
    ``default_out_strides`` attribute (the backbone ``out_strides`` it needs) so :func:`heads.build_segmentor`
    can request the right maps; :class:`Head` subclasses inherit one.
    """
    return HEADS.register(name)


def build_head(name: str, *, feature_info: Sequence[FeatureSpec], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the head registered as ``name`` for a backbone described by ``feature_info``.

    Example::

        bb = build_backbone("resnet18", out_strides=(4, 8, 16, 32))
        head = build_head("fpn", feature_info=bb.feature_info, num_classes=19)
        logits = head(bb(images))  # (N, 19, ceil(H / 4), ceil(W / 4))
    """
    return HEADS.build(name, feature_info=feature_info, num_classes=num_classes, **kwargs)


def list_heads(pattern: str = "*") -> List[str]:
    """Registered head names matching the shell-style ``pattern``."""
    return HEADS.list(pattern)


def head_out_strides(name: str) -> Optional[Tuple[int, ...]]:
    """The backbone ``out_strides`` head ``name`` needs by default (``None`` if it does not say)."""
    strides = getattr(HEADS.get(name), "default_out_strides", None)
    return None if strides is None else tuple(strides)


def nominal_strides(feature_info: Sequence[FeatureSpec]) -> List[int]:
    """Stride of each map in the undilated network (``stride * dilation``), the unit of ``out_strides``."""
    return [s.stride * s.dilation for s in feature_info]


class Head(nn.Module):
    """Base class of the segmentation heads: argument checks, map lookup and feature-list validation.

    Args:
        feature_info: the backbone's :class:`backbones.FeatureInfo` (a sequence of ``FeatureSpec`` is accepted).
        num_classes: number of output channels K (>= 1).

    Attributes:
        default_out_strides: backbone ``out_strides`` (nominal strides) this head consumes by default.
        logits_stride: actual stride of the logits with respect to the input.
    """

    default_out_strides: Tuple[int, ...] = (8, 16, 32)
    head_name: str = "head"  # the registry name, used in error messages
    # TorchScript compiles forward() only; the metadata stays Python-side.
    __jit_ignored_attributes__ = ["feature_info"]

    def __init__(self, *, feature_info: Sequence[FeatureSpec], num_classes: int) -> None:
        super().__init__()
        if not isinstance(feature_info, FeatureInfo):
            if isinstance(feature_info, (str, bytes)) or not isinstance(feature_info, Sequence):
                raise UsageError(
                    f"{self.head_name} head: feature_info must be a backbone's FeatureInfo, "
                    f"got {type(feature_info).__name__}"
                )
            feature_info = FeatureInfo(feature_info)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{self.head_name} head: num_classes must be an int >= 1, got {num_classes!r}")
        self.feature_info = feature_info
        self.num_classes = num_classes
        self.in_channels: List[int] = list(feature_info.channels)
        self.logits_stride = feature_info[-1].stride

    def find_map(self, nominal_stride: int, *, need: str, request: Sequence[int]) -> int:
        """Index of the map at ``nominal_stride``; raise naming the ``out_strides`` to request if absent.

        Args:
            need: what the map is for, for the message ("its low-level skip").
            request: the ``out_strides`` to suggest.
        """
        nominal = nominal_strides(self.feature_info)
        matches = [i for i, s in enumerate(nominal) if s == nominal_stride]
        if not matches:
            raise ValueError(
                f"{self.head_name} head needs a map at stride {nominal_stride} for {need}, but the backbone "
                f"provides strides {nominal} ({self.feature_info!r}); build the backbone with "
                f"out_strides={tuple(request)}"
            )
        return matches[-1]

    @torch.jit.unused
    def check_features(self, features: List[torch.Tensor]) -> None:
        """Raise ``ValueError`` unless ``features`` matches the ``feature_info`` given at construction."""
        if torch.compiler.is_compiling() or is_symbolic_tracing():
            return
        if not isinstance(features, (list, tuple)):
            raise UsageError(
                f"{self.head_name} head expects the backbone's list of feature maps, got {type(features).__name__}"
            )
        expected = self.in_channels
        got = [f.shape[1] if isinstance(f, torch.Tensor) and f.dim() == 4 else tuple(getattr(f, "shape", ()))
               for f in features]
        if len(features) != len(expected) or got != expected:
            raise ValueError(
                f"{self.head_name} head was built for {len(expected)} maps with channels {expected} "
                f"({self.feature_info!r}), got {len(features)} maps with channels {got}; build the head from the "
                f"same backbone's feature_info"
            )
