"""``PackedConv2d``: an ``nn.Conv2d`` that runs eager CPU inference through oneDNN with its weight packed once,
optionally with a ReLU and a residual addition fused into the convolution (oneDNN post-ops).

Eager PyTorch converts every convolution's weight into oneDNN's blocked layout on every call; this converts it
once per input shape, as ``torch.jit.optimize_for_inference`` and Inductor's freezing do. A ReLU or a residual
addition run as separate operators reads and writes the whole map once more each; as post-ops they are applied
while the convolution's output is still in cache, as ONNX Runtime and Inductor do. :func:`fuse_residual_blocks`
rewrites this project's ResNet blocks to use them.
"""

import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .resnet import BasicBlock, Bottleneck
from .winograd import transform_weight, winograd_conv3x3

__all__ = ["MKLDNN_OPS", "PackedConv2d", "FusedBasicBlock", "FusedBottleneck", "fuse_residual_blocks",
           "release_packed"]

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

    With ``fused_relu`` set (by :func:`backbones.deploy`, when a ReLU only ever reads this convolution's output),
    the output goes through a ReLU, as a oneDNN post-op on the packed path. :meth:`forward_add` adds a residual
    before that ReLU, also as a post-op.
    """

    max_cached_shapes = 4
    winograd = False
    fused_relu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._packable(x, None):
            return self._packed_forward(x, None, False)
        y = self._conv_forward(x, self.weight, self.bias)
        return torch.relu(y) if self.fused_relu else y

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor, reuse_residual: bool = False) -> torch.Tensor:
        """``conv(x) + residual``, then the ReLU if ``fused_relu``; ``residual`` has the output's shape.

        ``reuse_residual``: the caller never uses ``residual`` again, so the packed path may write the result into
        its memory instead of a new tensor (one allocation fewer, which for large maps means no fresh pages for
        the kernel to zero-fill).
        """
        if not torch.jit.is_scripting() and self._packable(x, residual):
            return self._packed_forward(x, residual, reuse_residual)
        y = self._conv_forward(x, self.weight, self.bias) + residual
        return torch.relu(y) if self.fused_relu else y

    @torch.jit.unused
    def _packable(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> bool:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return False
        if residual is not None and (type(residual) is not torch.Tensor or residual.dtype != x.dtype
                                     or residual.dim() != 4):
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
    def _packed_forward(self, x: torch.Tensor, residual: Optional[torch.Tensor], reuse_residual: bool
                        ) -> torch.Tensor:
        cache = _PACKED.setdefault(self, {})
        if self.winograd and x.dtype == torch.float32:
            key = ("winograd", self.weight.data_ptr(), _version(self.weight))
            weight = cache.get(key)
            if weight is None:
                cache.clear()
                weight = cache[key] = transform_weight(self.weight)
            return winograd_conv3x3(x, weight, self.bias, residual=residual, relu=self.fused_relu)
        x = x.contiguous(memory_format=torch.channels_last)
        key = (tuple(x.shape), self.weight.data_ptr(), _version(self.weight))
        weight = cache.get(key)
        if weight is None:
            if len(cache) >= self.max_cached_shapes:
                cache.clear()
            weight = cache[key] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape))
        args = (weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, *args, "relu" if self.fused_relu else "none", [], "")
        unary = "relu" if self.fused_relu else None
        if reuse_residual and _owns_memory(residual):
            return torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, *args, "add", 1.0, unary, [], "")
        residual = residual.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", 1.0, unary, [], "")


def _owns_memory(t: torch.Tensor) -> bool:
    """Whether ``t`` is a whole NHWC-contiguous storage that may be written here (not a view of another tensor,
    not an inference tensor outside inference mode)."""
    return (t._base is None and t.storage_offset() == 0 and t.is_contiguous(memory_format=torch.channels_last)
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()
            and (not t.is_inference() or torch.is_inference_mode_enabled()))


class FusedBasicBlock(BasicBlock):
    """:class:`backbones.resnet.BasicBlock` after folding, with its ReLUs and residual addition fused into the
    convolutions (see :func:`fuse_residual_blocks`); same parameters and outputs.

    ``reuse_shortcut``: the shortcut (the downsampled input, or the input itself when nothing else reads it) is
    dead after the addition, so the sum is written into it."""

    reuse_shortcut = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)  # bn1 folded, ReLU fused
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2.forward_add(out, identity, self.reuse_shortcut)  # bn2 folded; + identity, ReLU


class FusedBottleneck(Bottleneck):
    """:class:`backbones.resnet.Bottleneck` after folding, with its ReLUs and residual addition fused into the
    convolutions (see :func:`fuse_residual_blocks`); same parameters and outputs; ``reuse_shortcut`` as in
    :class:`FusedBasicBlock`."""

    reuse_shortcut = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3.forward_add(out, identity, self.reuse_shortcut)


_FUSED = {BasicBlock: (FusedBasicBlock, ("conv1", "conv2"), ("bn1", "bn2")),
          Bottleneck: (FusedBottleneck, ("conv1", "conv2", "conv3"), ("bn1", "bn2", "bn3"))}


def fuse_residual_blocks(model: nn.Module) -> List[str]:
    """Turn, in place, every folded ResNet block of ``model`` into its fused form; returns their names.

    A block qualifies when its norms were folded (they are ``nn.Identity``), its convolutions are
    :class:`PackedConv2d` and its activation is ``nn.ReLU``: each convolution then applies the ReLU that follows
    it, and the last one adds the shortcut first, as oneDNN post-ops. The block's class becomes
    :class:`FusedBasicBlock` / :class:`FusedBottleneck` (subclasses, same parameters and state dict). A block
    whose shortcut is a folded convolution (a fresh tensor nobody else holds) adds into it in place
    (``reuse_shortcut``); for an identity shortcut, :func:`backbones.fold.mark_dead_inputs` decides.
    """
    fused = []
    for name, m in model.named_modules():
        entry = _FUSED.get(type(m))
        if entry is None:
            continue
        cls, convs, norms = entry
        if type(m.relu) is not nn.ReLU or not all(type(getattr(m, n)) is nn.Identity for n in norms) \
                or not all(type(getattr(m, c)) is PackedConv2d for c in convs):
            continue
        for c in convs:
            getattr(m, c).fused_relu = True
        m.__class__ = cls
        m.reuse_shortcut = _fresh_output(m.downsample)
        fused.append(name)
    return fused


def _fresh_output(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` returns a new tensor of its own: a packed convolution, then only folded norms."""
    if module is None:
        return False
    children = list(module.children()) if type(module) is nn.Sequential else [module]
    return bool(children) and type(children[0]) is PackedConv2d and all(type(c) is nn.Identity for c in children[1:])


def release_packed(model: nn.Module) -> None:
    """Drop the packed (and Winograd-domain) weights cached for ``model``'s convolutions; they are rebuilt on the
    next call."""
    for m in model.modules():
        _PACKED.pop(m, None)


def _version(weight: torch.Tensor) -> int:
    """In-place change counter of ``weight``; inference tensors (weights loaded under ``torch.inference_mode``)
    have none, so a change made to them in place is not noticed."""
    return 0 if weight.is_inference() else weight._version


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()
