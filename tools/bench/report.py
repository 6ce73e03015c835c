"""Text reports of the benchmark and inspect programs, and the machine they ran on."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict

import torch

from .profiling import MIB, ModelCost

__all__ = ["format_result", "format_cost", "machine", "load_average"]


def format_result(result: Dict[str, Any]) -> str:
    """The table for one model."""
    shape = "x".join(map(str, result["input_shape"]))
    lines = [f"\n{result['model']}  input {shape}  output stride {result['output_stride']}"]
    if result["mode"] == "infer":
        lines[0] += f"  ({result['conv_gflop']:.1f} GFLOP of convolutions)  speedup vs {result['reference']}"
        peaks = result.get("peaks", {})
        if peaks:
            lines.append("peak = fastest product per precision: " + ", ".join(
                f"{p} {v['gflops']:.0f} GFLOP/s ({v['gemm'].split(maxsplit=3)[-1]})" for p, v in peaks.items()))
        header = ("candidate", "median ms", "min", "max", "speedup", "GFLOP/s", "% of peak", "peak MiB")
        cells = [(r["candidate"], f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}",
                  "" if r["speedup"] is None else f"{r['speedup']:.2f}x", f"{r['gflops']:.0f}",
                  "" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%",
                  "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}") for r in result["rows"]]
    else:
        lines[0] += f"  (training steps, ratios vs {result['reference']})"
        header = ("variant", "median ms", "min", "max", "images/s", "peak MiB", "time x", "memory x")
        cells = [(r["candidate"], f"{r['median_ms']:.0f}", f"{r['min_ms']:.0f}", f"{r['max_ms']:.0f}",
                  f"{r['images_per_s']:.2f}", f"{r['peak_mib']:.0f}", f"{r['time_vs_base']:.2f}",
                  f"{r['memory_vs_base']:.2f}") for r in result["rows"]]
    widths = [max(len(c[i]) for c in cells + [header]) for i in range(len(header))]
    fmt = lambda c: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
    lines += [fmt(header), fmt(tuple("-" * w for w in widths))] + [fmt(c) for c in cells]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def format_cost(cost: ModelCost, *, title: str) -> str:
    """A text table of ``cost``: one line per stage and a total line."""
    header = ("stage", "output shape", "stride", "dil", "params M", "GMAC", "GFLOP", "out MiB", "train MiB")
    lines = [title]
    rows = []
    for s in cost.stages:
        stride = "-" if s.stride is None else (f"{s.stride:g}" if s.stride == int(s.stride) else f"{s.stride:.2f}")
        rows.append((s.name, "x".join(map(str, s.out_shape)) or "-", stride, str(s.dilation),
                     f"{s.params / 1e6:.2f}", f"{s.macs / 1e9:.2f}", f"{2 * s.macs / 1e9:.2f}",
                     f"{s.out_bytes / MIB:.1f}", f"{s.saved_bytes / MIB:.1f}"))
    total_macs = cost.total("macs")
    rows.append(("total", "", "", "", f"{cost.total('params') / 1e6:.2f}", f"{total_macs / 1e9:.2f}",
                 f"{2 * total_macs / 1e9:.2f}", "", f"{cost.total('saved_bytes') / MIB:.1f}"))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines += [fmt(header), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows[:-1]]
    lines += [fmt(tuple("-" * w for w in widths)), fmt(rows[-1])]
    conv = cost.total("conv_macs")
    lines.append(f"GMAC = convolutions and linear layers ({conv / 1e9:.2f}) + normalization at 2 MAC per element "
                 f"({cost.total('norm_macs') / 1e9:.3f}); deploy() folds the normalization away. "
                 f"train MiB = tensors autograd saves for backward (no activation checkpointing).")
    return "\n".join(lines)
