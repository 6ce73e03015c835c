"""Mixed precision: which autocast dtype a device supports, and the gradient scaler fp16 needs.

bf16 has fp32's exponent range, so it trains without loss scaling on CPU and GPU; fp16 needs a GradScaler
and is a CUDA feature (CPU fp16 kernels are slow or missing), so fp16 on CPU is refused rather than emulated.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["AMP_MODES", "check_amp", "autocast", "grad_scaler"]

AMP_MODES = ("none", "bf16", "fp16")


def check_amp(amp: str, device: torch.device) -> None:
    """Raise ``ValueError`` for an unknown mode or a mode ``device`` cannot run."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device (got {device}); on CPU use --amp bf16 or --amp none")


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
