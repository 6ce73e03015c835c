"""Box-aware augmentation keeps every box on its object: checked on filled rectangles whose pixels give the box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from tools.data.detection import build_detection_dataset, det_eval_transform, det_train_transform
from tools.data.detection.transforms import RandomZoom

from tests.tools.fixtures import COLOURS

RECTS = [(5, 4, 30, 20), (40, 10, 70, 50), (2, 35, 12, 58), (60, 52, 79, 59)]  # x0, y0, x1, y1 (exclusive)


def rectangles(height=60, width=80):
    """A black image with ``RECTS`` filled in ``COLOURS[1..4]``, their boxes and labels 1..4."""
    image = np.zeros((height, width, 3), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(RECTS):
        image[y0:y1, x0:x1] = COLOURS[k + 1]
    boxes = torch.tensor(RECTS, dtype=torch.float32)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), boxes, torch.arange(1, len(RECTS) + 1)


def pixel_box(image, label):
    """The tight box of the pixels more than half ``COLOURS[label]`` (interpolated edges split at half)."""
    colour = torch.tensor(COLOURS[label], dtype=torch.float32) / 255
    share = (image * colour[:, None, None]).sum(0) / colour.pow(2).sum()
    # every other rectangle's colour projects to at most 0.5 of this one, so '> 0.6' isolates this rectangle
    other = [torch.tensor(COLOURS[k], dtype=torch.float32) / 255 for k in range(1, len(RECTS) + 1) if k != label]
    closest = torch.stack([(image - c[:, None, None]).pow(2).sum(0) for c in [colour, *other]]).argmin(0) == 0
    mask = (share > 0.5) & closest
    if not mask.any():
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("seed", range(10))
def test_zoom_and_flip_keep_boxes_on_their_rectangles(seed):
    image, boxes, labels = rectangles()
    transform = det_train_transform(hflip=True, scale_range=(0.5, 2.0))
    torch.manual_seed(seed)
    out, out_boxes, out_labels = transform(image, boxes, labels)
    assert out.shape == (3, 60, 80) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert out_boxes.dtype == torch.float32 and out_labels.dtype == torch.int64 and len(out_boxes) == len(out_labels)
    assert ((out_boxes[:, 2] - out_boxes[:, 0]) >= 1).all() and ((out_boxes[:, 3] - out_boxes[:, 1]) >= 1).all()
    assert (out_boxes[:, :2] >= 0).all() and (out_boxes[:, 2] <= 80).all() and (out_boxes[:, 3] <= 60).all()
    for box, label in zip(out_boxes, out_labels.tolist()):
        found = pixel_box(out, label)
        assert found is not None, (label, box)
        # Antialiased resizing blurs edges by under a pixel; a box on the wrong object would be off by tens.
        assert torch.allclose(found, box, atol=1.0), (label, found, box)
    for label in set(range(1, len(RECTS) + 1)) - set(out_labels.tolist()):
        found = pixel_box(out, label)  # a dropped box had no visible object left (at most a sliver)
        assert found is None or ((found[2:] - found[:2]).min() <= 2), (label, found)


def test_flip_mirrors_the_boxes_and_the_check_has_teeth():
    image, boxes, labels = rectangles()
    transform = det_train_transform(hflip=True, scale_range=(1.0, 1.0))
    outcomes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out, out_boxes, out_labels = transform(image, boxes, labels)
        assert out_labels.tolist() == [1, 2, 3, 4]
        mirrored = torch.stack([80 - boxes[:, 2], boxes[:, 1], 80 - boxes[:, 0], boxes[:, 3]], 1)
        flipped = torch.equal(out_boxes, mirrored)
        assert flipped or torch.equal(out_boxes, boxes)
        assert torch.equal(out, image.flip(-1).float() / 255 if flipped else image.float() / 255)
        outcomes.add(flipped)
        # the unflipped boxes do not bound the flipped rectangles' pixels
        if flipped:
            assert not torch.allclose(pixel_box(out, 1), boxes[0], atol=1.0)
    assert outcomes == {True, False}


@pytest.mark.parametrize("scale", [0.5, 1.6])
def test_zoom_scales_boxes_about_the_offset(scale):
    image, boxes, labels = rectangles()
    zoom = RandomZoom((scale, scale))
    torch.manual_seed(0)
    params = zoom.make_params([tv_tensors.Image(image)])
    assert params["size"] == [round(60 * scale), round(80 * scale)]
    torch.manual_seed(0)
    out, out_boxes, out_labels = det_train_transform(hflip=False, scale_range=(scale, scale))(image, boxes, labels)
    assert out.shape == (3, 60, 80)
    expected = boxes * scale - torch.tensor([params["left"], params["top"]] * 2, dtype=torch.float32)
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 80)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 60)
    keep = ((expected[:, 2:] - expected[:, :2]) >= 1).all(1)
    assert torch.allclose(out_boxes, expected[keep], atol=1e-4)
    assert out_labels.tolist() == torch.arange(1, 5)[keep].tolist()


def test_eval_transform_changes_nothing_but_the_dtype():
    image, boxes, labels = rectangles()
    out, out_boxes, out_labels = det_eval_transform()(image, boxes, labels)
    assert torch.equal(out, image.float() / 255) and torch.equal(out_boxes, boxes) and torch.equal(out_labels, labels)
    empty = det_eval_transform()(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert empty[1].shape == (0, 4) and empty[2].shape == (0,)


def test_dataset_augmentation_is_a_function_of_index_and_seed():
    ds = build_detection_dataset("synthetic", split="val", num_images=3, image_size=64,
                                 transform=det_train_transform(scale_range=(0.5, 2.0)))
    a, b, c = ds[(1, 11)], ds[(1, 11)], ds[(1, 12)]
    torch.manual_seed(123)
    before = torch.rand(())
    torch.manual_seed(123)
    d = ds[(1, 11)]
    assert torch.rand(()) == before  # the global generator is left alone
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) and torch.equal(a[0], d[0])
    assert not torch.equal(a[0], c[0])
    assert a[1]["image_id"] == 1


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="scale_range must be"):
        det_train_transform(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="color_jitter must be in"):
        det_train_transform(color_jitter=2.0)
