"""A run's folder and its log: choosing and checking the folder (a folder whose run left no checkpoint is
reused), the log lines, ``metrics.jsonl`` records and their TensorBoard copy."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from . import distributed as dist_utils
from .config import to_plain
from .tensorboard_log import EVENTS_GLOB, BoardWriter

__all__ = ["RUN_OUTPUTS", "RunLog", "clear_outputs", "fmt_time", "prepare_run_dir"]


class RunLog:
    """Log lines on stdout (all of them, bars or not) and ``metrics.jsonl`` records, on rank 0 only; the
    records and a few pictures also go to TensorBoard when ``board`` is set."""

    def __init__(self, run_dir: Path, *, enabled: bool, board: Optional[BoardWriter] = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.board = board

    def print(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def record(self, entry: Mapping[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(to_plain(entry)) + "\n")
            if self.board is not None:
                self.board.record(entry)

    def images(self, tag: str, images: List[np.ndarray], step: int) -> None:
        if self.enabled and self.board is not None:
            self.board.images(tag, images, step)
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def truncate_after(self, iteration: int) -> None:
        """Drop the records a killed run wrote after its last checkpoint, so a resumed log reads straight."""
        if self.enabled and self.path.is_file():
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("iter", 0) <= iteration]
            self.path.write_text("".join(ln + "\n" for ln in kept))


def fmt_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _default_name(cfg: Mapping[str, Any], name_keys: Sequence[str]) -> str:
    parts = [str(cfg[k]) for k in name_keys] + [str(cfg["dataset"]), time.strftime("%Y%m%d-%H%M%S")]
    return "_".join(parts).replace(":", "-").replace("/", "-")


# What a run writes into its folder, besides checkpoints: a new run in a folder whose run left no checkpoint
# replaces them.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "curves.png", "vis", EVENTS_GLOB)


def prepare_run_dir(cfg: Dict[str, Any], resuming: bool, *, name_keys: Sequence[str] = ("backbone", "head")
                    ) -> Tuple[Path, bool]:
    """Rank 0 picks (and checks) the run folder; every process gets the same answer or the same error.

    Without ``--name`` a new run's folder is named after the ``name_keys`` of its config (the model's parts),
    the dataset and the time.

    Returns the folder and whether it holds a run that stopped before its first checkpoint, which a new run
    (the same command again) replaces: only a folder with a checkpoint holds something worth keeping.
    """
    answer: Tuple[Optional[str], bool, Optional[str]] = (None, False, None)
    if dist_utils.is_main():
        if resuming:
            run_dir = Path(cfg["resume"]).parent
        else:
            cfg["name"] = cfg.get("name") or _default_name(cfg, name_keys)
            run_dir = Path(cfg["output_dir"]) / cfg["name"]
        error, restart = None, False
        if not resuming and any((run_dir / f).exists() for f in ("last.pt", "best.pt")):
            error = (f"run folder {str(run_dir)!r} already holds a run; continue it with --resume {run_dir} "
                     f"or choose another --name")
        elif not resuming:
            restart = (run_dir / "config.yaml").exists()
        answer = (str(run_dir), restart, error)
    run_dir_s, restart, error = dist_utils.broadcast_object(answer)
    if error:
        raise ValueError(error)
    return Path(run_dir_s), restart


def clear_outputs(run_dir: Path) -> None:
    """Remove what a run that left no checkpoint wrote, so the new run's log and pictures start clean."""
    for pattern in RUN_OUTPUTS:
        for path in run_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
