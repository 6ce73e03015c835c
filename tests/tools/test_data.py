"""Dataset layouts read their fixtures; the synthetic set is deterministic; bad files fail naming the file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tools.data.loaders import SeededShardSampler, build_eval_loader, build_train_loader, pad_collate
from tools.data import build_dataset, list_datasets
from tools.data.ade20k import ADE20K_CLASSES
from tools.data.cityscapes import CITYSCAPES_CLASSES
from tools.data.voc import VOC_CLASSES
from tools.data.synthetic import SHAPE_CLASSES, make_sample

from tests.tools.fixtures import (pair, single_thread, tiny_run_args, write_ade20k, write_cityscapes,  # noqa: F401
                                  write_folder, write_image, write_mask, write_voc)


def expected_mask(raw_labels, mapping, seed):
    _, raw = pair(raw_labels, seed=seed)
    return np.vectorize(lambda v: mapping[int(v)])(raw).astype(np.int64)


def test_registry_lists_every_layout():
    assert set(list_datasets()) == {"synthetic", "voc", "cityscapes", "ade20k", "folder"}


def test_voc_reads_palette_indices_and_split_lists(tmp_path):
    write_voc(tmp_path)
    train = build_dataset("voc", root=tmp_path, split="train")
    val = build_dataset("voc", root=tmp_path / "VOCdevkit", split="val")  # any level of the layout works
    assert (len(train), len(val)) == (3, 2)
    assert train.classes == VOC_CLASSES and len(train.classes) == 21
    image, mask = train[1]
    assert image.shape == (3, 40, 56) and image.dtype == torch.uint8
    # Palette indices survive (OpenCV would have returned the palette colours instead).
    assert torch.equal(mask, torch.from_numpy(expected_mask([0, 15, 255], {0: 0, 15: 15, 255: 255}, seed=1)))


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    write_cityscapes(tmp_path)
    ds = build_dataset("cityscapes", root=tmp_path, split="train")
    assert len(ds) == 2 and len(ds.classes) == 19 and ds.classes == CITYSCAPES_CLASSES
    _, mask = ds[0]
    # road 7 -> 0, car 26 -> 13, unlabeled 0 and parking 9 -> ignored
    assert torch.equal(mask, torch.from_numpy(expected_mask([7, 26, 0, 9], {7: 0, 26: 13, 0: 255, 9: 255}, 0)))
    assert len(ds.palette) == 19


def test_ade20k_shifts_labels_and_ignores_zero(tmp_path):
    write_ade20k(tmp_path)
    for split, n in (("train", 2), ("validation", 1)):
        ds = build_dataset("ade20k", root=tmp_path, split=split)
        assert len(ds) == n and ds.classes == ADE20K_CLASSES
    _, mask = build_dataset("ade20k", root=tmp_path / "ADEChallengeData2016", split="val")[0]
    assert torch.equal(mask, torch.from_numpy(expected_mask([0, 1, 150], {0: 255, 1: 0, 150: 149}, seed=2)))


@pytest.mark.parametrize("layout", ["subdirs", "lists", "flat"])
def test_folder_layouts(tmp_path, layout):
    write_folder(tmp_path, layout=layout, count=12)
    train = build_dataset("folder", root=tmp_path, split="train")
    val = build_dataset("folder", root=tmp_path, split="val")
    assert train.classes == ("bg", "a", "b")
    assert len(train) + len(val) == 12 and len(val) >= 1
    stems = lambda ds: {p.stem for p, _ in ds.samples}  # noqa: E731
    assert not stems(train) & stems(val)
    _, mask = train[0]
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255}


def test_folder_infers_class_count_without_classes_txt(tmp_path):
    write_folder(tmp_path, write_classes=False, classes=("x", "y", "z", "w"))
    ds = build_dataset("folder", root=tmp_path, split="train")
    assert ds.classes == ("class0", "class1", "class2", "class3")


def test_synthetic_is_deterministic_and_labelled():
    a = build_dataset("synthetic", split="train", num_images=6, image_size=64, seed=3)
    b = build_dataset("synthetic", split="train", num_images=6, image_size=64, seed=3)
    c = build_dataset("synthetic", split="train", num_images=6, image_size=64, seed=4)
    v = build_dataset("synthetic", split="val", num_images=6, image_size=64, seed=3)
    assert a.classes == SHAPE_CLASSES
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images) and not np.array_equal(a.images, v.images)
    # An image is a function of (seed, split, index) alone: generating it on its own gives the same pixels.
    image, mask = make_sample(3, "train", 5, size=64)
    assert np.array_equal(image, a.images[5]) and np.array_equal(mask, a.masks[5])
    many = build_dataset("synthetic", split="train", num_images=40, image_size=64)
    values = set(np.unique(many.masks).tolist())
    assert values == set(range(len(SHAPE_CLASSES))) | {255}
    fg = (many.masks != 0) & (many.masks != 255)
    assert 0.05 < fg.mean() < 0.5 and 0.01 < (many.masks == 255).mean() < 0.15


def test_synthetic_colour_does_not_decide_the_class():
    colours = {k: [] for k in range(1, len(SHAPE_CLASSES))}
    for i in range(40):
        image, mask = make_sample(0, "train", i, size=64)
        for k in colours:
            if (mask == k).sum() > 20:
                colours[k].append(np.median(image[mask == k], axis=0))
    for k, values in colours.items():
        # every class appears in many colours: the per-channel spread is wide
        assert len(values) >= 5 and np.std(np.array(values), axis=0).min() > 30, k


def test_sampler_shards_union_is_the_single_process_batch():
    data = list(range(24))
    single = SeededShardSampler(data, seed=7)
    shards = [SeededShardSampler(data, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in [single, *shards]:
        s.set_epoch(3)
    one = list(single)
    two = [list(s) for s in shards]
    for step in range(6):  # global batch 4 = 2 per process
        assert sorted(one[4 * step: 4 * step + 4]) == sorted(two[0][2 * step: 2 * step + 2] +
                                                               two[1][2 * step: 2 * step + 2])
    # a new epoch reshuffles; skipping resumes mid-epoch with the same (index, seed) pairs
    single.set_epoch(4)
    assert [i for i, _ in single] != [i for i, _ in one]
    single.set_epoch(3, start=10)
    assert list(single) == one[10:] and len(single) == 14


def test_train_loader_refuses_a_set_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        build_train_loader(list(range(5)), batch_size=8, workers=0, seed=0)


def test_eval_loader_shards_cover_the_set_once():
    ds = build_dataset("synthetic", split="val", num_images=5, image_size=32)
    seen = [list(build_eval_loader(ds, rank=r, world_size=2).sampler) for r in range(2)]
    assert sorted(seen[0] + seen[1]) == list(range(5))


def test_pad_collate_pads_masks_with_ignore():
    batch = [(torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64)),
             (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.int64))]
    images, masks = pad_collate(batch)
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert (masks[0, 4:] == 255).all() and (masks[1, :, 3:] == 255).all()
    assert (images[0, :, 4:] == 0).all() and (masks[0, :4] == 0).all()


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_root_names_it(tmp_path):
    for name in ("voc", "cityscapes", "ade20k", "folder"):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            build_dataset(name, root=tmp_path / "nowhere", split="train")
    with pytest.raises(ValueError, match="needs --root"):
        build_dataset("voc", root=None, split="train")


def test_image_without_mask_names_both(tmp_path):
    write_voc(tmp_path)
    missing = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000001.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="2007_000001.jpg.*has no mask.*2007_000001.png"):
        build_dataset("voc", root=tmp_path, split="train")


def test_size_mismatch_names_the_files(tmp_path):
    write_folder(tmp_path)
    write_mask(tmp_path / "masks" / "train" / "img000.png", np.zeros((10, 10), np.uint8))
    ds = build_dataset("folder", root=tmp_path, split="train")
    with pytest.raises(ValueError, match=r"sizes differ.*img000\.jpg.*image 56x40, mask 10x10"):
        ds[0]


@pytest.mark.parametrize("kind", ["truncated_jpg", "truncated_png", "garbage", "empty"])
def test_damaged_image_is_refused(tmp_path, kind):
    write_folder(tmp_path, layout="flat", count=3)
    path = tmp_path / "images" / "img000.jpg"
    data = path.read_bytes()
    if kind == "truncated_png":
        path.unlink()
        path = write_image(tmp_path / "images" / "img000.png", np.zeros((40, 56, 3), np.uint8))
        data = path.read_bytes()
    payload = {"truncated_jpg": data[: len(data) // 2], "truncated_png": data[: len(data) // 2],
               "garbage": b"this is not an image", "empty": b""}[kind]
    path.write_bytes(payload)
    ds = build_dataset("folder", root=tmp_path, split="all")
    index = [p for p, _ in ds.samples].index(path)
    with pytest.raises(ValueError, match=path.name) as info:
        ds[index]
    expected = {"truncated_jpg": "truncated", "truncated_png": "truncated", "garbage": "cannot decode",
                "empty": "empty"}[kind]
    assert expected in str(info.value)


def test_truncated_mask_is_refused(tmp_path):
    write_folder(tmp_path)
    mask_path = tmp_path / "masks" / "train" / "img001.png"
    mask_path.write_bytes(mask_path.read_bytes()[:60])
    with pytest.raises(ValueError, match="img001.png"):
        build_dataset("folder", root=tmp_path, split="train")[1]


def test_label_out_of_range_names_file_and_value(tmp_path):
    write_folder(tmp_path)
    mask = np.zeros((40, 56), np.uint8)
    mask[5, 5] = 7
    write_mask(tmp_path / "masks" / "train" / "img002.png", mask)
    ds = build_dataset("folder", root=tmp_path, split="train")
    with pytest.raises(ValueError, match=r"img002\.jpg.*value\(s\) \[7\].*3 classes"):
        ds[2]


def test_ade20k_label_beyond_150_is_refused(tmp_path):
    write_ade20k(tmp_path)
    mask = np.full((40, 56), 151, np.uint8)
    write_mask(tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000000.png", mask)
    with pytest.raises(ValueError, match="ADE_train_00000000.*150.*after mapping"):
        build_dataset("ade20k", root=tmp_path, split="train")[0]


def test_colour_mask_is_refused(tmp_path):
    write_folder(tmp_path)
    write_image(tmp_path / "masks" / "train" / "img000.png", np.zeros((40, 56, 3), np.uint8))
    with pytest.raises(ValueError, match="img000.png.*single-channel"):
        build_dataset("folder", root=tmp_path, split="train")[0]


def test_repeated_class_name_is_refused(tmp_path):
    # Per-class results are keyed by name: a repeated name would silently drop one class's IoU.
    write_folder(tmp_path, classes=("bg", "car", "road", "car"))
    with pytest.raises(ValueError, match=r"class list '.*classes\.txt' names a class twice: 'car' on lines 2, 4"):
        build_dataset("folder", root=tmp_path, split="train")


def test_empty_split_names_the_list(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match="val.txt.*empty"):
        build_dataset("voc", root=tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        build_dataset("voc", root=tmp_path, split="test")
    write_folder(tmp_path / "f")
    (tmp_path / "f" / "images" / "empty").mkdir()
    with pytest.raises(ValueError, match="split 'empty' holds no images"):
        build_dataset("folder", root=tmp_path / "f", split="empty")


# ------------------------------------------------------------------------------ errors in loader workers


def spoil(root, fault):
    """Damage every training sample of a ``write_folder`` set, so the first batch meets the fault."""
    for image in sorted((root / "images" / "train").iterdir()):
        mask = root / "masks" / "train" / f"{image.stem}.png"
        if fault == "corrupt_image":
            image.write_bytes(b"not an image")
        elif fault == "bad_label":
            write_mask(mask, np.full((40, 56), 7, np.uint8))
        else:
            write_mask(mask, np.zeros((10, 10), np.uint8))
    return {"corrupt_image": r"cannot decode image file '.*img00\d\.jpg'",
            "bad_label": r"mask of '.*img00\d\.jpg' \(mask '.*img00\d\.png'\) holds label value\(s\) \[7\]",
            "size_mismatch": r"image and mask sizes differ for '.*img00\d\.jpg'"}[fault]


def raised(call, *args):
    """``(type, message)`` of the error ``call(*args)`` raises, or ``None``.

    Nothing keeps the traceback, whose frames hold the data loaders: left in a reference cycle (as
    ``pytest.raises`` leaves them), a loader is freed by the garbage collector, which may close its queues
    before its worker processes are told to stop, and then waits 5 s for each worker.
    """
    try:
        call(*args)
    except (Exception, SystemExit) as e:
        return type(e), str(e)
    return None


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("fault", ["corrupt_image", "bad_label", "size_mismatch"])
def test_dataset_error_during_training_is_one_line(tmp_path, capsys, fault, workers):
    from tools.train_seg import main

    write_folder(tmp_path / "data", count=8)
    expected = spoil(tmp_path / "data", fault)
    argv = tiny_run_args(tmp_path / "runs", "bad", "--dataset", "folder", "--root", str(tmp_path / "data"),
                         "--data-kwargs", "{}", "--batch-size", "2", "--crop-size", "32", "--workers", str(workers))
    assert raised(main, argv) == (SystemExit, "1")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # not PyTorch's worker traceback
    assert re.search(expected, err), err


class Faulty(torch.utils.data.Dataset):
    """Sample 3 fails with ``error``; the others are 2x2 images."""

    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 6

    def __getitem__(self, index):
        if index == 3:
            raise self.error
        return torch.zeros(3, 2, 2), torch.zeros(2, 2, dtype=torch.int64)


@pytest.mark.parametrize("error", [ValueError("mask of 'x.png' is bad"), FileNotFoundError("image 'y.jpg' vanished"),
                                   OSError(28, "No space left on device", "z.jpg")],
                         ids=lambda e: type(e).__name__)
def test_eval_loader_worker_raises_the_datasets_own_error(error):
    loader = build_eval_loader(Faulty(error), batch_size=2, workers=2)
    assert raised(list, loader) == (type(error), str(error))


def test_a_bug_in_a_worker_keeps_its_traceback():
    # Only the dataset's deliberate errors are shortened; any other error is a bug, and its report needs the
    # worker's traceback, which PyTorch pastes into the message.
    kind, message = raised(list, build_eval_loader(Faulty(KeyError("oops")), batch_size=2, workers=2))
    assert kind is KeyError and "Caught KeyError in DataLoader worker process" in message
    assert "Traceback" in message and "oops" in message
