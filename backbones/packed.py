"""``PackedConv2d``: an ``nn.Conv2d`` that runs eager CPU inference through oneDNN with its weight packed once.

Eager PyTorch converts every convolution's weight into oneDNN's blocked layout on every call; this converts it
once per input shape, as ``torch.jit.optimize_for_inference`` and Inductor's freezing do.
"""

import weakref
from typing import Any, Dict, Tuple

import torch
from torch import nn

from .winograd import transform_weight, winograd_conv3x3

__all__ = ["MKLDNN_OPS", "PackedConv2d"]

# oneDNN's fused-convolution ops (Inductor's CPU backend uses them); absent from builds without mkldnn.
MKLDNN_OPS = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise", "_reorder_convolution_weight"))

# Packed weights per module, outside the module so copies, pickles and TorchScript never see them.
_PACKED: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[Any, ...], torch.Tensor]]" = weakref.WeakKeyDictionary()


class PackedConv2d(nn.Conv2d):
    """``nn.Conv2d`` that, for eager CPU inference on NHWC fp32/bf16 inputs, runs oneDNN with a packed weight.

    The weight is converted to oneDNN's blocked layout once per input shape (up to :attr:`max_cached_shapes`
    shapes, then the cache restarts) instead of on every call. Any other use (autograd, autocast, CUDA, tracing,
    ``torch.compile``, ``torch.export``/ONNX export, TorchScript) runs the ordinary convolution on the same
    parameters, so state dicts, exports and scripted models are those of an ``nn.Conv2d``. A weight changed in
    place is repacked (the cache key includes its version counter).

    With ``winograd`` set (by :func:`backbones.deploy`, for eligible layers, see
    :func:`backbones.winograd.is_eligible`), fp32 inputs take :func:`backbones.winograd.winograd_conv3x3` instead,
    with the weight transformed once.
    """

    max_cached_shapes = 4
    winograd = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._packable(x):
            return self._packed_forward(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _packable(self, x: torch.Tensor) -> bool:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return False
        # Exactly torch.Tensor: fake, functional and proxy tensors of tracers take the ordinary path.
        if type(x) is not torch.Tensor or x.device.type != "cpu" or x.dim() != 4 or x.dtype != self.weight.dtype:
            return False
        if x.dtype not in (torch.float32, torch.bfloat16) or self.padding_mode != "zeros":
            return False
        if isinstance(self.padding, str) or not torch.backends.mkldnn.enabled or _autocast_on():
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))

    @torch.jit.unused
    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = _PACKED.setdefault(self, {})
        if self.winograd and x.dtype == torch.float32:
            key = ("winograd", self.weight.data_ptr(), _version(self.weight))
            weight = cache.get(key)
            if weight is None:
                cache.clear()
                weight = cache[key] = transform_weight(self.weight)
            return winograd_conv3x3(x, weight, self.bias)
        x = x.contiguous(memory_format=torch.channels_last)
        key = (tuple(x.shape), self.weight.data_ptr(), _version(self.weight))
        weight = cache.get(key)
        if weight is None:
            if len(cache) >= self.max_cached_shapes:
                cache.clear()
            weight = cache[key] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape))
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "")


def _version(weight: torch.Tensor) -> int:
    """In-place change counter of ``weight``; inference tensors (weights loaded under ``torch.inference_mode``)
    have none, so a change made to them in place is not noticed."""
    return 0 if weight.is_inference() else weight._version


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()
