"""Print what a backbone (or backbone + head) costs per stage, before training it.

Example::

    python -m tools.inspect resnet50 --output-stride 8,16,32 --size 512x1024
    python -m tools.inspect resnet18 --head fpn --num-classes 19 --size 1024x2048

For each stage: output shape, actual stride, dilation, parameters, GMAC/GFLOP and activation memory (the stage's
output, and what autograd keeps for the backward pass in training); then totals. Several output strides print
one table each and a comparison, so the cost of output stride 8 against 16 or 32 is visible at a glance.
Nothing is computed: the model runs on the ``meta`` device. Run it with ``python -m`` (a script named
``inspect.py`` run directly would shadow Python's own ``inspect`` module).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from .bench.profiling import DTYPES, ModelCost, model_cost, parse_size
from .bench.report import format_cost
from .engine.cli import add_list_argument, run_cli
from .tasks import build_named_model

__all__ = ["parse_args", "run", "main"]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="registered backbone name, e.g. resnet50")
    add_list_argument(p, "--output-stride", kind=int, default=[32], choices=(8, 16, 32),
                      help="8, 16 or 32; a list (8,16,32) compares them")
    p.add_argument("--size", default="512x1024", help="input HxW (default 512x1024)")
    p.add_argument("--batch", type=int, default=1)
    add_list_argument(p, "--out-strides", kind=int, default=None, help="backbone out_strides, e.g. 4,8,16,32")
    p.add_argument("--head", default=None, help="add a segmentation head (fcn, deeplabv3, deeplabv3plus, fpn...)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="element type for the memory columns")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p.parse_args(argv)


def run(argv: Optional[List[str]] = None) -> int:
    """Print (and optionally save) the cost tables; returns the exit status."""
    args = parse_args(argv)
    height, width = parse_size(args.size)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    report = []
    costs: Dict[int, ModelCost] = {}
    for os_ in args.output_stride:
        name = f"{args.model}+{args.head}" if args.head else args.model
        model = build_named_model(name, output_stride=os_, num_classes=args.num_classes,
                                  out_strides=args.out_strides)
        in_chans = getattr(model, "in_chans", None) or getattr(getattr(model, "backbone", None), "in_chans", 3)
        cost = model_cost(model, (args.batch, in_chans, height, width), dtype=DTYPES[args.dtype])
        costs[os_] = cost
        what = args.model + (f" + {args.head}" if args.head else "")
        print(format_cost(cost, title=f"\n{what}, output stride {os_}, input {args.batch}x{in_chans}x{height}x"
                                      f"{width} ({args.dtype})"))
        report.append({"model": args.model, "head": args.head, "output_stride": os_,
                       "input_shape": list(cost.input_shape), "dtype": args.dtype,
                       "stages": [dict(s.__dict__, macs=s.macs) for s in cost.stages],
                       "total_macs": cost.total("macs"), "conv_macs": cost.total("conv_macs"),
                       "params": cost.total("params"), "train_saved_bytes": cost.total("saved_bytes")})
    if len(costs) > 1:
        base_os = max(costs)
        base = costs[base_os]
        print(f"\nrelative to output stride {base_os}:")
        for os_, cost in costs.items():
            print(f"  OS{os_}: {cost.total('macs') / base.total('macs'):.2f}x GMAC, "
                  f"{cost.total('saved_bytes') / max(1, base.total('saved_bytes')):.2f}x training activations")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (``dense-inspect``)."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
