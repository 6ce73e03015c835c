"""Conformance check for the backbone contract, for plug-in authors and this project's own tests.

Example::

    from backbones.testing import check_backbone
    check_backbone(MyBackbone())   # raises BackboneConformanceError describing every violation found

The check runs the backbone on small random inputs of two sizes (one odd, so ``ceil`` rounding is exercised)
and leaves the backbone as it found it: parameters, buffers (BatchNorm statistics), gradients and the
train/eval flag of every submodule are restored afterwards.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .base import FeatureInfo
from .registry import UsageError
from .weights import short_names

__all__ = ["BackboneConformanceError", "check_backbone"]

Size = Tuple[int, int, int, int]


class BackboneConformanceError(AssertionError):
    """A backbone breaks the contract of :class:`backbones.Backbone`; the message lists every violation.

    It subclasses ``AssertionError`` so that test runners report it as a failed check, not a crash.
    """


def check_backbone(backbone: nn.Module, *, sizes: Sequence[Size] = ((1, 3, 97, 131), (2, 3, 64, 80)),
                   check_grads: bool = True) -> None:
    """Check that ``backbone`` honours the backbone contract; return ``None`` or raise.

    Checked:
      * ``feature_info`` is a :class:`FeatureInfo`; ``out_channels``/``out_strides``, when present, agree with it;
        ``size_divisibility``, when present, is a positive multiple of every stride;
      * in eval mode, for each ``(N, C, H, W)`` in ``sizes``: ``forward`` returns a ``list`` with one tensor per
        ``feature_info`` entry, tensor ``i`` of shape ``(N, channels_i, ceil(H / stride_i), ceil(W / stride_i))``,
        floating point and finite;
      * with ``check_grads``, in train mode on the largest input: every parameter with ``requires_grad``
        receives a finite gradient (a parameter that never gets one is unused, which also breaks DDP).

    Args:
        backbone: any module following the contract (a :class:`backbones.Backbone` subclass or a wrapper).
        sizes: input shapes ``(N, C, H, W)``; ``C`` must equal ``backbone.in_chans`` when the backbone has it.
        check_grads: run the gradient check (needs a backward pass; skip it for inference-only backbones).

    Raises:
        TypeError: ``backbone`` is not an ``nn.Module``.
        ValueError: ``sizes`` is malformed or does not match ``backbone.in_chans``.
        BackboneConformanceError: the backbone breaks the contract; the message lists every violation found.
    """
    if not isinstance(backbone, nn.Module):
        raise UsageError(f"check_backbone expects an nn.Module, got {type(backbone).__name__}")
    sizes = _check_sizes(sizes, getattr(backbone, "in_chans", None))
    name = type(backbone).__name__
    info = _check_metadata(backbone, name)
    ref = next((t for t in list(backbone.parameters()) + list(backbone.buffers()) if t.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    gen = torch.Generator().manual_seed(0)

    problems: List[str] = []
    snapshot = _Snapshot(backbone)
    try:
        backbone.eval()
        with torch.no_grad():
            for size in sizes:
                x = torch.randn(size, generator=gen).to(device=device, dtype=dtype)
                problems += _check_outputs(_run(backbone, x, name), info, size)
        if check_grads and not problems:
            problems += _check_gradients(backbone, info, max(sizes, key=lambda s: s[0] * s[2] * s[3]),
                                         device, dtype, gen, name)
    finally:
        snapshot.restore()
    if problems:
        raise BackboneConformanceError(
            f"{name} breaks the backbone contract ({info!r}):\n  - " + "\n  - ".join(problems)
        )


def _check_sizes(sizes: Sequence[Size], in_chans: Optional[int]) -> List[Size]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
        raise ValueError(f"sizes must be a non-empty sequence of (N, C, H, W) tuples, got {sizes!r}")
    out = []
    for s in sizes:
        if (not isinstance(s, Sequence) or len(s) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s)):
            raise ValueError(f"each entry of sizes must be (N, C, H, W) with positive ints, got {s!r}")
        if in_chans is not None and s[1] != in_chans:
            raise ValueError(
                f"input size {tuple(s)} has {s[1]} channels but the backbone expects in_chans={in_chans}; "
                f"pass sizes with C={in_chans}"
            )
        out.append(tuple(s))
    return out


def _check_metadata(backbone: nn.Module, name: str) -> FeatureInfo:
    info = getattr(backbone, "feature_info", None)
    if not isinstance(info, FeatureInfo):
        raise BackboneConformanceError(
            f"{name}.feature_info must be a backbones.FeatureInfo (a tuple of FeatureSpec built in __init__), "
            f"got {type(info).__name__}: {info!r}"
        )
    problems = []
    for attr, expected in (("out_channels", info.channels), ("out_strides", info.strides)):
        if hasattr(backbone, attr) and list(getattr(backbone, attr)) != expected:
            problems.append(f"{attr} {list(getattr(backbone, attr))} disagrees with feature_info {expected}")
    if hasattr(backbone, "size_divisibility"):
        div = backbone.size_divisibility
        if not isinstance(div, int) or div < 1 or any(div % s for s in info.strides):
            problems.append(f"size_divisibility must be a positive int divisible by every stride "
                            f"{info.strides}, got {div!r}")
    if problems:
        raise BackboneConformanceError(f"{name} metadata is inconsistent:\n  - " + "\n  - ".join(problems))
    return info


def _run(backbone: nn.Module, x: torch.Tensor, name: str) -> Any:
    try:
        return backbone(x)
    except Exception as e:  # report which input broke it, keep the original traceback
        raise BackboneConformanceError(
            f"{name} forward failed on an input of shape {tuple(x.shape)}: {type(e).__name__}: {e}"
        ) from e


def _check_outputs(outs: Any, info: FeatureInfo, size: Size) -> List[str]:
    n, _, h, w = size
    where = f"input {size}"
    if not isinstance(outs, list):
        return [f"{where}: forward must return a list of tensors, got {type(outs).__name__}"]
    if len(outs) != len(info):
        return [f"{where}: forward returned {len(outs)} maps but feature_info describes {len(info)}"]
    problems = []
    for i, (out, spec) in enumerate(zip(outs, info)):
        if not isinstance(out, torch.Tensor):
            problems.append(f"{where}: output {i} ({spec.name}) is a {type(out).__name__}, not a tensor")
            continue
        expected = (n, spec.channels, -(-h // spec.stride), -(-w // spec.stride))
        if tuple(out.shape) != expected:
            problems.append(
                f"{where}: output {i} ({spec.name}) has shape {tuple(out.shape)}, but feature_info "
                f"(channels={spec.channels}, stride={spec.stride}) implies {expected}"
            )
        if not out.is_floating_point():
            problems.append(f"{where}: output {i} ({spec.name}) has dtype {out.dtype}, expected floating point")
        elif not torch.isfinite(out).all():
            problems.append(f"{where}: output {i} ({spec.name}) contains NaN or inf")
    return problems


def _check_gradients(backbone: nn.Module, info: FeatureInfo, size: Size, device: torch.device,
                     dtype: torch.dtype, gen: torch.Generator, name: str) -> List[str]:
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    if not trainable:
        return []
    backbone.train()
    backbone.zero_grad(set_to_none=True)
    x = torch.randn(size, generator=gen).to(device=device, dtype=dtype)
    with torch.enable_grad():
        outs = _run(backbone, x, name)
        problems = _check_outputs(outs, info, size)
        if problems:
            return [f"train mode: {p}" for p in problems]
        # A random projection per map, so no parameter's gradient cancels out by symmetry.
        loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).mean() for o in outs)
        try:
            loss.backward()
        except RuntimeError as e:
            return [f"backward failed: {e}"]
    missing = [n for n, p in trainable if p.grad is None]
    bad = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} trainable parameter(s) got no gradient (unused in forward, which also "
                        f"breaks DDP; freeze them with requires_grad_(False) or do not build them): "
                        + short_names(missing))
    if bad:
        problems.append(f"{len(bad)} parameter(s) got NaN/inf gradients: " + short_names(bad))
    return problems


class _Snapshot:
    """Everything the check may change on a module tree, so it can be put back exactly."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.training: Dict[nn.Module, bool] = {m: m.training for m in module.modules()}
        self.grads = {p: p.grad for p in module.parameters()}
        # Buffers change in train mode (BatchNorm statistics); parameters do not, as no optimizer runs.
        self.buffers = {id(b): (b, b.detach().clone()) for b in module.buffers()}

    def restore(self) -> None:
        for m, mode in self.training.items():
            m.training = mode
        for p, g in self.grads.items():
            p.grad = g
        with torch.no_grad():
            for b, saved in self.buffers.values():
                b.copy_(saved)
