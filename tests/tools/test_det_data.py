"""Detection layouts read their fixtures; coco_gt() is what pycocotools scores; the synthetic set's boxes are its
masks' boxes; grouped batches are deterministic, cover the shard and resume; bad input fails in one line."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tools.data.detection import build_detection_dataset, det_eval_transform, list_detection_datasets
from tools.data.detection.loaders import (GroupedBatchSampler, aspect_ratio_groups, build_detection_eval_loader,
                                          build_detection_train_loader)
from tools.data.detection.synthetic import DETECTION_SHAPES, make_instances
from tools.data.loaders import SeededShardSampler

from tests.tools.fixtures import write_image

# ---------------------------------------------------------------------------------------------------- fixtures

# Category ids with gaps, listed out of order: labels follow the sorted ids (1 -> 1, 3 -> 2, 7 -> 3).
CATEGORIES = [{"id": 7, "name": "bird", "supercategory": "animal"}, {"id": 1, "name": "cat"},
              {"id": 3, "name": "dog"}]
IMAGES = [  # id, file_name, width, height
    {"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
    {"id": 20, "file_name": "b.png", "width": 40, "height": 56},  # no annotation at all
    {"id": 5, "file_name": "c.jpg", "width": 50, "height": 50},
    {"id": 30, "file_name": "d.jpg", "width": 32, "height": 32},  # a crowd box only
]
ANNOTATIONS = [
    {"id": 101, "image_id": 10, "category_id": 3, "bbox": [4.0, 5.0, 20.0, 10.0], "area": 150.0, "iscrowd": 0},
    {"id": 102, "image_id": 10, "category_id": 7, "bbox": [50.0, 40.0, 30.0, 20.0], "area": 600.0, "iscrowd": 0},
    {"id": 103, "image_id": 5, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 50.0], "area": 2000.0, "iscrowd": 1},
    {"id": 104, "image_id": 5, "category_id": 1, "bbox": [10.0, 12.0, 8.5, 6.0], "area": 40.0, "iscrowd": 0},
    {"id": 105, "image_id": 30, "category_id": 7, "bbox": [1.0, 1.0, 20.0, 20.0], "area": 300.0, "iscrowd": 1},
]


def coco_content():
    return {"info": {"description": "test"}, "images": copy.deepcopy(IMAGES),
            "annotations": copy.deepcopy(ANNOTATIONS), "categories": copy.deepcopy(CATEGORIES)}


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_coco(root, *, split="val", images_in="images/{split}", content=None):
    """A COCO layout under ``root`` with the images in ``images_in`` (``{split}`` filled in)."""
    content = coco_content() if content is None else content
    folder = root / images_in.format(split=split)
    for k, image in enumerate(content["images"]):
        write_image(folder / image["file_name"], noise(image["height"], image["width"], k))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(content))
    return path


YOLO_LABELS = {  # stem -> label file text; "e" has no label file
    "a": "0 0.5 0.5 0.25 0.5\n2 0.1 0.2 0.1 0.2\n",
    "b": "\n1 0.9 0.9 0.4 0.4\n",  # partly outside: clipped to the image
    "c": "",                       # an empty label file: no box
}
YOLO_SIZES = {"a": (40, 80), "b": (60, 60), "c": (30, 50), "e": (20, 20)}  # (height, width)


def write_yolo(root, *, split="train", names="list", roboflow=False):
    images = root / (f"{split}/images" if roboflow else f"images/{split}")
    labels = root / (f"{split}/labels" if roboflow else f"labels/{split}")
    for k, (stem, (h, w)) in enumerate(YOLO_SIZES.items()):
        write_image(images / f"{stem}.png", noise(h, w, k))
    labels.mkdir(parents=True, exist_ok=True)
    for stem, text in YOLO_LABELS.items():
        (labels / f"{stem}.txt").write_text(text)
    if names == "list":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [red, green, blue]\n")
    elif names == "dict":
        (root / "data.yaml").write_text("nc: 3\nnames:\n  0: red\n  1: green\n  2: blue\n")
    else:
        (root / "classes.txt").write_text("red\ngreen\nblue\n")
    return root


def perfect_detections(dataset):
    """Every evaluation target as a detection of score 1, in COCO's result format."""
    results = []
    for i in range(len(dataset)):
        _, target = dataset[i]
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            results.append({"image_id": target["image_id"], "category_id": dataset.category_ids[label - 1],
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": 1.0})
    return results


def coco_ap(gt, detections):
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[0]


def one_line_error(kind, call, match):
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert match in message, message
    return message


# ------------------------------------------------------------------------------------------------------- COCO


def test_registry_lists_every_layout():
    assert list_detection_datasets() == ["coco", "synthetic", "yolo"]


@pytest.mark.parametrize("images_in", ["images/{split}", "{split}", "images"])
def test_coco_reads_the_real_fields(tmp_path, images_in):
    write_coco(tmp_path, images_in=images_in)
    ds = build_detection_dataset("coco", root=tmp_path, split="val")
    assert ds.classes == ("cat", "dog", "bird") and ds.num_classes == 3 and ds.category_ids == [1, 3, 7]
    assert len(ds) == 4 and [ds.image_id(i) for i in range(4)] == [5, 10, 20, 30]  # sorted by id
    assert ds.image_size(1) == (48, 64) and ds.file_name(1) == "a.jpg"
    image, target = ds.load(1)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    # category 3 -> label 2, category 7 -> label 3; the second box is clipped to the 64x48 image
    np.testing.assert_array_equal(target["boxes"], [[4, 5, 24, 15], [50, 40, 64, 48]])
    assert target["labels"].tolist() == [2, 3] and target["boxes"].dtype == np.float32
    assert target["area"].tolist() == [150, 600] and target["iscrowd"].tolist() == [0, 0]
    _, crowd = ds.load(0)
    assert crowd["iscrowd"].tolist() == [1, 0] and crowd["labels"].tolist() == [1, 1]
    # dataset[i]: float image in [0, 1], crowd boxes left out of the training target
    img, t = ds[0]
    assert img.shape == (3, 50, 50) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert torch.equal(t["boxes"], torch.tensor([[10.0, 12.0, 18.5, 18.0]])) and t["labels"].tolist() == [1]
    assert t["image_id"] == 5 and t["labels"].dtype == torch.int64
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_coco_training_split_drops_images_without_a_non_crowd_box(tmp_path):
    write_coco(tmp_path)
    ds = build_detection_dataset("coco", root=tmp_path, split="val", keep_empty=False)
    assert [ds.image_id(i) for i in range(len(ds))] == [5, 10]


def test_coco_image_size_does_not_decode(tmp_path):
    write_coco(tmp_path)
    ds = build_detection_dataset("coco", root=tmp_path, split="val")
    (tmp_path / "images" / "val" / "a.jpg").write_bytes(b"spoilt")
    assert ds.image_size(1) == (48, 64) and ds.annotations(1)["labels"].tolist() == [2, 3]


def test_coco_gt_round_trips_through_pycocotools(tmp_path):
    write_coco(tmp_path)
    ds = build_detection_dataset("coco", root=tmp_path, split="val", transform=det_eval_transform())
    gt = ds.coco_gt()
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))  # plain JSON types only
    coco.createIndex()
    assert coco.getCatIds() == [1, 3, 7] and coco.loadCats(7)[0]["name"] == "bird"
    assert sorted(coco.getImgIds()) == [5, 10, 20, 30] and coco.loadImgs(20)[0]["height"] == 56
    assert sorted(coco.getAnnIds()) == [101, 102, 103, 104, 105]  # crowd boxes included, the file's ids
    assert coco.loadAnns(102)[0]["bbox"] == [50.0, 40.0, 14.0, 8.0]  # clipped like the training boxes
    assert coco.loadAnns(103)[0]["iscrowd"] == 1 and coco.loadAnns(104)[0]["area"] == 40.0
    # the targets given to a detector, returned as detections, score perfectly against coco_gt()
    assert coco_ap(gt, perfect_detections(ds)) == pytest.approx(1.0)


def test_coco_2017_layout(tmp_path):
    write_coco(tmp_path, split="val2017", images_in="{split}")
    ds = build_detection_dataset("coco", root=tmp_path, split="val2017")
    assert len(ds) == 4 and "val2017" in ds.describe(0)


# ------------------------------------------------------------------------------------------------------- YOLO


@pytest.mark.parametrize("names", ["list", "dict", "classes_txt"])
def test_yolo_reads_normalized_boxes(tmp_path, names):
    write_yolo(tmp_path, names=names)
    ds = build_detection_dataset("yolo", root=tmp_path, split="train")
    assert ds.classes == ("red", "green", "blue") and ds.category_ids == [1, 2, 3]
    assert [ds.file_name(i) for i in range(len(ds))] == ["a.png", "b.png", "c.png", "e.png"]
    assert ds.image_size(0) == (40, 80) and ds.image_id(3) == 3
    image, target = ds.load(0)
    assert image.shape == (40, 80, 3)
    np.testing.assert_allclose(target["boxes"], [[30, 10, 50, 30], [4, 4, 12, 12]], atol=1e-4)
    assert target["labels"].tolist() == [1, 3] and target["iscrowd"].tolist() == [0, 0]
    np.testing.assert_allclose(target["area"], [400, 64], atol=1e-3)
    np.testing.assert_allclose(ds.load(1)[1]["boxes"], [[42, 42, 60, 60]], atol=1e-4)  # clipped
    assert ds.load(2)[1]["boxes"].shape == (0, 4) and ds.load(3)[1]["labels"].shape == (0,)
    assert "none" in ds.describe(3)  # no label file


def test_yolo_layout_variants_and_training_split(tmp_path):
    write_yolo(tmp_path, roboflow=True)
    assert len(build_detection_dataset("yolo", root=tmp_path, split="train")) == 4
    train = build_detection_dataset("yolo", root=tmp_path, split="train", keep_empty=False)
    assert [train.file_name(i) for i in range(len(train))] == ["a.png", "b.png"]


def test_yolo_coco_gt_scores_its_own_targets(tmp_path):
    write_yolo(tmp_path)
    ds = build_detection_dataset("yolo", root=tmp_path, split="train")
    gt = ds.coco_gt()
    assert [im["height"] for im in gt["images"]] == [40, 60, 30, 20] and len(gt["annotations"]) == 3
    assert [c["name"] for c in gt["categories"]] == ["red", "green", "blue"]
    assert coco_ap(gt, perfect_detections(ds)) == pytest.approx(1.0)


# -------------------------------------------------------------------------------------------------- synthetic


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_synthetic_boxes_are_the_tight_boxes_of_the_masks():
    ds = build_detection_dataset("synthetic", split="train", num_images=40, image_size=96)
    counts, extents = [], []
    labels_seen = set()
    for i in range(len(ds)):
        image, masks, labels = ds.load_instances(i)
        _, target = ds.load(i)
        assert image.shape == (96, 96, 3) and masks.shape == (len(labels), 96, 96) and len(labels) >= 1
        assert masks.any((1, 2)).all() and (masks.sum(0) <= 1).all()  # none empty, disjoint
        np.testing.assert_array_equal(target["boxes"], [tight_box(m) for m in masks])
        np.testing.assert_array_equal(target["area"], masks.sum((1, 2)))
        assert target["labels"].tolist() == labels.tolist() and not target["iscrowd"].any()
        counts.append(len(labels))
        labels_seen |= set(labels.tolist())
        b = target["boxes"]
        extents += np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).tolist()
    assert labels_seen == set(range(1, len(DETECTION_SHAPES) + 1)) and ds.classes == DETECTION_SHAPES
    assert min(counts) == 1 and max(counts) >= 4
    # small and large objects, none tiny
    assert min(extents) >= 8 and np.percentile(extents, 10) < 20 and max(extents) > 45


def test_synthetic_is_deterministic_per_split_index_and_seed():
    a = build_detection_dataset("synthetic", split="val", num_images=4, seed=3)
    b = build_detection_dataset("synthetic", split="val", num_images=4, seed=3)
    for i in range(4):
        (ia, ta), (ib, tb) = a.load(i), b.load(i)
        assert np.array_equal(ia, ib) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    image, _, _ = make_instances(3, "val", 2)
    assert np.array_equal(image, a.load(2)[0])
    assert not np.array_equal(image, make_instances(4, "val", 2)[0])
    assert not np.array_equal(image, make_instances(3, "train", 2)[0])
    assert (len(build_detection_dataset("synthetic", split="train")),
            len(build_detection_dataset("synthetic", split="val"))) == (512, 64)
    assert a.image_size(0) == (96, 96) and a.image_id(3) == 3


def test_synthetic_coco_gt_scores_its_own_targets():
    ds = build_detection_dataset("synthetic", split="val", num_images=6, image_size=64)
    gt = ds.coco_gt()
    assert len(gt["images"]) == 6 and [c["id"] for c in gt["categories"]] == [1, 2, 3, 4]
    assert coco_ap(gt, perfect_detections(ds)) == pytest.approx(1.0)


def test_synthetic_refuses_bad_options():
    one_line_error(ValueError, lambda: build_detection_dataset("synthetic", split="dev"), "train, val, test")
    one_line_error(ValueError, lambda: build_detection_dataset("synthetic", num_images=0), "num_images")
    one_line_error(ValueError, lambda: build_detection_dataset("synthetic", image_size=8), "image_size")
    one_line_error(ValueError, lambda: build_detection_dataset("synthetic", size_range=(0.5, 0.2)), "size_range")


def test_synthetic_size_range_sets_the_object_sizes():
    ds = build_detection_dataset("synthetic", split="val", num_images=10, image_size=64, size_range=(0.5, 0.6))
    for i in range(len(ds)):
        boxes = ds.load(i)[1]["boxes"]
        extents = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert (extents <= 1.25 * 0.6 * 64).all()  # a tilted rectangle's box is up to 1.2x its extent
    _, masks, _ = ds.load_instances(0)
    assert masks.sum((1, 2)).max() > 0.1 * 64 * 64


# ---------------------------------------------------------------------------------------------------- loaders


class Sized(torch.utils.data.Dataset):
    """Images of the given ``(height, width)`` sizes; a sample is its index."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def image_size(self, index):
        return self.sizes[index]


SIZES = [(48, 64), (64, 48), (50, 50), (40, 80)] * 12  # four aspect-ratio groups, 48 images


def grouped(dataset, *, batch_size=4, seed=0, rank=0, world_size=1):
    shard = SeededShardSampler(dataset, seed=seed, rank=rank, world_size=world_size)
    return GroupedBatchSampler(shard, aspect_ratio_groups(dataset), batch_size=batch_size)


def test_aspect_ratio_groups_bin_portrait_landscape_and_square_apart():
    groups = aspect_ratio_groups(Sized([(48, 64), (64, 48), (50, 50), (40, 80), (480, 640), (427, 640)]))
    assert len(set(groups[:4])) == 4 and groups[0] == groups[4] and groups[5] != groups[4]


def test_grouped_batches_are_deterministic_grouped_and_cover_the_epoch():
    ds = Sized(SIZES)
    groups = aspect_ratio_groups(ds)
    s = grouped(ds)
    s.set_epoch(2)
    batches = list(s)
    again = grouped(ds)
    again.set_epoch(2)
    assert list(again) == batches
    assert len(batches) == len(s) == s.batches_per_epoch(4) == 12
    indices = [i for batch in batches for i, _ in batch]
    assert sorted(indices) == list(range(48))  # every sample once
    mixed = [b for b in batches if len({groups[i] for i, _ in b}) > 1]
    assert len(mixed) <= 3 and batches[len(batches) - len(mixed):] == mixed  # only the leftovers, at the end
    # the seeds are the shard sampler's, so augmentations match the ungrouped loader's
    plain = SeededShardSampler(ds, seed=0)
    plain.set_epoch(2)
    assert sorted(pair for b in batches for pair in b) == sorted(plain)
    s.set_epoch(3)
    assert list(s) != batches


def test_grouped_batches_drop_only_the_remainder():
    s = grouped(Sized(SIZES[:46]), batch_size=4)
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == 11 and all(len(b) == 4 for b in batches)
    assert len({i for b in batches for i, _ in b}) == 44


def test_grouped_batches_shard_over_ranks():
    ds = Sized(SIZES)
    shards = [grouped(ds, rank=r, world_size=2) for r in range(2)]
    seen = []
    for s in shards:
        s.set_epoch(1)
        seen.append([i for b in s for i, _ in b])
        assert len(s) == s.batches_per_epoch(4) == 6
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(48))


def test_grouped_batches_resume_exactly():
    s = grouped(Sized(SIZES))
    s.set_epoch(5)
    full = list(s)
    s.set_epoch(5, start=7 * 4)
    assert list(s) == full[7:] and len(s) == 5
    with pytest.raises(ValueError, match="multiple of the batch size 4"):
        s.set_epoch(5, start=6)


def test_train_loader_yields_lists_and_a_resumable_sampler():
    ds = build_detection_dataset("synthetic", split="val", num_images=8, image_size=48)
    loader, sampler = build_detection_train_loader(ds, batch_size=4, workers=0, seed=0)
    assert isinstance(sampler, GroupedBatchSampler) and len(loader) == sampler.batches_per_epoch(4) == 2
    sampler.set_epoch(0, start=4)
    [(images, targets)] = list(loader)
    assert isinstance(images, list) and len(images) == 4 and images[0].shape == (3, 48, 48)
    assert isinstance(targets, list) and set(targets[0]) == {"boxes", "labels", "image_id"}
    loader, sampler = build_detection_train_loader(ds, batch_size=4, workers=0, seed=0, group_aspect_ratio=False)
    assert isinstance(sampler, SeededShardSampler)
    sampler.set_epoch(0)
    assert len(next(iter(loader))[0]) == 4
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        build_detection_train_loader(ds, batch_size=16, workers=0, seed=0)


def test_eval_loader_shards_cover_the_set_once(tmp_path):
    write_coco(tmp_path)
    ds = build_detection_dataset("coco", root=tmp_path, split="val", transform=det_eval_transform())
    ids = []
    for rank in range(3):
        for images, targets in build_detection_eval_loader(ds, batch_size=2, rank=rank, world_size=3):
            assert len(images) == len(targets) <= 2
            ids += [t["image_id"] for t in targets]
    assert sorted(ids) == [5, 10, 20, 30]


def test_a_corrupt_image_in_a_worker_is_the_datasets_one_line_error(tmp_path):
    write_coco(tmp_path)
    (tmp_path / "images" / "val" / "c.jpg").write_bytes(b"not an image")
    ds = build_detection_dataset("coco", root=tmp_path, split="val")
    loader = build_detection_eval_loader(ds, workers=1)
    try:
        list(loader)
    except ValueError as e:  # not pytest.raises: its traceback would keep the loader's workers alive
        error = str(e)
    else:
        error = None
    assert error is not None and "\n" not in error and "cannot decode image file" in error and "c.jpg" in error


# -------------------------------------------------------------------------------------------------- bad input


def edit(content, fault):
    """Apply ``fault`` to a COCO dict; returns the text the error must contain."""
    kind, _, key = fault.partition(":")
    if kind == "top":
        del content[key]
        return f"no '{key}' list"
    if kind == "annotation":
        del content["annotations"][1][key]
        return f"annotation 1 (id 102) has no '{key}'"
    if kind == "image":
        del content["images"][2][key]
        return f"image 2 has no '{key}'"
    if fault == "unknown_category":
        content["annotations"][0]["category_id"] = 2
        return "names category_id 2, which is not among the file's categories (1, 3, 7)"
    if fault == "unknown_image":
        content["annotations"][3]["image_id"] = 99
        return "names image_id 99"
    if fault == "bad_bbox":
        content["annotations"][0]["bbox"] = [1, 2, 3]
        return "expected [x, y, width, height]"
    raise AssertionError(fault)


@pytest.mark.parametrize("fault", ["top:images", "top:annotations", "top:categories", "annotation:bbox",
                                   "annotation:image_id", "annotation:category_id", "image:id", "image:file_name",
                                   "image:width", "image:height", "unknown_category", "unknown_image", "bad_bbox"])
def test_bad_coco_file_is_one_line_naming_it(tmp_path, fault):
    content = coco_content()
    write_coco(tmp_path, content=coco_content())
    expected = edit(content, fault)
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text(json.dumps(content))
    message = one_line_error(ValueError, lambda: build_detection_dataset("coco", root=tmp_path, split="val"),
                             expected)
    assert str(path) in message


def test_missing_coco_files_are_one_line(tmp_path):
    one_line_error(FileNotFoundError, lambda: build_detection_dataset("coco", root=tmp_path / "x", split="val"),
                   "does not exist")
    write_coco(tmp_path)
    one_line_error(FileNotFoundError, lambda: build_detection_dataset("coco", root=tmp_path, split="train"),
                   "instances_train.json' does not exist; found instances_val.json")
    (tmp_path / "images" / "val" / "b.png").unlink()
    one_line_error(FileNotFoundError, lambda: build_detection_dataset("coco", root=tmp_path, split="val"),
                   "1 image(s) named in")
    (tmp_path / "annotations" / "instances_val.json").write_text("{not json")
    one_line_error(ValueError, lambda: build_detection_dataset("coco", root=tmp_path, split="val"), "not valid JSON")
    write_coco(tmp_path / "no_images")
    import shutil

    shutil.rmtree(tmp_path / "no_images" / "images")
    one_line_error(FileNotFoundError, lambda: build_detection_dataset("coco", root=tmp_path / "no_images",
                                                                      split="val"), "no image folder for split 'val'")


def test_corrupt_or_resized_coco_image_names_the_file(tmp_path):
    write_coco(tmp_path)
    ds = build_detection_dataset("coco", root=tmp_path, split="val")
    (tmp_path / "images" / "val" / "c.jpg").write_bytes(b"not an image")
    one_line_error(ValueError, lambda: ds[0], "cannot decode image file")
    write_image(tmp_path / "images" / "val" / "a.jpg", noise(10, 12))
    one_line_error(ValueError, lambda: ds[1], "a.jpg' is 12x10 but")


def test_zero_size_boxes_are_dropped_with_one_warning(tmp_path):
    content = coco_content()
    content["annotations"] += [
        {"id": 201, "image_id": 10, "category_id": 1, "bbox": [3.0, 3.0, 0.0, 5.0]},    # zero width in the file
        {"id": 202, "image_id": 10, "category_id": 1, "bbox": [70.0, 3.0, 5.0, 5.0]},   # outside: zero after clip
        {"id": 203, "image_id": 5, "category_id": 3, "bbox": [1.0, 1.0, 4.0, -2.0]},    # negative height
    ]
    path = write_coco(tmp_path, content=content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_detection_dataset("coco", root=tmp_path, split="val")
    assert len(caught) == 1 and "dropped 3 box(es) of zero size" in str(caught[0].message)
    assert str(path) in str(caught[0].message)
    assert ds.load(1)[1]["boxes"].shape == (2, 4) and len(ds.coco_gt()["annotations"]) == 5

    write_yolo(tmp_path / "yolo")
    (tmp_path / "yolo" / "labels" / "train" / "c.txt").write_text("0 0.5 0.5 0 0.3\n1 1.5 0.5 0.2 0.2\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_detection_dataset("yolo", root=tmp_path / "yolo", split="train")
    assert len(caught) == 1 and "dropped 2 box(es)" in str(caught[0].message) and "c.txt" in str(caught[0].message)


@pytest.mark.parametrize("line, expected", [
    ("0 0.5 0.5 0.2", "expected 5 numbers 'class cx cy w h'"),
    ("0 0.5 0.5 0.2 0.2 0.1 0.1", "expected 5 numbers"),
    ("car 0.5 0.5 0.2 0.2", "expected 5 numbers"),
    ("1.5 0.5 0.5 0.2 0.2", "an integer class index"),
    ("3 0.5 0.5 0.2 0.2", "class index 3 is outside the 3 class names of"),
])
def test_bad_yolo_line_is_one_line_naming_the_file(tmp_path, line, expected):
    write_yolo(tmp_path)
    (tmp_path / "labels" / "train" / "b.txt").write_text(f"1 0.5 0.5 0.1 0.1\n{line}\n")
    message = one_line_error(ValueError, lambda: build_detection_dataset("yolo", root=tmp_path, split="train"),
                             expected)
    assert "b.txt' line 2" in message


def test_missing_yolo_folders_and_names_are_one_line(tmp_path):
    write_yolo(tmp_path)
    one_line_error(FileNotFoundError, lambda: build_detection_dataset("yolo", root=tmp_path, split="val"),
                   "image folder")
    (tmp_path / "data.yaml").unlink()
    one_line_error(FileNotFoundError, lambda: build_detection_dataset("yolo", root=tmp_path, split="train"),
                   "neither")
    (tmp_path / "data.yaml").write_text("names: {0: a, 2: b}\n")
    one_line_error(ValueError, lambda: build_detection_dataset("yolo", root=tmp_path, split="train"),
                   "expected the class indices 0..1")
    (tmp_path / "data.yaml").write_text("nc: 4\nnames: [a, b, c]\n")
    one_line_error(ValueError, lambda: build_detection_dataset("yolo", root=tmp_path, split="train"), "nc is 4")
    (tmp_path / "data.yaml").write_text("names: [a, b, c]\n")
    import shutil

    shutil.rmtree(tmp_path / "labels" / "train")
    one_line_error(FileNotFoundError, lambda: build_detection_dataset("yolo", root=tmp_path, split="train"),
                   "label folder")
