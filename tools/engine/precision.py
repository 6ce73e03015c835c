"""Mixed precision: which autocast dtype a device supports, ``--amp auto``'s choice, and the gradient scaler
fp16 needs.

bf16 has fp32's exponent range, so it trains without loss scaling on CPU and GPU; fp16 needs a GradScaler
and is a CUDA feature (CPU fp16 kernels are slow or missing), so fp16 on CPU is refused rather than emulated.
"""

from __future__ import annotations

import contextlib
import sys
from typing import ContextManager, Optional, Tuple

import torch

from backbones import machine

from .distributed import is_main

__all__ = ["AMP_MODES", "AMP_CHOICES", "check_amp", "fast_bf16", "emulated_bf16", "resolve_amp", "autocast",
           "grad_scaler"]

AMP_MODES = ("none", "bf16", "fp16")
# What --amp accepts where the choice can be resolved per device (training); "auto" never reaches autocast.
AMP_CHOICES = ("auto", *AMP_MODES)


def check_amp(amp: str, device: torch.device) -> None:
    """Raise ``ValueError`` for an unknown mode or a mode ``device`` cannot run."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device (got {device}); on CPU use --amp bf16 or --amp none")


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (:func:`backbones.machine.native_bf16`): a CUDA GPU of compute
    capability 8.0+ (Ampere on), or a CPU of class ``avx512_bf16`` or ``amx`` with oneDNN. Elsewhere bf16 is
    emulated and slower than fp32."""
    return machine.native_bf16(device)


def emulated_bf16(device: torch.device) -> str:
    """Why bf16 autocast on ``device`` would be emulated, slower than fp32, as a clause (``""`` where it runs
    natively): what the CPU lacks, or the GPU's compute capability."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= (8, 0):
            return ""
        return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no native bf16 "
                f"(8.0 and later have)")
    return machine.lacks_native_bf16() if device.type == "cpu" else ""


def resolve_amp(amp: str, channels_last: Optional[bool], device: torch.device) -> Tuple[str, bool, str]:
    """``--amp`` and ``--channels-last`` as a run on ``device`` uses them.

    ``"auto"`` is ``"bf16"`` where :func:`fast_bf16` holds and ``"none"`` elsewhere; ``channels_last=None``
    follows the precision (on with bf16 or fp16, whose convolution kernels want that layout). An explicit
    ``"bf16"`` where bf16 would be emulated is kept (it trains, only slower) and prints one warning line to
    stderr (on the main process) saying what the device lacks and what is faster. Returns
    ``(amp, channels_last, reason)``, the reason for an ``"auto"`` choice in a few words (else ``""``); raises
    ``ValueError`` like :func:`check_amp`.
    """
    reason = ""
    if amp == "auto":
        fast = fast_bf16(device)
        amp = "bf16" if fast else "none"
        what = "a GPU" if device.type == "cuda" else "this CPU"
        reason = f"--amp auto: {what} {'has' if fast else 'lacks'} native bf16"
    elif amp == "bf16":
        lacks = emulated_bf16(device)
        if lacks and is_main():
            faster = "--amp fp16" if device.type == "cuda" else "--amp none (or auto, which picks fp32 here)"
            print(f"warning: --amp bf16: {lacks}, so autocast emulates bf16, slower than fp32; {faster} is faster",
                  file=sys.stderr, flush=True)
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
