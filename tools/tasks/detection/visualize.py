"""Drawings of detections: labelled boxes, one colour per class, and validation figures (ground truth |
prediction) in the style of the segmentation ones (panels at least 256 px tall, captions, a legend)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

from ...engine.visualize import MIN_PANEL, add_caption, add_legend, make_palette

__all__ = ["class_colours", "draw_detections", "detection_comparison"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colours(num_classes: int, palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """``(C, 3)`` uint8 RGB, the colour of label ``k + 1`` at row ``k``.

    The default is :func:`~tools.engine.visualize.make_palette` without its first (background, black) colour,
    so detection class ``k`` wears the colour segmentation class ``k`` wears. A given ``palette`` has one
    colour per class, in the order of ``classes``.
    """
    if palette is None:
        return make_palette(num_classes + 1)[1:]
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    if len(colours) < num_classes:
        raise ValueError(f"palette has {len(colours)} colours for {num_classes} classes: give one per class")
    return colours[:num_classes]


def _array(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a tensor (or a tv_tensors.BoundingBoxes) on any device
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _enlarge(image: np.ndarray, min_height: int) -> tuple:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got shape {image.shape} of {image.dtype}")
    factor = max(1, math.ceil(min_height / image.shape[0]))
    if factor > 1:
        image = cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_LINEAR)
    return image, factor


def draw_detections(image: np.ndarray, boxes: Any, labels: Any, scores: Optional[Any], classes: Sequence[str], *,
                    palette: Optional[Sequence[Sequence[int]]] = None, score_thresh: float = 0.0,
                    min_height: int = MIN_PANEL) -> np.ndarray:
    """``image`` with a box and a tag (class name, and score when given) per detection.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        boxes: ``(K, 4)`` xyxy in the image's pixels; labels: ``(K,)`` in ``1..C``; scores: ``(K,)`` or ``None``
            (ground truth: every box drawn, no score in its tag).
        classes: the ``C`` class names, label ``k`` is ``classes[k - 1]``.
        palette: ``(C, 3)`` colours, see :func:`class_colours`.
        score_thresh: boxes scoring below it are not drawn.
        min_height: images shorter than this are enlarged by a whole factor ``f`` (bilinearly, boxes with them)
            so that tags stay readable.

    Returns:
        ``(f*H, f*W, 3)`` uint8. Box borders lie inside each box's pixels, in the class colour; tags sit above
        the box (inside it at the image's top edge); the most confident box is drawn last, on top.
    """
    canvas, factor = _enlarge(np.asarray(image), min_height)
    canvas = canvas.copy()
    boxes = _array(boxes, np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) xyxy, got shape {boxes.shape}")
    labels = _array(labels, np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    shown = np.ones(len(boxes), bool)
    order = np.arange(len(boxes))
    if scores is not None:
        scores = _array(scores, np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        shown = scores >= score_thresh
        order = np.argsort(scores, kind="stable")
    bad = labels[(labels < 1) | (labels > len(classes))]
    if bad.size:
        raise ValueError(f"labels hold {sorted(set(bad.tolist()))[:10]}, outside 1..{len(classes)} "
                         f"(label k is classes[k - 1])")
    colours = class_colours(len(classes), palette)
    height, width = canvas.shape[:2]
    side = min(height, width)
    thickness = max(2, round(side / 200))
    font_scale = max(0.4, side / 800)
    for i in order[shown[order]]:
        x1, y1, x2, y2 = (int(round(v * factor)) for v in boxes[i])
        x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
        y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
        if x2 <= x1 or y2 <= y1:  # entirely outside the image, or thinner than a pixel
            continue
        colour = colours[labels[i] - 1]
        t = thickness
        canvas[y1:min(y1 + t, y2), x1:x2] = colour
        canvas[max(y2 - t, y1):y2, x1:x2] = colour
        canvas[y1:y2, x1:min(x1 + t, x2)] = colour
        canvas[y1:y2, max(x2 - t, x1):x2] = colour
        text = classes[labels[i] - 1] + ("" if scores is None else f" {scores[i]:.2f}")
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, 1)
        tag_w, tag_h = text_w + 4, text_h + baseline + 4
        top = y1 - tag_h if y1 >= tag_h else y1
        left = max(0, min(x1, width - tag_w))
        canvas[top:top + tag_h, left:left + tag_w] = colour
        # dark text on light colours, white on dark ones (ITU-R 601 luma)
        ink = (0, 0, 0) if float(np.dot(colour, (0.299, 0.587, 0.114))) > 128 else (255, 255, 255)
        cv2.putText(canvas, text, (left + 2, top + 2 + text_h), _FONT, font_scale, ink, 1, cv2.LINE_AA)
    return canvas


def detection_comparison(image: np.ndarray, gt_target: Mapping[str, Any], prediction: Mapping[str, Any],
                         classes: Sequence[str], palette: Optional[Sequence[Sequence[int]]] = None, *,
                         score_thresh: float = 0.5, min_height: int = MIN_PANEL) -> np.ndarray:
    """One validation figure: panels "ground truth" and "prediction" side by side, captioned, with a legend of
    the classes shown.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        gt_target: ``{"boxes": (G, 4) xyxy, "labels": (G,) in 1..C}`` in the image's pixels.
        prediction: a detector's output for the image: ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}``.
        classes, palette: as :func:`draw_detections`.
        score_thresh: predictions below it are left out (an untrained detector's hundred faint boxes would hide
            the image); the caption states it.

    Returns:
        ``(caption + f*H, 2*f*W + 4 + legend, 3)`` uint8, ``f`` the enlargement of :func:`draw_detections`.
    """
    gt_labels = _array(gt_target["labels"], np.int64).reshape(-1)
    scores = _array(prediction["scores"], np.float64).reshape(-1)
    pred_labels = _array(prediction["labels"], np.int64).reshape(-1)
    panels = [
        add_caption(draw_detections(image, gt_target["boxes"], gt_labels, None, classes, palette=palette,
                                    min_height=min_height), "ground truth"),
        add_caption(draw_detections(image, prediction["boxes"], pred_labels, scores, classes, palette=palette,
                                    score_thresh=score_thresh, min_height=min_height),
                    f"prediction (score >= {score_thresh:g})"),
    ]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1]], axis=1)
    present = set(gt_labels.tolist()) | set(pred_labels[scores >= score_thresh].tolist())
    return add_legend(row, classes, class_colours(len(classes), palette), labels=[k - 1 for k in sorted(present)])
