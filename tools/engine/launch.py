"""A training program's run, from its command line: the config resolved in one place (argparse defaults < the
``--config`` file < explicit flags; with ``--resume`` the checkpoint's saved config plus the explicit flags),
then :func:`tools.engine.trainer.train`, with Ctrl-C and SIGTERM turned into one line and the signal's exit
status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .checkpoint import load_checkpoint
from .config import explicit_dests, load_config_file, parse_config
from .interrupt import TrainingInterrupted
from .task import Task
from .trainer import NOT_CONFIG, train

__all__ = ["resolve_config", "run_training"]


def resolve_config(parser: argparse.ArgumentParser, task: Task, argv: Optional[List[str]] = None
                   ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The run's config from the defaults, ``--config`` and the flags; with ``--resume`` the checkpoint's
    config plus the explicitly given flags. Returns ``(config, checkpoint or None)``."""
    args = vars(parse_config(parser, argv))
    if not args["resume"]:
        return args, None
    if args["config"]:
        raise ValueError("--resume continues with the run's saved config; pass flags to change it, not --config")
    path = Path(args["resume"])
    if path.is_dir() and not (path / "last.pt").exists() and (path / "config.yaml").is_file():
        return _restart_config(parser, args, argv, path), None
    path = path / "last.pt" if path.is_dir() else path
    checkpoint = load_checkpoint(path, resume=True, task=task.name)
    saved = checkpoint["config"]
    config = {**args, **task.legacy_config(saved), **saved}
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


def run_training(parser: argparse.ArgumentParser, task: Task, argv: Optional[List[str]] = None
                 ) -> Dict[str, Any]:
    """Parse ``argv`` with ``parser`` and train ``task``; errors propagate (``run_cli`` turns them into a message).

    SIGINT/SIGTERM end the program here with one line on stderr (what was saved, how to continue) and the
    signal's exit status (130, 143), without a traceback.
    """
    try:
        config, checkpoint = resolve_config(parser, task, argv)
        return train(config, task, checkpoint=checkpoint)
    except TrainingInterrupted as e:
        if e.report:
            print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # before training started: nothing was written
        print("interrupted before training started", file=sys.stderr)
        raise SystemExit(130) from None
