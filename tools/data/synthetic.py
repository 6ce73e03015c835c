"""A built-in segmentation set of coloured shapes on textured, noisy backgrounds, generated from a seed.

Every image is drawn from its own ``numpy`` generator seeded by ``(seed, split, index)``, so a set is identical
on every machine, in every process and whatever order its images are asked for. Colours are random for every
shape and background, so only the *shape* decides the class; a thin band along every shape outline is labelled
255 (ignore), as in Pascal VOC, because anti-aliased edge pixels belong to no single class.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import cv2
import numpy as np

from .base import SegmentationDataset, Transform

__all__ = ["SHAPE_CLASSES", "SPLITS", "SyntheticShapes", "make_sample", "make_split"]

SHAPE_CLASSES = ("background", "circle", "square", "triangle", "cross")
SPLITS = {"train": 0, "val": 1, "test": 2}

_IGNORE = 255
_EDGE = 2  # thickness in pixels of the ignore band drawn along every outline


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 RGB texture: colour gradient + low-frequency blotches + stripes + grain.

    The background is busy at every scale while shapes are flat, so "is this pixel part of a shape" is
    answerable from a small neighbourhood; which shape it is needs the whole outline.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 + (c1 - c0) * ramp
    grid = int(rng.integers(3, 9))
    blotches = rng.normal(0, rng.uniform(5, 20), (grid, grid, 3)).astype(np.float32)
    img += cv2.resize(blotches, (size, size), interpolation=cv2.INTER_CUBIC)
    freq, phase, theta = rng.uniform(8, 20), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    img += rng.uniform(15, 40) * stripes[..., None]
    img += rng.normal(0, rng.uniform(10, 20), img.shape)
    return img.astype(np.float32)


def _shape_polygon(rng: np.random.Generator, cls: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Vertices (k, 2) of a square, triangle or cross of "radius" ``r``, randomly rotated."""
    if cls == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * 0.8
    elif cls == "triangle":
        a = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3
        pts = np.stack([np.cos(a), -np.sin(a)], 1).astype(np.float32)
    else:  # cross: a plus sign with arms a third as wide as it is long
        t = 1 / 3
        pts = np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t],
                        [-1, t], [-1, -t], [-t, -t]], np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], np.float32)
    return pts @ rot.T * r + np.array([cx, cy], np.float32)


def make_sample(seed: int, split: str, index: int, *, size: int = 128, max_shapes: int = 6
                ) -> Tuple[np.ndarray, np.ndarray]:
    """One image and its mask, a pure function of ``(seed, split, index)``.

    Returns:
        ``image`` (size, size, 3) uint8 RGB and ``mask`` (size, size) uint8 holding class indices into
        :data:`SHAPE_CLASSES` or 255 on the outline bands.
    """
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    img = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    # Drawing at 4x sub-pixel precision gives smooth outlines at small sizes.
    shift, scale = 2, 4
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls_id = int(rng.integers(1, len(SHAPE_CLASSES)))
        r = rng.uniform(0.12, 0.3) * size
        cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
        region = np.zeros((size, size), np.uint8)
        if SHAPE_CLASSES[cls_id] == "circle":
            centre = (int(cx * scale), int(cy * scale))
            cv2.circle(region, centre, int(r * 0.9 * scale), 1, -1, cv2.LINE_8, shift)
            outline = np.zeros_like(region)
            cv2.circle(outline, centre, int(r * 0.9 * scale), 1, _EDGE, cv2.LINE_8, shift)
        else:
            poly = np.round(_shape_polygon(rng, SHAPE_CLASSES[cls_id], cx, cy, r) * scale).astype(np.int32)
            cv2.fillPoly(region, [poly], 1, cv2.LINE_8, shift)
            outline = np.zeros_like(region)
            cv2.polylines(outline, [poly], True, 1, _EDGE, cv2.LINE_8, shift)
        # A shape of its own random colour with a faint texture, so colour never identifies the class.
        inside = region.astype(bool)
        # Redraw colours too close to the background under the shape: the outline must be visible.
        local = img[inside].mean(0) if inside.any() else np.zeros(3, np.float32)
        for _ in range(10):
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            if np.linalg.norm(colour - local) > 80:
                break
        texture = cv2.resize(rng.normal(0, 12, (4, 4, 3)).astype(np.float32), (size, size))
        img[inside] = colour + texture[inside]
        mask[inside] = cls_id
        mask[outline.astype(bool)] = _IGNORE
    img += rng.normal(0, rng.uniform(2, 6), img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.1, 0.8))
    return np.clip(img, 0, 255).astype(np.uint8), mask


@functools.lru_cache(maxsize=8)
def make_split(seed: int, split: str, num_images: int, size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """All images of a split, cached: ``images`` (n, size, size, 3) uint8 and ``masks`` (n, size, size) uint8.

    The arrays are read-only, because the cache hands the same ones to every caller.
    """
    samples = [make_sample(seed, split, i, size=size) for i in range(num_images)]
    images = np.stack([s[0] for s in samples]) if samples else np.zeros((0, size, size, 3), np.uint8)
    masks = np.stack([s[1] for s in samples]) if samples else np.zeros((0, size, size), np.uint8)
    images.flags.writeable = False
    masks.flags.writeable = False
    return images, masks

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
