"""The detection dataset contract shared by every layout: images with boxes, class names, COCO ground truth.

``dataset[i]`` returns ``(image, target)`` the way torchvision's detectors take them; ``dataset[(i, seed)]`` does
the same with the random augmentation drawn from ``seed``, so a sample's augmentation is a pure function of
``(i, seed)`` (see :class:`tools.data.SegmentationDataset`, which does the same for segmentation).

Labels follow torchvision's detectors: ``1..C`` are the classes and 0 is the background, so ``classes[k - 1]``
names label ``k``. Crowd boxes never reach training targets (detectron2 drops them too); evaluation sees them
through :meth:`DetectionDataset.coco_gt`, where pycocotools' ``COCOeval`` treats them as COCO does.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DetectionDataset", "DetectionTransform", "Target", "clip_boxes", "empty_target", "warn_dropped"]

# numpy arrays: "boxes" (K, 4) float32 xyxy pixels, "labels" (K,) int64 1..C, "iscrowd" (K,) uint8,
# "area" (K,) float32
Target = Dict[str, np.ndarray]

# (image (3, H, W) uint8, boxes (K, 4) float32 xyxy, labels (K,) int64) -> (image (3, h, w) float32 in [0, 1],
# boxes (k, 4), labels (k,)): boxes may be dropped, never added
DetectionTransform = Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                              Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def empty_target() -> Target:
    return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
            "iscrowd": np.zeros(0, np.uint8), "area": np.zeros(0, np.float32)}


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> Tuple[np.ndarray, np.ndarray]:
    """Clip ``(K, 4)`` xyxy boxes to the image; returns the clipped boxes and which have a positive size.

    A box with ``x1 <= x0`` or ``y1 <= y0`` (given so, or left so by clipping) has no pixel to detect:
    torchvision's ``SanitizeBoundingBoxes`` and COCO's loaders drop such boxes too.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    clipped = np.stack([boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height),
                        boxes[:, 2].clip(0, width), boxes[:, 3].clip(0, height)], 1) if len(boxes) else boxes
    valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]) & (boxes[:, 2] > boxes[:, 0]) & \
        (boxes[:, 3] > boxes[:, 1])
    return clipped, valid


def warn_dropped(count: int, where: str) -> None:
    """The one warning a dataset gives for the boxes of zero size it dropped (``count`` of them, ``where``)."""
    if count:
        warnings.warn(f"{where}: dropped {count} box(es) of zero size (width or height <= 0, in the file or after "
                      f"clipping to the image)", UserWarning, stacklevel=3)


class DetectionDataset(Dataset):
    """Base class: subclasses implement ``__len__``, ``load(i)``, ``describe(i)``, ``image_id(i)`` and
    ``image_size(i)``; ``annotations(i)`` and ``file_name(i)`` when they can answer without decoding the image.

    Attributes:
        classes: the ``C`` class names, background excluded: label ``k`` (1..C) is ``classes[k - 1]``.
        num_classes: ``C``.
        category_ids: the ``C`` COCO category ids of labels ``1..C`` (``1..C`` for layouts without ids).
        palette: optional ``(C, 3)`` RGB colours for drawing; ``None`` lets the visualizer choose.
        transform: a :data:`DetectionTransform`; ``None`` only converts the image to float in [0, 1].
        name: for messages, e.g. ``"coco/val2017"``.
    """

    def __init__(self, *, classes: Sequence[str], transform: Optional[DetectionTransform] = None,
                 category_ids: Optional[Sequence[int]] = None, palette: Optional[Sequence[Sequence[int]]] = None,
                 name: str = "") -> None:
        self.classes = tuple(str(c) for c in classes)
        self.name = name or type(self).__name__
        if not self.classes:
            raise ValueError(f"{self.name}: a detection dataset needs at least one class")
        ids = list(range(1, len(self.classes) + 1)) if category_ids is None else [int(c) for c in category_ids]
        if len(ids) != len(self.classes) or len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: category_ids must be {len(self.classes)} distinct ints (one per class), "
                             f"got {list(category_ids or [])}")
        self.category_ids: List[int] = ids
        self.palette = [list(map(int, c)) for c in palette] if palette is not None else None
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Tuple[np.ndarray, Target]:
        """``(image (H, W, 3) uint8 RGB, target)`` before any transform, crowd boxes included."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages."""
        return f"{self.name}[{index}]"

    def image_id(self, index: int) -> int:
        """The image's id in :meth:`coco_gt` (the COCO image id, or ``index``)."""
        return index

    def image_size(self, index: int) -> Tuple[int, int]:
        """``(height, width)`` of the untransformed image, without decoding it where the layout allows."""
        raise NotImplementedError

    def file_name(self, index: int) -> str:
        """The image's ``file_name`` in :meth:`coco_gt`."""
        return self.describe(index)

    def annotations(self, index: int) -> Target:
        """The untransformed target of ``load(index)``; layouts that know it without the image override this."""
        return self.load(index)[1]

    def coco_gt(self) -> Dict[str, Any]:
        """The split's ground truth as a COCO instances dict (untransformed, crowd boxes included), for
        ``pycocotools.coco.COCO``: ``images`` (id, width, height, file_name), ``annotations`` (id, image_id,
        category_id, bbox ``[x, y, w, h]``, area, iscrowd) and ``categories`` (id, name)."""
        images, annotations = [], []
        for i in range(len(self)):
            height, width = self.image_size(i)
            image_id = self.image_id(i)
            images.append({"id": image_id, "width": int(width), "height": int(height), "file_name": self.file_name(i)})
            target = self.annotations(i)
            for box, label, crowd, area in zip(target["boxes"].tolist(), target["labels"].tolist(),
                                               target["iscrowd"].tolist(), target["area"].tolist()):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": self.category_ids[label - 1],
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                    "area": float(area), "iscrowd": int(crowd)})
        categories = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """``(image (3, h, w) float32 in [0, 1], {"boxes": (k, 4) float32 xyxy, "labels": (k,) int64,
        "image_id": int})``, crowd boxes left out."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} index {index} out of range for {len(self)} samples")
        image, target = self.load(index)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{self.describe(index)}: expected an (H, W, 3) uint8 RGB image, got "
                             f"{image.dtype} {tuple(image.shape)}")
        keep = ~target["iscrowd"].astype(bool)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        boxes = torch.from_numpy(np.array(target["boxes"][keep], np.float32).reshape(-1, 4))
        labels = torch.from_numpy(np.array(target["labels"][keep], np.int64))
        if self.transform is None:
            image_f = image_t.float().div_(255)
        elif seed is None:
            image_f, boxes, labels = self.transform(image_t, boxes, labels)
        else:
            # A private copy of the CPU generator, as SegmentationDataset does: the sample's draws come from
            # ``seed`` alone and leave the training loop's own random stream untouched.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                image_f, boxes, labels = self.transform(image_t, boxes, labels)
        return image_f, {"boxes": boxes, "labels": labels, "image_id": self.image_id(index)}
