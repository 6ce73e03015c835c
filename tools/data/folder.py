"""A generic folder: ``images/`` and ``masks/`` with matching file stems, class names from ``classes.txt``.

Layout (``<split>`` is ``train``, ``val``...)::

    root/images/<split>/<stem>.jpg   root/masks/<split>/<stem>.png     one sub-folder per split, or
    root/images/<stem>.jpg           root/masks/<stem>.png             flat, with root/<split>.txt listing
                                                                       the stems of each split, or without:
                                                                       then a fixed 1-in-10 holdout is "val"
    root/classes.txt                 optional: one class name per line (line k names label k)
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from .base import IGNORE_INDEX, FileListDataset, Transform, check_root
from .io import list_images, read_mask

__all__ = ["folder_dataset"]

LAYOUT = "images/ and masks/ with matching stems (masks/<stem>.png), optionally split into sub-folders"


def _class_names(root: Path, num_classes: Optional[int], mask_dir: Path) -> List[str]:
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        names = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if not names:
            raise ValueError(f"class list {str(classes_file)!r} is empty; expected one class name per line")
        repeated = sorted({n for n in names if names.count(n) > 1}, key=names.index)
        if repeated:
            # Results are reported per class name: a repeated name would silently merge two classes' entries.
            lines = "; ".join(f"{n!r} on lines {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}"
                              for n in repeated)
            raise ValueError(f"class list {str(classes_file)!r} names a class twice: {lines}; each line must name "
                             f"a different class")
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"num_classes={num_classes} disagrees with the {len(names)} names in "
                             f"{str(classes_file)!r}")
        return names
    if num_classes is None:
        # No class list: the largest label found in any mask decides the class count.
        largest = -1
        for path in sorted(mask_dir.rglob("*.png")):
            values = np.unique(read_mask(path))
            values = values[values != IGNORE_INDEX]
            if values.size:
                largest = max(largest, int(values.max()))
        if largest < 0:
            raise ValueError(f"cannot infer the class count: no labelled pixel in {str(mask_dir)!r}; "
                             f"add {str(classes_file)!r} or pass num_classes")
        num_classes = largest + 1
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return [f"class{k}" for k in range(num_classes)]


def _holdout(stems: Sequence[str], split: str, every: int) -> List[str]:
    if split == "all":
        return list(stems)
    if split not in ("train", "val"):
        raise ValueError(f"a flat folder without {split}.txt has splits 'train', 'val' and 'all', got {split!r}")
    return [s for i, s in enumerate(stems) if (i % every == every - 1) == (split == "val")]


def folder_dataset(*, root: Union[str, Path, None], split: str = "train", transform: Optional[Transform] = None,
                   num_classes: Optional[int] = None, holdout_every: int = 10) -> FileListDataset:
    """Images and masks from a plain folder (see the module docstring for the layout).

    Args:
        root: the folder holding ``images/`` and ``masks/``.
        split: a sub-folder name, the stem of a ``<split>.txt`` list, or for a flat folder ``train``,
            ``val`` (every ``holdout_every``-th image in name order) or ``all``.
        num_classes: class count when there is no ``classes.txt`` (default: inferred from the masks).
    """
    root = check_root(root, LAYOUT)
    image_root, mask_root = root / "images", root / "masks"
    for folder in (image_root, mask_root):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {str(folder)!r} does not exist; expected {LAYOUT}")
    classes = _class_names(root, num_classes, mask_root)
    if (image_root / split).is_dir():
        image_dir, mask_dir = image_root / split, mask_root / split
        images = list_images(image_dir)
        where = str(image_dir)
    else:
        by_stem = {p.stem: p for p in list_images(image_root)}
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            stems = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
            missing = [s for s in stems if s not in by_stem]
            if missing:
                raise FileNotFoundError(f"{str(list_file)!r} names images not in {str(image_root)!r}: "
                                        f"{', '.join(missing[:5])}")
            where = str(list_file)
        else:
            if not isinstance(holdout_every, int) or holdout_every < 2:
                raise ValueError(f"holdout_every must be an int >= 2, got {holdout_every!r}")
            stems = _holdout(sorted(by_stem), split, holdout_every)
            where = f"{image_root} (split {split!r}: no {image_root / split}/ or {list_file.name})"
        images, mask_dir = [by_stem[s] for s in stems], mask_root
    if not images:
        raise ValueError(f"the split {split!r} holds no images: {where}")
    samples = [(p, mask_dir / f"{p.stem}.png") for p in images]
    return FileListDataset(samples, classes=classes, transform=transform, name=f"folder/{split}")
