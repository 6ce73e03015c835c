"""Running an exported file and comparing it with the PyTorch model it came from."""

from __future__ import annotations

import warnings
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from ..engine.cli import MissingExtra

__all__ = ["onnx_runner", "torchscript_runner", "verify"]


def onnx_runner(path: str) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    """Run the ONNX file with ONNX Runtime's CPU provider."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise MissingExtra(f"verifying needs onnxruntime (pip install onnxruntime), or pass --no-verify: {err}") \
            from None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]


def torchscript_runner(path: str) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(path, map_location="cpu").eval()

    def run(x: torch.Tensor) -> List[torch.Tensor]:
        with torch.no_grad():
            out = scripted(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return run


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
