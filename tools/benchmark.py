"""Side-by-side speed and memory of this project's backbones against torchvision, timm and smp.

Examples::

    python -m tools.benchmark --models resnet18,resnet50 --size 512x1024 --dtype fp32,bf16
    python -m tools.benchmark --models resnet50 --output-stride 8 --size 512x512 --batch 4
    python -m tools.benchmark --models resnet18+fpn,resnet50+deeplabv3plus --output-stride 16
    python -m tools.benchmark --mode train --models resnet50 --output-stride 8 --size 512x512 --batch 2 \\
        --train-variants eager,checkpoint

Inference mode prints, per model, one row per candidate: this project's eager backbone, its ``deploy()`` copy
in each requested dtype, each peer (torchvision ``IntermediateLayerGetter``, timm ``features_only``, smp encoder;
all in default eager fp32 form, loaded with the same weights and checked to give the same output), and a
2048x2048 matrix product: median/min/max ms, speedup over the fastest peer (or over our eager model when there
are no peers, as for ``backbone+head`` models), effective GFLOP/s of the convolutions, the fraction of the matrix
product's rate, and peak tensor memory. Every candidate runs under ``torch.inference_mode()``; repetitions are
interleaved round-robin so a busy machine slows all candidates alike. Training mode times full steps (forward,
loss, backward, SGD) of each variant (``checkpoint``, ``channels_last``, ``bf16`` autocast, or '+' combinations).
See ``tools/profiling.py`` for how FLOPs and memory are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from backbones import build_backbone, deploy
from backbones.deploy import reuse_freed_memory
from backbones.winograd import release_workspace
from heads.base import nominal_strides

from .peers import PEERS, PeerUnavailable, build_peer, same_output
from .profiling import conv_flops, matmul_flops, parse_size, peak_tensor_memory, time_round_robin

__all__ = ["main", "run_inference", "run_training"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAIN_FLAGS = ("checkpoint", "channels_last", "bf16")
NUM_CLASSES = 19  # Cityscapes-sized heads
MIB = 2 ** 20


# --- models ---------------------------------------------------------------------------------------------------

def build(spec: str, *, output_stride: int, checkpoint: bool = False) -> nn.Module:
    """``"resnet50"`` -> our backbone (strides 4-32); ``"resnet50+fpn"`` -> a SegmentationModel."""
    arch, _, head = spec.partition("+")
    kwargs: Dict[str, Any] = {"output_stride": output_stride}
    if checkpoint:
        kwargs["checkpoint_stages"] = True
    if not head:
        return build_backbone(arch, out_strides=(4, 8, 16, 32), **kwargs)
    from heads import build_segmentor

    return build_segmentor(head=head, backbone=arch, num_classes=NUM_CLASSES, **kwargs)


def min_size(model: nn.Module) -> int:
    """Smallest input side the network is meant for: its largest stride in the undilated network."""
    backbone = getattr(model, "backbone", model)
    return max(nominal_strides(backbone.feature_info))


def _check_size(model: nn.Module, spec: str, height: int, width: int) -> None:
    smallest = min_size(model)
    if min(height, width) < smallest:
        raise ValueError(f"--size {height}x{width} is smaller than {spec}'s minimum input side {smallest} (its "
                         f"largest stride); use at least --size {smallest}x{smallest}")


# --- inference ------------------------------------------------------------------------------------------------

def run_inference(spec: str, *, size: Tuple[int, int], batch: int, dtypes: Sequence[str], output_stride: int,
                  device: torch.device, reps: int, warmup: int, peers: Sequence[str] = PEERS,
                  ablation: bool = False) -> Dict[str, Any]:
    """Time ``spec`` eager and deployed (each dtype), its peers and a matrix product; see the module doc.

    ``ablation`` adds fp32 deploy variants without packed weights, without channels_last, and without Winograd
    (``deploy(winograd=False)``), to show what each step of :func:`backbones.deploy` contributes."""
    torch.manual_seed(0)
    model = build(spec, output_stride=output_stride).to(device).eval()
    _check_size(model, spec, *size)
    shape = (batch, 3, *size)
    x = torch.randn(shape, device=device)
    flops = conv_flops(model, shape)
    candidates: Dict[str, Callable[[], Any]] = {"dense eager": lambda: model(x)}
    comparable: Dict[str, nn.Module] = {"dense eager": model}
    for name in dtypes:
        dt = DTYPES[name]
        fast = deploy(model, dtype=None if dt == torch.float32 else dt)
        candidates[f"dense deploy {name}"] = lambda fast=fast, dt=dt: fast(x.to(dt))
        if dt == torch.float32:
            comparable[f"dense deploy {name}"] = fast
    if ablation:
        for label, kwargs in (("dense deploy fp32 NCHW", dict(channels_last=False)),
                              ("dense deploy fp32 unpacked", dict(pack_weights=False)),
                              ("dense deploy fp32 direct", dict(winograd=False))):
            variant = deploy(model, **kwargs)
            candidates[label] = lambda variant=variant: variant(x)
            comparable[label] = variant
    notes: List[str] = []
    peer_names: List[str] = []
    if "+" not in spec:
        state = model.state_dict()
        for kind in peers:
            try:
                peer = build_peer(kind, spec, output_stride=output_stride, state_dict=state).to(device)
            except PeerUnavailable as err:
                notes.append(f"{kind}: skipped, {err}")
                continue
            label = {"torchvision": "torchvision ILG", "timm": "timm features_only", "smp": "smp encoder"}[kind]
            candidates[label] = lambda peer=peer: peer(x)
            comparable[label] = peer
            peer_names.append(label)
    check = torch.randn(1, 3, 64, 96, device=device)
    for name, err in same_output(comparable, check):
        if err > 1e-3:
            notes.append(f"{name}: output differs from dense eager (relative error {err:.1e}); not the same network")
    mm_flops: Dict[str, int] = {}
    for name in dict.fromkeys(["fp32", *dtypes]):
        fn, mm_flops[name] = matmul_flops(2048, dtype=DTYPES[name], device=device)
        candidates[f"matmul 2048 {name}"] = fn

    with torch.inference_mode():
        timings = time_round_robin(candidates, reps=reps, warmup=warmup, device=device)
        memory = {}
        for name, fn in candidates.items():
            if not name.startswith("matmul"):
                release_workspace()  # so that Winograd's scratch buffers are created, and counted, in the call
                memory[name] = peak_tensor_memory(fn)
    ref_names = peer_names or ["dense eager"]
    ref = min(ref_names, key=lambda n: timings[n].median)
    rows = []
    for name, t in timings.items():
        is_mm = name.startswith("matmul")
        dtype_name = next((d for d in DTYPES if f" {d}" in name), "fp32")
        work = mm_flops[dtype_name] if is_mm else flops
        rate = work / t.median / 1e9
        mm_rate = mm_flops[dtype_name] / timings[f"matmul 2048 {dtype_name}"].median / 1e9
        rows.append({"candidate": name, "median_ms": 1e3 * t.median, "min_ms": 1e3 * t.min, "max_ms": 1e3 * t.max,
                     "speedup": None if is_mm else timings[ref].median / t.median, "gflops": rate,
                     "mm_fraction": None if is_mm else rate / mm_rate,
                     "peak_mib": None if is_mm else memory[name] / MIB})
    return {"model": spec, "mode": "infer", "input_shape": list(shape), "output_stride": output_stride,
            "conv_gflop": flops / 1e9, "reference": ref, "rows": rows, "notes": notes}


# --- training -------------------------------------------------------------------------------------------------

def run_training(spec: str, *, size: Tuple[int, int], batch: int, variants: Sequence[str], output_stride: int,
                 device: torch.device, reps: int, warmup: int) -> Dict[str, Any]:
    """Time full training steps of ``spec`` in each variant and measure their peak tensor memory."""
    shape = (batch, 3, *size)
    steps: Dict[str, Callable[[], Any]] = {}
    for variant in variants:
        flags = _train_flags(variant)
        torch.manual_seed(0)
        model = build(spec, output_stride=output_stride, checkpoint="checkpoint" in flags).to(device).train()
        _check_size(model, spec, *size)
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
    return {"model": spec, "mode": "train", "input_shape": list(shape), "output_stride": output_stride,
            "reference": base, "rows": rows, "notes": []}


def _train_flags(variant: str) -> List[str]:
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


# --- output ---------------------------------------------------------------------------------------------------

def format_result(result: Dict[str, Any]) -> str:
    """The table for one model."""
    shape = "x".join(map(str, result["input_shape"]))
    lines = [f"\n{result['model']}  input {shape}  output stride {result['output_stride']}"]
    if result["mode"] == "infer":
        lines[0] += f"  ({result['conv_gflop']:.1f} GFLOP of convolutions)  speedup vs {result['reference']}"
        header = ("candidate", "median ms", "min", "max", "speedup", "GFLOP/s", "% of mm", "peak MiB")
        cells = [(r["candidate"], f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}",
                  "" if r["speedup"] is None else f"{r['speedup']:.2f}x", f"{r['gflops']:.0f}",
                  "" if r["mm_fraction"] is None else f"{100 * r['mm_fraction']:.0f}%",
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


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --- command line ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,resnet50",
                   help="comma-separated backbones, or backbone+head for a segmentation model")
    p.add_argument("--size", default="512x1024", help="input HxW")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", help="deploy dtypes, comma-separated: fp32, bf16 (CPU/CUDA), fp16 "
                                                    "(CUDA); peers always run in fp32")
    p.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--mode", default="infer", choices=("infer", "train"))
    p.add_argument("--train-variants", default="eager,checkpoint",
                   help="training variants, comma-separated; each is eager or '+'-joined "
                        "checkpoint/channels_last/bf16")
    p.add_argument("--peers", default=",".join(PEERS), help="peers to compare with (inference mode)")
    p.add_argument("--ablation", action="store_true",
                   help="also time deploy without channels_last, without packed weights, and without "
                        "Winograd (winograd=False; inference mode)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--reuse-memory", action="store_true",
                   help="keep freed memory in the process (backbones.deploy.reuse_freed_memory), for every candidate")
    p.add_argument("--json", default=None, help="also write all numbers to this file")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        size = parse_size(args.size)
        models = [m for m in args.models.split(",") if m]
        dtypes = [d for d in args.dtype.split(",") if d]
        peers = [p for p in args.peers.split(",") if p]
        variants = [v for v in args.train_variants.split(",") if v]
        if not models:
            raise ValueError("--models is empty")
        bad = [d for d in dtypes if d not in DTYPES] + [p for p in peers if p not in PEERS]
        if bad:
            raise ValueError(f"unknown --dtype/--peers value(s) {bad}; dtypes: {', '.join(DTYPES)}; peers: "
                             f"{', '.join(PEERS)}")
        for v in variants:
            _train_flags(v)
        if args.batch < 1 or args.reps < 1 or args.warmup < 0:
            raise ValueError(f"--batch and --reps must be >= 1 and --warmup >= 0, got {args.batch}, {args.reps}, "
                             f"{args.warmup}")
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but CUDA is not available here")
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = "glibc default"
    if args.reuse_memory:
        allocator = "reuse freed memory" if reuse_freed_memory() else "default (not glibc: --reuse-memory ignored)"
    info = machine()
    info["allocator"] = allocator
    print(f"dense-backbones benchmark  mode={args.mode}  device={device}  cpu={info['cpu']} "
          f"({info['cpu_capability']}, {info['threads']} torch threads)  torch {info['torch']}  "
          f"reps={args.reps} warmup={args.warmup}  allocator: {allocator}  load average {_load()}")
    results = []
    for spec in models:
        common = dict(size=size, batch=args.batch, output_stride=args.output_stride, device=device,
                      reps=args.reps, warmup=args.warmup)
        try:
            if args.mode == "infer":
                result = run_inference(spec, dtypes=dtypes, peers=peers, ablation=args.ablation, **common)
            else:
                result = run_training(spec, variants=variants, **common)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(format_result(result), flush=True)
        results.append(result)
    end_load = _load()
    print(f"\nload average at the end: {end_load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "load_end": end_load, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
