"""Joint image + mask augmentation built on ``torchvision.transforms.v2``.

Wrapping the mask as a ``tv_tensors.Mask`` makes every geometric transform move it together with the image and
resize it with nearest-neighbour interpolation (so no new label values appear), pad it with the fill given for
masks (255, ignored by the loss), and leaves it untouched by photometric transforms.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RandomScale", "SegTransform", "train_transform", "eval_transform",
           "normalize"]

# The ImageNet statistics the backbones' pretrained weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IGNORE_INDEX = 255


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range``, relative to the input's own size.

    (``v2.ScaleJitter`` scales relative to a fixed target size instead, which suits datasets of one image
    size only.) Images are resized bilinearly with antialiasing, masks with nearest neighbour.
    """

    def __init__(self, scale_range: Tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {tuple(scale_range)}")
        self.scale_range = (float(lo), float(hi))

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        height, width = F.get_size(image)
        lo, hi = self.scale_range
        scale = lo + float(torch.rand(())) * (hi - lo)
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=True)


class SegTransform:
    """Apply a v2 pipeline to an ``(image, mask)`` pair and return plain tensors.

    Call with ``image`` ``(3, H, W)`` uint8 and ``mask`` ``(H, W)`` uint8; returns ``image`` ``(3, h, w)``
    float32 normalized with the ImageNet statistics and ``mask`` ``(h, w)`` int64.
    """

    def __init__(self, steps: Sequence[Any]) -> None:
        self.pipeline = v2.Compose([
            *steps,
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                       scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out_image, out_mask = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"SegTransform({self.pipeline})"


def _pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"crop_size must be a positive int or (height, width), got {size!r}")
    return pair


def train_transform(*, crop_size: Union[int, Sequence[int]] = 512, scale_range: Tuple[float, float] = (0.5, 2.0),
                    hflip: bool = True, color_jitter: float = 0.2) -> SegTransform:
    """Random scale -> random crop (padding image 0, mask 255) -> horizontal flip -> colour jitter.

    Args:
        crop_size: output ``(height, width)``, or one int for a square.
        scale_range: resize factors relative to the input image.
        hflip: flip left-right with probability 0.5.
        color_jitter: strength of brightness, contrast and saturation jitter; 0 disables.

    Returns a :class:`SegTransform` producing ``(3, *crop_size)`` images and ``crop_size`` masks.
    """
    if not 0 <= color_jitter <= 1:
        raise ValueError(f"color_jitter must be in [0, 1], got {color_jitter!r}")
    steps: List[Any] = [
        RandomScale(scale_range),
        v2.RandomCrop(_pair(crop_size), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        # No hue jitter: torchvision's hue shift costs ~100 ms per 128x128 image on CPU, 30x the rest.
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return SegTransform(steps)


def eval_transform() -> SegTransform:
    """Normalization only: evaluation sees whole images at their own size."""
    return SegTransform([])


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` uint8 RGB -> float32 normalized with the ImageNet statistics."""
    return F.normalize(image.float().div(255), IMAGENET_MEAN, IMAGENET_STD)
