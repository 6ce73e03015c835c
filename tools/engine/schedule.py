"""Learning-rate schedules with linear warm-up, stepped once per iteration: poly (the segmentation default),
cosine, and multi-step (torchvision's detection references).

Built on ``LambdaLR``, which multiplies each parameter group's *own* initial lr by the factor, so per-group
multipliers (``group["lr"] = base_lr * lr_mult``, set before the scheduler is created) are kept throughout.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["SCHEDULES", "poly_factor", "lr_factor", "poly_warmup_scheduler", "warmup_scheduler"]

SCHEDULES = ("poly", "cosine", "step")


def poly_factor(iteration: int, *, max_iters: int, power: float = 0.9, warmup_iters: int = 0,
                warmup_ratio: float = 0.1) -> float:
    """The lr multiplier at ``iteration`` (0-based).

    Poly decay ``(1 - it / max_iters) ** power``; during the first ``warmup_iters`` iterations that value is
    scaled by a ramp rising linearly from ``warmup_ratio`` to 1, so warm-up hands over to the decay smoothly.
    """
    return lr_factor(iteration, schedule="poly", max_iters=max_iters, power=power, warmup_iters=warmup_iters,
                     warmup_ratio=warmup_ratio)


def lr_factor(iteration: int, *, schedule: str, max_iters: int, power: float = 0.9, steps: Sequence[float] = (),
              gamma: float = 0.1, warmup_iters: int = 0, warmup_ratio: float = 0.1) -> float:
    """The lr multiplier of ``schedule`` at ``iteration`` (0-based), warm-up included.

    ``poly``: ``(1 - it / max_iters) ** power``; ``cosine``: ``(1 + cos(pi * it / max_iters)) / 2``; ``step``:
    ``gamma ** k`` after the k-th of ``steps`` (fractions of the run, e.g. ``(0.67, 0.89)``). During the first
    ``warmup_iters`` iterations the value is scaled by a ramp rising linearly from ``warmup_ratio`` to 1.
    """
    if schedule == "poly":
        value = max(0.0, 1.0 - iteration / max_iters) ** power
    elif schedule == "cosine":
        value = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iters) / max_iters))
    else:
        value = gamma ** sum(iteration >= round(s * max_iters) for s in steps)
    if iteration < warmup_iters:
        value *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return value


def warmup_scheduler(optimizer: Optimizer, *, schedule: str = "poly", max_iters: int, power: float = 0.9,
                     steps: Sequence[float] = (), gamma: float = 0.1, warmup_iters: int = 0,
                     warmup_ratio: float = 0.1) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; call ``scheduler.step()`` after every optimizer step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
    if not isinstance(warmup_iters, int) or not 0 <= warmup_iters <= max_iters:
        raise ValueError(f"warmup_iters must be an int in [0, max_iters={max_iters}], got {warmup_iters!r}")
    if not 0 < warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in (0, 1], got {warmup_ratio!r}")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power!r}")
    steps = tuple(float(s) for s in steps)
    if schedule == "step" and (not steps or any(not 0 < s < 1 for s in steps) or list(steps) != sorted(steps)):
        raise ValueError(f"the step schedule needs increasing steps in (0, 1) (fractions of the run), got "
                         f"{list(steps)}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    return LambdaLR(optimizer, lambda it: lr_factor(it, schedule=schedule, max_iters=max_iters, power=power,
                                                   steps=steps, gamma=gamma, warmup_iters=warmup_iters,
                                                   warmup_ratio=warmup_ratio))


def poly_warmup_scheduler(optimizer: Optimizer, *, max_iters: int, power: float = 0.9, warmup_iters: int = 0,
                          warmup_ratio: float = 0.1) -> LambdaLR:
    """:func:`warmup_scheduler` with the poly schedule."""
    return warmup_scheduler(optimizer, schedule="poly", max_iters=max_iters, power=power,
                            warmup_iters=warmup_iters, warmup_ratio=warmup_ratio)
