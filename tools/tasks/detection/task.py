"""Object detection as a task of the training engine: the datasets of :mod:`tools.data.detection`, a torchvision
detector on a registered backbone (:mod:`.model`), the detector's own losses, COCO mAP by pycocotools
(:mod:`.evaluation`, merged over processes) and ground truth | prediction figures (:mod:`.visualize`)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...data.detection import (DetectionDataset, build_detection_dataset, build_detection_eval_loader,
                               build_detection_train_loader, det_eval_transform, det_train_transform)
from ...data.detection.synthetic import IMAGE_SIZE
from ...engine.checkpoint import TASK_KEYS
from ...engine.distributed import DistInfo
from ...engine.precision import autocast
from ...engine.task import Evaluation, Loaders, Task
from .evaluation import STAT_KEYS, CocoEvaluator, format_table
from .inference import Images, Targets, detect, image_tensor, run_evaluation
from .model import MODEL_KEYS, build_model, describe_model, resolve_model_options
from .visualize import detection_comparison

__all__ = ["DetectionTask", "DETECTION", "DEFAULT_ITERS"]

DEFAULT_ITERS = 500


class DetectionTask(Task):
    """The task behind ``tools.train_det``; its config keys are that program's flags."""

    name = "detection"
    metric, metric_label = "ap", "AP"
    model_keys = MODEL_KEYS
    name_keys = TASK_KEYS["detection"][0]
    default_iters = DEFAULT_ITERS
    board_scalars = STAT_KEYS
    per_class = "per_class_ap"

    def check_config(self, cfg: Dict[str, Any]) -> None:
        image_size = None
        if cfg["dataset"] == "synthetic":
            image_size = int((cfg.get("data_kwargs") or {}).get("image_size", IMAGE_SIZE))
        resolve_model_options(cfg, image_size=image_size)
        lo, hi = cfg["scale_range"]
        if not 0 < lo <= hi:
            raise ValueError(f"--scale-range must be MIN MAX with 0 < MIN <= MAX, got {cfg['scale_range']}")

    def build_datasets(self, cfg: Mapping[str, Any]) -> Tuple[DetectionDataset, DetectionDataset]:
        common = dict(root=cfg["root"], **(cfg["data_kwargs"] or {}))
        train_ds = build_detection_dataset(
            cfg["dataset"], split=cfg["train_split"], keep_empty=False, **common,
            transform=det_train_transform(hflip=cfg["hflip"], scale_range=tuple(cfg["scale_range"]),
                                          color_jitter=cfg["color_jitter"]))
        val_ds = build_detection_dataset(cfg["dataset"], split=cfg["val_split"], transform=det_eval_transform(),
                                         keep_empty=True, **common)
        if val_ds.classes != train_ds.classes:
            raise ValueError(f"the {cfg['train_split']!r} and {cfg['val_split']!r} splits disagree on the classes: "
                             f"{list(train_ds.classes)[:6]} vs {list(val_ds.classes)[:6]}")
        return train_ds, val_ds

    def build_loaders(self, cfg: Mapping[str, Any], train_ds: DetectionDataset, val_ds: DetectionDataset,
                      info: DistInfo) -> Loaders:
        train, sampler = build_detection_train_loader(
            train_ds, batch_size=cfg["batch_size"], workers=cfg["workers"], seed=cfg["seed"], rank=info.rank,
            world_size=info.world_size, group_aspect_ratio=cfg["aspect_ratio_group"],
            pin_memory=info.device.type == "cuda")
        val = build_detection_eval_loader(val_ds, batch_size=cfg["val_batch_size"], workers=cfg["workers"],
                                          rank=info.rank, world_size=info.world_size)
        return Loaders(train=train, sampler=sampler, val=val)

    def build_model(self, cfg: Mapping[str, Any], classes: Sequence[str], *, pretrained: Any = None) -> nn.Module:
        return build_model(cfg, len(classes), pretrained=pretrained)

    def describe_model(self, cfg: Mapping[str, Any], num_classes: Optional[int] = None) -> str:
        return describe_model(cfg, num_classes)

    def checkpoint_meta(self, train_ds: DetectionDataset) -> Dict[str, Any]:
        return {"classes": list(train_ds.classes), "palette": train_ds.palette,
                "category_ids": list(train_ds.category_ids)}

    def to_device(self, inputs: Images, targets: Targets, device: torch.device, channels_last: bool
                  ) -> Tuple[Images, Targets]:
        # The detector batches (resizes, pads) the images itself: channels_last applies to its weights only.
        images = [image.to(device, non_blocking=True) for image in inputs]
        moved = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                 for t in targets]
        return images, moved

    def loss(self, model: nn.Module, criterion: Any, inputs: Images, targets: Targets, cfg: Mapping[str, Any]
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
        with autocast(inputs[0].device, cfg["amp"]):
            losses = model(inputs, targets)
        total = sum(v.float() for v in losses.values())
        return total, {k: float(v.detach()) for k, v in losses.items()}

    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader, dataset: DetectionDataset,
                 cfg: Mapping[str, Any], device: torch.device, *, progress: bool) -> Evaluation:
        evaluator = CocoEvaluator(dataset.coco_gt(), category_ids=dataset.category_ids, classes=dataset.classes)
        run_evaluation(model, loader, evaluator, device=device, amp=cfg["amp"], progress=progress)
        summary = evaluator.summarize()
        line = f"AP {100 * summary['ap']:.2f}  AP50 {100 * summary['ap50']:.2f}  AP75 {100 * summary['ap75']:.2f}"
        return Evaluation(summary=summary, line=line, table=format_table(summary, dataset.classes))

    def draw_validation(self, model: nn.Module, dataset: DetectionDataset, cfg: Mapping[str, Any],
                        device: torch.device, count: int) -> List[np.ndarray]:
        figures = []
        for i in range(count):
            image, target = dataset.load(i)
            prediction = detect(model, [image_tensor(image).to(device)], amp=cfg["amp"])[0]
            keep = ~np.asarray(target["iscrowd"], bool)
            shown = {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}
            figures.append(detection_comparison(image, shown, prediction, dataset.classes, dataset.palette))
        return figures


DETECTION = DetectionTask()
