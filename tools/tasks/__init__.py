"""The tasks the programs know, and what depends on a checkpoint's task: the model it holds.

Each task (:mod:`tools.tasks.segmentation`, :mod:`tools.tasks.detection`) is a :class:`tools.engine.task.Task`
the training engine runs; evaluation, prediction and export read the task a checkpoint records and take the
matching path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from backbones import build_backbone
from heads import build_segmentor

from ..engine.checkpoint import check_model_state, checkpoint_task, load_checkpoint
from ..engine.task import Task
from .detection.task import DETECTION
from .segmentation.task import SEGMENTATION

__all__ = ["TASKS", "get_task", "model_from_checkpoint", "model_of_checkpoint", "build_named_model"]

TASKS: Dict[str, Task] = {SEGMENTATION.name: SEGMENTATION, DETECTION.name: DETECTION}


def get_task(name: str) -> Task:
    """The task registered as ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def model_from_checkpoint(path: Union[str, Path], *, device: Union[str, torch.device] = "cpu",
                          task: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The eval-mode model stored in training checkpoint ``path`` and the checkpoint (config, classes...).

    Loads the file (refusing another ``task``'s checkpoint when one is given), then :func:`model_of_checkpoint`.
    """
    checkpoint = load_checkpoint(path, task=task)
    return model_of_checkpoint(checkpoint, where=repr(str(path))).to(device), checkpoint


def model_of_checkpoint(checkpoint: Mapping[str, Any], *, where: str) -> nn.Module:
    """The eval-mode model (on the CPU) of a loaded checkpoint: checks that it names its classes, rebuilds the
    model from its config with its task's builder, checks the stored weights against that model (a report of
    missing/unexpected/mis-shaped keys) and loads them."""
    owner = get_task(checkpoint_task(checkpoint))
    config = checkpoint["config"]
    classes = list(checkpoint.get("classes") or [])
    if not classes:
        raise ValueError(f"checkpoint {where} records no class names")
    model = owner.build_model(config, classes)
    check_model_state(model, checkpoint["model"], where=f"{where} ({owner.describe_model(config, len(classes))})")
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def build_named_model(name: str, *, output_stride: int = 32, num_classes: int = 19,
                      out_strides: Optional[Sequence[int]] = None, **backbone_kwargs: Any) -> nn.Module:
    """``"resnet50"`` -> the backbone; ``"resnet50+fpn"`` -> that backbone with the head, as a SegmentationModel.

    ``out_strides`` (backbones only; default: the backbone's own) and ``backbone_kwargs`` (``norm``,
    ``checkpoint_stages``...) go to the backbone builder; ``num_classes`` to the head. Random weights.
    """
    arch, plus, head = name.partition("+")
    if not arch or (plus and not head):
        raise ValueError(f"model name must be '<backbone>' or '<backbone>+<head>', got {name!r}")
    if out_strides is not None:
        backbone_kwargs["out_strides"] = tuple(out_strides)
    if not head:
        return build_backbone(arch, output_stride=output_stride, **backbone_kwargs)
    return build_segmentor(head=head, backbone=arch, num_classes=num_classes, output_stride=output_stride,
                           **backbone_kwargs)
