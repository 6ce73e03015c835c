"""Segmentation datasets behind one registry: ``build_dataset("voc", root=..., split="train")``.

Every dataset returns ``(image, mask)`` pairs with masks in train ids (0..K-1, 255 ignored) and exposes
``classes``; see :class:`tools.data.base.SegmentationDataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Union

from backbones.registry import Registry

from .ade20k import ade20k_dataset
from .base import IGNORE_INDEX, FileListDataset, SegmentationDataset
from .cityscapes import cityscapes_dataset
from .folder import folder_dataset
from .synthetic import SyntheticShapes
from .voc import voc_dataset

__all__ = ["DATASETS", "IGNORE_INDEX", "SegmentationDataset", "FileListDataset", "build_dataset",
           "list_datasets"]

DATASETS = Registry("dataset")


@DATASETS.register("synthetic")
def synthetic_dataset(*, root: Union[str, Path, None] = None, split: str = "train", transform: Any = None,
                      num_images: Optional[int] = None, image_size: int = 128, seed: int = 0) -> SyntheticShapes:
    """The built-in shapes set (:class:`SyntheticShapes`); ``root`` is ignored: nothing is read from disk."""
    del root
    return SyntheticShapes(split=split, transform=transform, num_images=num_images, image_size=image_size,
                           seed=seed)

DATASETS.register("voc")(voc_dataset)
DATASETS.register("cityscapes")(cityscapes_dataset)
DATASETS.register("ade20k")(ade20k_dataset)
DATASETS.register("folder")(folder_dataset)


def build_dataset(name: str, **kwargs: Any) -> SegmentationDataset:
    """Build the dataset registered as ``name`` with ``root``, ``split``, ``transform`` and its own options."""
    return DATASETS.build(name, **kwargs)


def list_datasets() -> List[str]:
    return DATASETS.list()
