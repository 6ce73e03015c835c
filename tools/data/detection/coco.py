"""COCO instances files: ``annotations/instances_<split>.json`` beside the images, the real COCO fields.

Layout (COCO 2017 is ``root/train2017/`` + ``root/annotations/instances_train2017.json``, split ``train2017``)::

    root/annotations/instances_<split>.json
    root/images/<split>/<file_name>   or   root/<split>/<file_name>   or   root/images/<file_name>

COCO's category ids (1..90 with gaps for COCO itself) become the contiguous labels 1..C in increasing id order;
``category_ids`` maps them back. Boxes partly outside their image are clipped to it; boxes of zero size are
dropped with one warning. The file is read and checked once, whole, before anything is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..base import check_root
from ..io import read_image
from .base import DetectionDataset, DetectionTransform, Target, clip_boxes, warn_dropped

__all__ = ["CocoDetection", "coco_detection", "LAYOUT"]

LAYOUT = ("annotations/instances_<split>.json with the images in images/<split>/, <split>/ or images/ "
          "(COCO 2017: train2017/ and annotations/instances_train2017.json)")

_ANNOTATION_KEYS = ("image_id", "category_id", "bbox")
_IMAGE_KEYS = ("id", "file_name", "width", "height")


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read COCO annotation file {str(path)!r}: not valid JSON ({e})") from None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(content, dict) or not isinstance(content.get(k), list)]
    if missing:
        raise ValueError(f"COCO annotation file {str(path)!r} has no {' or '.join(repr(k) for k in missing)} list; "
                         f"a COCO instances file holds the lists 'images', 'annotations' and 'categories'")
    return content


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


class CocoDetection(DetectionDataset):
    """The images of one COCO instances file, with their boxes.

    Args:
        ann_file: the ``instances_<split>.json`` file.
        image_dir: the folder ``file_name`` is relative to.
        keep_empty: keep images without any non-crowd box (evaluation does); training drops them, as
            torchvision's references do.
    """

    def __init__(self, ann_file: Union[str, Path], image_dir: Union[str, Path], *,
                 transform: Optional[DetectionTransform] = None, keep_empty: bool = True, name: str = "") -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        where = f"COCO annotation file {str(self.ann_file)!r}"
        content = _read_json(self.ann_file)

        categories: Dict[int, Dict[str, Any]] = {}
        for k, cat in enumerate(content["categories"]):
            if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
                raise ValueError(f"{where}: category {k} has no integer 'id' or no 'name'; every category needs both")
            if cat["id"] in categories:
                raise ValueError(f"{where}: category id {cat['id']} appears twice; category ids must be distinct")
            categories[cat["id"]] = cat
        if not categories:
            raise ValueError(f"{where}: the 'categories' list is empty; a detection set needs at least one category")
        category_ids = sorted(categories)
        label_of = {c: k + 1 for k, c in enumerate(category_ids)}
        super().__init__(classes=[categories[c]["name"] for c in category_ids], category_ids=category_ids,
                         transform=transform, name=name or f"coco/{self.ann_file.stem}")
        self._categories = [{key: categories[c][key] for key in ("id", "name", "supercategory")
                             if key in categories[c]} for c in category_ids]

        images: Dict[int, Dict[str, Any]] = {}
        for k, image in enumerate(content["images"]):
            missing = [key for key in _IMAGE_KEYS if not isinstance(image, dict) or key not in image]
            if missing:
                raise ValueError(f"{where}: image {k} has no {', '.join(repr(m) for m in missing)}; every image needs "
                                 f"'id', 'file_name', 'width' and 'height'")
            if not isinstance(image["id"], int) or isinstance(image["id"], bool):
                raise ValueError(f"{where}: image {k} has id {image['id']!r}; image ids must be integers")
            if not (isinstance(image["width"], int) and isinstance(image["height"], int) and image["width"] > 0
                    and image["height"] > 0):
                raise ValueError(f"{where}: image id {image['id']} has width {image['width']!r} and height "
                                 f"{image['height']!r}; expected positive integers (pixels)")
            if image["id"] in images:
                raise ValueError(f"{where}: image id {image['id']} appears twice; image ids must be distinct")
            images[image["id"]] = image

        per_image: Dict[int, List[Tuple[int, int, List[float], float, int]]] = {i: [] for i in images}
        dropped = 0
        for k, ann in enumerate(content["annotations"]):
            missing = [key for key in _ANNOTATION_KEYS if not isinstance(ann, dict) or key not in ann]
            if missing:
                ident = f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else ""
                raise ValueError(f"{where}: annotation {k}{ident} has no {', '.join(repr(m) for m in missing)}; every "
                                 f"annotation needs 'image_id', 'category_id' and 'bbox' ([x, y, width, height])")
            ident = f"annotation {k} (id {ann['id']})" if "id" in ann else f"annotation {k}"
            bbox = ann["bbox"]
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_number(v) for v in bbox)):
                raise ValueError(f"{where}: {ident} has bbox {bbox!r}; expected [x, y, width, height], 4 numbers")
            if ann["category_id"] not in label_of:
                raise ValueError(f"{where}: {ident} names category_id {ann['category_id']!r}, which is not among the "
                                 f"file's categories ({', '.join(map(str, category_ids))})")
            if ann["image_id"] not in images:
                raise ValueError(f"{where}: {ident} names image_id {ann['image_id']!r}, which is not among the "
                                 f"file's {len(images)} images")
            image = images[ann["image_id"]]
            x, y, w, h = (float(v) for v in bbox)
            box, valid = clip_boxes(np.array([[x, y, x + w, y + h]], np.float32), image["width"], image["height"])
            if not valid[0]:
                dropped += 1
                continue
            area = float(ann["area"]) if _number(ann.get("area")) else float(
                (box[0, 2] - box[0, 0]) * (box[0, 3] - box[0, 1]))
            ann_id = ann["id"] if isinstance(ann.get("id"), int) else None
            per_image[ann["image_id"]].append((label_of[ann["category_id"]], int(bool(ann.get("iscrowd", 0))),
                                               box[0].tolist(), area, ann_id))

        # Annotations without an id get fresh ones after the file's largest, so coco_gt() ids stay distinct.
        next_id = 1 + max((a[4] for anns in per_image.values() for a in anns if a[4] is not None), default=0)
        self.records: List[Dict[str, Any]] = []
        for image_id in sorted(images):
            anns = per_image[image_id]
            if not keep_empty and not any(crowd == 0 for _, crowd, _, _, _ in anns):
                continue
            ids = []
            for a in anns:
                ids.append(a[4] if a[4] is not None else next_id)
                next_id += a[4] is None
            image = images[image_id]
            self.records.append({
                "id": image_id, "file_name": str(image["file_name"]), "height": image["height"],
                "width": image["width"], "path": self.image_dir / str(image["file_name"]),
                "boxes": np.array([a[2] for a in anns], np.float32).reshape(-1, 4),
                "labels": np.array([a[0] for a in anns], np.int64),
                "iscrowd": np.array([a[1] for a in anns], np.uint8),
                "area": np.array([a[3] for a in anns], np.float32),
                "ann_ids": ids,
            })
        if not self.records:
            raise ValueError(f"{where} holds no images{'' if keep_empty else ' with a non-crowd box'}")
        missing_files = [r["file_name"] for r in self.records if not r["path"].is_file()]
        if missing_files:
            raise FileNotFoundError(f"{len(missing_files)} image(s) named in {str(self.ann_file)!r} are missing from "
                                    f"{str(self.image_dir)!r}, e.g. {missing_files[0]!r}")
        warn_dropped(dropped, where)

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, index: int) -> str:
        r = self.records[index]
        return f"{str(r['path'])!r} (image id {r['id']} in {str(self.ann_file)!r})"

    def image_id(self, index: int) -> int:
        return self.records[index]["id"]

    def image_size(self, index: int) -> Tuple[int, int]:
        r = self.records[index]
        return r["height"], r["width"]

    def file_name(self, index: int) -> str:
        return self.records[index]["file_name"]

    def annotations(self, index: int) -> Target:
        r = self.records[index]
        return {key: r[key] for key in ("boxes", "labels", "iscrowd", "area")}

    def load(self, index: int) -> Tuple[np.ndarray, Target]:
        r = self.records[index]
        image = read_image(r["path"])
        if image.shape[:2] != (r["height"], r["width"]):
            raise ValueError(f"image file {str(r['path'])!r} is {image.shape[1]}x{image.shape[0]} but "
                             f"{str(self.ann_file)!r} gives it as {r['width']}x{r['height']} (width x height)")
        return image, self.annotations(index)

    def coco_gt(self) -> Dict[str, Any]:
        """The file's content for this dataset's images (ids, file names, areas and crowd flags as in the file;
        boxes clipped to their image, boxes of zero size left out)."""
        images, annotations = [], []
        for r in self.records:
            images.append({"id": r["id"], "width": r["width"], "height": r["height"], "file_name": r["file_name"]})
            for ann_id, box, label, crowd, area in zip(r["ann_ids"], r["boxes"].tolist(), r["labels"].tolist(),
                                                       r["iscrowd"].tolist(), r["area"].tolist()):
                annotations.append({"id": ann_id, "image_id": r["id"], "category_id": self.category_ids[label - 1],
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": area,
                                    "iscrowd": crowd})
        return {"images": images, "annotations": annotations, "categories": [dict(c) for c in self._categories]}


def coco_detection(*, root: Union[str, Path, None], split: str = "train",
                   transform: Optional[DetectionTransform] = None, keep_empty: bool = True) -> CocoDetection:
    """The COCO layout (see the module docstring); ``split`` names ``annotations/instances_<split>.json``."""
    root = check_root(root, LAYOUT)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        found = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
        hint = f"; found {', '.join(found)}" if found else ""
        raise FileNotFoundError(f"COCO annotation file {str(ann_file)!r} does not exist{hint}; expected {LAYOUT}")
    candidates: Sequence[Path] = (root / "images" / split, root / split, root / "images")
    image_dir = next((d for d in candidates if d.is_dir()), None)
    if image_dir is None:
        raise FileNotFoundError(f"no image folder for split {split!r}: none of "
                                f"{', '.join(repr(str(d)) for d in candidates)} exists; expected {LAYOUT}")
    return CocoDetection(ann_file, image_dir, transform=transform, keep_empty=keep_empty, name=f"coco/{split}")
