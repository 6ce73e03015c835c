"""Export a trained segmentation model (or any registered backbone) to ONNX or TorchScript, and verify it.

Examples::

    python -m tools.export --checkpoint runs/voc/best.pt --format onnx --deploy --output model.onnx
    python -m tools.export --model resnet50 --head deeplabv3plus --num-classes 21 --format onnx
    python -m tools.export --model resnet18 --format torchscript --output resnet18.pt

ONNX files have dynamic batch, height and width (``torch.onnx.export`` with ``dynamo=True``, opset 18 by
default); heights and widths from ``--min-size`` up are accepted. After writing, the file is run with ONNX Runtime
(or reloaded with ``torch.jit.load``) at several input sizes and compared with the eager PyTorch model, the
original one even with ``--deploy``, so a passing check covers both the folding and the export. The command
fails (exit status 1) when the relative error exceeds ``--tolerance`` (1e-4).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from backbones import deploy

from .bench.profiling import parse_size
from .engine.cli import add_list_argument, run_cli
from .engine.model import build_named_model, model_from_checkpoint
from .runtime.export import export_onnx, export_torchscript
from .runtime.verify import onnx_runner, torchscript_runner, verify

__all__ = ["parse_args", "run", "main"]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("what to export")
    src.add_argument("--checkpoint", default=None, help="a training checkpoint (tools.train_seg's best.pt/last.pt)")
    src.add_argument("--model", default=None, help="or: a registered backbone name (random weights)")
    src.add_argument("--head", default=None, help="with --model: a segmentation head")
    src.add_argument("--num-classes", type=int, default=19)
    src.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--output", default=None, help="file to write (default: next to the checkpoint, or ./<model>)")
    p.add_argument("--deploy", action="store_true", help="export the deploy() copy (BatchNorm folded)")
    p.add_argument("--size", default="512x512", help="example input HxW used for tracing")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--external-data", action="store_true", help="weights in <output>.data (models > 2 GiB)")
    p.add_argument("--min-size", type=int, default=64, help="smallest height/width the ONNX file accepts")
    add_list_argument(p, "--verify-sizes", default=None,
                      help="HxW sizes to check, e.g. 512x512,300x400 (default: --size and an odd size)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--no-verify", action="store_true")
    return p.parse_args(argv)


def run(argv: Optional[List[str]] = None) -> int:
    """Export and verify as ``argv`` says; returns the exit status (1 when verification fails)."""
    args = parse_args(argv)
    height, width = parse_size(args.size)
    if min(height, width) <= args.min_size:
        raise ValueError(f"--size {height}x{width} must exceed --min-size {args.min_size} on both sides")
    checks = ([parse_size(s) for s in args.verify_sizes] if args.verify_sizes
              else [(height, width), (height // 2 + 17, width // 2 + 31)])
    if args.checkpoint:
        model, _ = model_from_checkpoint(args.checkpoint)
    elif args.model:
        name = f"{args.model}+{args.head}" if args.head else args.model
        model = build_named_model(name, output_stride=args.output_stride, num_classes=args.num_classes).eval()
    else:
        raise ValueError("give --checkpoint, or --model (and optionally --head) to export a fresh model")
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    if args.output:
        out = Path(args.output)
    elif args.checkpoint:
        out = Path(args.checkpoint).with_suffix(suffix)
    else:
        out = Path(args.model + (f"_{args.head}" if args.head else "") + suffix)
    exported = deploy(model) if args.deploy else model
    start = time.time()
    if args.format == "onnx":
        export_onnx(exported, str(out), example=torch.randn(2, 3, height, width), opset=args.opset,
                    min_size=args.min_size, external_data=args.external_data)
    else:
        export_torchscript(exported, str(out))
    what = "deployed " if args.deploy else ""
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {what}{type(model).__name__} as {args.format}"
          + (f", opset {args.opset}, dynamic batch/height/width >= {args.min_size}" if args.format == "onnx" else "")
          + f", in {time.time() - start:.1f} s")
    if args.no_verify:
        return 0
    runner = onnx_runner(str(out)) if args.format == "onnx" else torchscript_runner(str(out))
    shapes = [(b, 3, h, w) for (h, w) in checks for b in (1, 2)]
    results = verify(model, runner, shapes)
    ok = True
    for shape, err in results:
        good = err <= args.tolerance
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} input {'x'.join(map(str, shape))}: relative error {err:.1e} "
              f"against eager PyTorch (tolerance {args.tolerance:g})")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (``dense-export``)."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
