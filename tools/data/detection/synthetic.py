"""A built-in detection set: coloured shapes of four kinds on textured, noisy backgrounds, generated from a seed.

Every image is drawn from its own ``numpy`` generator seeded by ``(seed, split, index)``, so a sample is the same
on every machine, in every process and whatever order samples are asked for, and costs one image's drawing.
Colours are random for every shape and background, so only the outline tells the classes apart. Objects may
overlap, but each keeps most of its pixels visible, and its box is the tight box of its *visible* pixels (its
instance mask, :meth:`SyntheticDetection.load_instances`), with COCO's area: the visible pixel count.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import cv2
import numpy as np

from .base import DetectionDataset, DetectionTransform, Target, empty_target

__all__ = ["DETECTION_SHAPES", "SPLITS", "DEFAULT_SIZES", "IMAGE_SIZE", "SIZE_RANGE", "SyntheticDetection",
           "make_instances"]

DETECTION_SHAPES = ("rectangle", "ellipse", "triangle", "cross")
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 512, "val": 64, "test": 64}
IMAGE_SIZE = 96  # side of the square images
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48))

# An object's extent is log-uniform in this fraction of the image side, so small, medium and large objects
# (relative to the image) all occur. The lower end keeps the smallest object about two cells of a stride-8 map,
# the finest level of the usual detector pyramids, at the default image size.
SIZE_RANGE = (0.12, 0.6)
# How busy the background is (blotches, stripes, grain), 1 the fullest; see _background.
CLUTTER = 1.0
_MIN_VISIBLE = 0.6  # a placement that would hide more than 40% of an earlier object is drawn again
_PLACEMENT_TRIES = 8
_SUBPIXEL = 2  # OpenCV's fractional bits: vertices at 1/4 pixel, so small shapes keep their outline


def _background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> np.ndarray:
    """A float32 RGB texture: colour gradient + low-frequency blotches + stripes + grain, busy at every scale;
    ``clutter`` scales the blotches, stripes and grain (0: a plain gradient)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    img = c0 + (c1 - c0) * ramp
    grid = int(rng.integers(3, 9))
    img += clutter * cv2.resize(rng.normal(0, rng.uniform(5, 20), (grid, grid, 3)).astype(np.float32),
                                (size, size), interpolation=cv2.INTER_CUBIC)
    freq, phase, theta = rng.uniform(8, 20), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    img += clutter * rng.uniform(10, 30) * stripes[..., None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(clutter * rng.uniform(6, 14))
    return img


def _rotate(pts: np.ndarray, theta: float) -> np.ndarray:
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], np.float32)
    return pts @ rot.T


def _draw_shape(rng: np.random.Generator, kind: str, cx: float, cy: float, extent: float, size: int) -> np.ndarray:
    """The ``(size, size)`` bool mask of one shape about ``extent`` pixels across, centred at ``(cx, cy)``."""
    region = np.zeros((size, size), np.uint8)
    scale = 1 << _SUBPIXEL
    half = extent / 2
    if kind == "ellipse":
        axes = (half, half * rng.uniform(0.5, 1.0))
        cv2.ellipse(region, (int(cx * scale), int(cy * scale)), (int(axes[0] * scale), int(axes[1] * scale)),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1, cv2.LINE_8, _SUBPIXEL)
        return region.astype(bool)
    if kind == "rectangle":
        # Nearly upright, so that a rotated rectangle is not a diamond; never square-on-a-corner.
        aspect = rng.uniform(0.45, 1.0)
        w, h = (1.0, aspect) if rng.random() < 0.5 else (aspect, 1.0)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float32)
        pts = _rotate(pts, rng.uniform(-0.25, 0.25))
    elif kind == "triangle":
        a = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.2, 0.2, 3)
        pts = _rotate(np.stack([np.cos(a), -np.sin(a)], 1).astype(np.float32), rng.uniform(0, 2 * np.pi))
    else:  # cross: a plus sign with arms a third as wide as it is long
        t = 1 / 3
        pts = np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                        [-1, -t], [-t, -t]], np.float32)
        pts = _rotate(pts, rng.uniform(-0.35, 0.35))
    poly = np.round((pts * half + np.array([cx, cy], np.float32)) * scale).astype(np.int32)
    cv2.fillPoly(region, [poly], 1, cv2.LINE_8, _SUBPIXEL)
    return region.astype(bool)


def make_instances(seed: int, split: str, index: int, *, size: int = IMAGE_SIZE, max_objects: int = 5,
                   size_range: Tuple[float, float] = SIZE_RANGE, clutter: float = CLUTTER
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image and its objects, a pure function of ``(seed, split, index)``.

    Returns:
        ``image`` (size, size, 3) uint8 RGB, ``masks`` (K, size, size) bool of each object's visible pixels
        (disjoint, none empty, K >= 1) and ``labels`` (K,) int64 in ``1..len(DETECTION_SHAPES)``.
    """
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {', '.join(SPLITS)}, got {split!r}")
    # 10 + split: streams apart from the segmentation set's (which seeds (seed, split, index) with split 0..2)
    rng = np.random.default_rng([seed, 10 + SPLITS[split], index])
    img = _background(rng, size, clutter)
    owner = np.full((size, size), -1, np.int16)  # which object each pixel shows, -1 for background
    full_areas: List[int] = []
    labels: List[int] = []
    lo, hi = np.log(size_range[0] * size), np.log(size_range[1] * size)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(1, len(DETECTION_SHAPES) + 1))
        for _ in range(_PLACEMENT_TRIES):
            extent = float(np.exp(rng.uniform(lo, hi)))
            cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
            region = _draw_shape(rng, DETECTION_SHAPES[label - 1], cx, cy, extent, size)
            k = len(labels)
            trial = np.where(region, k, owner)
            visible = np.bincount(trial.ravel() + 1, minlength=k + 2)[1:k + 1]
            if region.sum() >= 16 and all(visible[j] >= _MIN_VISIBLE * full_areas[j] for j in range(k)):
                break
        else:
            continue  # no placement keeps the others visible enough: this image has one object fewer
        inside = region
        # A colour far from what lies under the shape, so its outline always shows.
        local = img[inside].mean(0)
        for _ in range(10):
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            if np.linalg.norm(colour - local) > 90:
                break
        texture = cv2.resize(rng.normal(0, 10, (4, 4, 3)).astype(np.float32), (size, size))
        img[inside] = colour + texture[inside]
        owner = trial
        full_areas.append(int(inside.sum()))
        labels.append(label)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 5))
    image = np.clip(img, 0, 255).astype(np.uint8)
    masks = owner[None] == np.arange(len(labels), dtype=np.int16)[:, None, None]
    return image, masks, np.array(labels, np.int64)


def masks_to_target(masks: np.ndarray, labels: np.ndarray) -> Target:
    """Tight xyxy boxes (pixel edges: a mask spanning columns 3..7 gives x0 = 3, x1 = 8, as pycocotools'
    ``toBbox``) and visible-pixel areas of ``(K, H, W)`` bool masks."""
    if not len(masks):
        return empty_target()
    rows, cols = masks.any(2), masks.any(1)
    y0, y1 = rows.argmax(1), rows.shape[1] - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), cols.shape[1] - cols[:, ::-1].argmax(1)
    return {"boxes": np.stack([x0, y0, x1, y1], 1).astype(np.float32), "labels": labels.astype(np.int64),
            "iscrowd": np.zeros(len(labels), np.uint8), "area": masks.sum((1, 2)).astype(np.float32)}


class SyntheticDetection(DetectionDataset):
    """Rectangles, ellipses, triangles and crosses over textured backgrounds, generated from ``seed``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each is drawn from its own seed stream.
        num_images: images in the split (default 512 for train, 64 otherwise).
        image_size: side of the square images.
        max_objects: each image holds 1 to ``max_objects`` objects.
        size_range: an object's extent is log-uniform in this fraction of ``image_size``.
        clutter: how busy the background is, in [0, 1] (0: a plain colour gradient with faint grain).
        seed: the data seed; the same seed gives the same images everywhere.
        keep_empty: accepted for the common builder signature; every synthetic image holds an object.

    ``load(i)`` returns an ``(image_size, image_size, 3)`` uint8 RGB image and its target (no crowd boxes).
    """

    def __init__(self, *, split: str = "train", num_images: Optional[int] = None, image_size: int = IMAGE_SIZE,
                 max_objects: int = 5, size_range: Tuple[float, float] = SIZE_RANGE, clutter: float = CLUTTER,
                 seed: int = 0, transform: Optional[DetectionTransform] = None, keep_empty: bool = True) -> None:
        super().__init__(classes=DETECTION_SHAPES, transform=transform, palette=PALETTE,
                         name=f"synthetic-det/{split}")
        del keep_empty
        if split not in SPLITS:
            raise ValueError(f"synthetic split must be one of {', '.join(SPLITS)}, got {split!r}")
        num_images = DEFAULT_SIZES[split] if num_images is None else num_images
        for key, value, low in (("num_images", num_images, 1), ("image_size", image_size, 32),
                                ("max_objects", max_objects, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"synthetic {key} must be an int >= {low}, got {value!r}")
        lo, hi = size_range
        if not 0 < lo <= hi <= 1 or lo * image_size < 4:
            raise ValueError(f"synthetic size_range must be (min, max) fractions of the image side with "
                             f"0 < min <= max <= 1 and min * image_size >= 4 pixels, got {tuple(size_range)}")
        self.split, self.num_images, self.size, self.max_objects, self.seed = (
            split, num_images, image_size, max_objects, seed)
        self.size_range = (float(lo), float(hi))
        if isinstance(clutter, bool) or not isinstance(clutter, (int, float)) or not 0 <= clutter <= 1:
            raise ValueError(f"synthetic clutter must be a number in [0, 1], got {clutter!r}")
        self.clutter = float(clutter)

    def __len__(self) -> int:
        return self.num_images

    def _check(self, index: int) -> None:
        if not 0 <= index < self.num_images:
            raise IndexError(f"{self.name} index {index} out of range for {self.num_images} samples")

    def load_instances(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8, masks (K, H, W) bool visible pixels, labels (K,) int64 1..C)``."""
        self._check(index)
        return make_instances(self.seed, self.split, index, size=self.size, max_objects=self.max_objects,
                              size_range=self.size_range, clutter=self.clutter)

    def load(self, index: int) -> Tuple[np.ndarray, Target]:
        image, masks, labels = self.load_instances(index)
        return image, masks_to_target(masks, labels)

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}] (seed {self.seed})"

    def file_name(self, index: int) -> str:
        return f"{self.split}/{index:06d}.png"

    def image_size(self, index: int) -> Tuple[int, int]:
        self._check(index)
        return self.size, self.size


def synthetic_detection(*, root: Union[str, None] = None, split: str = "train",
                        transform: Optional[DetectionTransform] = None, keep_empty: bool = True,
                        num_images: Optional[int] = None, image_size: int = IMAGE_SIZE, max_objects: int = 5,
                        size_range: Tuple[float, float] = SIZE_RANGE, clutter: float = CLUTTER, seed: int = 0
                        ) -> SyntheticDetection:
    """The built-in shapes set (:class:`SyntheticDetection`); ``root`` is ignored: nothing is read from disk."""
    del root
    return SyntheticDetection(split=split, num_images=num_images, image_size=image_size, max_objects=max_objects,
                              size_range=size_range, clutter=clutter, seed=seed, transform=transform,
                              keep_empty=keep_empty)
