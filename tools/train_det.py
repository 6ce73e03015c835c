"""Train a detector (torchvision's RetinaNet, FCOS or Faster R-CNN on a registered backbone) on one process or
many (``torchrun``).

Examples::

    python -m tools.train_det                          # resnet18 + FCOS on the built-in synthetic set
    python -m tools.train_det --config configs/coco_retinanet_r50.yaml --root data/coco
    python -m tools.train_det --resume runs/<name>     # continue exactly where the run stopped
    torchrun --nproc_per_node=4 -m tools.train_det --config ...

The same engine as ``tools.train_seg`` (run folder, exact resume, Ctrl-C, DDP, ``--amp auto``, TensorBoard,
``metrics.jsonl``); the task's parts differ: COCO mAP (pycocotools) picks ``best.pt``, and ``vis/`` holds ground
truth | prediction figures. Every flag is also a key of the YAML file given with ``--config``; explicit flags win
over the file. ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from .data.detection import list_detection_datasets
from .engine.cli import add_list_argument, run_cli
from .engine.flags import add_data_args, add_optim_args, add_run_args, add_runtime_args
from .engine.launch import resolve_config as resolve_run_config
from .engine.launch import run_training
from .tasks.detection.model import add_model_args
from .tasks.detection.task import DEFAULT_ITERS, DETECTION

__all__ = ["build_parser", "resolve_config", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.train_det", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_args(p)
    add_model_args(p)
    g = p.add_argument_group("initialization")
    g.add_argument("--pretrained", help="backbone weights: 'imagenet', a path or a URL; unset: from scratch")
    g = add_data_args(p, datasets=list_detection_datasets(), example_kwargs="{num_images: 64}")
    add_list_argument(g, "--scale-range", kind=float, length=(2,), default=[0.75, 1.33],
                      help="random zoom range (objects' size relative to the image)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=0.0, help="brightness/contrast/saturation jitter")
    g.add_argument("--aspect-ratio-group", action=argparse.BooleanOptionalAction, default=True,
                   help="batch images of similar aspect ratios together (less padding)")
    add_optim_args(p, default_iters=DEFAULT_ITERS,
                   optimizer_help="sgd (with momentum: torchvision's detection recipe, the choice with "
                                  "--pretrained) or adamw (trains from scratch much faster: the default synthetic "
                                  "run)",
                   lr_help={"sgd": "(torchvision's 0.02 for 16 images, scaled to a batch of 8)"})
    add_runtime_args(p, amp_help="mixed precision: bf16 (CPU or CUDA), fp16 (CUDA) or none (fp32); auto: bf16 "
                                 "where the device runs it natively (CPU with AVX-512 BF16 or AMX, CUDA compute "
                                 "capability 8.0+), else none. config.yaml holds the resolved choice")
    p.set_defaults(batch_size=8, val_batch_size=8, lr_schedule="cosine", warmup_iters=50)
    return p


def resolve_config(argv: Optional[List[str]] = None) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The run's config from the defaults, ``--config`` and the flags; with ``--resume`` the checkpoint's
    config plus the explicitly given flags. Returns ``(config, checkpoint or None)``."""
    return resolve_run_config(build_parser(), DETECTION, argv)


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` and train; errors propagate (``main`` turns them into a message).

    SIGINT/SIGTERM end the program here with one line on stderr (what was saved, how to continue) and the
    signal's exit status (130, 143), without a traceback.
    """
    return run_training(build_parser(), DETECTION, argv)


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point (``dense-train-det``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
