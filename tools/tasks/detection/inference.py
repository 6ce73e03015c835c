"""Detection inference for evaluation, prediction and the training engine: a detector (or a runner of an
exported one) on a list of images, and the evaluation loop that feeds a :class:`CocoEvaluator`."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ...engine.precision import autocast
from .evaluation import CocoEvaluator

__all__ = ["Images", "Targets", "image_tensor", "detect", "run_evaluation"]

Images = List[torch.Tensor]
Targets = List[Dict[str, Any]]


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 in [0, 1], what torchvision's detectors take."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)


@torch.no_grad()
def detect(model: Any, images: Images, *, amp: str = "none") -> List[Dict[str, torch.Tensor]]:
    """The detections of ``model`` (an eval-mode detector, or a runner of an exported one) on ``images``
    (``(3, H, W)`` float in [0, 1] each): one ``{"boxes" (K, 4) xyxy in the image's pixels, "scores",
    "labels" (K,) in 1..C}`` per image, on the CPU.

    torchvision's one-stage detectors (RetinaNet, FCOS) score the background index 0 like a class; it is never
    a training target, and a detection labelled 0 is no object, so those are left out.
    """
    if isinstance(model, nn.Module):
        with autocast(images[0].device, amp):
            outputs = model(images)
    else:
        outputs = model(images)
    found = []
    for out in outputs:
        keep = out["labels"] > 0
        found.append({k: (v[keep].detach().cpu().float() if k != "labels" else v[keep].detach().cpu())
                      for k, v in out.items()})
    return found


def run_evaluation(model: Any, loader: torch.utils.data.DataLoader, evaluator: CocoEvaluator, *,
                   device: torch.device, amp: str = "none", progress: bool = False) -> None:
    """Detect every image of ``loader`` (this process's share) into ``evaluator``, then merge the processes'
    detections. A module is put in eval mode and restored to its previous mode afterwards."""
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
            outputs = detect(model, [image.to(device) for image in images], amp=amp)
            evaluator.update([t["image_id"] for t in targets], outputs)
    finally:
        if module is not None:
            module.train(was_training)
    evaluator.synchronize()
