"""Comparing an exported model, run by its engine (:func:`tools.runtime.runners.load_runner`), with the PyTorch
model it came from."""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["as_list", "verify", "agreement"]


def verify(reference: nn.Module, run: Callable[[torch.Tensor], List[torch.Tensor]],
           shapes: Sequence[Tuple[int, int, int, int]]) -> List[Tuple[Tuple[int, ...], float]]:
    """``(shape, relative error)`` of ``run`` against ``reference`` (eval, CPU) for random inputs of ``shapes``.

    The error is the largest absolute difference over the largest reference magnitude, over all outputs.
    """
    results = []
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = reference(x)
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        outs = run(x)
        if len(outs) != len(refs) or any(o.shape != r.shape for o, r in zip(outs, refs)):
            results.append((shape, float("inf")))
            continue
        err = max(float((o.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-12))
                  for o, r in zip(outs, refs))
        results.append((shape, err))
    return results


def as_list(engine: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    """``engine`` (one tensor or a list of them per call) as a runner that always returns a list."""
    def run(x: torch.Tensor) -> List[torch.Tensor]:
        out = engine(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return run


def agreement(reference: nn.Module, run: Callable[[torch.Tensor], List[torch.Tensor]],
              images: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """How closely ``run`` follows ``reference`` on real ``images`` (a list of ``(N, C, H, W)`` batches): the
    Pearson correlation of all first-output values, and the fraction of pixels with the same argmax class."""
    ours, refs = [], []
    same = total = 0
    for x in images:
        with torch.no_grad():
            ref = reference(x)
        ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).float()
        out = run(x)[0].float()
        ours.append(out.flatten())
        refs.append(ref.flatten())
        same += int((out.argmax(1) == ref.argmax(1)).sum())
        total += out[:, 0].numel()
    r = torch.corrcoef(torch.stack([torch.cat(ours), torch.cat(refs)]))[0, 1]
    return float(r), same / max(total, 1)
