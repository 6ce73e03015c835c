"""Semantic segmentation as a task of the training engine: the datasets of :mod:`tools.data`, a
:class:`heads.SegmentationModel`, cross-entropy (+ OHEM, Dice, auxiliary head), mIoU from a confusion matrix
summed over processes, and image | ground truth | prediction figures."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...data import SegmentationDataset, build_dataset
from ...data.loaders import build_eval_loader, build_train_loader
from ...data.transforms import eval_transform, normalize, train_transform
from ...engine.checkpoint import TASK_KEYS
from ...engine.distributed import DistInfo
from ...engine.precision import autocast
from ...engine.task import Evaluation, Loaders, Task
from ...engine.visualize import comparison
from .inference import evaluate, predict_probs
from .losses import SegLoss
from .metrics import format_table
from .model import MODEL_KEYS, build_model, describe_model

__all__ = ["SegmentationTask", "SEGMENTATION", "DEFAULT_ITERS"]

DEFAULT_ITERS = 400


class SegmentationTask(Task):
    """The task behind ``tools.train_seg``; its config keys are that program's flags."""

    name = "segmentation"
    metric, metric_label = "miou", "mIoU"
    model_keys = MODEL_KEYS
    name_keys = TASK_KEYS["segmentation"][0]
    default_iters = DEFAULT_ITERS
    board_scalars = ("miou", "pixel_accuracy")
    per_class = "iou"

    def check_config(self, cfg: Dict[str, Any]) -> None:
        if len(cfg["crop_size"]) not in (1, 2):
            raise ValueError(f"--crop-size takes one or two ints (H W), got {cfg['crop_size']}")
        cfg.setdefault("dice_weight", 0.0)  # configs written before the option: cross-entropy only
        if not cfg["dice_weight"] >= 0:
            raise ValueError(f"--dice-weight must be >= 0, got {cfg['dice_weight']!r}")

    def legacy_config(self, saved: Mapping[str, Any]) -> Dict[str, Any]:
        # Runs saved before --bias-weight-decay existed decayed biases like norm parameters; runs saved before
        # --dice-weight existed trained on cross-entropy alone.
        return {"bias_weight_decay": saved.get("norm_weight_decay", 0.0), "dice_weight": 0.0}

    def build_datasets(self, cfg: Mapping[str, Any]) -> Tuple[SegmentationDataset, SegmentationDataset]:
        crop = cfg["crop_size"] * 2 if len(cfg["crop_size"]) == 1 else cfg["crop_size"]
        common = dict(root=cfg["root"], **(cfg["data_kwargs"] or {}))
        train_ds = build_dataset(cfg["dataset"], split=cfg["train_split"], **common,
                                 transform=train_transform(crop_size=tuple(crop),
                                                           scale_range=tuple(cfg["scale_range"]),
                                                           hflip=cfg["hflip"], color_jitter=cfg["color_jitter"]))
        val_ds = build_dataset(cfg["dataset"], split=cfg["val_split"], transform=eval_transform(), **common)
        if val_ds.classes != train_ds.classes:
            raise ValueError(f"the {cfg['train_split']!r} and {cfg['val_split']!r} splits disagree on the classes: "
                             f"{len(train_ds.classes)} vs {len(val_ds.classes)}")
        return train_ds, val_ds

    def build_loaders(self, cfg: Mapping[str, Any], train_ds: SegmentationDataset, val_ds: SegmentationDataset,
                      info: DistInfo) -> Loaders:
        pin = info.device.type == "cuda"
        train, sampler = build_train_loader(train_ds, batch_size=cfg["batch_size"], workers=cfg["workers"],
                                            seed=cfg["seed"], rank=info.rank, world_size=info.world_size,
                                            pin_memory=pin)
        val = build_eval_loader(val_ds, batch_size=cfg["val_batch_size"], workers=cfg["workers"], rank=info.rank,
                                world_size=info.world_size, pin_memory=pin)
        return Loaders(train=train, sampler=sampler, val=val)

    def build_model(self, cfg: Mapping[str, Any], classes: Sequence[str], *, pretrained: Any = None) -> nn.Module:
        return build_model(cfg, len(classes), pretrained=pretrained)

    def describe_model(self, cfg: Mapping[str, Any], num_classes: Optional[int] = None) -> str:
        return describe_model(cfg, num_classes)

    def to_device(self, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        images = inputs.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(device, non_blocking=True)

    def build_criterion(self, cfg: Mapping[str, Any]) -> SegLoss:
        return SegLoss(aux_weight=cfg["aux_weight"], ohem_thresh=cfg["ohem_thresh"],
                       ohem_min_kept=cfg["ohem_min_kept"], dice_weight=cfg["dice_weight"])

    def loss(self, model: nn.Module, criterion: SegLoss, inputs: torch.Tensor, targets: torch.Tensor,
             cfg: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        with autocast(inputs.device, cfg["amp"]):
            output = model(inputs)
        # the loss outside autocast, in fp32: softmax and Dice sums over many pixels want the precision
        return criterion(output, targets), {}

    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader, dataset: SegmentationDataset,
                 cfg: Mapping[str, Any], device: torch.device, *, progress: bool) -> Evaluation:
        cm = evaluate(model, loader, num_classes=dataset.num_classes, device=device, progress=progress,
                      amp=cfg["amp"], channels_last=cfg["channels_last"])
        summary = cm.summary(dataset.classes)
        line = f"mIoU {100 * summary['miou']:.2f}  pixel accuracy {100 * summary['pixel_accuracy']:.2f}"
        return Evaluation(summary=summary, line=line, table=format_table(cm, dataset.classes))

    def draw_validation(self, model: nn.Module, dataset: SegmentationDataset, cfg: Mapping[str, Any],
                        device: torch.device, count: int) -> List[np.ndarray]:
        figures = []
        for i in range(count):
            image, mask = dataset.load(i)
            x = normalize(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))[None].to(device)
            probs = predict_probs(model, x, amp=cfg["amp"], channels_last=cfg["channels_last"])
            pred = probs.argmax(1)[0].cpu().numpy().astype(np.uint8)
            figures.append(comparison(image, mask, pred, dataset.classes, dataset.palette))
        return figures


SEGMENTATION = SegmentationTask()
