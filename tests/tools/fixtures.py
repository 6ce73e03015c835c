"""Builders of tiny on-disk datasets in each supported layout, and of fast training command lines.

Every image's mask is derivable from its pixels: pixel colour ``COLOURS[k]`` means raw label ``k``, so a test
can check both the reader and any geometric transform without trusting either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

# Well-separated RGB colours, one per raw label used by the fixtures.
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                    [0, 255, 255], [255, 255, 255]], np.uint8)


def blocks(height: int, width: int, labels: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """An ``(H, W)`` label map of axis-aligned blocks drawn from ``labels`` (asymmetric, so flips show)."""
    rng = np.random.default_rng(seed)
    mask = np.full((height, width), labels[0], np.uint8)
    for k, label in enumerate(labels[1:]):
        h, w = rng.integers(height // 4, height // 2), rng.integers(width // 4, width // 2)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        mask[top:top + h, left:left + w] = label
    mask[: height // 6, : width // 3] = labels[-1]  # a fixed corner block breaks any left/right symmetry
    return mask


def write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    return path


def write_mask(path: Path, mask: np.ndarray, *, palette: bool = False) -> Path:
    """Single-channel PNG, or a palette PNG whose indices are the labels (Pascal VOC's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask, mode="L")
    if palette:
        im = im.convert("P")
        pal = np.zeros((256, 3), np.uint8)
        pal[: len(COLOURS)] = COLOURS
        pal[255] = (224, 224, 192)
        im.putpalette(pal.reshape(-1).tolist())
    im.save(path)
    return path


def pair(raw_labels: Sequence[int], size: Tuple[int, int] = (40, 56), seed: int = 0
         ) -> Tuple[np.ndarray, np.ndarray]:
    """An image coloured by ``COLOURS[index in raw_labels]`` and its raw label mask."""
    index = blocks(*size, list(range(len(raw_labels))), seed=seed)
    return COLOURS[index], np.asarray(raw_labels, np.uint8)[index]


def write_voc(root: Path, splits: Dict[str, int] = {"train": 3, "val": 2}) -> Path:
    """``root/VOCdevkit/VOC2012`` with palette masks holding labels 0, 15 (person) and 255 (outline)."""
    base = root / "VOCdevkit" / "VOC2012"
    n = 0
    for split, count in splits.items():
        ids = []
        for _ in range(count):
            image, mask = pair([0, 15, 255], seed=n)
            write_image(base / "JPEGImages" / f"2007_{n:06d}.jpg", image)
            write_mask(base / "SegmentationClass" / f"2007_{n:06d}.png", mask, palette=True)
            ids.append(f"2007_{n:06d}")
            n += 1
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_cityscapes(root: Path, splits: Dict[str, int] = {"train": 2, "val": 1}) -> Path:
    """``leftImg8bit`` PNGs and ``gtFine`` labelIds with ids 7 (road), 26 (car), 0 (unlabeled), 9 (parking)."""
    n = 0
    for split, count in splits.items():
        for _ in range(count):
            image, mask = pair([7, 26, 0, 9], seed=n)
            stem = f"aachen_{n:06d}_000019"
            write_image(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", image)
            write_mask(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", mask)
            n += 1
    return root


def write_ade20k(root: Path, splits: Dict[str, int] = {"training": 2, "validation": 1}) -> Path:
    """``ADEChallengeData2016`` with raw labels 0 (other), 1 (wall), 150 (flag)."""
    base = root / "ADEChallengeData2016"
    n = 0
    for split, count in splits.items():
        for _ in range(count):
            image, mask = pair([0, 1, 150], seed=n)
            write_image(base / "images" / split / f"ADE_{split[:5]}_{n:08d}.jpg", image)
            write_mask(base / "annotations" / split / f"ADE_{split[:5]}_{n:08d}.png", mask)
            n += 1
    return root


def write_folder(root: Path, *, layout: str = "subdirs", count: int = 4, classes: Sequence[str] = ("bg", "a", "b"),
                 write_classes: bool = True, size: Tuple[int, int] = (40, 56)) -> Path:
    """A generic folder: ``layout`` "subdirs" (images/train, images/val), "lists" (train.txt) or "flat"."""
    labels = list(range(len(classes))) + [255]
    stems: List[str] = []
    for n in range(count):
        split = "train" if n < count - max(1, count // 4) else "val"
        sub = split if layout == "subdirs" else ""
        image, mask = pair(labels, size=size, seed=n)
        write_image(root / "images" / sub / f"img{n:03d}.jpg", image)
        write_mask(root / "masks" / sub / f"img{n:03d}.png", mask)
        stems.append((split, f"img{n:03d}"))
    if layout == "lists":
        for split in ("train", "val"):
            (root / f"{split}.txt").write_text("\n".join(s for sp, s in stems if sp == split) + "\n")
    if write_classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def tiny_run_args(out_dir: Path, name: str, *extra: str, iters: Optional[int] = 4) -> List[str]:
    """Command line of a fast training run: 8 synthetic 64x64 images per split, resnet18 + BiSeNet (the default
    model), 64x64 crops, batch 4 (so 2 iterations per epoch), fp32 (``--amp auto`` would pick bf16 on some
    machines only, and tests must not depend on the machine) and no TensorBoard. Later flags in ``extra``
    override earlier ones."""
    return ["--output-dir", str(out_dir), "--name", name, "--data-kwargs", "{num_images: 8, image_size: 64}",
            "--crop-size", "64", "--batch-size", "4", "--val-batch-size", "4", "--warmup-iters", "1",
            "--workers", "0", "--log-interval", "1", "--num-vis", "1", "--device", "cpu", "--no-progress",
            "--amp", "none", "--no-tensorboard", *(["--iters", str(iters)] if iters is not None else []), *extra]


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny models on one intra-op thread, restoring the setting afterwards.

    On a machine whose cores are busy, OpenMP's threads wait on one another and a 64x64 training step gets
    several times slower than on one thread; models this small gain nothing from a second thread anyway.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env(repo: Path) -> Dict[str, str]:
    """Environment for running the tools in a child process: the repository importable, one thread."""
    import os

    return {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}
