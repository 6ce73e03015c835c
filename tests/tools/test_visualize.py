"""Validation figures: panels at least 256 px tall with captions and a legend, every class in its own colour
(the last one included), background distinct from ignored pixels, curves in percent."""

from __future__ import annotations

import numpy as np
import pytest

from tools.engine.visualize import (BACKGROUND_COLOUR, MIN_PANEL, add_legend, colorize, comparison, curve_series,
                                    draw_palette, make_palette, overlay)

CLASSES = ["background", "circle", "square", "triangle", "cross"]


def sample(height=48, width=40):
    """A mid-grey image, a ground truth with every class and an ignored band, a prediction of the last class."""
    image = np.full((height, width, 3), 128, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for k in range(1, len(CLASSES)):
        mask[:, k * 8:k * 8 + 6] = k
    mask[-4:] = 255
    pred = np.zeros_like(mask)
    pred[: height // 2] = len(CLASSES) - 1
    return image, mask, pred


def caption_strip_and_panels(figure, height):
    """The caption strip and the three panels of a figure whose panels are ``height`` tall."""
    strip = figure.shape[0] - height
    return figure[:strip], figure[strip:]


@pytest.mark.parametrize("size, factor", [((48, 40), 6), ((64, 40), 4), ((300, 20), 1)])
def test_panels_are_at_least_256_px_and_labels_stay_sharp(size, factor):
    image, mask, pred = sample(*size)
    figure = comparison(image, mask, pred, CLASSES)
    height, width = size[0] * factor, size[1] * factor
    assert height >= MIN_PANEL
    strip, panels = caption_strip_and_panels(figure, height)
    assert 20 <= strip.shape[0] < height // 4
    # image | gap | ground truth | gap | prediction | legend
    gt = panels[:, width + 4:2 * width + 4]
    expected = overlay(np.full((height, width, 3), 128, np.uint8), np.kron(mask, np.ones((factor, factor), np.uint8)))
    assert np.array_equal(gt, expected)  # labels enlarged by nearest neighbour, one block per label pixel
    assert figure.shape[1] > 3 * width + 8  # and a legend on the right


def test_each_panel_has_a_caption():
    image, mask, pred = sample()
    figure = comparison(image, mask, pred, CLASSES)
    strip, panels = caption_strip_and_panels(figure, 288)
    width = 240
    for i in range(3):
        text = strip[:, i * (width + 4):i * (width + 4) + width]
        assert (text < 100).any(), f"panel {i} has no caption"  # dark text on white
        assert (text == 255).mean() > 0.7
    # the three captions differ (image / ground truth / prediction)
    crops = [(strip[:, i * (width + 4):i * (width + 4) + width] < 100).sum() for i in range(3)]
    assert len(set(crops)) == 3


def test_last_class_has_its_own_colour_everywhere():
    k = len(CLASSES)
    image, mask, pred = sample()
    palette = draw_palette(k)
    assert palette[k - 1].tolist() == make_palette(k)[k - 1].tolist() != [0, 0, 0]
    full = overlay(image, pred, num_classes=k, alpha=1.0)
    assert full[0, 0].tolist() == palette[k - 1].tolist()
    assert colorize(pred, num_classes=k)[0, 0].tolist() == palette[k - 1].tolist()
    given = [[10 * i, 20, 30] for i in range(k)]
    assert overlay(image, pred, given, num_classes=k, alpha=1.0)[0, 0].tolist() == given[k - 1]
    # in a figure: the prediction panel's top half, and a swatch in the legend
    figure = comparison(image, mask, pred, CLASSES, alpha=1.0)
    strip, panels = caption_strip_and_panels(figure, 288)
    assert panels[0, 2 * (240 + 4)].tolist() == palette[k - 1].tolist()
    legend = figure[:, 3 * 240 + 8:]
    assert (legend == palette[k - 1]).all(-1).any()


def test_background_differs_from_ignored_pixels_and_every_class():
    palette = draw_palette(21)
    assert tuple(palette[0]) == BACKGROUND_COLOUR
    assert palette[0].tolist() not in ([0, 0, 0], [255, 255, 255]) + tuple(p.tolist() for p in palette[1:])
    for grey in (0, 60, 128, 255):  # over dark, mid and light images the background tint shows, ignore does not
        image = np.full((1, 2, 3), grey, np.uint8)
        drawn = overlay(image, np.array([[0, 255]], np.uint8))
        assert drawn[0, 1].tolist() == [grey] * 3 and drawn[0, 0].tolist() != drawn[0, 1].tolist()
    # a legend entry for ignored pixels when the ground truth has some
    plain = add_legend(np.zeros((100, 10, 3), np.uint8), CLASSES, labels=[0, 1])
    assert add_legend(np.zeros((100, 10, 3), np.uint8), CLASSES, labels=[0, 1], ignored=True).shape[1] > \
        plain.shape[1]


def test_curves_plot_miou_in_percent():
    records = [{"type": "train", "iter": 1, "loss": 2.0, "lr": 0.1}, {"type": "val", "iter": 1, "miou": 0.4567}]
    (_, _, loss), _, (title, iters, miou) = curve_series(records)
    assert loss == [2.0] and "%" in title and iters == [1] and miou == [pytest.approx(45.67)]
