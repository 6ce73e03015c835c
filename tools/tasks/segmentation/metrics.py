"""Segmentation metrics from a confusion matrix: per-class IoU, mean IoU, pixel accuracy.

Everything derives from one ``K x K`` count matrix, which sums across batches and across processes, so the
distributed result is exactly the single-process one.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["ConfusionMatrix", "format_table"]


class ConfusionMatrix:
    """Accumulates ``mat[t, p]``: the number of pixels of true class ``t`` predicted as ``p``.

    Pixels labelled ``ignore_index`` (or any value outside ``0..K-1``) are not counted. A prediction outside
    ``0..K-1`` is an error: it would be counted as another class.

    Example::

        cm = ConfusionMatrix(3)
        cm.update(logits.argmax(1), target)   # (N, H, W) each
        cm.miou(), cm.pixel_accuracy(), cm.iou()
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255, device: Optional[torch.device] = None
                 ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer tensors of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        k = self.num_classes
        target = target.to(self.mat.device).reshape(-1).long()
        pred = pred.to(self.mat.device).reshape(-1).long()
        valid = (target >= 0) & (target < k) & (target != self.ignore_index)
        outside = (pred < 0) | (pred >= k)
        if outside.any():
            values = pred[outside].unique()[:10].tolist()
            raise ValueError(f"predictions hold class value(s) {values} but the confusion matrix has {k} classes "
                             f"(0..{k - 1}): the model and the dataset disagree on the number of classes")
        self.mat += torch.bincount(target[valid] * k + pred[valid], minlength=k * k).reshape(k, k)

    def reset(self) -> None:
        self.mat.zero_()

    def all_reduce(self) -> None:
        """Sum the matrices of all processes in place (a no-op without an initialized process group)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)

    def iou(self) -> torch.Tensor:
        """``(K,)`` float64 IoU per class; NaN for a class absent from both targets and predictions."""
        mat = self.mat.double()
        tp = mat.diag()
        union = mat.sum(0) + mat.sum(1) - tp
        return tp / union  # 0 / 0 = NaN marks "never seen": it must not count as 0 in the mean

    def miou(self) -> float:
        """Mean IoU over the classes that occur in the targets or the predictions."""
        iou = self.iou()
        present = ~iou.isnan()
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels over scored pixels."""
        total = self.mat.sum()
        return float(self.mat.diag().sum().double() / total) if total > 0 else float("nan")

    def class_accuracy(self) -> torch.Tensor:
        """``(K,)`` float64 recall per class; NaN for a class absent from the targets."""
        mat = self.mat.double()
        return mat.diag() / mat.sum(1)

    def summary(self, classes: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """Plain-python results (JSON-ready): ``miou``, ``pixel_accuracy`` and ``iou`` per class name."""
        names = list(classes) if classes is not None else [str(k) for k in range(self.num_classes)]
        iou: List[Optional[float]] = [None if v != v else float(v) for v in self.iou().tolist()]
        return {"miou": self.miou(), "pixel_accuracy": self.pixel_accuracy(), "iou": dict(zip(names, iou))}


def format_table(cm: ConfusionMatrix, classes: Sequence[str]) -> str:
    """A per-class text table (IoU, accuracy, share of pixels) followed by mIoU and pixel accuracy."""
    iou, acc = cm.iou().tolist(), cm.class_accuracy().tolist()
    total = max(int(cm.mat.sum()), 1)
    share = (cm.mat.sum(1).double() / total).tolist()
    width = max([len("pixel accuracy")] + [len(c) for c in classes])

    def pct(v: float) -> str:
        return "   n/a" if v != v else f"{100 * v:6.2f}"

    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}  {'pixels':>6}", "-" * (width + 26)]
    for name, i, a, s in zip(classes, iou, acc, share):
        lines.append(f"{name:<{width}}  {pct(i)}  {pct(a)}  {pct(s)}")
    lines.append("-" * (width + 26))
    lines.append(f"{'mIoU':<{width}}  {pct(cm.miou())}")
    lines.append(f"{'pixel accuracy':<{width}}  {pct(cm.pixel_accuracy())}")
    return "\n".join(lines)
