"""``deploy()``: an inference-only copy of a model, with BatchNorm folded, channels_last weights, an optional
bf16/fp16 dtype and packed (or Winograd) convolutions on CPU.

Each step lives in its own module: :mod:`backbones.fold` (BatchNorm folding), :mod:`backbones.packed`
(``PackedConv2d``) and :mod:`backbones.winograd`. Why each step pays, and what it was measured to gain, is in
``docs/performance.md``.
"""

import copy
from typing import Any, Optional, Union

import torch
from torch import nn

from .fold import fold_batchnorm, fuse_relu, mark_dead_inputs
from .machine import lacks_native_bf16
from .packed import MKLDNN_OPS, FusedBasicBlock, FusedBottleneck, PackedConv2d, fuse_residual_blocks, release_packed
from .tensors import device_of, to_dtype
from .winograd import is_eligible as winograd_eligible

__all__ = ["deploy"]


def deploy(model: nn.Module, *, dtype: Optional[torch.dtype] = None, channels_last: bool = True,
           device: Union[str, torch.device, None] = None, pack_weights: bool = True, winograd: bool = True,
           fuse: bool = True, example_input: Any = None) -> nn.Module:
    """Return an inference-only copy of ``model`` (a backbone, a head, a ``SegmentationModel``, any module tree).

    The copy is in eval mode with gradients off; every BatchNorm (``BatchNorm2d``, ``SyncBatchNorm``, frozen BN,
    timm's ``BatchNormAct2d``) that directly follows a plain ``nn.Conv2d`` is folded into it (see
    :func:`backbones.fold.fold_batchnorm`). ``model`` itself is not modified; it may be in training mode;
    deploying a deployed model is harmless.

    Args:
        model: the module to copy.
        dtype: ``None`` keeps the parameters' dtype; ``torch.bfloat16`` (CUDA, or a CPU with native bf16:
            class ``avx512_bf16`` or ``amx`` in :mod:`backbones.machine`) or ``torch.float16`` (CUDA only). The
            copy then expects inputs in that dtype (``x.to(dtype)``) and returns outputs in it.
        channels_last: store convolution weights as NHWC, so activations stay NHWC throughout.
        device: move the copy there (default: where ``model`` is).
        pack_weights: on CPU with ``channels_last``, run convolutions through oneDNN with weights packed once
            per input shape (:class:`backbones.packed.PackedConv2d`); costs one extra copy of the weights per
            cached shape.
        winograd: with ``pack_weights``, in fp32, run the 3x3 stride-1 convolutions with at least
            :func:`backbones.winograd.min_channels` input and output channels (a floor per CPU class, see
            :mod:`backbones.machine`) as Winograd F(4x4, 3x3): a quarter of the multiply-adds, at the price of
            ~1e-5 relative error per layer (instead of ~1e-6), weights held a second time in the Winograd domain
            (4x their size) and reused per-thread scratch buffers. Its transforms are memory-bound, so what it
            gains depends on free memory bandwidth. ``False`` keeps every convolution on oneDNN's direct kernel
            (outputs closest to eager).
        fuse: with ``pack_weights``, apply each ReLU that only reads a convolution's output, and the residual
            addition and ReLU ending this project's ResNet blocks, inside the convolution (oneDNN post-ops; see
            :func:`backbones.fold.fuse_relu` and :func:`backbones.packed.fuse_residual_blocks`): one pass over
            each map fewer per ReLU and per addition, with identical results.
        example_input: what to call ``model`` with to trace conv -> norm pairs; default a
            ``(1, C, 64, 64)`` random tensor with ``C`` the model's ``in_chans`` or its first conv's inputs.

    Returns:
        the deployed copy, with the same class and attributes (``feature_info``...). Outputs equal the original's
        eval-mode outputs to about 1e-5 relative error in fp32 (a few 1e-5 with ``winograd``; 1e-2 in bf16).

    Example::

        fast = deploy(build_backbone("resnet50"), dtype=torch.bfloat16)
        with torch.inference_mode():
            feats = fast(images.to(torch.bfloat16))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy expects an nn.Module, got {type(model).__name__}")
    flags = {"channels_last": channels_last, "pack_weights": pack_weights, "winograd": winograd, "fuse": fuse}
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"deploy {flag} must be a bool, got {value!r}")
    target = torch.device(device) if device is not None else device_of(model)
    _check_dtype(dtype, target)
    # Called under torch.inference_mode(), the copy's weights would be inference tensors, which have no version
    # counter for PackedConv2d to notice in-place changes by; build them as ordinary tensors either way.
    with torch.inference_mode(False):
        return _deploy(model, dtype=dtype, channels_last=channels_last, target=target, pack_weights=pack_weights,
                       winograd=winograd, fuse=fuse, example_input=example_input)


def _deploy(model: nn.Module, *, dtype: Optional[torch.dtype], channels_last: bool, target: torch.device,
            pack_weights: bool, winograd: bool, fuse: bool, example_input: Any) -> nn.Module:
    deployed = copy.deepcopy(model).to(target)
    deployed.eval()
    deployed.requires_grad_(False)
    if channels_last:
        # Before folding: the trace then runs on oneDNN's fast NHWC kernels (NCHW dilated convs are very slow).
        deployed = deployed.to(memory_format=torch.channels_last)
    fold_batchnorm(deployed, example_input=example_input)
    if dtype is not None:
        deployed = deployed.to(dtype)
    if pack_weights and channels_last and target.type == "cpu" and MKLDNN_OPS:
        for m in deployed.modules():
            if type(m) in (nn.Conv2d, PackedConv2d):
                m.__class__ = PackedConv2d  # same attributes and parameters, only forward differs
                # Winograd in fp32 only: its ~1e-5 error is noise there, but bf16 has ~3 digits to lose.
                m.winograd = winograd and m.weight.dtype == torch.float32 and winograd_eligible(m)
                m.fused_relu = m.fused_relu  # an instance attribute, which TorchScript sees (a deployed copy's stays)
        if fuse:
            fuse_residual_blocks(deployed)
            probe = to_dtype(example_input, dtype)
            fuse_relu(deployed, example_input=probe)
            mark_dead_inputs(deployed, [m for m in deployed.modules() if type(m) in (FusedBasicBlock, FusedBottleneck)
                                        and m.downsample is None], example_input=probe)
            release_packed(deployed)  # the weights packed for the probe's shape
    return deployed


def _check_dtype(dtype: Optional[torch.dtype], device: torch.device) -> None:
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"deploy dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"deploy dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if device.type == "cpu":
        lacks = lacks_native_bf16() if dtype != torch.float32 else ""
        if dtype == torch.float16:
            instead = "dtype=None (fp32) on this CPU" if lacks else "torch.bfloat16 on this CPU"
            raise ValueError(f"deploy dtype=torch.float16 is not supported on CPU (no fast fp16 convolutions "
                             f"there); use {instead}, or float16 with device='cuda'")
        if lacks:
            # oneDNN would emulate bf16 there (or refuse it): slower than the fp32 kernels it replaces.
            raise ValueError(f"deploy dtype=torch.bfloat16: {lacks}, so bf16 would be emulated, slower than fp32; "
                             f"use dtype=None (fp32) on this CPU")
    elif device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"deploy dtype=torch.bfloat16 is not supported by {torch.cuda.get_device_name(device)}; "
                         f"use torch.float16")
