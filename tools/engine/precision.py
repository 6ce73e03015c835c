"""Mixed precision: which autocast dtype a device supports, ``--amp auto``'s choice, and the gradient scaler
fp16 needs.

bf16 has fp32's exponent range, so it trains without loss scaling on CPU and GPU; fp16 needs a GradScaler
and is a CUDA feature (CPU fp16 kernels are slow or missing), so fp16 on CPU is refused rather than emulated.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional, Tuple

import torch

__all__ = ["AMP_MODES", "AMP_CHOICES", "check_amp", "fast_bf16", "resolve_amp", "autocast", "grad_scaler"]

AMP_MODES = ("none", "bf16", "fp16")
# What --amp accepts where the choice can be resolved per device (training); "auto" never reaches autocast.
AMP_CHOICES = ("auto", *AMP_MODES)


def check_amp(amp: str, device: torch.device) -> None:
    """Raise ``ValueError`` for an unknown mode or a mode ``device`` cannot run."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device (got {device}); on CPU use --amp bf16 or --amp none")


def _cpu_has(name: str) -> bool:
    # torch.cpu's feature probes are private and younger than torch 2.2; a missing probe means "no".
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: a CUDA GPU of compute capability 8.0+ (Ampere on), or a CPU with
    AVX-512 BF16 or AMX and oneDNN. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and (
            _cpu_has("_is_avx512_bf16_supported") or _cpu_has("_is_amx_tile_supported"))
    return False


def resolve_amp(amp: str, channels_last: Optional[bool], device: torch.device) -> Tuple[str, bool, str]:
    """``--amp`` and ``--channels-last`` as a run on ``device`` uses them.

    ``"auto"`` is ``"bf16"`` where :func:`fast_bf16` holds and ``"none"`` elsewhere; ``channels_last=None``
    follows the precision (on with bf16 or fp16, whose convolution kernels want that layout). Returns
    ``(amp, channels_last, reason)``, the reason for an ``"auto"`` choice in a few words (else ``""``); raises
    ``ValueError`` like :func:`check_amp`.
    """
    reason = ""
    if amp == "auto":
        fast = fast_bf16(device)
        amp = "bf16" if fast else "none"
        what = "a GPU" if device.type == "cuda" else "this CPU"
        reason = f"--amp auto: {what} {'has' if fast else 'lacks'} native bf16"
    check_amp(amp, device)
    if channels_last is None:
        channels_last = amp != "none"
    return amp, bool(channels_last), reason


def autocast(device: torch.device, amp: str) -> ContextManager:
    """The autocast context for ``amp`` on ``device`` (a no-op for ``"none"``)."""
    check_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 (disabled it passes everything through unchanged)."""
    check_amp(amp, device)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
