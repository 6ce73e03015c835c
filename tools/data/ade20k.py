"""ADE20K scene parsing (``ADEChallengeData2016``): 150 classes, label 0 ("other") ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from .base import IGNORE_INDEX, FileListDataset, Transform, check_root
from .io import list_images

__all__ = ["ADE20K_CLASSES", "ade20k_dataset"]

# The SceneParsing benchmark's objectInfo150 order (first name of each entry); label k + 1 is class k.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150

LAYOUT = ("ADEChallengeData2016/ with images/{training,validation}/<name>.jpg and "
          "annotations/{training,validation}/<name>.png (root may also be its parent)")
_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def _lut() -> np.ndarray:
    # 0 means "not one of the 150 classes"; shifting the rest down makes the train ids 0..149.
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = IGNORE_INDEX
    return lut.astype(np.uint8)


def ade20k_dataset(*, root: Union[str, Path, None], split: str = "train",
                   transform: Optional[Transform] = None) -> FileListDataset:
    """ADE20K (SceneParsing, 150 classes); raw label ``v`` becomes ``v - 1`` and 0 becomes 255.

    Args:
        root: the ``ADEChallengeData2016`` folder or its parent.
        split: ``train`` / ``training`` or ``val`` / ``validation``.
    """
    root = check_root(root, LAYOUT)
    if split not in _SPLITS:
        raise ValueError(f"ADE20K split must be one of {', '.join(_SPLITS)}, got {split!r}")
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    image_dir = base / "images" / _SPLITS[split]
    if not image_dir.is_dir():
        raise FileNotFoundError(f"ADE20K image folder {str(image_dir)!r} does not exist; expected {LAYOUT}")
    images = list_images(image_dir)
    if not images:
        raise ValueError(f"ADE20K image folder {str(image_dir)!r} holds no images")
    samples = [(p, base / "annotations" / _SPLITS[split] / f"{p.stem}.png") for p in images]
    return FileListDataset(samples, classes=ADE20K_CLASSES, transform=transform, lut=_lut(),
                           name=f"ade20k/{split}")
