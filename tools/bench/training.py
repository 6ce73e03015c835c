"""Training-step timing: forward, loss, backward and SGD step of each variant, with peak tensor memory."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from backbones.machine import machine_info

from .models import NUM_CLASSES, build, check_size
from .profiling import MIB, peak_tensor_memory, time_round_robin

__all__ = ["TRAIN_FLAGS", "run_training", "train_flags"]

TRAIN_FLAGS = ("checkpoint", "channels_last", "bf16")


def run_training(spec: str, *, size: Tuple[int, int], batch: int, variants: Sequence[str], output_stride: int,
                 device: torch.device, reps: int, warmup: int) -> Dict[str, Any]:
    """Time full training steps of ``spec`` in each variant and measure their peak tensor memory."""
    shape = (batch, 3, *size)
    steps: Dict[str, Callable[[], Any]] = {}
    for variant in variants:
        flags = train_flags(variant)
        torch.manual_seed(0)
        model = build(spec, output_stride=output_stride, checkpoint="checkpoint" in flags).to(device).train()
        check_size(model, spec, *size)
        x = torch.randn(shape, device=device)
        if "channels_last" in flags:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, NUM_CLASSES, (batch, *size), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        steps[variant] = _train_step(model, optimizer, x, target, bf16="bf16" in flags, device=device)
    timings = time_round_robin(steps, reps=reps, warmup=warmup, device=device)
    memory = {name: peak_tensor_memory(step) for name, step in steps.items()}
    base = variants[0]
    rows = []
    for name, t in timings.items():
        rows.append({"candidate": name, "median_ms": 1e3 * t.median, "min_ms": 1e3 * t.min, "max_ms": 1e3 * t.max,
                     "images_per_s": batch / t.median, "peak_mib": memory[name] / MIB,
                     "time_vs_base": t.median / timings[base].median, "memory_vs_base": memory[name] / memory[base]})
    return {"model": spec, "mode": "train", "machine": machine_info().describe(), "input_shape": list(shape),
            "output_stride": output_stride, "reference": base, "rows": rows, "notes": []}


def train_flags(variant: str) -> List[str]:
    flags = [f for f in variant.split("+") if f != "eager"]
    bad = [f for f in flags if f not in TRAIN_FLAGS]
    if bad:
        raise ValueError(f"unknown training variant flag(s) {bad} in {variant!r}; use eager or '+'-joined "
                         f"{', '.join(TRAIN_FLAGS)}")
    return flags


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor, *,
                bf16: bool, device: torch.device) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            if isinstance(out, dict):
                out = out["out"]
            if isinstance(out, list):  # a backbone: any scalar of every map exercises the whole graph
                loss = sum(o.float().square().mean() for o in out)
            else:
                loss = F.cross_entropy(out.float(), target)
        loss.backward()
        optimizer.step()

    return step
