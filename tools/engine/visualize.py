"""Drawing: class palettes, mask overlays with a legend, validation figures (image | ground truth | prediction)
and the training curves plot."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = ["make_palette", "draw_palette", "colorize", "overlay", "add_legend", "add_caption", "comparison",
           "save_png", "read_metrics", "curve_series", "plot_curves"]

IGNORE_INDEX = 255
IGNORE_COLOUR = (255, 255, 255)
# Class 0's colour in drawings when the dataset names no palette. Pascal VOC's black made a wrong prediction in a
# dark VOC colour (navy, maroon) over the background hard to see, and darkened the image as a missing label
# might; a light grey washes the background out instead, so every other class stands out against it, and it
# differs from ignored pixels, which are left as they are.
BACKGROUND_COLOUR = (200, 200, 200)
MIN_PANEL = 256  # validation figures: smallest panel height in pixels


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


def draw_palette(num_classes: int) -> np.ndarray:
    """The colours drawings use when a dataset has no palette: :func:`make_palette` with class 0 in
    :data:`BACKGROUND_COLOUR` instead of black."""
    palette = make_palette(num_classes)
    if num_classes:
        palette[0] = BACKGROUND_COLOUR
    return palette


def _palette(palette: Optional[Sequence[Sequence[int]]], num_classes: int) -> np.ndarray:
    if palette is None:
        return draw_palette(num_classes)
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
               labels: Optional[Sequence[int]] = None, ignored: bool = False) -> np.ndarray:
    """``image`` with a white panel on its right listing a colour swatch and the name of each class.

    Args:
        labels: which classes to list (e.g. those present in a prediction); default all.
        ignored: also list the ignored label (255), drawn by :func:`overlay` as the bare image.
    """
    colours = _palette(palette, len(classes))
    labels = list(range(len(classes))) if labels is None else [int(k) for k in labels if 0 <= k < len(classes)]
    entries: List[Tuple[str, Optional[np.ndarray]]] = [(classes[k], colours[k]) for k in labels]
    if ignored:
        entries.append(("ignored (image as is)", None))
    height = image.shape[0]
    # Rows shrink with the number of entries so the legend fits the image height, within readable limits.
    row = int(np.clip(height / max(len(entries), 1), 12, 28))
    scale = row / 40
    text_width = max([cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for name, _ in entries],
                     default=0)
    panel_w = row + 12 + text_width + 8
    panel_h = max(height, row * len(entries) + 8)
    panel = np.full((panel_h, panel_w, 3), 255, np.uint8)
    for i, (name, colour) in enumerate(entries):
        y = 4 + i * row
        corner, far = (4, y + 2), (4 + row - 4, y + row - 2)
        if colour is None:  # a hatched white swatch: no colour is laid over these pixels
            swatch = np.full((far[1] - corner[1], far[0] - corner[0], 3), 255, np.uint8)
            for d in range(0, 2 * swatch.shape[1], 5):
                cv2.line(swatch, (d, 0), (d - swatch.shape[0], swatch.shape[0]), (150, 150, 150), 1)
            panel[corner[1]:far[1], corner[0]:far[0]] = swatch
        else:
            cv2.rectangle(panel, corner, far, tuple(int(c) for c in colour), -1)
        cv2.rectangle(panel, corner, far, (0, 0, 0), 1)
        cv2.putText(panel, name, (row + 8, y + int(row * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    canvas = np.full((panel_h, image.shape[1] + panel_w, 3), 255, np.uint8)
    canvas[:height, : image.shape[1]] = image
    canvas[:, image.shape[1]:] = panel
    return canvas


def add_caption(panel: np.ndarray, text: str, *, height: Optional[int] = None) -> np.ndarray:
    """``panel`` under a white strip with ``text`` centred in black; ``height`` unset: a tenth of the panel,
    at least 20 px."""
    height = height or max(20, round(panel.shape[0] / 10))
    scale = height / 40
    (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    strip = np.full((height, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (max(2, (panel.shape[1] - width) // 2), int(height * 0.72)), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def comparison(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, classes: Sequence[str],
               palette: Optional[Sequence[Sequence[int]]] = None, *, min_height: int = MIN_PANEL,
               alpha: float = 0.5) -> np.ndarray:
    """One validation figure: panels "image", "ground truth" and "prediction" side by side, captioned, with a
    legend of the classes shown.

    ``image`` ``(H, W, 3)`` uint8 RGB, ``mask`` and ``pred`` ``(H, W)`` labels. Images shorter than
    ``min_height`` are enlarged by a whole factor (the image bilinearly, the labels by nearest neighbour, so
    every label pixel stays one block of colour). Returns ``(caption + f*H, 3*f*W + gaps + legend, 3)`` uint8.
    """
    if not (image.shape[:2] == mask.shape == pred.shape):
        raise ValueError(f"image {image.shape[:2]}, mask {mask.shape} and prediction {pred.shape} sizes differ")
    height, width = mask.shape
    factor = max(1, math.ceil(min_height / height))
    if factor > 1:
        size = (width * factor, height * factor)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        mask, pred = (cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in (mask, pred))
    k = len(classes)
    panels = [add_caption(p, caption) for p, caption in (
        (image, "image"), (overlay(image, mask, palette, num_classes=k, alpha=alpha), "ground truth"),
        (overlay(image, pred, palette, num_classes=k, alpha=alpha), "prediction"))]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    labels = sorted(set(np.unique(pred).tolist()) | (set(np.unique(mask).tolist()) - {IGNORE_INDEX}))
    return add_legend(row, classes, palette, labels=labels, ignored=bool((mask == IGNORE_INDEX).any()))


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


# The validation panel of curves.png from the records: (title, iterations, values in percent).
CurveFn = Callable[[Sequence[Dict]], Tuple[str, List[int], List[float]]]


def miou_curve(records: Sequence[Dict]) -> Tuple[str, List[int], List[float]]:
    """Validation mIoU in percent, as the console prints it."""
    val = [r for r in records if r.get("type") == "val"]
    return "validation mIoU (%)", [r["iter"] for r in val], [100 * r["miou"] for r in val]


def curve_series(records: Sequence[Dict], metric: CurveFn = miou_curve
                 ) -> List[Tuple[str, List[float], List[float]]]:
    """``(title, iterations, values)`` of each panel of ``curves.png``: training loss, learning rate, and the
    validation ``metric`` (by default mIoU in percent, as the console prints it)."""
    train = [r for r in records if r.get("type") == "train"]
    return [("training loss", [r["iter"] for r in train], [r["loss"] for r in train]),
            ("learning rate", [r["iter"] for r in train], [r["lr"] for r in train]),
            metric(records)]


def plot_curves(metrics_path: Union[str, os.PathLike], out_path: Union[str, os.PathLike], *,
                metric: CurveFn = miou_curve) -> None:
    """Plot :func:`curve_series` of a ``metrics.jsonl`` against the iteration into one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for k, (ax, (title, xs, ys)) in enumerate(zip(axes, curve_series(read_metrics(metrics_path), metric))):
        ax.plot(xs, ys, marker="o" if k == 2 else None)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
