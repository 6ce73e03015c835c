"""Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/`` and ``gtFine/*_labelIds.png``, 19 train ids."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from .base import IGNORE_INDEX, FileListDataset, Transform, check_root

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "cityscapes_dataset", "LABEL_ID_TO_TRAIN_ID"]

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# The benchmark's own colours (cityscapesScripts labels.py), so overlays look like every published figure.
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# labelId -> trainId for the 19 evaluated classes; every other id (void, parking, rail track, guard rail,
# bridge, tunnel, pole group, caravan, trailer, license plate) is ignored.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

LAYOUT = ("leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and "
          "gtFine/<split>/<city>/<name>_gtFine_labelIds.png")


def _lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def cityscapes_dataset(*, root: Union[str, Path, None], split: str = "train",
                       transform: Optional[Transform] = None) -> FileListDataset:
    """Cityscapes with ``gtFine`` labels mapped to the 19 train ids (everything else 255).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test``.
    """
    root = check_root(root, LAYOUT)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes split folder {str(image_dir)!r} does not exist; expected {LAYOUT}")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise ValueError(f"Cityscapes split folder {str(image_dir)!r} holds no *_leftImg8bit.png images")
    samples = []
    for path in images:
        stem = path.name[: -len("_leftImg8bit.png")]
        samples.append((path, root / "gtFine" / split / path.parent.name / f"{stem}_gtFine_labelIds.png"))
    return FileListDataset(samples, classes=CITYSCAPES_CLASSES, transform=transform, lut=_lut(),
                           palette=CITYSCAPES_PALETTE, name=f"cityscapes/{split}")
