"""Segmentation loss: pixel cross-entropy ignoring 255, optional OHEM, optional soft Dice term, optional
auxiliary head.

The cross-entropy is a mean over the pixels of the *global* batch: each process sums its pixel losses and divides
by the average pixel count over processes. The Dice term is computed from the global batch's per-class sums (a
differentiable all-reduce). DistributedDataParallel averages gradients, so a run on ``W`` processes then follows
the same gradients as one process with a ``W`` times larger batch, even when the processes' crops hold different
numbers of ignored pixels.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...engine.distributed import world_size

__all__ = ["SegLoss"]


class SegLoss(nn.Module):
    """Cross-entropy over the main output plus ``aux_weight`` times the auxiliary output's.

    Args:
        ignore_index: label excluded from the loss.
        aux_weight: weight of the ``"aux"`` output's loss when the model returns one.
        ohem_thresh: enable online hard example mining: keep only pixels whose predicted probability of the
            true class is below this (e.g. 0.7) ...
        ohem_min_kept: ... but at least this many of the hardest pixels per process.
        dice_weight: weight of a soft Dice loss added to each output's cross-entropy (as in nnU-Net's CE + Dice):
            ``1 - mean over classes of 2 |P . T| / (|P| + |T|)``, with ``P`` the softmax probabilities and ``T``
            the one-hot labels over the batch's labelled pixels, averaged over the classes present in the batch's
            labels. It weighs every class alike, as mIoU does, where cross-entropy weighs pixels.

    Call with ``output`` (``(N, K, H, W)`` logits, or a dict with ``"out"`` and optionally ``"aux"``) and
    ``target`` ``(N, H, W)`` int64. Returns a scalar.
    """

    def __init__(self, *, ignore_index: int = 255, aux_weight: float = 0.4, ohem_thresh: Optional[float] = None,
                 ohem_min_kept: int = 100_000, dice_weight: float = 0.0) -> None:
        super().__init__()
        if ohem_thresh is not None and not 0 < ohem_thresh <= 1:
            raise ValueError(f"ohem_thresh must be in (0, 1], got {ohem_thresh!r}")
        if not isinstance(ohem_min_kept, int) or ohem_min_kept < 1:
            raise ValueError(f"ohem_min_kept must be a positive int, got {ohem_min_kept!r}")
        if not aux_weight >= 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight!r}")
        if not dice_weight >= 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight!r}")
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept

    def check_target(self, target: torch.Tensor, num_classes: int) -> None:
        """Raise ``ValueError`` naming any label outside ``0..K-1`` other than the ignore index.

        PyTorch would raise an IndexError naming neither K nor the ignore index on CPU, and abort the process
        with a device-side assertion on CUDA.
        """
        bad = (target != self.ignore_index) & ((target < 0) | (target >= num_classes))
        if bad.any():
            values = target[bad].unique()[:10].tolist()
            raise ValueError(f"target holds label value(s) {values} but the model predicts {num_classes} classes: "
                             f"expected 0..{num_classes - 1}, or {self.ignore_index} (the ignore index)")

    def sum_and_count(self, logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sum of the pixel losses that count, and how many pixels that is."""
        losses = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        if self.ohem_thresh is None:
            return losses.sum(), valid.sum()
        valid_losses = losses[valid]
        # A pixel with probability p of its true class has loss -log(p): "p < thresh" is "loss > -log(thresh)".
        threshold = -math.log(self.ohem_thresh)
        if valid_losses.numel() > self.ohem_min_kept:
            kth = valid_losses.detach().topk(self.ohem_min_kept).values[-1]
            threshold = min(threshold, float(kth))
        kept = valid_losses.detach() >= threshold
        return valid_losses[kept].sum(), kept.sum()

    def dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice loss of ``logits`` ``(N, K, H, W)`` over the global batch's labelled pixels (a scalar)."""
        num_classes = logits.shape[1]
        valid = target != self.ignore_index
        probs = logits.float().softmax(1) * valid.unsqueeze(1)
        labels = target.masked_fill(~valid, 0)
        # Per class: sum of the true class's probability (the intersection), of all probabilities, of labels;
        # built with scatter_add rather than a one-hot (N, K, H, W) tensor, which is large for many classes.
        true_prob = probs.gather(1, labels.unsqueeze(1)).flatten()
        intersection = probs.new_zeros(num_classes).scatter_add(0, labels.flatten(), true_prob)
        label_count = torch.bincount(labels[valid], minlength=num_classes).to(probs.dtype)
        sums = torch.stack([intersection, probs.sum((0, 2, 3)), label_count])
        if world_size() > 1:
            # Summed over processes with gradients flowing back to each one's pixels (DDP then averages).
            import torch.distributed.nn.functional as dist_fn

            sums = dist_fn.all_reduce(sums)
        intersection, prob_sum, label_count = sums
        present = label_count > 0
        if not present.any():
            return probs.sum() * 0.0
        score = 2 * intersection[present] / (prob_sum[present] + label_count[present]).clamp(min=1e-6)
        return 1.0 - score.mean()

    def forward(self, output: Union[torch.Tensor, Mapping[str, torch.Tensor]], target: torch.Tensor
                ) -> torch.Tensor:
        heads: Dict[str, torch.Tensor] = {"out": output} if isinstance(output, torch.Tensor) else dict(output)
        weights = {"out": 1.0, "aux": self.aux_weight}
        unknown = set(heads) - set(weights)
        if "out" not in heads or unknown:
            raise ValueError(f"model output must be a tensor or a dict with 'out' and optionally 'aux', got keys "
                             f"{sorted(heads)}")
        self.check_target(target, heads["out"].shape[1])
        names = list(heads)
        sums, counts = zip(*(self.sum_and_count(heads[n], target) for n in names))
        counts_t = torch.stack(counts).float()
        if world_size() > 1:
            torch.distributed.all_reduce(counts_t)
            counts_t /= world_size()
        total = sum(weights[n] * s / c.clamp(min=1) for n, s, c in zip(names, sums, counts_t))
        if self.dice_weight:
            total = total + self.dice_weight * sum(weights[n] * self.dice(heads[n], target) for n in names)
        return total
