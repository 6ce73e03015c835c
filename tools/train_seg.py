"""Train a segmentation model on one process or many (``torchrun``).

Examples::

    python -m tools.train_seg                          # resnet18 + BiSeNet on the built-in synthetic set, ~1.5 min
    python -m tools.train_seg --config configs/voc_deeplabv3plus_r50.yaml --root data/VOCdevkit
    python -m tools.train_seg --resume runs/<name>     # continue exactly where the run stopped
    torchrun --nproc_per_node=4 -m tools.train_seg --config ... --norm sync_bn

Every flag is also a key of the YAML file given with ``--config`` (``crop_size: [512, 512]``); explicit flags
win over the file. A run writes ``runs/<name>/``: ``config.yaml`` (the resolved config), ``metrics.jsonl``,
``last.pt`` (everything needed to resume), ``best.pt`` (weights of the best validation mIoU),
``curves.png``, ``vis/`` (validation figures) and, with TensorBoard installed, its event files
(``tensorboard --logdir runs``). ``--batch-size`` is per process.

Ctrl-C or SIGTERM stops the run after the current step with ``last.pt`` saved; ``--resume`` continues it
exactly. A run folder whose run stopped before its first checkpoint is reused by the same command (or
``--resume``).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from .data import list_datasets
from .engine.cli import add_list_argument, run_cli
from .engine.flags import add_data_args, add_optim_args, add_run_args, add_runtime_args
from .engine.launch import resolve_config as resolve_run_config
from .engine.launch import run_training
from .tasks.segmentation.model import add_model_args
from .tasks.segmentation.task import DEFAULT_ITERS, SEGMENTATION

__all__ = ["build_parser", "resolve_config", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.train_seg", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_args(p)
    add_model_args(p)
    g = p.add_argument_group("initialization")
    g.add_argument("--pretrained", help="backbone weights: 'imagenet', a path or a URL; unset: from scratch")
    g = add_data_args(p, datasets=list_datasets(), example_kwargs="{num_images: 64}")
    add_list_argument(g, "--crop-size", kind=int, length=(1, 2), default=[96], help="training crop: S or H W")
    add_list_argument(g, "--scale-range", kind=float, length=(2,), default=[0.75, 1.25],
                      help="random rescale range (0.5,2.0 is usual for real datasets)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=0.2, help="brightness/contrast/saturation jitter")
    g = add_optim_args(p, default_iters=DEFAULT_ITERS,
                       optimizer_help="sgd (with momentum; the usual choice with --pretrained) or adamw (trains "
                                      "from scratch much faster: the default synthetic run)",
                       lr_help={"adamw": "(from scratch; fine-tuning pretrained weights with adamw wants ~1e-4)"})
    g.add_argument("--ohem-thresh", type=float, help="online hard example mining: keep pixels whose "
                                                     "true-class probability is below this (e.g. 0.7)")
    g.add_argument("--ohem-min-kept", type=int, default=100_000, help="at least this many pixels per process")
    g.add_argument("--dice-weight", type=float, default=1.0, help="weight of a soft Dice loss added to the "
                   "cross-entropy (0: cross-entropy only); it weighs small classes as mIoU does")
    add_runtime_args(p, amp_help="mixed precision: bf16 (CPU or CUDA), fp16 (CUDA) or none (fp32); auto: bf16 "
                                 "where the device runs it natively (CPU with AVX-512 BF16 or AMX, CUDA compute "
                                 "capability 8.0+), else none. config.yaml holds the resolved choice")
    return p


def resolve_config(argv: Optional[List[str]] = None) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The run's config from the defaults, ``--config`` and the flags; with ``--resume`` the checkpoint's
    config plus the explicitly given flags. Returns ``(config, checkpoint or None)``."""
    return resolve_run_config(build_parser(), SEGMENTATION, argv)


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` and train; errors propagate (``main`` turns them into a message).

    SIGINT/SIGTERM end the program here with one line on stderr (what was saved, how to continue) and the
    signal's exit status (130, 143), without a traceback.
    """
    return run_training(build_parser(), SEGMENTATION, argv)


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point (``dense-train``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
