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
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from backbones import build_backbone

from .profiling import ModelCost, model_cost, parse_size

__all__ = ["build_model", "format_cost", "main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MIB = 2 ** 20


def build_model(name: str, *, output_stride: int, head: Optional[str] = None, num_classes: int = 19,
                out_strides: Optional[Sequence[int]] = None) -> nn.Module:
    """The backbone ``name`` at ``output_stride``, or the segmentation model ``name`` + ``head``."""
    kwargs: Dict[str, Any] = {"output_stride": output_stride}
    if out_strides is not None:
        kwargs["out_strides"] = tuple(out_strides)
    if head is None:
        return build_backbone(name, **kwargs)
    from heads import build_segmentor

    return build_segmentor(head=head, backbone=name, num_classes=num_classes, **kwargs)


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


def _int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="registered backbone name, e.g. resnet50")
    p.add_argument("--output-stride", type=_int_list, default=[32], help="8, 16 or 32; a list compares them")
    p.add_argument("--size", default="512x1024", help="input HxW (default 512x1024)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out-strides", type=_int_list, default=None, help="backbone out_strides, e.g. 4,8,16,32")
    p.add_argument("--head", default=None, help="add a segmentation head (fcn, deeplabv3, deeplabv3plus, fpn...)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="element type for the memory columns")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        height, width = parse_size(args.size)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"error: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    report = []
    costs: Dict[int, ModelCost] = {}
    for os_ in args.output_stride:
        try:
            model = build_model(args.model, output_stride=os_, head=args.head, num_classes=args.num_classes,
                                out_strides=args.out_strides)
        except (ValueError, TypeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
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


if __name__ == "__main__":
    sys.exit(main())
