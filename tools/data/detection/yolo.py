"""The Ultralytics/YOLO txt layout: one label file per image, one normalized ``class cx cy w h`` line per box.

Layout (``<split>`` is ``train``, ``val``...)::

    root/images/<split>/<stem>.jpg    root/labels/<split>/<stem>.txt     or the Roboflow export's
    root/<split>/images/<stem>.jpg    root/<split>/labels/<stem>.txt
    root/data.yaml                    ``names:`` as a list or an {index: name} mapping, or
    root/classes.txt                  one class name per line (line k names class index k)

Class index ``k`` in a label file becomes label ``k + 1`` (0 is the detectors' background). An image without a
label file holds no box, as in Ultralytics. Every label file is read and checked when the dataset is built;
image sizes come from the file headers, so nothing is decoded before it is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import yaml
from PIL import Image

from ..base import check_root
from ..io import list_images, read_image
from .base import DetectionDataset, DetectionTransform, Target, clip_boxes, warn_dropped

__all__ = ["YoloDetection", "yolo_detection", "read_class_names", "LAYOUT"]

LAYOUT = ("images/<split>/ and labels/<split>/ (or <split>/images/ and <split>/labels/) with <stem>.txt label files "
          "of 'class cx cy w h' lines normalized to [0, 1], and the class names in data.yaml or classes.txt")

_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height (OpenCV's decoder applies them)


def read_class_names(root: Path) -> Tuple[List[str], Path]:
    """The class names of ``root/data.yaml`` (``names:``) or else ``root/classes.txt``, and the file read."""
    data_yaml, classes_txt = root / "data.yaml", root / "classes.txt"
    if data_yaml.is_file():
        try:
            content = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"cannot read {str(data_yaml)!r}: not valid YAML ({' '.join(str(e).split())})") from None
        names = content.get("names") if isinstance(content, dict) else None
        if isinstance(names, dict):
            if sorted(names) != list(range(len(names))):
                raise ValueError(f"{str(data_yaml)!r}: the 'names' mapping has keys {sorted(names, key=str)}; expected "
                                 f"the class indices 0..{len(names) - 1}")
            names = [names[k] for k in range(len(names))]
        if not isinstance(names, list) or not names:
            raise ValueError(f"{str(data_yaml)!r} has no 'names' list; expected 'names: [a, b]' or "
                             f"'names: {{0: a, 1: b}}'")
        count = content.get("nc")
        if count is not None and count != len(names):
            raise ValueError(f"{str(data_yaml)!r}: nc is {count!r} but 'names' lists {len(names)} classes")
        return [str(n) for n in names], data_yaml
    if classes_txt.is_file():
        names = [line.strip() for line in classes_txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise ValueError(f"class list {str(classes_txt)!r} is empty; expected one class name per line")
        return names, classes_txt
    raise FileNotFoundError(f"no class names: neither {str(data_yaml)!r} nor {str(classes_txt)!r} exists; "
                            f"expected {LAYOUT}")


def _parse_label_file(path: Path, num_classes: int, names_file: Path) -> Tuple[np.ndarray, np.ndarray, int]:
    """``(labels (K,) int64 1..C, boxes (K, 4) float32 xyxy normalized and clipped to [0, 1], dropped count)``."""
    labels, boxes = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 5 or not np.isfinite(values).all() or values[0] != int(values[0]):
            raise ValueError(f"{str(path)!r} line {n}: expected 5 numbers 'class cx cy w h' (an integer class index, "
                             f"then the box normalized to [0, 1]), got {line.strip()!r}")
        cls = int(values[0])
        if not 0 <= cls < num_classes:
            raise ValueError(f"{str(path)!r} line {n}: class index {cls} is outside the {num_classes} class names of "
                             f"{str(names_file)!r} (0..{num_classes - 1})")
        cx, cy, w, h = values[1:]
        labels.append(cls + 1)
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    clipped, valid = clip_boxes(np.array(boxes, np.float32).reshape(-1, 4), 1.0, 1.0)
    return np.array(labels, np.int64)[valid], clipped[valid], int((~valid).sum())


class YoloDetection(DetectionDataset):
    """Images with YOLO label files (see the module docstring).

    Args:
        images: the image files, in order.
        label_dir: the folder of ``<stem>.txt`` label files.
        classes: the class names; ``names_file`` is the file they came from (for messages).
        keep_empty: keep images without a box (evaluation does; training drops them).
    """

    def __init__(self, images: List[Path], label_dir: Path, *, classes: List[str], names_file: Path,
                 transform: Optional[DetectionTransform] = None, keep_empty: bool = True, name: str = "") -> None:
        super().__init__(classes=classes, transform=transform, name=name)
        self.label_dir = Path(label_dir)
        self.samples: List[Tuple[Path, Optional[Path], np.ndarray, np.ndarray]] = []
        dropped, first_dropped = 0, None
        for image in images:
            label_file = self.label_dir / f"{image.stem}.txt"
            if label_file.is_file():
                labels, boxes, n = _parse_label_file(label_file, len(classes), names_file)
                dropped += n
                first_dropped = first_dropped or (label_file if n else None)
            else:
                label_file, labels, boxes = None, np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
            if keep_empty or len(labels):
                self.samples.append((image, label_file, labels, boxes))
        if not self.samples:
            raise ValueError(f"{self.name}: no image{'' if keep_empty else ' with a box'} in the split "
                             f"(labels in {str(self.label_dir)!r})")
        self._sizes: Dict[int, Tuple[int, int]] = {}
        warn_dropped(dropped, f"YOLO labels in {str(self.label_dir)!r} (first in {str(first_dropped)!r})")

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        image, label_file = self.samples[index][:2]
        return f"{str(image)!r} (labels {str(label_file) if label_file else 'none'!r})"

    def file_name(self, index: int) -> str:
        return self.samples[index][0].name

    def image_size(self, index: int) -> Tuple[int, int]:
        if index not in self._sizes:
            path = self.samples[index][0]
            try:
                with Image.open(path) as im:
                    width, height = im.size
                    if im.getexif().get(0x0112) in _ROTATED:
                        width, height = height, width
            except FileNotFoundError:
                raise FileNotFoundError(f"image file not found: {str(path)!r}") from None
            except OSError as e:  # Pillow's error for files it cannot identify
                raise ValueError(f"cannot read the size of image file {str(path)!r}: {e}") from None
            self._sizes[index] = (height, width)
        return self._sizes[index]

    def _target(self, index: int, height: int, width: int) -> Target:
        _, _, labels, boxes = self.samples[index]
        boxes = boxes * np.array([width, height, width, height], np.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return {"boxes": boxes, "labels": labels, "iscrowd": np.zeros(len(labels), np.uint8),
                "area": area.astype(np.float32)}

    def annotations(self, index: int) -> Target:
        return self._target(index, *self.image_size(index))

    def load(self, index: int) -> Tuple[np.ndarray, Target]:
        image = read_image(self.samples[index][0])
        self._sizes[index] = image.shape[:2]
        return image, self._target(index, *image.shape[:2])


def yolo_detection(*, root: Union[str, Path, None], split: str = "train",
                   transform: Optional[DetectionTransform] = None, keep_empty: bool = True) -> YoloDetection:
    """The YOLO txt layout (see the module docstring)."""
    root = check_root(root, LAYOUT)
    pairs = [(root / "images" / split, root / "labels" / split), (root / split / "images", root / split / "labels")]
    image_dir, label_dir = next(((i, lab) for i, lab in pairs if i.is_dir()), pairs[0])
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {str(image_dir)!r} does not exist (nor {str(pairs[1][0])!r}); "
                                f"expected {LAYOUT}")
    if not label_dir.is_dir():
        raise FileNotFoundError(f"label folder {str(label_dir)!r} does not exist; expected {LAYOUT}")
    classes, names_file = read_class_names(root)
    images = list_images(image_dir)
    if not images:
        raise ValueError(f"the split {split!r} holds no images: {str(image_dir)!r}")
    return YoloDetection(images, label_dir, classes=classes, names_file=names_file, transform=transform,
                         keep_empty=keep_empty, name=f"yolo/{split}")
