"""Detection drawings: borders in the class colour exactly where the boxes are (enlarged with small images),
nothing below the score threshold, tags and captions present, figure sizes as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.tasks.detection.visualize import class_colours, detection_comparison, draw_detections
from tools.engine.visualize import MIN_PANEL, make_palette

CLASSES = ["circle", "square", "triangle"]
GREY = 128


def grey(height=64, width=80):
    return np.full((height, width, 3), GREY, np.uint8)


def test_default_colours_are_the_segmentation_palette_after_background():
    assert np.array_equal(class_colours(3), make_palette(4)[1:])
    assert np.array_equal(class_colours(2, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]), [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="palette has 1 colours for 3 classes"):
        class_colours(3, [[1, 2, 3]])


@pytest.mark.parametrize("size, factor", [((64, 80), 4), ((300, 400), 1)])
def test_borders_are_the_class_colour_on_the_box_edges(size, factor):
    boxes = torch.tensor([[10.0, 20, 30, 40], [40, 30, 60, 50]])
    out = draw_detections(grey(*size), boxes, torch.tensor([1, 3]), torch.tensor([0.9, 0.6]), CLASSES)
    assert out.shape == (size[0] * factor, size[1] * factor, 3) and out.dtype == np.uint8
    assert factor * size[0] >= MIN_PANEL
    colours = class_colours(len(CLASSES))
    for (x1, y1, x2, y2), label in zip((boxes * factor).long().tolist(), (1, 3)):
        colour = colours[label - 1]
        assert (out[y1:y2, x1] == colour).all() and (out[y1:y2, x2 - 1] == colour).all()  # left, right
        assert (out[y2 - 1, x1:x2] == colour).all()  # bottom (the top carries the tag just above it)
        assert (out[y1, x2 - 3:x2] == colour).all()
        assert (out[(y1 + y2) // 2, (x1 + x2) // 2] == GREY).all()  # the inside is left as it is
        assert (out[y1 - 1, x1 + 1] == colour).all()  # the tag's background sits on the top edge
        tag = out[max(0, y1 - 30):y1, x1:x2]
        assert ((tag != colour).any(-1) & (tag != GREY).any(-1)).any()  # and holds text
    assert (out[size[0] * factor - 1] == GREY).all()  # rows below every box untouched


def test_nothing_is_drawn_below_the_score_threshold():
    image = grey()
    boxes, labels = np.array([[10.0, 20, 30, 40]]), np.array([2])
    faint = draw_detections(image, boxes, labels, np.array([0.29]), CLASSES, score_thresh=0.3)
    assert (faint == GREY).all()
    assert not (draw_detections(image, boxes, labels, np.array([0.3]), CLASSES, score_thresh=0.3) == GREY).all()
    assert (draw_detections(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0), CLASSES) == GREY).all()


def test_ground_truth_without_scores_and_a_given_palette():
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    out = draw_detections(grey(), [[0, 0, 80, 64]], [2], None, CLASSES, palette=palette)
    # a box on the image's border: its tag moves inside, the border is still all green
    assert (out[:, 0] == (0, 255, 0)).all() and (out[-1] == (0, 255, 0)).all()


def test_bad_labels_and_shapes_raise():
    with pytest.raises(ValueError, match=r"labels hold \[4\], outside 1\.\.3"):
        draw_detections(grey(), [[0, 0, 5, 5]], [4], None, CLASSES)
    with pytest.raises(ValueError, match=r"boxes must be \(K, 4\) xyxy, got shape \(1, 3\)"):
        draw_detections(grey(), [[0, 0, 5]], [1], None, CLASSES)
    with pytest.raises(ValueError, match=r"image must be an \(H, W, 3\) uint8"):
        draw_detections(np.zeros((3, 64, 64), np.uint8), [[0, 0, 5, 5]], [1], None, CLASSES)


def test_comparison_has_two_captioned_panels_and_a_legend():
    image = grey()
    gt = {"boxes": torch.tensor([[10.0, 20, 30, 40]]), "labels": torch.tensor([1])}
    pred = {"boxes": torch.tensor([[12.0, 21, 31, 41], [50, 10, 70, 30]]), "scores": torch.tensor([0.8, 0.1]),
            "labels": torch.tensor([1, 3])}
    figure = detection_comparison(image, gt, pred, CLASSES)
    panel_h, panel_w = 4 * 64, 4 * 80
    strip = figure.shape[0] - panel_h
    assert 20 <= strip < panel_h // 4  # the caption band on top of the enlarged panels
    assert figure.shape[1] > 2 * panel_w + 4  # a legend on the right
    for i in range(2):
        text = figure[:strip, i * (panel_w + 4):i * (panel_w + 4) + panel_w]
        assert (text < 100).any() and (text == 255).mean() > 0.7, f"panel {i} has no caption"
    gt_panel = figure[strip:, :panel_w]
    pred_panel = figure[strip:, panel_w + 4:2 * panel_w + 4]
    assert np.array_equal(gt_panel, draw_detections(image, gt["boxes"], gt["labels"], None, CLASSES))
    assert np.array_equal(pred_panel, draw_detections(image, pred["boxes"], pred["labels"], pred["scores"],
                                                      CLASSES, score_thresh=0.5))
    colours = class_colours(len(CLASSES))
    legend = figure[:, 2 * panel_w + 4:]
    # the legend lists the class shown (circle) but not the one below the threshold (triangle)
    assert (legend == colours[0]).all(-1).any() and not (legend == colours[2]).all(-1).any()
