"""Measuring helpers shared by the benchmark and inspect tools: FLOP counts, timing, tensor memory.

How things are counted (stated once, used everywhere):

- **MACs** of convolutions and linear layers come from ``torch.utils.flop_counter.FlopCounterMode`` (1 MAC =
  2 FLOPs). Normalization layers are counted as 2 MACs per output element, the unfolded BatchNorm
  ``(x - mean) / std * gamma + beta`` (fvcore's convention); with them ResNet-18/50 (classifier included) come
  to the usual 1.82 / 4.11 GMAC at 224x224. Element-wise activations, additions and pooling are not counted.
- The **rate** of a network (GFLOP/s) uses its convolution and linear FLOPs only: that is the work that runs
  at matrix-product speed, and all that remains once BatchNorm is folded.
- **Tensor memory** is the peak of the bytes held by tensors created while the measured code runs (activations,
  outputs, gradients, temporaries), tracked per storage through a ``TorchDispatchMode``: the CPU analogue of
  ``torch.cuda.max_memory_allocated`` minus what existed before. Parameters, inputs, oneDNN's packed weights
  and library-internal scratch buffers are not included.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from backbones.tensors import iter_tensors
from backbones.base import Backbone
from backbones.norm import NORM_TYPES

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MIB = 2 ** 20

__all__ = ["DTYPES", "MIB", "Timing", "time_round_robin", "matmul_flops", "TensorMemory", "peak_tensor_memory", "StageCost",
           "ModelCost", "model_cost", "conv_flops", "parse_size"]


# --- timing ---------------------------------------------------------------------------------------------------

@dataclass
class Timing:
    """Wall-clock times of one candidate, in seconds."""

    times: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)


def time_round_robin(candidates: Dict[str, Callable[[], Any]], *, reps: int = 7, warmup: int = 2,
                     device: torch.device = torch.device("cpu")) -> Dict[str, Timing]:
    """Time every candidate ``reps`` times, interleaved (one run of each per round), after ``warmup`` rounds.

    Interleaving spreads slow periods of a shared machine over all candidates instead of penalising whichever
    ran during them. On CUDA each run is timed with events around a synchronized launch.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    results = {name: Timing() for name in candidates}
    for round_ in range(warmup + reps):
        for name, fn in candidates.items():
            elapsed = _time_once(fn, device)
            if round_ >= warmup:
                results[name].times.append(elapsed)
    return results


def _time_once(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_flops(size: int = 2048, *, dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")
                 ) -> Tuple[Callable[[], Any], int]:
    """A ``size x size`` matrix product to time beside the networks, and its FLOP count (``2 * size**3``).

    Its rate is the practical peak of the machine for dense math in ``dtype``.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2 * size ** 3


# --- tensor memory --------------------------------------------------------------------------------------------

class TensorMemory(TorchDispatchMode):
    """Tracks the bytes held by tensors created inside the ``with`` block; ``peak_bytes`` is their maximum.

    Example::

        with TensorMemory() as mem:
            model(x)
        print(mem.peak_bytes / 2**20, "MiB")
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: Dict[int, Tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._release_expired()
        # An output sharing an input's storage (a view, detach, an in-place op) allocated nothing.
        inputs = {_storage_key(t) for t in iter_tensors((args, kwargs))}
        for t in iter_tensors(out):
            self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set) -> None:
        key = _storage_key(t)
        if key is None or key in inputs or key in self.live:
            return
        storage = t.untyped_storage()
        if storage.nbytes() == 0:
            return
        self.live[key] = (StorageWeakRef(storage), storage.nbytes())
        self.current_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def _release_expired(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current_bytes -= self.live.pop(key)[1]


def _storage_key(t: torch.Tensor) -> Optional[int]:
    try:
        return t.untyped_storage()._cdata
    except (NotImplementedError, RuntimeError):  # opaque layouts (oneDNN packed weights) have no storage
        return None


def peak_tensor_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors created while ``fn()`` runs (see :class:`TensorMemory`)."""
    with TensorMemory() as mem:
        fn()
    return mem.peak_bytes


# --- FLOPs and per-stage costs --------------------------------------------------------------------------------

@dataclass
class StageCost:
    """Cost of one row of :func:`model_cost`: a top-level module (with the cheap modules that follow it)."""

    name: str
    out_shape: Tuple[int, ...]
    stride: Optional[float]
    dilation: int
    params: int
    conv_macs: int
    norm_macs: int
    out_bytes: int
    saved_bytes: int

    @property
    def macs(self) -> int:
        return self.conv_macs + self.norm_macs


@dataclass
class ModelCost:
    """Per-stage costs of a model for one input shape, and totals."""

    input_shape: Tuple[int, ...]
    stages: List[StageCost]

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.stages)


def conv_flops(model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> int:
    """FLOPs (2 per MAC) of the convolutions and linear layers of one eval-mode forward on ``input_shape``."""
    cost = model_cost(model, input_shape, dtype=dtype, with_memory=False)
    return 2 * cost.total("conv_macs")


def model_cost(model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
               with_memory: bool = True) -> ModelCost:
    """Per-stage output shape, stride, dilation, parameters, MACs and activation memory of ``model``.

    Runs on a copy on the ``meta`` device, so nothing is computed or allocated whatever the size. Rows are the
    model's children in call order (a backbone inside the model is expanded into its own children); children
    without a convolution or linear layer (norms, activations, pooling) join the row before them.

    Args:
        input_shape: ``(N, C, H, W)``.
        dtype: element type for the byte counts.
        with_memory: also run a training-mode forward to measure what autograd saves for backward per stage.

    Returns:
        a :class:`ModelCost`; ``out_bytes`` is a stage's output size, ``saved_bytes`` the tensors autograd keeps
        for the backward pass of that stage (without activation checkpointing; parameters and input excluded).
    """
    meta = copy.deepcopy(model).to(device="meta", dtype=dtype)
    rows = _rows(meta)
    owner = {m: i for i, (_, mods) in enumerate(rows) for top in mods for m in top.modules()}
    row_modules = {top: i for i, (_, mods) in enumerate(rows) for top in mods}
    x = torch.empty(*input_shape, device="meta", dtype=dtype)

    outputs: Dict[int, Any] = {}
    norm_macs = [0] * len(rows)
    handles = []
    for top, i in row_modules.items():
        handles.append(top.register_forward_hook(lambda m, inp, out, i=i: outputs.__setitem__(i, out)))
    for m in meta.modules():
        if isinstance(m, NORM_TYPES) or type(m).__name__ in ("BatchNormAct2d", "FrozenBatchNormAct2d"):
            i = owner.get(m)
            if i is not None:
                handles.append(m.register_forward_hook(
                    lambda mod, inp, out, i=i: norm_macs.__setitem__(i, norm_macs[i] + 2 * out.numel())))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            meta.eval()(x)
    finally:
        for h in handles:
            h.remove()
    flops = counter.get_flop_counts()
    root = type(meta).__name__
    names = {m: n for n, m in meta.named_modules()}
    saved = _saved_bytes(meta, x, rows) if with_memory else [0] * len(rows)

    stages = []
    for i, (label, mods) in enumerate(rows):
        macs = sum(sum(flops.get(f"{root}.{names[top]}", {}).values()) for top in mods) // 2
        out = outputs.get(i)
        last = out[-1] if isinstance(out, (list, tuple)) else out
        shape = tuple(last.shape) if isinstance(last, torch.Tensor) else ()
        stride = input_shape[-2] / shape[-2] if len(shape) == 4 else None
        params = {id(p): p.numel() for top in mods for p in top.parameters()}
        dilation = max([c.dilation[0] for top in mods for c in top.modules() if isinstance(c, nn.Conv2d)] or [1])
        out_bytes = sum(t.numel() * t.element_size() for t in iter_tensors(out))
        stages.append(StageCost(label, shape, stride, dilation, sum(params.values()), macs, norm_macs[i],
                                out_bytes, saved[i]))
    return ModelCost(tuple(input_shape), stages)


def _rows(model: nn.Module) -> List[Tuple[str, List[nn.Module]]]:
    """Group the model's (expanded) children into rows; cheap children join the row before them."""
    children: List[Tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, Backbone) and child is not model:
            children += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            children.append((name, child))
    if not children:
        return [(type(model).__name__, [model])]
    rows: List[Tuple[str, List[nn.Module]]] = []
    for name, child in children:
        heavy = any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in child.modules())
        if heavy or not rows:
            rows.append((name, [child]))
        else:
            rows[-1] = (f"{rows[-1][0]}+{name.split('.')[-1]}", rows[-1][1] + [child])
    return rows


def _saved_bytes(model: nn.Module, x: torch.Tensor, rows: List[Tuple[str, List[nn.Module]]]) -> List[int]:
    """Bytes autograd saves for backward in each row during one training-mode forward (meta tensors)."""
    current = [None]
    excluded = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: set = set()
    saved = [0] * len(rows)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if current[0] is not None and key not in excluded and key not in seen:
            seen.add(key)
            saved[current[0]] += t.untyped_storage().nbytes()
        return t

    handles = []
    for i, (_, mods) in enumerate(rows):
        for top in mods:
            handles.append(top.register_forward_pre_hook(lambda m, inp, i=i: current.__setitem__(0, i)))
    x = x.clone().requires_grad_(True)
    excluded.add(x.untyped_storage()._cdata)
    state = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in state.items():
            m.training = mode
        for p, g in grads.items():
            p.requires_grad_(g)
    return saved


def parse_size(text: str) -> Tuple[int, int]:
    """``"512x1024"`` -> ``(512, 1024)``; ``"512"`` -> ``(512, 512)``."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or any(s < 1 for s in sizes):
        raise ValueError(f"size must look like 512x1024 (HxW) or 512, got {text!r}")
    return (sizes[0], sizes[-1])
