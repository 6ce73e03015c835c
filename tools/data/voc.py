"""Pascal VOC 2012 segmentation: ``JPEGImages/``, ``SegmentationClass/`` palette PNGs, split lists."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .base import FileListDataset, Transform, check_root

__all__ = ["VOC_CLASSES", "voc_dataset"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

LAYOUT = ("VOC2012/ with JPEGImages/<id>.jpg, SegmentationClass/<id>.png and "
          "ImageSets/Segmentation/<split>.txt (root may also be VOCdevkit/ or its parent)")


def _find_voc_dir(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"no JPEGImages/ folder under {str(root)!r}; expected {LAYOUT}")


def voc_dataset(*, root: Union[str, Path, None], split: str = "train", transform: Optional[Transform] = None,
                mask_dir: str = "SegmentationClass") -> FileListDataset:
    """Pascal VOC 2012: 21 classes, label 255 on object outlines.

    Args:
        root: the ``VOC2012`` folder, or ``VOCdevkit`` or its parent.
        split: name of a list in ``ImageSets/Segmentation/`` (``train``, ``val``, ``trainval``).
        mask_dir: folder of label PNGs; ``SegmentationClassAug`` for the SBD-augmented set.
    """
    base = _find_voc_dir(check_root(root, LAYOUT))
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"VOC split list {str(list_file)!r} does not exist; expected {LAYOUT}")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"VOC split list {str(list_file)!r} is empty")
    samples = [(base / "JPEGImages" / f"{i}.jpg", base / mask_dir / f"{i}.png") for i in ids]
    return FileListDataset(samples, classes=VOC_CLASSES, transform=transform, name=f"voc/{split}")
