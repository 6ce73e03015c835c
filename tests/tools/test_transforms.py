"""Joint augmentation keeps image and mask aligned: checked on images whose mask is readable from the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomScale, eval_transform, normalize, train_transform

from tests.tools.fixtures import COLOURS, pair

K = 4  # labels 0..3 drawn in COLOURS[0..3]


def colour_pair(size=(40, 56), seed=0):
    image, mask = pair(list(range(K)), size=size, seed=seed)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (image * std + mean).mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def label_from_pixels(rgb: np.ndarray):
    """Nearest fixture colour of every pixel, and whether the pixel is pure (not a blend of two colours)."""
    dist = np.linalg.norm(rgb[:, :, None, :].astype(np.float32) - COLOURS[None, None, :K].astype(np.float32), axis=-1)
    return dist.argmin(-1), dist.min(-1) < 12


@pytest.mark.parametrize("seed", range(12))
def test_geometry_moves_image_and_mask_together(seed):
    image, mask = colour_pair(seed=seed)
    t = train_transform(crop_size=(32, 48), scale_range=(0.5, 1.6), hflip=True, color_jitter=0.0)
    torch.manual_seed(seed)
    out_image, out_mask = t(image, mask)
    assert out_image.shape == (3, 32, 48) and out_image.dtype == torch.float32
    assert out_mask.shape == (32, 48) and out_mask.dtype == torch.int64
    # nearest-neighbour resizing never invents labels
    assert set(out_mask.unique().tolist()) <= set(range(K)) | {255}
    labels, pure = label_from_pixels(to_uint8(out_image))
    m = out_mask.numpy()
    scored = pure & (m != 255)
    assert scored.sum() > 0.5 * (m != 255).sum()
    assert (labels[scored] == m[scored]).mean() > 0.99
    # the check has teeth: the same mask mirrored disagrees with the pixels
    mirrored = m[:, ::-1]
    both = pure & (mirrored != 255)
    assert (labels[both] == mirrored[both]).mean() < 0.9


def test_flip_happens_for_some_seeds_and_not_others():
    image, mask = colour_pair()
    t = train_transform(crop_size=(40, 56), scale_range=(1.0, 1.0), hflip=True, color_jitter=0.0)
    outcomes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        _, out_mask = t(image, mask)
        outcomes.add(torch.equal(out_mask, mask.long()) and "same" or
                     torch.equal(out_mask, mask.long().flip(-1)) and "flipped" or "other")
    assert outcomes == {"same", "flipped"}


def test_crop_pads_image_with_zero_and_mask_with_ignore():
    image, mask = colour_pair()
    t = train_transform(crop_size=(32, 40), scale_range=(0.5, 0.5), hflip=False, color_jitter=0.0)
    out_image, out_mask = t(image, mask)  # the image shrinks to 20x28 and is padded to 32x40
    ignored = out_mask == 255
    assert int(ignored.sum()) == 32 * 40 - 20 * 28
    padded_value = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out_image.permute(1, 2, 0)[ignored], padded_value.expand(int(ignored.sum()), 3))


def test_colour_jitter_changes_pixels_never_the_mask():
    image, mask = colour_pair(seed=3)
    plain = train_transform(crop_size=32, scale_range=(0.8, 1.2), color_jitter=0.0)
    jitter = train_transform(crop_size=32, scale_range=(0.8, 1.2), color_jitter=0.4)
    torch.manual_seed(5)
    a_img, a_mask = plain(image, mask)
    torch.manual_seed(5)
    b_img, b_mask = jitter(image, mask)
    assert torch.equal(a_mask, b_mask)
    assert not torch.allclose(a_img, b_img, atol=1e-3)


def test_random_scale_range_and_sizes():
    image, mask = colour_pair()
    t = RandomScale((0.5, 2.0))
    from torchvision import tv_tensors

    sizes = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = t(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert out_image.shape[-2:] == out_mask.shape[-2:]
        h, w = out_mask.shape
        assert 20 <= h <= 80 and 28 <= w <= 112 and abs(w / h - 56 / 40) < 0.1
        sizes.add((h, w))
    assert len(sizes) > 10
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 1.0))


def test_eval_transform_only_normalizes():
    image, mask = colour_pair()
    out_image, out_mask = eval_transform()(image, mask)
    assert torch.equal(out_mask, mask.long())
    assert torch.allclose(out_image, normalize(image))
    assert np.abs(to_uint8(out_image).astype(int) - image.permute(1, 2, 0).numpy()).max() <= 1


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="crop_size"):
        train_transform(crop_size=(0, 4))
    with pytest.raises(ValueError, match="color_jitter"):
        train_transform(crop_size=8, color_jitter=2.0)
