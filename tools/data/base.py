"""The dataset contract shared by every layout: image/mask pairs, class names, checked labels, seeded transforms.

``dataset[i]`` returns ``(image, mask)``; ``dataset[(i, seed)]`` does the same with the random augmentation drawn
from ``seed`` instead of the global generator, which makes a sample's augmentation a pure function of
``(i, seed)``: the same whatever the worker count, the process, or the point a run was resumed from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import read_image, read_mask

__all__ = ["IGNORE_INDEX", "SegmentationDataset", "FileListDataset", "check_root"]

IGNORE_INDEX = 255

# (image (3, H, W) uint8, mask (H, W) uint8) -> (image, mask) tensors
Transform = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Base class: subclasses implement ``__len__``, ``load(i)`` and ``describe(i)``.

    Attributes:
        classes: class names; label ``k`` is ``classes[k]``, 255 is ignored.
        palette: optional ``(K, 3)`` RGB colours for drawing; ``None`` lets the visualizer choose.
        transform: callable on ``(image (3, H, W) uint8, mask (H, W) uint8)`` tensors; ``None`` returns them as
            they are (mask as int64).
    """

    def __init__(self, *, classes: Sequence[str], transform: Optional[Transform] = None,
                 palette: Optional[Sequence[Sequence[int]]] = None, name: str = "") -> None:
        self.classes = tuple(classes)
        if not self.classes or len(self.classes) >= IGNORE_INDEX:
            raise ValueError(f"a dataset needs 1 to {IGNORE_INDEX - 1} classes, got {len(self.classes)}")
        self.palette = [list(map(int, c)) for c in palette] if palette is not None else None
        self.transform = transform
        self.name = name or type(self).__name__

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8 RGB, mask (H, W) uint8 of train ids or 255)``, before any transform."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages."""
        return f"{self.name}[{index}]"

    def check_labels(self, mask: np.ndarray, index: int, *, mapped: bool = False) -> None:
        """Raise ``ValueError`` naming the sample if ``mask`` holds a value that is neither a class nor 255."""
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            values = np.unique(mask[bad]).tolist()
            raise ValueError(
                f"mask of {self.describe(index)} holds label value(s) {values[:10]}"
                f"{' (after mapping raw values to train ids)' if mapped else ''} but the dataset has "
                f"{self.num_classes} classes: expected 0..{self.num_classes - 1}, or {IGNORE_INDEX} for ignore"
            )

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} index {index} out of range for {len(self)} samples")
        image, mask = self.load(index)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"image and mask sizes differ for {self.describe(index)}: image {image.shape[1]}x{image.shape[0]}"
                f", mask {mask.shape[1]}x{mask.shape[0]} (width x height)"
            )
        self.check_labels(mask, index, mapped=getattr(self, "lut", None) is not None)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.array(mask, dtype=np.uint8))
        if self.transform is None:
            return image_t, mask_t.long()
        if seed is None:
            return self.transform(image_t, mask_t)
        # Seed a private copy of the global generator: torchvision's transforms draw from it, and the
        # training loop's own draws (dropout) must not depend on how many samples were loaded.
        # The CPU generator alone: torch.manual_seed would also queue a seeding of every accelerator's
        # generators, capturing a stack trace each time (a fifth of a sample's loading time).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(image_t, mask_t)


class FileListDataset(SegmentationDataset):
    """Image/mask file pairs, with an optional lookup table from raw mask values to train ids.

    Args:
        samples: ``(image_path, mask_path)`` pairs; every mask file must exist (checked here).
        lut: ``(256,)`` uint8 array mapping raw label values to train ids or 255.
    """

    def __init__(self, samples: Sequence[Tuple[Path, Path]], *, classes: Sequence[str],
                 transform: Optional[Transform] = None, lut: Optional[np.ndarray] = None,
                 palette: Optional[Sequence[Sequence[int]]] = None, name: str = "") -> None:
        super().__init__(classes=classes, transform=transform, palette=palette, name=name)
        self.samples: List[Tuple[Path, Path]] = [(Path(i), Path(m)) for i, m in samples]
        if not self.samples:
            raise ValueError(f"{self.name}: the split holds no images")
        for image_path, mask_path in self.samples:
            if not mask_path.is_file():
                raise FileNotFoundError(
                    f"{self.name}: image {str(image_path)!r} has no mask; expected {str(mask_path)!r}"
                )
        if lut is not None:
            lut = np.asarray(lut, np.uint8)
            assert lut.shape == (256,), lut.shape
        self.lut = lut

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        image_path, mask_path = self.samples[index]
        return f"{str(image_path)!r} (mask {str(mask_path)!r})"

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = read_mask(mask_path)
        if self.lut is not None:
            mask = self.lut[mask]
        return image, mask


def check_root(root: Union[str, Path, None], layout: str) -> Path:
    """``root`` as a Path, or ``FileNotFoundError`` naming it and the expected ``layout``."""
    if root is None:
        raise ValueError(f"this dataset needs --root, a folder laid out as {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset root {str(path)!r} does not exist; expected a folder laid out as {layout}")
    return path
