"""Inference-only copies of models: BatchNorm folded into convolutions, channels_last, bf16/fp16, packed weights.

What makes a ResNet fast on a CPU (measured on a 2-core AVX-512 EPYC, see ``docs/performance.md``):

- folding each BatchNorm into the convolution before it removes a full read-and-write pass over every activation;
- channels_last (NHWC) is oneDNN's native activation layout, so no activation is reordered around a convolution;
- eager PyTorch converts every convolution's weight into oneDNN's blocked layout on *every* call. Converting it
  once per input shape (what ``torch.jit.optimize_for_inference`` and Inductor's freezing do) saves a further
  ~8-12% on ResNet-50 and brings ResNet-18/50 to the rate of a large fp32 matrix product;
- past that rate only less arithmetic helps: wide 3x3 convolutions (256 channels and more) run as Winograd
  F(4x4, 3x3) (:mod:`backbones.winograd`), a quarter of the multiply-adds: 1.5-2x faster per layer while memory
  bandwidth is free, 0.97-1.7x while other processes contend for it (``winograd=False`` turns it off).

Fusing ReLU and the residual addition into the convolution (oneDNN post-ops, bit-identical outputs) was measured
as well, with packed weights: 0% on ResNet-34, ~3% on ResNet-18, ~9% on ResNet-50 at 512x1024. Not worth a
second, fused forward path in every block, so ReLUs stay where they are: ONNX Runtime and Inductor fuse them
themselves.

One cost is outside the model: glibc hands every block of 32 MiB or more (a 64x256x512 fp32 map) back to the OS
when it is freed, so the next forward maps it again and the kernel zero-fills it page by page (~80k page faults,
~15% of a ResNet-50 forward at 512x1024). :func:`reuse_freed_memory` switches that off for the process.
"""

import copy
import ctypes
import ctypes.util
import weakref
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode

from .norm import FrozenBatchNorm2d
from .winograd import is_eligible as winograd_eligible, transform_weight, winograd_conv3x3

__all__ = ["deploy", "fold_batchnorm", "PackedConv2d", "reuse_freed_memory"]

# Input size used to trace which convolution feeds which norm when the caller gives no example input.
PROBE_SIZE = 64


def deploy(model: nn.Module, *, dtype: Optional[torch.dtype] = None, channels_last: bool = True,
           device: Union[str, torch.device, None] = None, pack_weights: bool = True, winograd: bool = True,
           example_input: Any = None) -> nn.Module:
    """Return an inference-only copy of ``model`` (a backbone, a head, a ``SegmentationModel``, any module tree).

    The copy is in eval mode with gradients off; every BatchNorm (``BatchNorm2d``, ``SyncBatchNorm``, frozen BN,
    timm's ``BatchNormAct2d``) that directly follows a plain ``nn.Conv2d`` is folded into it (see
    :func:`fold_batchnorm`). ``model`` itself is not modified; it may be in training mode; deploying a deployed
    model is harmless.

    Args:
        model: the module to copy.
        dtype: ``None`` keeps the parameters' dtype; ``torch.bfloat16`` (CPU with bf16 support, or CUDA) or
            ``torch.float16`` (CUDA only). The copy then expects inputs in that dtype (``x.to(dtype)``) and
            returns outputs in it.
        channels_last: store convolution weights as NHWC, so activations stay NHWC throughout.
        device: move the copy there (default: where ``model`` is).
        pack_weights: on CPU with ``channels_last``, run convolutions through oneDNN with weights packed once
            per input shape (:class:`PackedConv2d`); costs one extra copy of the weights per cached shape.
        winograd: with ``pack_weights``, in fp32, run the 3x3 stride-1 convolutions with at least
            :data:`backbones.winograd.MIN_CHANNELS` input and output channels as Winograd F(4x4, 3x3): a quarter
            of the multiply-adds, at the price of ~1e-5 relative error per layer (instead of ~1e-6), weights held
            a second time in the Winograd domain (4x their size) and reused per-thread scratch buffers (~20 MiB
            more peak memory at 512x1024). Its transforms are memory-bound: on this project's shared
            2-core machine those layers ran 1.5-2x faster than direct while memory bandwidth was free, and
            0.97-1.7x while other tenants contended for it (see ``docs/performance.md``). ``False`` keeps every
            convolution on oneDNN's direct kernel (outputs closest to eager).
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
    flags = {"channels_last": channels_last, "pack_weights": pack_weights, "winograd": winograd}
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"deploy {flag} must be a bool, got {value!r}")
    target = torch.device(device) if device is not None else _device_of(model)
    _check_dtype(dtype, target)
    # Called under torch.inference_mode(), the copy's weights would be inference tensors, which have no version
    # counter for PackedConv2d to notice in-place changes by; build them as ordinary tensors either way.
    with torch.inference_mode(False):
        return _deploy(model, dtype=dtype, channels_last=channels_last, target=target, pack_weights=pack_weights,
                       winograd=winograd, example_input=example_input)


def _deploy(model: nn.Module, *, dtype: Optional[torch.dtype], channels_last: bool, target: torch.device,
            pack_weights: bool, winograd: bool, example_input: Any) -> nn.Module:
    deployed = copy.deepcopy(model).to(target)
    deployed.eval()
    deployed.requires_grad_(False)
    if channels_last:
        # Before folding: the trace then runs on oneDNN's fast NHWC kernels (NCHW dilated convs are very slow).
        deployed = deployed.to(memory_format=torch.channels_last)
    fold_batchnorm(deployed, example_input=example_input)
    if dtype is not None:
        deployed = deployed.to(dtype)
    if pack_weights and channels_last and target.type == "cpu" and _MKLDNN_OPS:
        for m in deployed.modules():
            if type(m) in (nn.Conv2d, PackedConv2d):
                m.__class__ = PackedConv2d  # same attributes and parameters, only forward differs
                # Winograd in fp32 only: its ~1e-5 error is noise there, but bf16 has ~3 digits to lose.
                m.winograd = winograd and m.weight.dtype == torch.float32 and winograd_eligible(m)
    return deployed


def _version(weight: torch.Tensor) -> int:
    """In-place change counter of ``weight``; inference tensors (weights loaded under ``torch.inference_mode``)
    have none, so a change made to them in place is not noticed."""
    return 0 if weight.is_inference() else weight._version


def _check_dtype(dtype: Optional[torch.dtype], device: torch.device) -> None:
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"deploy dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"deploy dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if device.type == "cpu":
        if dtype == torch.float16:
            raise ValueError("deploy dtype=torch.float16 is not supported on CPU (no fast fp16 convolutions there); "
                             "use torch.bfloat16 on CPU, or float16 with device='cuda'")
        if dtype == torch.bfloat16 and not _cpu_supports_bf16():
            raise ValueError("deploy dtype=torch.bfloat16 needs a CPU with bf16 support in oneDNN (AVX-512 or "
                             "newer); this one has none, so use dtype=None (fp32)")
    elif device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"deploy dtype=torch.bfloat16 is not supported by {torch.cuda.get_device_name(device)}; "
                         f"use torch.float16")


def _cpu_supports_bf16() -> bool:
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.backends.mkldnn.is_available() and (checker is None or bool(checker()))


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# --- BatchNorm folding ----------------------------------------------------------------------------------------

def fold_batchnorm(model: nn.Module, *, example_input: Any = None) -> List[str]:
    """Fold, in place, every batch norm that directly follows a plain ``nn.Conv2d`` into that convolution.

    Which convolution feeds which norm is read from the data flow, not from attribute names: ``model`` is run
    once on ``example_input`` while every torch function call is recorded, and a pair is folded only if the
    convolution's output is used by nothing but that norm (one call each, each module registered once). Norms
    inside an ``nn.Sequential`` right after a convolution are folded even if the run does not reach them (an
    auxiliary head that only runs in training). The folded norm becomes ``nn.Identity`` (timm's
    ``BatchNormAct2d`` becomes its activation). Norms that follow something else stay as they are, in eval mode.

    ``model`` must be in eval mode; the outputs are checked against the unfolded ones on ``example_input``.

    Returns:
        the qualified names of the folded norms.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (folding uses the running statistics); "
                         "call model.eval() first, or use deploy(), which works on an eval copy")
    if example_input is None:
        example_input = _probe_input(model)
    with torch.no_grad():
        pairs, called, reference = _traced_pairs(model, example_input)
        pairs.update({bn: conv for bn, conv in _sequential_pairs(model).items()
                      if bn not in called and conv not in called})
        names = {m: n for n, m in model.named_modules()}
        parents = {child: (parent, name) for parent in model.modules() for name, child in parent.named_children()}
        for bn, conv in pairs.items():
            parent, name = parents[bn]  # registered once: checked when the pair was found
            setattr(parent, name, _fold_pair(conv, bn))
        check = model(example_input)
    for ref, out in zip(iter_tensors(reference), iter_tensors(check)):
        scale = ref.float().abs().max().clamp_min(1e-12)
        err = float((out.float() - ref.float()).abs().max() / scale)
        if err > 1e-3:
            raise RuntimeError(f"folding BatchNorm changed {type(model).__name__}'s output (relative error {err:.2e});"
                               f" a convolution output is probably used outside the module tree's data flow")
    return sorted(names[bn] for bn in pairs)


def _probe_input(model: nn.Module) -> torch.Tensor:
    channels = getattr(model, "in_chans", None)
    if not isinstance(channels, int):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"cannot guess the input of {type(model).__name__} (no in_chans, no Conv2d); "
                             f"pass example_input=")
        channels = convs[0].in_channels
    ref = next(iter(model.parameters()), None)
    x = torch.randn(1, channels, PROBE_SIZE, PROBE_SIZE, device=_device_of(model),
                    dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
    return x.contiguous(memory_format=torch.channels_last)


# Tensor methods that read metadata only: calling them on a convolution's output does not use its values.
_METADATA_CALLS = frozenset({"dim", "size", "numel", "stride", "is_contiguous", "is_floating_point", "element_size",
                             "get_device", "data_ptr", "__len__", "ndimension", "nelement"})


class _DataFlow(TorchFunctionMode):
    """Records, for every tensor, the norm module (or ``None`` for "elsewhere") of each call that reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.current_norm: Optional[nn.Module] = None
        self.readers: Dict[int, List[Optional[nn.Module]]] = {}
        self.keep: List[torch.Tensor] = []  # keeps recorded tensors alive so their ids stay unique

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _METADATA_CALLS or (name == "__get__" and not isinstance(out, torch.Tensor)):
            return out
        for t in iter_tensors((args, kwargs)):
            self.readers.setdefault(id(t), []).append(self.current_norm)
            self.keep.append(t)
        return out


def _traced_pairs(model: nn.Module, example_input: Any
                  ) -> Tuple[Dict[nn.Module, nn.Module], Set[nn.Module], Any]:
    """``{norm: conv}`` for the foldable pairs seen while running ``model(example_input)``, the convs and norms
    that ran, and the output."""
    calls: Dict[nn.Module, List[Tuple[Any, Any]]] = {}
    flow = _DataFlow()

    def record(module, inputs, output):
        calls.setdefault(module, []).append((inputs[0] if inputs else None, output))
        flow.keep.append(output)

    def enter_norm(module, inputs):
        flow.current_norm = module

    def leave_norm(module, inputs, output):
        flow.current_norm = None

    handles = []
    for m in model.modules():
        if _is_plain_conv(m):
            handles.append(m.register_forward_hook(record))
        elif _norm_kind(m) is not None:
            handles += [m.register_forward_pre_hook(enter_norm), m.register_forward_hook(record),
                        m.register_forward_hook(leave_norm)]
    try:
        with flow:
            output = model(example_input)
    except Exception as err:
        raise ValueError(f"deploy could not run {type(model).__name__} on its example input "
                         f"({_describe(example_input)}): {err}; pass example_input= that the model accepts") from err
    finally:
        for h in handles:
            h.remove()

    counts = _registrations(model)
    produced_by = {id(out): conv for conv, c in calls.items() if _is_plain_conv(conv) and len(c) == 1
                   for _, out in c}
    returned = {id(t) for t in iter_tensors(output)}
    pairs: Dict[nn.Module, nn.Module] = {}
    for bn, c in calls.items():
        if _is_plain_conv(bn) or len(c) != 1:
            continue
        source = c[0][0]
        conv = produced_by.get(id(source))
        if conv is None or counts[bn] != 1 or counts[conv] != 1 or id(source) in returned:
            continue
        if all(reader is bn for reader in flow.readers.get(id(source), [])):
            pairs[bn] = conv
    return pairs, set(calls), output


def _sequential_pairs(model: nn.Module) -> Dict[nn.Module, nn.Module]:
    """``{norm: conv}`` for a plain conv directly followed by a norm inside an ``nn.Sequential``."""
    counts = _registrations(model)
    pairs = {}
    for m in model.modules():
        if type(m).forward is not nn.Sequential.forward:
            continue
        children = list(m.children())
        for conv, bn in zip(children, children[1:]):
            if _is_plain_conv(conv) and _norm_kind(bn) is not None and counts[conv] == 1 and counts[bn] == 1:
                pairs[bn] = conv
    return pairs


def _registrations(model: nn.Module) -> Dict[nn.Module, int]:
    counts: Dict[nn.Module, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[m] = counts.get(m, 0) + 1
    return counts


def _is_plain_conv(m: nn.Module) -> bool:
    # Subclasses with their own forward (weight standardization, dynamic padding) may not commute with folding.
    return isinstance(m, nn.Conv2d) and type(m).forward in (nn.Conv2d.forward, PackedConv2d.forward)


def _norm_kind(m: nn.Module) -> Optional[str]:
    """``"bn"`` for a norm computing ``x * scale + shift`` in eval mode, ``"bn_act"`` for one followed by its
    own dropout and activation (timm), ``None`` otherwise."""
    cls = type(m)
    if cls in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return "bn" if m.running_mean is not None else None  # without statistics it always uses batch ones
    if cls is FrozenBatchNorm2d:
        return "bn"
    module = cls.__module__
    if module.startswith("torchvision."):
        from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

        return "bn" if cls is TorchvisionFrozenBN else None
    if module.startswith("timm."):
        from timm.layers import norm_act

        if cls in (norm_act.BatchNormAct2d, norm_act.SyncBatchNormAct):
            return "bn_act" if m.running_mean is not None else None
        if cls is norm_act.FrozenBatchNormAct2d:
            return "bn_act"
    return None


def _fold_pair(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
    """Fold ``bn`` into ``conv`` in place; return the module that replaces ``bn``."""
    new_w, new_b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    conv.weight = nn.Parameter(new_w.detach(), requires_grad=False)
    conv.bias = nn.Parameter(new_b.detach(), requires_grad=False)
    if _norm_kind(bn) == "bn_act":
        return bn.act if isinstance(bn.drop, nn.Identity) else nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nest of tensors, lists, tuples and dicts (a model's inputs or outputs), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v)


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor {tuple(obj.shape)} {obj.dtype}"
    return type(obj).__name__


# --- packed convolutions --------------------------------------------------------------------------------------

# oneDNN's fused-convolution ops (Inductor's CPU backend uses them); absent from builds without mkldnn.
_MKLDNN_OPS = torch.backends.mkldnn.is_available() and all(
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

    With ``winograd`` set (by :func:`deploy`, for eligible layers, see :func:`backbones.winograd.is_eligible`),
    fp32 inputs take :func:`backbones.winograd.winograd_conv3x3` instead, with the weight transformed once.
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


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


# --- process memory -------------------------------------------------------------------------------------------

def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning large blocks to the OS (process-wide).

    By default glibc serves blocks of 32 MiB and more with a fresh ``mmap`` and unmaps them on free, so each
    large activation of each forward is zero-filled again by the kernel. This sets ``M_MMAP_MAX=0`` and a 2 GiB
    ``M_TRIM_THRESHOLD`` (the ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` environment variables do the
    same at start-up; jemalloc or tcmalloc through ``LD_PRELOAD`` are alternatives). The cost: the process keeps
    its peak memory resident. Call it once, early, in an inference process; it affects every allocation.

    Returns:
        ``True`` if applied, ``False`` where the C library is not glibc (nothing is changed then).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt take other parameter numbers
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))
