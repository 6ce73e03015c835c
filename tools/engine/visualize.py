"""Drawing: class palettes, mask overlays with a legend, and the training curves plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

__all__ = ["make_palette", "colorize", "overlay", "add_legend", "save_png", "read_metrics", "plot_curves"]

IGNORE_INDEX = 255
IGNORE_COLOUR = (255, 255, 255)


def make_palette(num_classes: int) -> np.ndarray:
    """``(K, 3)`` uint8 RGB colours, the Pascal VOC scheme: class 0 black, then well-separated colours."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for k in range(num_classes):
        label, shift = k, 7
        while label:
            for channel in range(3):
                palette[k, channel] |= ((label >> channel) & 1) << shift
            label >>= 3
            shift -= 1
    return palette


def _palette(palette: Optional[Sequence[Sequence[int]]], num_classes: int) -> np.ndarray:
    if palette is None:
        return make_palette(num_classes)
    arr = np.asarray(palette, np.uint8).reshape(-1, 3)
    if len(arr) < num_classes:
        raise ValueError(f"palette has {len(arr)} colours for {num_classes} classes")
    return arr


def colorize(mask: np.ndarray, palette: Optional[Sequence[Sequence[int]]] = None,
             num_classes: Optional[int] = None) -> np.ndarray:
    """``(H, W)`` labels -> ``(H, W, 3)`` uint8 RGB; ignored pixels (255) are white."""
    k = num_classes if num_classes is not None else int(mask[mask != IGNORE_INDEX].max(initial=0)) + 1
    colours = np.zeros((256, 3), np.uint8)
    colours[:k] = _palette(palette, k)[:k]
    colours[IGNORE_INDEX] = IGNORE_COLOUR
    return colours[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: Optional[Sequence[Sequence[int]]] = None, *,
            num_classes: Optional[int] = None, alpha: float = 0.5) -> np.ndarray:
    """Blend the colours of ``mask`` ``(H, W)`` over ``image`` ``(H, W, 3)`` uint8 RGB; ignored pixels stay."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    colour = colorize(mask, palette, num_classes).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour
    keep = (mask == IGNORE_INDEX)[..., None]
    return np.where(keep, image, np.clip(blended + 0.5, 0, 255)).astype(np.uint8)


def add_legend(image: np.ndarray, classes: Sequence[str], palette: Optional[Sequence[Sequence[int]]] = None, *,
               labels: Optional[Sequence[int]] = None) -> np.ndarray:
    """``image`` with a white panel on its right listing a colour swatch and the name of each class.

    Args:
        labels: which classes to list (e.g. those present in a prediction); default all.
    """
    colours = _palette(palette, len(classes))
    labels = list(range(len(classes))) if labels is None else [int(k) for k in labels if 0 <= k < len(classes)]
    height = image.shape[0]
    # Rows shrink with the number of entries so the legend fits the image height, within readable limits.
    row = int(np.clip(height / max(len(labels), 1), 12, 28))
    scale = row / 40
    text_width = max([cv2.getTextSize(classes[k], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for k in labels],
                     default=0)
    panel_w = row + 12 + text_width + 8
    panel_h = max(height, row * len(labels) + 8)
    panel = np.full((panel_h, panel_w, 3), 255, np.uint8)
    for i, k in enumerate(labels):
        y = 4 + i * row
        cv2.rectangle(panel, (4, y + 2), (4 + row - 4, y + row - 2), tuple(int(c) for c in colours[k]), -1)
        cv2.rectangle(panel, (4, y + 2), (4 + row - 4, y + row - 2), (0, 0, 0), 1)
        cv2.putText(panel, classes[k], (row + 8, y + int(row * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    canvas = np.full((panel_h, image.shape[1] + panel_w, 3), 255, np.uint8)
    canvas[:height, : image.shape[1]] = image
    canvas[:, image.shape[1]:] = panel
    return canvas


def save_png(path: Union[str, os.PathLike], rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {str(path)!r}")


def read_metrics(path: Union[str, os.PathLike]) -> List[Dict]:
    """The records of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: Union[str, os.PathLike], out_path: Union[str, os.PathLike]) -> None:
    """Plot training loss, learning rate and validation mIoU against the iteration into one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = ((axes[0], train, "loss", "training loss"), (axes[1], train, "lr", "learning rate"),
              (axes[2], val, "miou", "validation mIoU"))
    for ax, rows, key, title in panels:
        ax.plot([r["iter"] for r in rows], [r[key] for r in rows], marker="o" if key == "miou" else None)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
