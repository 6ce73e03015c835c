"""Inference for evaluation and prediction: whole image or sliding window, multi-scale and flip, and the
evaluation loop that scores a model on a loader.

A model is any callable from a normalized float32 ``(N, 3, H, W)`` batch to logits ``(N, K, H, W)``: an
``nn.Module``, or an engine of :func:`tools.runtime.runners.load_runner` (ONNX Runtime, OpenVINO), so an exported
file is scored by exactly the code that scores the checkpoint. ``amp`` and ``channels_last`` apply to modules.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...engine.cli import add_list_argument
from .metrics import ConfusionMatrix
from ...engine.precision import AMP_MODES, autocast

__all__ = ["MODES", "add_inference_args", "inference_options", "slide_logits", "predict_probs", "evaluate"]

MODES = ("whole", "slide")

Model = Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]]


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """The inference flags of ``tools.eval_seg`` and ``tools.predict``."""
    p.add_argument("--mode", default="whole", choices=MODES, help="whole image, or sliding window")
    add_list_argument(p, "--crop-size", kind=int, length=(1, 2),
                      help="sliding window: S or H W; unset: the training crop")
    add_list_argument(p, "--stride", kind=int, length=(1, 2), help="sliding window step: S or H W; unset: 2/3 of "
                                                                    "the crop")
    add_list_argument(p, "--scales", kind=float, default=[1.0], help="e.g. 0.75,1.0,1.25 (or 0.75 1.0 1.25)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="also score mirrored")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="none", choices=AMP_MODES)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)


def _pair(values: Optional[Sequence[int]], what: str) -> Optional[Tuple[int, int]]:
    if values is None:
        return None
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"--{what} takes one or two positive ints (H W), got {list(values)}")
    return (values[0], values[-1])


def inference_options(args: Mapping[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of :func:`predict_probs` from the parsed inference flags and a run's ``config``."""
    crop = _pair(args.get("crop_size"), "crop-size")
    stride = _pair(args.get("stride"), "stride")
    if args["mode"] == "slide":
        crop = crop or _pair(list(config.get("crop_size") or [512]), "crop-size")
        stride = stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    return {"mode": args["mode"], "crop_size": crop, "stride": stride, "scales": tuple(args["scales"]),
            "flip": args["flip"], "amp": args["amp"], "channels_last": args["channels_last"]}


def _logits(model: Model, images: torch.Tensor, amp: str, channels_last: bool) -> torch.Tensor:
    if not isinstance(model, nn.Module):
        if amp != "none" or channels_last:
            raise ValueError(f"amp and channels_last apply to torch modules, not to {model!r}")
        return model(images).float()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, amp):
        return model(images).float()


def slide_logits(model: Model, images: torch.Tensor, *, crop_size: Tuple[int, int],
                 stride: Tuple[int, int], amp: str = "none", channels_last: bool = False) -> torch.Tensor:
    """Logits of ``images`` ``(N, 3, H, W)`` averaged over overlapping ``crop_size`` windows.

    Windows start every ``stride`` pixels and the last one in each direction is aligned to the border, so
    every pixel is covered. An image smaller than a window is zero-padded (bottom, right) to the window
    size and the padding cropped off afterwards. Returns ``(N, K, H, W)``.
    """
    (ch, cw), (sh, sw) = crop_size, stride
    if min(ch, cw, sh, sw) < 1:
        raise ValueError(f"crop_size and stride must be positive, got {crop_size} and {stride}")
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, max(cw - width, 0), 0, max(ch - height, 0)))
    ph, pw = padded.shape[-2:]
    tops = list(range(0, ph - ch, sh)) + [ph - ch]
    lefts = list(range(0, pw - cw, sw)) + [pw - cw]
    total: Optional[torch.Tensor] = None
    count = padded.new_zeros((1, 1, ph, pw))
    for top in tops:
        for left in lefts:
            window = padded[..., top:top + ch, left:left + cw]
            out = _logits(model, window, amp, channels_last)
            if total is None:
                total = out.new_zeros((out.shape[0], out.shape[1], ph, pw))
            total[..., top:top + ch, left:left + cw] += out
            count[..., top:top + ch, left:left + cw] += 1
    assert total is not None and bool((count > 0).all())
    return (total / count)[..., :height, :width]


def predict_probs(model: Model, images: torch.Tensor, *, mode: str = "whole",
                  crop_size: Optional[Tuple[int, int]] = None, stride: Optional[Tuple[int, int]] = None,
                  scales: Sequence[float] = (1.0,), flip: bool = False, amp: str = "none",
                  channels_last: bool = False) -> torch.Tensor:
    """Class probabilities ``(N, K, H, W)`` for normalized ``images`` ``(N, 3, H, W)``.

    Each scale resizes the image (bilinear), runs whole-image or sliding-window inference, and resizes the
    logits back to ``H x W``; with ``flip`` the mirrored image is scored too. The softmax probabilities of all
    passes are averaged. ``model`` (a module in eval mode, or an engine) is called on batches of the same
    ``N`` at the scaled or window size.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("mode 'slide' needs crop_size and stride")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    height, width = images.shape[-2:]
    probs: Optional[torch.Tensor] = None
    passes = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                                       align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            x = scaled.flip(-1) if mirrored else scaled
            if mode == "slide":
                logits = slide_logits(model, x, crop_size=crop_size, stride=stride, amp=amp,
                                      channels_last=channels_last)
            else:
                logits = _logits(model, x, amp, channels_last)
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            probs = p if probs is None else probs + p
            passes += 1
    assert probs is not None
    return probs / passes


@torch.no_grad()
def evaluate(model: Model, loader: torch.utils.data.DataLoader, *, num_classes: int, device: torch.device,
             progress: bool = False, **inference: object) -> ConfusionMatrix:
    """Score ``model`` on every batch of ``loader``; the confusion matrix is summed over all processes.

    ``inference`` holds :func:`predict_probs`' options (mode, crop_size, stride, scales, flip, amp,
    channels_last). A module is put in eval mode and restored to its previous mode afterwards.
    """
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    try:
        for images, masks in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
            images = images.to(device, non_blocking=True)
            probs = predict_probs(model, images, **inference)
            cm.update(probs.argmax(1), masks.to(device, non_blocking=True))
    finally:
        if module is not None:
            module.train(was_training)
    cm.all_reduce()
    return cm
