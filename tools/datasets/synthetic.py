"""The built-in synthetic set (:mod:`tools.synthetic`) as a dataset: no files, no downloads."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..synthetic import SHAPE_CLASSES, SPLITS, make_split
from .base import SegmentationDataset, Transform

__all__ = ["SyntheticShapes"]

DEFAULT_SIZES = {"train": 320, "val": 64, "test": 64}


class SyntheticShapes(SegmentationDataset):
    """Shapes (circle, square, triangle, cross) over textured backgrounds, generated from ``seed``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each split is drawn from its own seed stream.
        num_images: images in the split (default 320 for train, 64 otherwise).
        image_size: side of the square images.
        seed: the data seed; the same seed gives the same images everywhere.

    ``load(i)`` returns an ``(image_size, image_size, 3)`` uint8 RGB image and its uint8 mask.
    """

    def __init__(self, *, split: str = "train", num_images: Optional[int] = None, image_size: int = 128,
                 seed: int = 0, transform: Optional[Transform] = None) -> None:
        super().__init__(classes=SHAPE_CLASSES, transform=transform, name=f"synthetic/{split}")
        if split not in SPLITS:
            raise ValueError(f"synthetic split must be one of {', '.join(SPLITS)}, got {split!r}")
        num_images = DEFAULT_SIZES[split] if num_images is None else num_images
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"synthetic num_images must be a positive int, got {num_images!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"synthetic image_size must be an int >= 16, got {image_size!r}")
        self.images, self.masks = make_split(seed, split, num_images, image_size)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.masks[index]
