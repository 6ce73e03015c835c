"""A TensorBoard copy of a run's log: the scalars of ``metrics.jsonl`` and a few validation figures, written as
event files into the run folder (``tensorboard --logdir runs`` lists every run by its folder name).

``metrics.jsonl`` stays the record of a run; TensorBoard is for watching it live. The ``tensorboard`` package
is optional: :func:`tensorboard_available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .cli import MissingExtra

__all__ = ["EVENTS_GLOB", "tensorboard_available", "BoardWriter"]

EVENTS_GLOB = "events.out.tfevents.*"


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (which ``torch.utils.tensorboard`` writes through) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class BoardWriter:
    """Mirror ``metrics.jsonl`` records into TensorBoard event files in ``run_dir``.

    Args:
        purge_step: a resumed run's first new iteration; TensorBoard drops the events a killed run wrote at
            or after it, as ``RunLog.truncate_after`` does for ``metrics.jsonl``.
        val_scalars: the validation record's fields plotted (in percent) as ``val/<key>``.
        per_class: the validation record's per-class mapping, plotted as ``val_<per_class>/<class>``.
    """

    def __init__(self, run_dir: Path, *, purge_step: Optional[int] = None,
                 val_scalars: Sequence[str] = ("miou", "pixel_accuracy"), per_class: Optional[str] = "iou") -> None:
        if not tensorboard_available():
            raise MissingExtra("--tensorboard needs the tensorboard package: pip install tensorboard "
                               "(or pass --no-tensorboard)")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.val_scalars, self.per_class = tuple(val_scalars), per_class

    def record(self, entry: Mapping[str, Any]) -> None:
        """Scalars of one ``metrics.jsonl`` record; IoUs and accuracies in percent, like the console."""
        step = entry["iter"]
        if entry.get("type") == "train":
            for key in ("loss", "lr", "sec_per_iter"):
                if entry.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", entry[key], step)
            for name, value in (entry.get("losses") or {}).items():  # a task's named loss parts
                self.writer.add_scalar(f"train_loss/{name}", value, step)
        elif entry.get("type") == "val":
            for key in (*self.val_scalars, "eval_sec"):
                if entry.get(key) is not None:
                    scale = 1 if key == "eval_sec" else 100
                    self.writer.add_scalar(f"val/{key}", scale * entry[key], step)
            if self.per_class:
                for name, value in (entry.get(self.per_class) or {}).items():
                    if value is not None:
                        self.writer.add_scalar(f"val_{self.per_class}/{name}", 100 * value, step)

    def images(self, tag: str, images: Sequence[np.ndarray], step: int) -> None:
        """``(H, W, 3)`` uint8 RGB pictures as ``<tag>/<i>``."""
        for i, image in enumerate(images):
            self.writer.add_image(f"{tag}/{i}", image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
