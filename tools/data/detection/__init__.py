"""Detection datasets behind one registry: ``build_detection_dataset("coco", root=..., split="val2017")``.

Every dataset returns ``(image, target)`` pairs as torchvision's detectors take them and exposes ``classes``,
``category_ids`` and its ground truth in COCO format; see :class:`tools.data.detection.base.DetectionDataset`.
"""

from __future__ import annotations

from typing import Any, List

from backbones.registry import Registry

from .base import DetectionDataset
from .coco import coco_detection
from .loaders import (GroupedBatchSampler, build_detection_eval_loader, build_detection_train_loader,
                      detection_collate)
from .synthetic import SyntheticDetection, synthetic_detection
from .transforms import det_eval_transform, det_train_transform
from .yolo import yolo_detection

__all__ = ["DETECTION_DATASETS", "DetectionDataset", "SyntheticDetection", "GroupedBatchSampler",
           "build_detection_dataset", "list_detection_datasets", "det_train_transform", "det_eval_transform",
           "detection_collate", "build_detection_train_loader", "build_detection_eval_loader"]

DETECTION_DATASETS = Registry("detection dataset")

DETECTION_DATASETS.register("synthetic")(synthetic_detection)
DETECTION_DATASETS.register("coco")(coco_detection)
DETECTION_DATASETS.register("yolo")(yolo_detection)


def build_detection_dataset(name: str, **kwargs: Any) -> DetectionDataset:
    """Build the detection dataset registered as ``name`` with ``root``, ``split``, ``transform``,
    ``keep_empty`` and its own options."""
    return DETECTION_DATASETS.build(name, **kwargs)


def list_detection_datasets() -> List[str]:
    return DETECTION_DATASETS.list()
