"""The backbone contract: a module returning a list of feature maps, described by ``feature_info``.

Heads are built from ``feature_info`` alone, so any backbone that honours this contract (ours, a timm or
torchvision wrapper, or a third-party plug-in) works with every head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.fx
from torch import nn

from .registry import UsageError

__all__ = ["FeatureSpec", "FeatureInfo", "Backbone", "is_symbolic_tracing"]


def is_symbolic_tracing() -> bool:
    """True while ``torch.fx.symbolic_trace`` (or torchvision's feature extraction, FX quantization) traces.

    The traced values are then ``Proxy`` objects, on which input checks cannot run; the traced graph runs
    without them. torch.export and torch.compile trace with (fake) tensors, so the checks run there.
    """
    return _fx_symbolic_tracing()


_fx = torch.fx._symbolic_trace
# is_fx_symbolic_tracing appeared in torch 2.5; before, only is_fx_tracing (also true under torch.export).
_fx_symbolic_tracing = getattr(_fx, "is_fx_symbolic_tracing", _fx.is_fx_tracing)


@dataclass(frozen=True)
class FeatureSpec:
    """Description of one output map.

    Attributes:
        name: the module producing the map (``"layer2"``); stable across output strides.
        channels: number of channels C of the map.
        stride: actual stride with respect to the input, after dilation: the map is ``ceil(H / stride)`` high.
        dilation: dilation of the last 3x3 convolution producing the map (1 when undilated).
    """

    name: str
    channels: int
    stride: int
    dilation: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"FeatureSpec.name must be a non-empty string, got {self.name!r}")
        for field in ("channels", "stride", "dilation"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FeatureSpec.{field} must be a positive int, got {value!r}")


class FeatureInfo(tuple):
    """An immutable sequence of :class:`FeatureSpec`, shallow to deep, aligned with a backbone's outputs.

    Built once next to the modules it describes, and checked for consistency: names are unique and strides
    never decrease from one map to the next.
    """

    def __new__(cls, specs: Sequence[FeatureSpec]) -> "FeatureInfo":
        specs = tuple(specs)
        if not specs:
            raise ValueError("FeatureInfo needs at least one FeatureSpec")
        for s in specs:
            if not isinstance(s, FeatureSpec):
                raise UsageError(f"FeatureInfo takes FeatureSpec records, got {type(s).__name__}")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"FeatureInfo names must be unique, got {names}")
        strides = [s.stride for s in specs]
        if any(b < a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"FeatureInfo strides must not decrease from shallow to deep, got {strides}")
        return super().__new__(cls, specs)

    @property
    def channels(self) -> List[int]:
        return [s.channels for s in self]

    @property
    def strides(self) -> List[int]:
        return [s.stride for s in self]

    @property
    def names(self) -> List[str]:
        return [s.name for s in self]

    def by_stride(self, stride: int) -> int:
        """Index of the map with actual stride ``stride`` (the deepest one if several share it)."""
        matches = [i for i, s in enumerate(self) if s.stride == stride]
        if not matches:
            raise KeyError(f"no output map has stride {stride}; the strides are {self.strides}")
        return matches[-1]

    def __repr__(self) -> str:
        return "FeatureInfo(" + ", ".join(f"{s.name}: C={s.channels} s={s.stride}" for s in self) + ")"


class Backbone(nn.Module):
    """Base class documenting the contract every registered backbone follows.

    Subclasses set ``self.feature_info`` (a :class:`FeatureInfo`) in ``__init__`` and implement
    ``forward(x) -> List[Tensor]``, returning one map per ``feature_info`` entry in the same order, where map
    ``i`` has shape ``(N, feature_info[i].channels, ceil(H / s_i), ceil(W / s_i))`` with
    ``s_i = feature_info[i].stride``.

    Attributes:
        feature_info: channels and actual stride of every output map.
        out_channels: ``feature_info.channels``.
        size_divisibility: the largest actual stride. Inputs of any size are accepted; padding an input to a
            multiple of this makes every map align exactly with the input grid (detectron2 convention).
        in_chans: expected number of input channels.
    """

    # TorchScript compiles only forward(); the metadata is Python-side description, not part of the graph.
    __jit_unused_properties__ = ["out_channels", "out_strides", "size_divisibility"]
    __jit_ignored_attributes__ = ["feature_info"]
    in_chans = 3

    @property
    def out_channels(self) -> List[int]:
        return self.feature_info.channels

    @property
    def out_strides(self) -> List[int]:
        return self.feature_info.strides

    @property
    def size_divisibility(self) -> int:
        return max(self.feature_info.strides)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a non-empty ``(N, in_chans, H, W)`` floating tensor
        of the weights' dtype; skipped while ``torch.fx`` traces (``x`` is then a ``Proxy``)."""
        if is_symbolic_tracing():
            return
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise UsageError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} expects {self.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(
                f"{name} expects an image of at least 1x1 pixels, got {x.shape[2]}x{x.shape[3]} "
                f"(input shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise UsageError(f"{name} expects a floating-point tensor, got {x.dtype}")
        if x.dtype == torch.float64:
            weight = next(self.parameters(), None)
            if weight is not None and weight.dtype != torch.float64:
                raise UsageError(
                    f"{name} got a torch.float64 input but its weights are {weight.dtype}; convert the input "
                    f"with x.float() (or the model with .double())"
                )

    def output_shapes(self, height: int, width: int) -> List[Tuple[int, int, int]]:
        """The ``(C, h, w)`` of each output for an ``H x W`` input, without running the network."""
        return [(s.channels, -(-height // s.stride), -(-width // s.stride)) for s in self.feature_info]
