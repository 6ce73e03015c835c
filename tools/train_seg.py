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
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .data import list_datasets
from .engine.checkpoint import load_checkpoint
from .engine.cli import add_list_argument, run_cli
from .engine.config import explicit_dests, load_config_file, parse_config, yaml_mapping
from .engine.model import add_model_args
from .engine.precision import AMP_CHOICES
from .engine.optim import DEFAULT_LR, OPTIMIZERS
from .engine.trainer import DEFAULT_ITERS, NOT_CONFIG, TrainingInterrupted, train

__all__ = ["build_parser", "resolve_config", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.train_seg", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bool_flag = argparse.BooleanOptionalAction
    g = p.add_argument_group("run")
    g.add_argument("--config", help="YAML file whose keys are these flags (underscores for dashes)")
    g.add_argument("--resume", help="run folder (or its last.pt) to continue; its saved config is used and "
                                    "explicit flags override it. A folder whose run stopped before its first "
                                    "checkpoint starts again from iteration 0")
    g.add_argument("--output-dir", default="runs", help="parent folder of run folders")
    g.add_argument("--name", help="run folder name; unset: <backbone>_<head>_<dataset>_<date-time>. A folder "
                                  "holding a checkpoint is never overwritten; one whose run left none is reused")
    add_model_args(p)
    g = p.add_argument_group("initialization")
    g.add_argument("--pretrained", help="backbone weights: 'imagenet', a path or a URL; unset: from scratch")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=list_datasets())
    g.add_argument("--root", help="dataset folder (not needed for synthetic)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--data-kwargs", type=yaml_mapping, default={},
                   help="dataset options, e.g. '{num_images: 64}' for synthetic")
    add_list_argument(g, "--crop-size", kind=int, length=(1, 2), default=[96], help="training crop: S or H W")
    add_list_argument(g, "--scale-range", kind=float, length=(2,), default=[0.75, 1.25],
                      help="random rescale range (0.5,2.0 is usual for real datasets)")
    g.add_argument("--hflip", action=bool_flag, default=True, help="random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=0.2, help="brightness/contrast/saturation jitter")
    g.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=16, help="per process")
    g.add_argument("--val-batch-size", type=int, default=1, help="per process; images of different sizes "
                                                                 "are padded (padding is not scored)")
    g.add_argument("--iters", type=int, help=f"training iterations; unset: {DEFAULT_ITERS}, or --epochs")
    g.add_argument("--epochs", type=int, help="training epochs, instead of --iters")
    g.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="sgd (with momentum; the usual choice with --pretrained) or adamw (trains from scratch "
                        "much faster: the default synthetic run)")
    g.add_argument("--lr", type=float, help=f"base learning rate; unset: {DEFAULT_LR['sgd']} for sgd, "
                                            f"{DEFAULT_LR['adamw']} for adamw (from scratch; fine-tuning pretrained "
                                            f"weights with adamw wants ~1e-4)")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="for weights")
    g.add_argument("--norm-weight-decay", type=float, default=0.0, help="for norm parameters")
    g.add_argument("--bias-weight-decay", type=float, default=0.0, help="for biases")
    g.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="backbone lr = base lr x this (0.1 is usual with --pretrained); the head gets base lr")
    g.add_argument("--warmup-iters", type=int, default=40)
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="lr factor at the first warm-up iteration")
    g.add_argument("--poly-power", type=float, default=0.9)
    g.add_argument("--ohem-thresh", type=float, help="online hard example mining: keep pixels whose "
                                                     "true-class probability is below this (e.g. 0.7)")
    g.add_argument("--ohem-min-kept", type=int, default=100_000, help="at least this many pixels per process")
    g.add_argument("--dice-weight", type=float, default=1.0, help="weight of a soft Dice loss added to the "
                   "cross-entropy (0: cross-entropy only); it weighs small classes as mIoU does")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="mixed precision: bf16 (CPU or CUDA), fp16 (CUDA) or none (fp32); auto: bf16 where the "
                        "device runs it natively (CPU with AVX-512 BF16 or AMX, CUDA compute capability 8.0+), "
                        "else none. config.yaml holds the resolved choice")
    g.add_argument("--channels-last", action=bool_flag, default=None,
                   help="channels_last memory format; unset: on with bf16 or fp16")
    g.add_argument("--seed", type=int, default=0, help="model initialization, data order and augmentation")
    g.add_argument("--log-interval", type=int, default=20, help="iterations between log lines")
    g.add_argument("--eval-interval", type=int, help="iterations between evaluations; unset: 4 per run")
    g.add_argument("--ckpt-interval", type=int, help="iterations between last.pt saves; unset: at each "
                                                     "evaluation")
    g.add_argument("--num-vis", type=int, default=4, help="validation images drawn into vis/ at the end (and "
                                                            "into TensorBoard at each evaluation)")
    g.add_argument("--tensorboard", action=bool_flag, default=None,
                   help="also log to TensorBoard event files in the run folder; unset: when the tensorboard "
                        "package is installed")
    g.add_argument("--progress", action=bool_flag, default=None,
                   help="progress bars; unset: when stderr is a terminal")
    return p


def resolve_config(argv: Optional[List[str]] = None) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The run's config from the defaults, ``--config`` and the flags; with ``--resume`` the checkpoint's
    config plus the explicitly given flags. Returns ``(config, checkpoint or None)``."""
    parser = build_parser()
    args = vars(parse_config(parser, argv))
    if not args["resume"]:
        return args, None
    if args["config"]:
        raise ValueError("--resume continues with the run's saved config; pass flags to change it, not --config")
    path = Path(args["resume"])
    if path.is_dir() and not (path / "last.pt").exists() and (path / "config.yaml").is_file():
        return _restart_config(parser, args, argv, path), None
    path = path / "last.pt" if path.is_dir() else path
    checkpoint = load_checkpoint(path, resume=True)
    saved = checkpoint["config"]
    # Runs saved before --bias-weight-decay existed decayed biases like norm parameters; runs saved before
    # --dice-weight existed trained on cross-entropy alone.
    config = {**args, "bias_weight_decay": saved.get("norm_weight_decay", 0.0), "dice_weight": 0.0, **saved}
    overrides = explicit_dests(parser, argv) - set(NOT_CONFIG)
    config.update({k: args[k] for k in overrides})
    config["resume"] = str(path)
    return config, checkpoint


def _restart_config(parser: argparse.ArgumentParser, args: Dict[str, Any], argv: Optional[List[str]],
                    run_dir: Path) -> Dict[str, Any]:
    """The config of a new run in ``run_dir``, whose run stopped before its first checkpoint: its saved
    ``config.yaml`` plus the explicitly given flags. The trainer reuses the folder (see ``--name``)."""
    config = {**args, **load_config_file(run_dir / "config.yaml", parser, exclude=NOT_CONFIG)}
    config.update({k: args[k] for k in explicit_dests(parser, argv) - set(NOT_CONFIG)})
    config.update(output_dir=str(run_dir.parent), name=run_dir.name, resume=None)
    return config


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` and train; errors propagate (``main`` turns them into a message).

    SIGINT/SIGTERM end the program here with one line on stderr (what was saved, how to continue) and the
    signal's exit status (130, 143), without a traceback.
    """
    try:
        config, checkpoint = resolve_config(argv)
        return train(config, checkpoint=checkpoint)
    except TrainingInterrupted as e:
        if e.report:
            print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # before training started: nothing was written
        print("interrupted before training started", file=sys.stderr)
        raise SystemExit(130) from None


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point (``dense-train``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
