"""Reading images and label masks from disk, refusing damaged files with a message naming them.

Images are decoded by OpenCV. Masks are read by Pillow because OpenCV expands palette PNGs (Pascal VOC's
labels) into colours, losing the class indices that Pillow keeps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "read_image", "read_mask", "list_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_PNG_END = b"IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"

PathLike = Union[str, os.PathLike]


def _check_complete(path: Path, data: bytes) -> None:
    """Raise if a JPEG or PNG file is cut short: decoders would silently return a partly grey image."""
    if not data:
        raise ValueError(f"image file {str(path)!r} is empty")
    if data[:2] == b"\xff\xd8" and _JPEG_EOI not in data[-1024:]:
        # Entropy-coded JPEG data never contains FF D9 except as the end-of-image marker.
        raise ValueError(f"image file {str(path)!r} is truncated: the JPEG end-of-image marker is missing")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and _PNG_END not in data[-64:]:
        raise ValueError(f"image file {str(path)!r} is truncated: the PNG IEND chunk is missing")


def read_image(path: PathLike) -> np.ndarray:
    """Decode an image file into an ``(H, W, 3)`` uint8 RGB array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, truncated or not an image OpenCV can decode.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {str(path)!r}") from None
    _check_complete(path, data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image file {str(path)!r}: not an image format OpenCV reads, or corrupt")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: PathLike) -> np.ndarray:
    """Read a label mask into an ``(H, W)`` uint8 array of raw label values.

    Accepts single-channel 8-bit PNGs and palette PNGs (the palette index is the label).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is damaged, has colour channels, or holds values above 255.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {str(path)!r}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            mask = np.array(im)
    except OSError as e:  # Pillow raises OSError for truncated and unidentifiable files
        raise ValueError(f"cannot read mask file {str(path)!r}: {e}") from e
    if mask.ndim != 2:
        raise ValueError(
            f"mask file {str(path)!r} has mode {mode} with {mask.shape[-1]} channels; expected a single-channel "
            f"or palette PNG whose pixel values are class indices"
        )
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(
                f"mask file {str(path)!r} holds values from {mask.min()} to {mask.max()}; expected class indices "
                f"0..254 and 255 for ignore"
            )
        mask = mask.astype(np.uint8)
    return mask


def list_images(folder: Path) -> list:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
