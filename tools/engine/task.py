"""The contract between the task-free training engine and a task (segmentation, detection).

The engine (:mod:`tools.engine.trainer`) owns what every run has: the run folder, checkpoints and exact resume,
Ctrl-C, DDP, precision, the optimizer and schedule, logging and the ETA. A :class:`Task` brings the rest: its
datasets and loaders, its model, the loss of one batch, the validation score and the pictures of a few
validation images (detectron2's ``DefaultTrainer.build_model``/``build_train_loader``/``build_evaluator`` split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import check_model_state
from .distributed import DistInfo

__all__ = ["Task", "Evaluation", "Loaders"]


@dataclass
class Evaluation:
    """One scoring of the validation split.

    Attributes:
        summary: the ``metrics.jsonl`` record's fields (fractions in [0, 1]; per-class values in a mapping);
            ``summary[task.metric]`` picks ``best.pt``.
        line: the console's one-line verdict (``"mIoU 71.20  pixel accuracy 95.10"``).
        table: the per-class table printed at the end of a run.
    """

    summary: Dict[str, Any]
    line: str
    table: str


@dataclass
class Loaders:
    """A run's data: the training loader and its resumable sampler (``set_epoch(epoch, start)``,
    ``batches_per_epoch(batch_size)``), and this process's share of the validation split."""

    train: DataLoader
    sampler: Any
    val: DataLoader


class Task:
    """What a task brings to the engine; subclasses set the attributes and implement the methods.

    Attributes:
        name: stored in every checkpoint (``"segmentation"``, ``"detection"``), so that each program can refuse
            another task's checkpoint with one line.
        metric / metric_label: the validation summary key that picks ``best.pt``, and its console name.
        model_keys: the config keys that decide the model's parameters; a checkpoint loads only into a model
            built with the same values.
        name_keys: the config keys that name the model (``backbone``, ``head``): every checkpoint's config holds
            them, and the default run folder name is made of them.
        default_iters: ``--iters`` when neither it nor ``--epochs`` is given.
        board_scalars: the validation summary keys TensorBoard plots (in percent), and ``per_class``, the key
            of the per-class mapping it plots as a group.
    """

    name: str
    metric: str
    metric_label: str
    model_keys: Tuple[str, ...]
    name_keys: Tuple[str, ...]
    default_iters: int
    board_scalars: Tuple[str, ...] = ()
    per_class: Optional[str] = None

    @property
    def best_key(self) -> str:
        """The checkpoint key of the best validation score so far (``best_miou``, ``best_ap``)."""
        return f"best_{self.metric}"

    # -------------------------------------------------------------------------------------------- config

    def check_config(self, cfg: Dict[str, Any]) -> None:
        """Check (and fill) the task's own options; raise ``ValueError`` naming the flag."""

    def legacy_config(self, saved: Mapping[str, Any]) -> Dict[str, Any]:
        """Values for options a checkpoint saved before they existed was trained with (its config lacks them)."""
        return {}

    # --------------------------------------------------------------------------------------- data, model

    def build_datasets(self, cfg: Mapping[str, Any]) -> Tuple[Dataset, Dataset]:
        raise NotImplementedError

    def build_loaders(self, cfg: Mapping[str, Any], train_ds: Dataset, val_ds: Dataset, info: DistInfo
                      ) -> Loaders:
        raise NotImplementedError

    def build_model(self, cfg: Mapping[str, Any], classes: Sequence[str], *, pretrained: Any = None) -> nn.Module:
        """The model ``cfg`` describes, for ``classes`` (the training set's, or a checkpoint's)."""
        raise NotImplementedError

    def describe_model(self, cfg: Mapping[str, Any], num_classes: Optional[int] = None) -> str:
        raise NotImplementedError

    def checkpoint_meta(self, train_ds: Dataset) -> Dict[str, Any]:
        """What a checkpoint records about the data besides the config: class names, palette..."""
        return {"classes": list(train_ds.classes), "palette": getattr(train_ds, "palette", None)}

    def check_resume(self, checkpoint: Mapping[str, Any], cfg: Mapping[str, Any], model: nn.Module,
                     train_ds: Dataset, where: str) -> None:
        """Raise ``ValueError`` when ``checkpoint`` cannot continue as the run ``cfg`` describes: other classes,
        other model options, or weights that do not fit ``model``."""
        saved, classes = checkpoint["config"], list(train_ds.classes)
        saved_classes = list(checkpoint.get("classes", []))
        if saved_classes != classes:
            raise ValueError(f"checkpoint {where} was trained on {len(saved_classes)} classes {saved_classes[:6]}..., "
                             f"but dataset {cfg['dataset']!r} has {len(classes)}: {classes[:6]}...")
        changed = [k for k in self.model_keys if saved.get(k) != cfg.get(k)]
        if changed:
            raise ValueError(f"checkpoint {where} holds {self.describe_model(saved)}; the model options "
                             f"{', '.join(f'{k}={cfg.get(k)!r} (saved {saved.get(k)!r})' for k in changed)} differ")
        check_model_state(model, checkpoint["model"], where=where)

    # ------------------------------------------------------------------------------------------- steps

    def to_device(self, inputs: Any, targets: Any, device: torch.device, channels_last: bool
                  ) -> Tuple[Any, Any]:
        raise NotImplementedError

    def build_criterion(self, cfg: Mapping[str, Any]) -> Any:
        """The run's loss function (``None`` where the model computes its own losses)."""
        return None

    def loss(self, model: nn.Module, criterion: Any, inputs: Any, targets: Any, cfg: Mapping[str, Any]
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Forward pass and loss of one batch (autocast as ``cfg["amp"]`` says): the loss to back-propagate and
        its named parts for the log (empty when there is one part)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader, dataset: Dataset, cfg: Mapping[str, Any],
                 device: torch.device, *, progress: bool) -> Evaluation:
        """Score ``model`` on this process's share of the validation split, merged over all processes."""
        raise NotImplementedError

    def draw_validation(self, model: nn.Module, dataset: Dataset, cfg: Mapping[str, Any], device: torch.device,
                        count: int) -> List[np.ndarray]:
        """Captioned figures (ground truth | prediction) of the first ``count`` validation images."""
        raise NotImplementedError

    def curve(self, records: Sequence[Mapping[str, Any]]) -> Tuple[str, List[int], List[float]]:
        """The validation panel of ``curves.png``: ``(title, iterations, values in percent)``."""
        val = [r for r in records if r.get("type") == "val"]
        return (f"validation {self.metric_label} (%)", [r["iter"] for r in val],
                [100 * (r.get(self.metric) or 0.0) for r in val])
