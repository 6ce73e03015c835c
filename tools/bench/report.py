"""Text reports of the benchmark and inspect programs, and the machine they ran on."""

from __future__ import annotations

import os
from typing import Any, Dict

import torch

from backbones.machine import MachineInfo, lacks_native_bf16, machine_info
from backbones.winograd import min_channels

from .profiling import MIB, ModelCost

__all__ = ["format_result", "format_cost", "format_machine", "machine", "load_average"]


def format_result(result: Dict[str, Any]) -> str:
    """The table for one model, headed by the machine it ran on (``result["machine"]``, where recorded)."""
    shape = "x".join(map(str, result["input_shape"]))
    lines = [f"{result['model']}  input {shape}  output stride {result['output_stride']}"]
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
    if result.get("machine"):
        lines.insert(0, f"machine: {result['machine']}")
    return "\n" + "\n".join(lines)


def machine() -> Dict[str, Any]:
    """What the benchmark's JSON records about the machine: :class:`backbones.machine.MachineInfo`'s fields
    (CPU class, flags, VNNI, CUDA device...), its one-line description, PyTorch's threads and dispatch level."""
    info = machine_info()
    out = info.to_dict()
    out.update(cpu_class=out.pop("isa"), torch=torch.__version__, threads=torch.get_num_threads(),
               cpu_capability=torch.backends.cpu.get_cpu_capability(), cuda=info.cuda_device,
               description=info.describe())
    return out


def format_machine(info: MachineInfo) -> str:
    """``dense-benchmark --info``: the machine's description and what its CPU class means for this project."""
    isa = info.isa
    lacks = lacks_native_bf16()
    lacks_ov = lacks_native_bf16(onednn=False)
    vnni = ("AVX-512 VNNI" if "avx512_vnni" in info.flags else "AVX-VNNI") if info.vnni else ""
    simd = {"baseline": "plain SIMD", "avx2": "AVX2"}.get(isa, "AVX-512")
    lines = [info.describe(),
             f"cpu flags ({info.flags_source}): {' '.join(info.flags) or 'none of AVX, AVX2, FMA, AVX-512, AMX'}",
             f"what class {isa} means here:",
             "  training --amp auto: " + ("bf16 autocast + channels_last" if not lacks else f"fp32, since {lacks}"),
             "  deploy(dtype=torch.bfloat16), --precision bf16 on torch: " + ("available" if not lacks else
                                                                               "refused (bf16 would be emulated)"),
             "  OpenVINO bf16 (--engine openvino --precision bf16): " + ("available" if not lacks_ov else
                                                                          "refused (bf16 would be emulated)"),
             "  int8 (onnxruntime, openvino): " + (f"VNNI int8 dot products ({vnni})" if vnni else
                                                   f"no VNNI, so int8 runs on {simd} 8-bit multiply-adds, without "
                                                   f"the int8 dot-product instructions"),
             f"  deploy() Winograd: fp32 3x3 stride-1 convolutions with >= {min_channels(isa)} input and output "
             f"channels"]
    if info.cuda_device is not None:
        major, minor = info.cuda_capability or (0, 0)
        lines.append(f"  CUDA {info.cuda_device}: --amp auto picks " + ("bf16" if (major, minor) >= (8, 0) else
                                                                        "fp32 (bf16 needs compute capability 8.0)"))
    else:
        lines.append("  CUDA: not available")
    return "\n".join(lines)


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
