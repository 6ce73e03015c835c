"""The flags every training program shares (run folder, optimization, runtime), declared once; each program adds
its task's own (model, data, loss) and sets the defaults of its recipe with ``parser.set_defaults``."""

from __future__ import annotations

import argparse
from typing import Dict, Sequence

from .cli import add_list_argument
from .config import yaml_mapping
from .optim import DEFAULT_LR, OPTIMIZERS
from .precision import AMP_CHOICES
from .schedule import SCHEDULES

__all__ = ["add_run_args", "add_data_args", "add_optim_args", "add_runtime_args"]

BoolFlag = argparse.BooleanOptionalAction


def add_run_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--config``, ``--resume``, ``--output-dir``, ``--name``."""
    g = p.add_argument_group("run")
    g.add_argument("--config", help="YAML file whose keys are these flags (underscores for dashes)")
    g.add_argument("--resume", help="run folder (or its last.pt) to continue; its saved config is used and "
                                    "explicit flags override it. A folder whose run stopped before its first "
                                    "checkpoint starts again from iteration 0")
    g.add_argument("--output-dir", default="runs", help="parent folder of run folders")
    g.add_argument("--name", help="run folder name; unset: <model>_<dataset>_<date-time>. A folder holding a "
                                  "checkpoint is never overwritten; one whose run left none is reused")
    return g


def add_data_args(p: argparse.ArgumentParser, *, datasets: Sequence[str], example_kwargs: str
                  ) -> argparse._ArgumentGroup:
    """``--dataset`` (one of ``datasets``, default ``synthetic``), ``--root``, the splits, ``--data-kwargs``,
    ``--workers``; the program adds its augmentation flags to the returned group."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=list(datasets))
    g.add_argument("--root", help="dataset folder (not needed for synthetic)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--data-kwargs", type=yaml_mapping, default={},
                   help=f"dataset options, e.g. '{example_kwargs}' for synthetic")
    g.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    return g


def add_optim_args(p: argparse.ArgumentParser, *, default_iters: int, optimizer_help: str,
                   lr_help: Dict[str, str]) -> argparse._ArgumentGroup:
    """Batch sizes, length of the run, optimizer, weight decay groups, lr schedule and warm-up, gradient
    clipping; the program adds its loss options to the returned group."""
    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=16, help="per process")
    g.add_argument("--val-batch-size", type=int, default=1, help="per process; images of different sizes "
                                                                 "are padded (padding is not scored)")
    g.add_argument("--iters", type=int, help=f"training iterations; unset: {default_iters}, or --epochs")
    g.add_argument("--epochs", type=int, help="training epochs, instead of --iters")
    g.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help=optimizer_help)
    g.add_argument("--lr", type=float, help="base learning rate; unset: " + ", ".join(
        f"{DEFAULT_LR[o]} for {o}{' ' + lr_help[o] if o in lr_help else ''}" for o in OPTIMIZERS))
    g.add_argument("--momentum", type=float, default=0.9, help="sgd momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="for weights")
    g.add_argument("--norm-weight-decay", type=float, default=0.0, help="for norm parameters")
    g.add_argument("--bias-weight-decay", type=float, default=0.0, help="for biases")
    g.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="backbone lr = base lr x this (0.1 is usual with --pretrained); the rest gets base lr")
    g.add_argument("--lr-schedule", default="poly", choices=SCHEDULES,
                   help="decay after warm-up: poly, cosine, or step (x --lr-gamma at each of --lr-steps)")
    g.add_argument("--warmup-iters", type=int, default=40)
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="lr factor at the first warm-up iteration")
    g.add_argument("--poly-power", type=float, default=0.9)
    add_list_argument(g, "--lr-steps", kind=float, default=[0.67, 0.89],
                      help="step schedule: where the lr drops, as fractions of the run")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule: lr factor at each step")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this")
    return g


def add_runtime_args(p: argparse.ArgumentParser, *, amp_help: str) -> argparse._ArgumentGroup:
    """Device, precision, seed, log/evaluation/checkpoint intervals, figures, TensorBoard, progress bars."""
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", default="auto", choices=AMP_CHOICES, help=amp_help)
    g.add_argument("--channels-last", action=BoolFlag, default=None,
                   help="channels_last memory format; unset: on with bf16 or fp16")
    g.add_argument("--seed", type=int, default=0, help="model initialization, data order and augmentation")
    g.add_argument("--log-interval", type=int, default=20, help="iterations between log lines")
    g.add_argument("--eval-interval", type=int, help="iterations between evaluations; unset: 4 per run")
    g.add_argument("--ckpt-interval", type=int, help="iterations between last.pt saves; unset: at each "
                                                     "evaluation")
    g.add_argument("--num-vis", type=int, default=4, help="validation images drawn into vis/ at the end (and "
                                                            "into TensorBoard at each evaluation)")
    g.add_argument("--tensorboard", action=BoolFlag, default=None,
                   help="also log to TensorBoard event files in the run folder; unset: when the tensorboard "
                        "package is installed")
    g.add_argument("--progress", action=BoolFlag, default=None,
                   help="progress bars; unset: when stderr is a terminal")
    return g
