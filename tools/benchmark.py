"""Side-by-side speed and memory of this project's backbones against torchvision, timm, smp and inference engines.

Examples::

    python -m tools.benchmark --models resnet18,resnet50 --size 512x1024 --precision fp32,bf16
    python -m tools.benchmark --models resnet18+fpn --engines torch,onnxruntime,openvino --precision fp32,bf16,int8
    python -m tools.benchmark --models resnet50 --output-stride 8 --size 512x512 --batch 4
    python -m tools.benchmark --models resnet18+fpn,resnet50+deeplabv3plus --output-stride 16
    python -m tools.benchmark --models resnet18+fcos,resnet50+retinanet --size 512x512 --engines torch,onnxruntime
    python -m tools.benchmark --mode train --models resnet50 --output-stride 8 --size 512x512 --batch 2 \\
        --train-variants eager,checkpoint
    python -m tools.benchmark --info     # this machine's CPU class and what it means here; times nothing

Inference mode prints, per model, one row per candidate: this project's eager model, its ``deploy()`` copy in
each requested precision (``--engines torch``), the same model exported to ONNX and run by ONNX Runtime and
OpenVINO in each precision they support (``--engines onnxruntime,openvino``; int8 is quantized once on a few
seeded random batches: speed only), each peer (torchvision ``IntermediateLayerGetter``, timm ``features_only``,
smp encoder; all in default eager fp32 form, loaded with the same weights and checked to give the same output),
and 2048x2048 matrix products per precision and library: median/min/max ms, speedup over the fastest peer (or
over our eager model when there are no peers, as for ``backbone+head`` models), effective GFLOP/s of the
convolutions, the fraction of the machine's peak for the row's precision (the fastest of the matrix products),
and peak tensor memory (PyTorch rows). Every candidate runs under ``torch.inference_mode()`` with the same number
of threads; repetitions are interleaved round-robin so a busy machine slows all candidates alike. Training mode
times full steps (forward, loss, backward, SGD) of each variant (``checkpoint``, ``channels_last``, ``bf16``
autocast, or '+' combinations). See ``tools/bench/profiling.py`` for how FLOPs and memory are counted. Every
table starts with the machine it ran on (CPU, instruction-set class from :mod:`backbones.machine`, threads,
torch, CUDA device); ``--json`` records the same, with the CPU's flags and VNNI.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import torch

from backbones.machine import machine_info

from .bench.runtimes import RUNTIMES, check_runtimes
from .bench.detection import is_detector_spec, run_detection_inference
from .bench.inference import run_inference
from .bench.memory import reuse_freed_memory
from .bench.peers import PEERS
from .bench.profiling import parse_size
from .bench.report import format_machine, format_result, load_average, machine
from .bench.training import run_training, train_flags
from .engine.cli import add_list_argument, run_cli

__all__ = ["parse_args", "run", "main"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_list_argument(p, "--models", default=["resnet18", "resnet50"],
                      help="backbones, backbone+head for a segmentation model, backbone+detector (retinanet, fcos, "
                           "fasterrcnn) for a detector (comma- or space-separated)")
    p.add_argument("--size", default="512x1024", help="input HxW")
    p.add_argument("--batch", type=int, default=1)
    add_list_argument(p, "--precision", "--dtype", dest="precision", default=["fp32"], choices=PRECISIONS,
                      help="precisions of the engines' rows: fp32; bf16 (torch deploy, openvino); int8 (onnxruntime, "
                           "openvino); fp16 (torch on CUDA); eager and peers always run in fp32. --dtype: same")
    add_list_argument(p, "--engines", default=["torch"], choices=RUNTIMES,
                      help="what runs the model besides eager PyTorch: torch (deploy()), onnxruntime, openvino")
    p.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--mode", default="infer", choices=("infer", "train"))
    add_list_argument(p, "--train-variants", default=["eager", "checkpoint"],
                      help="training variants; each is eager or '+'-joined checkpoint/channels_last/bf16")
    add_list_argument(p, "--peers", default=list(PEERS), choices=PEERS + ("none",),
                      help="peers to compare with (inference mode); none: no peers")
    p.add_argument("--ablation", action="store_true",
                   help="also time deploy without channels_last, without packed weights, without Winograd "
                        "(winograd=False) and without ReLU/addition fusion (fuse=False); inference mode")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (Inductor, freezing) of each deployed torch precision; compiling "
                        "takes tens of seconds per model (inference mode)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--reuse-memory", action="store_true",
                   help="keep freed memory in the process (tools.bench.memory.reuse_freed_memory), for every "
                        "candidate")
    p.add_argument("--json", default=None, help="also write all numbers to this file")
    p.add_argument("--info", action="store_true",
                   help="print this machine's CPU class and what it means here (--amp auto, bf16, int8 VNNI, "
                        "Winograd), then exit without timing anything")
    return p.parse_args(argv)


def run(argv: Optional[List[str]] = None) -> int:
    """Time every model as ``argv`` says and print one table each; returns the exit status."""
    args = parse_args(argv)
    if args.info:
        print(format_machine(machine_info()))
        return 0
    size = parse_size(args.size)
    for v in args.train_variants:
        train_flags(v)
    if args.mode == "infer":
        check_runtimes(args.engines)
    if args.batch < 1 or args.reps < 1 or args.warmup < 0:
        raise ValueError(f"--batch and --reps must be >= 1 and --warmup >= 0, got {args.batch}, {args.reps}, "
                         f"{args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = "glibc default"
    if args.reuse_memory:
        allocator = "reuse freed memory" if reuse_freed_memory() else "default (not glibc: --reuse-memory ignored)"
    info = machine()
    info["allocator"] = allocator
    start_load = load_average()
    print(f"dense-backbones benchmark  mode={args.mode}  device={device}  cpu={info['cpu']} "
          f"({machine_info().isa_summary()}, {info['threads']} torch threads)  torch {info['torch']}  "
          f"reps={args.reps} warmup={args.warmup}  allocator: {allocator}  load average {start_load}")
    results = []
    for spec in args.models:
        common = dict(size=size, batch=args.batch, output_stride=args.output_stride, device=device,
                      reps=args.reps, warmup=args.warmup)
        if args.mode == "infer" and is_detector_spec(spec):
            result = run_detection_inference(spec, size=size, batch=args.batch, device=device, reps=args.reps,
                                             warmup=args.warmup, engines=args.engines)
        elif args.mode == "infer":
            peers = [] if "none" in args.peers else args.peers
            result = run_inference(spec, precisions=args.precision, engines=args.engines, peers=peers,
                                   ablation=args.ablation, compile=args.compile, **common)
        else:
            result = run_training(spec, variants=args.train_variants, **common)
        print(format_result(result), flush=True)
        results.append(result)
    end_load = load_average()
    print(f"\nload average at the end: {end_load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "load_start": start_load, "load_end": end_load,
                       "results": results}, f, indent=2)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (``dense-benchmark``)."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
