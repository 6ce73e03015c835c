"""Poly learning-rate schedule with linear warm-up, stepped once per iteration.

Built on ``LambdaLR``, which multiplies each parameter group's *own* initial lr by the factor, so per-group
multipliers (``group["lr"] = base_lr * lr_mult``, set before the scheduler is created) are kept throughout.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["poly_factor", "poly_warmup_scheduler"]


def poly_factor(iteration: int, *, max_iters: int, power: float = 0.9, warmup_iters: int = 0,
                warmup_ratio: float = 0.1) -> float:
    """The lr multiplier at ``iteration`` (0-based).

    Poly decay ``(1 - it / max_iters) ** power``; during the first ``warmup_iters`` iterations that value is
    scaled by a ramp rising linearly from ``warmup_ratio`` to 1, so warm-up hands over to the decay smoothly.
    """
    poly = max(0.0, 1.0 - iteration / max_iters) ** power
    if iteration < warmup_iters:
        poly *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return poly


def poly_warmup_scheduler(optimizer: Optimizer, *, max_iters: int, power: float = 0.9, warmup_iters: int = 0,
                          warmup_ratio: float = 0.1) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`poly_factor`; call ``scheduler.step()`` after every optimizer step."""
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
    if not isinstance(warmup_iters, int) or not 0 <= warmup_iters <= max_iters:
        raise ValueError(f"warmup_iters must be an int in [0, max_iters={max_iters}], got {warmup_iters!r}")
    if not 0 < warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in (0, 1], got {warmup_ratio!r}")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power!r}")
    return LambdaLR(optimizer, lambda it: poly_factor(it, max_iters=max_iters, power=power,
                                                     warmup_iters=warmup_iters, warmup_ratio=warmup_ratio))
