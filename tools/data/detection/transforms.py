"""Box-aware augmentation built on ``torchvision.transforms.v2``.

Wrapping the boxes as ``tv_tensors.BoundingBoxes`` makes every geometric transform move them with the image;
``ClampBoundingBoxes`` + ``SanitizeBoundingBoxes`` then cut them to the canvas and drop those left without area,
together with their labels. Images leave as float32 in [0, 1], *not* normalized: torchvision's detectors
normalize (and resize) inside the model.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["RandomZoom", "DetectionPipeline", "det_train_transform", "det_eval_transform"]


class RandomZoom(v2.Transform):
    """Scale the content by a factor drawn from ``scale_range`` and crop or pad back to the input's own size.

    Why not ``v2.RandomShortestSize`` or a plain relative resize: torchvision's detectors resize every image to
    their own ``min_size`` first, which undoes any change of the image size. Only the size of objects relative
    to the canvas reaches the model, so this zooms (in: a random crop of the enlarged image; out: the shrunk
    image at a random place on a zero canvas), the large-scale-jitter idea of ``v2.ScaleJitter`` +
    ``FixedSizeCrop`` taken relative to each image's size so that images of any size and aspect ratio keep
    both (and aspect-ratio grouping stays valid).
    """

    def __init__(self, scale_range: Tuple[float, float] = (0.75, 1.33)) -> None:
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {tuple(scale_range)}")
        self.scale_range = (float(lo), float(hi))

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = F.get_size(next(x for x in flat_inputs if isinstance(x, tv_tensors.Image)))
        lo, hi = self.scale_range
        scale = lo + float(torch.rand(())) * (hi - lo)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        # Crop offsets for a zoom in (>= 0), pad offsets for a zoom out (negative: F.crop pads with zeros).
        top = int(torch.randint(0, abs(new_h - height) + 1, ()))
        left = int(torch.randint(0, abs(new_w - width) + 1, ()))
        return {"size": [new_h, new_w], "top": top if new_h >= height else -top,
                "left": left if new_w >= width else -left, "height": height, "width": width}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        out = self._call_kernel(F.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR,
                                antialias=True)
        return self._call_kernel(F.crop, out, top=params["top"], left=params["left"], height=params["height"],
                                 width=params["width"])


class DetectionPipeline:
    """Apply a v2 pipeline to ``(image, boxes, labels)`` and return plain tensors.

    Call with ``image`` ``(3, H, W)`` uint8, ``boxes`` ``(K, 4)`` float32 xyxy pixels and ``labels`` ``(K,)``
    int64; returns ``image`` ``(3, h, w)`` float32 in [0, 1], ``boxes`` ``(k, 4)`` float32 and ``labels``
    ``(k,)`` int64, ``k <= K`` (boxes left without area are dropped with their labels).
    """

    def __init__(self, steps: Sequence[Any]) -> None:
        self.pipeline = v2.Compose([
            *steps,
            v2.ClampBoundingBoxes(),
            # min_size 1 px: the degenerate slivers a crop leaves carry no object to detect.
            v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0, labels_getter="default"),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        ])

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        canvas = (int(image.shape[-2]), int(image.shape[-1]))
        target = {"boxes": tv_tensors.BoundingBoxes(boxes.float().reshape(-1, 4), format="XYXY", canvas_size=canvas),
                  "labels": labels}
        out_image, out_target = self.pipeline(tv_tensors.Image(image), target)
        return (out_image.as_subclass(torch.Tensor), out_target["boxes"].as_subclass(torch.Tensor).float(),
                out_target["labels"])

    def __repr__(self) -> str:
        return f"DetectionPipeline({self.pipeline})"


def det_train_transform(*, hflip: bool = True, scale_range: Tuple[float, float] = (0.75, 1.33),
                        color_jitter: float = 0.0) -> DetectionPipeline:
    """Random zoom (:class:`RandomZoom`) -> horizontal flip -> optional colour jitter, boxes following.

    Args:
        hflip: flip left-right with probability 0.5.
        scale_range: zoom factors relative to the input image; ``(1, 1)`` disables the zoom.
        color_jitter: strength of brightness, contrast and saturation jitter; 0 (the default, as torchvision's
            detection recipes) disables it.

    Returns a :class:`DetectionPipeline`: the output image keeps the input's ``(H, W)``.
    """
    if not 0 <= color_jitter <= 1:
        raise ValueError(f"color_jitter must be in [0, 1], got {color_jitter!r}")
    steps: List[Any] = []
    if tuple(scale_range) != (1.0, 1.0):
        steps.append(RandomZoom(scale_range))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        # No hue jitter: torchvision's hue shift is by far the slowest step on CPU (see transforms.py).
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return DetectionPipeline(steps)


def det_eval_transform() -> DetectionPipeline:
    """Conversion to float only: no geometric change, the detector resizes the image itself."""
    return DetectionPipeline([])
