"""COCO box mAP by the reference code: pycocotools' ``COCOeval`` over torchvision detectors' outputs.

Detections become COCO results (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``, ``score``) through
one function, :func:`detections_to_coco`, which the evaluator and the prediction JSON share: pycocotools run by
hand on a written predictions file gives exactly the numbers reported here.

Example::

    evaluator = CocoEvaluator(gt, category_ids=[1, 3, 7], classes=["cat", "dog", "bird"])
    for images, targets in loader:                       # each rank its shard of the images
        outputs = model(images)                          # boxes in the original images' pixels
        evaluator.update([int(t["image_id"]) for t in targets], outputs)
    evaluator.synchronize()                              # every rank now holds every rank's results
    metrics = evaluator.summarize()                      # {"ap": 0.41, "ap50": 0.68, ..., "per_class_ap": {...}}
    print(evaluator.summary_text)                        # COCOeval's 12 summary lines
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = ["CocoEvaluator", "detections_to_coco", "format_table", "STAT_KEYS"]

# The names of ``COCOeval.stats``, in its order (the 12 lines of ``COCOeval.summarize``).
STAT_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
             "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")
# COCO results keep boxes to a hundredth of a pixel: far below any IoU threshold's resolution, and the JSON
# stays short. Scores are kept as computed: rounding them could tie detections the model ranked apart.
BOX_DECIMALS = 2

_GT_KEYS = {"images": ("id",), "annotations": ("id", "image_id", "category_id", "bbox", "area"),
            "categories": ("id",)}


def _pycocotools() -> Any:
    try:
        import pycocotools.coco
        import pycocotools.cocoeval
    except ImportError as e:  # an optional dependency of detection only
        raise ImportError("COCO evaluation needs pycocotools: pip install pycocotools") from e
    return pycocotools


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} must be a tensor, got {type(value).__name__}") from e


def detections_to_coco(image_ids: Sequence[int], outputs: Sequence[Mapping[str, torch.Tensor]],
                       category_ids: Sequence[int], *, score_thresh: float = 0.0) -> List[Dict[str, Any]]:
    """Detector outputs -> COCO results, the list a predictions JSON holds.

    Args:
        image_ids: the COCO image id of each output.
        outputs: torchvision detectors' eval outputs, one per image: ``"boxes"`` ``(K, 4)`` xyxy in the original
            image's pixels, ``"scores"`` ``(K,)``, ``"labels"`` ``(K,)`` in ``1..C``.
        category_ids: ``(C,)`` the COCO category id of label ``k + 1`` at position ``k``.
        score_thresh: keep detections scoring at least this.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` in the order of the images and,
        within an image, of the outputs.
    """
    if len(image_ids) != len(outputs):
        raise ValueError(f"{len(image_ids)} image ids for {len(outputs)} outputs: give one id per output")
    lookup = np.asarray(list(category_ids), dtype=np.int64)
    num_classes = len(lookup)
    results: List[Dict[str, Any]] = []
    for i, (image_id, output) in enumerate(zip(image_ids, outputs)):
        where = f"outputs[{i}] (image id {image_id})"
        missing = [key for key in ("boxes", "scores", "labels") if key not in output]
        if missing:
            raise ValueError(f"{where} has no {missing}: detector eval outputs hold 'boxes', 'scores' and "
                             f"'labels', got keys {sorted(output)}")
        boxes = _as_tensor(output["boxes"], f"{where}['boxes']")
        scores = _as_tensor(output["scores"], f"{where}['scores']")
        labels = _as_tensor(output["labels"], f"{where}['labels']")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}['boxes'] must be (K, 4) xyxy, got shape {tuple(boxes.shape)}")
        k = boxes.shape[0]
        for name, t in (("scores", scores), ("labels", labels)):
            if tuple(t.shape) != (k,):
                raise ValueError(f"{where}['{name}'] must be ({k},) for {k} boxes, got shape {tuple(t.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{where}['labels'] must be integers 1..{num_classes}, got dtype {labels.dtype}")
        bad = labels[(labels < 1) | (labels > num_classes)]
        if bad.numel():
            raise ValueError(f"{where}['labels'] holds {bad.unique()[:10].tolist()}, outside 1..{num_classes}: "
                             f"label k is category_ids[k - 1] of {num_classes} classes (0, the background, is "
                             f"never a detection)")
        boxes, scores = boxes.double(), scores.double()
        if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
            raise ValueError(f"{where} holds non-finite boxes or scores (NaN or inf): the model has diverged")
        wh = boxes[:, 2:] - boxes[:, :2]
        if (wh < 0).any():
            row = int((wh < 0).any(1).nonzero()[0])
            raise ValueError(f"{where}['boxes'][{row}] = {boxes[row].tolist()} is not xyxy (x2 >= x1, y2 >= y1)")
        keep = scores >= score_thresh
        xywh = np.round(torch.cat([boxes[:, :2], wh], 1)[keep].numpy(), BOX_DECIMALS).tolist()
        cats = lookup[labels[keep].numpy() - 1].tolist()
        results.extend({"image_id": int(image_id), "category_id": cat, "bbox": box, "score": score}
                       for cat, box, score in zip(cats, xywh, scores[keep].tolist()))
    return results


class CocoEvaluator:
    """Box AP/AR of detections against a COCO-format ground truth, computed by pycocotools' ``COCOeval``.

    Every image of the ground truth is evaluated, as ``COCOeval`` does by default: an image given no
    detections counts (its boxes are misses), crowd boxes are ignored regions, and detections on an image
    without ground truth are false positives. The categories evaluated are ``category_ids`` (normally all the
    file's).

    Args:
        gt: the COCO ground truth dict (``images``, ``annotations``, ``categories``), as in a COCO json file;
            it is copied, not modified.
        category_ids: ``(C,)`` the COCO category id of contiguous label ``k + 1`` at position ``k``.
        classes: ``(C,)`` the class names, in label order.
    """

    def __init__(self, gt: Mapping[str, Any], *, category_ids: Sequence[int], classes: Sequence[str]) -> None:
        coco = _pycocotools().coco
        for key, fields in _GT_KEYS.items():
            if key not in gt:
                raise ValueError(f"the ground truth has no {key!r}: a COCO file holds 'images', 'annotations' "
                                 f"and 'categories'")
            for j, entry in enumerate(gt[key]):
                missing = [f for f in fields if f not in entry]
                if missing:
                    raise ValueError(f"ground truth {key}[{j}] has no {missing} (COCO {key} need {list(fields)})")
        self.category_ids = [int(c) for c in category_ids]
        self.classes = [str(c) for c in classes]
        if len(self.classes) != len(self.category_ids):
            raise ValueError(f"{len(self.classes)} class names for {len(self.category_ids)} category ids: give "
                             f"one name per category")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category_ids repeat an id: {self.category_ids}")
        known = {int(c["id"]) for c in gt["categories"]}
        unknown = [c for c in self.category_ids if c not in known]
        if unknown:
            raise ValueError(f"category id(s) {unknown} are not among the ground truth's categories "
                             f"{sorted(known)}")
        self._gt = coco.COCO()
        self._gt.dataset = copy.deepcopy(dict(gt))  # COCOeval writes an 'ignore' flag into every annotation
        with contextlib.redirect_stdout(io.StringIO()):
            self._gt.createIndex()
        self._image_ids = set(self._gt.getImgIds())
        self._results: Dict[int, List[Dict[str, Any]]] = {}
        self.summary_text = ""

    def reset(self) -> None:
        """Forget every detection (the ground truth stays)."""
        self._results = {}
        self.summary_text = ""

    def update(self, image_ids: Sequence[int], outputs: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Add the detections of some images; see :func:`detections_to_coco` for ``outputs``. Each image is
        given once (an empty output included: that image then has no detections)."""
        ids = [int(i) for i in image_ids]
        for image_id in ids:
            if image_id not in self._image_ids:
                raise ValueError(f"image id {image_id} is not in the ground truth ({len(self._image_ids)} images)")
            if image_id in self._results:
                raise ValueError(f"image id {image_id} was given twice: its detections would count twice")
        if len(set(ids)) != len(ids):
            raise ValueError(f"image ids repeat within one update: {ids}")
        per_image: Dict[int, List[Dict[str, Any]]] = {i: [] for i in ids}
        for det in detections_to_coco(ids, outputs, self.category_ids):
            per_image[det["image_id"]].append(det)
        self._results.update(per_image)

    def synchronize(self) -> None:
        """Merge every process's detections under ``torch.distributed`` (a no-op on one process).

        A collective: every rank calls it, and afterwards every rank holds all results, so ``summarize`` gives
        the single-process numbers on any rank. An image given on several ranks (a sampler that pads its shards
        by repeating images) is kept once, from the lowest rank.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: List[Optional[Dict[int, List[Dict[str, Any]]]]] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._results)
        merged: Dict[int, List[Dict[str, Any]]] = {}
        for part in gathered:
            for image_id, dets in (part or {}).items():
                merged.setdefault(image_id, dets)
        self._results = merged

    def _run_cocoeval(self) -> Any:
        pycocotools = _pycocotools()
        # Copies: loadRes adds 'area', 'id', 'iscrowd' and 'segmentation' to the dicts it is given.
        results = [dict(d) for image_id in sorted(self._results) for d in self._results[image_id]]
        with contextlib.redirect_stdout(io.StringIO()):
            if results:
                dt = self._gt.loadRes(results)
            else:  # loadRes cannot take an empty list; an empty result set scores every ground truth as missed
                dt = pycocotools.coco.COCO()
                dt.dataset = {"images": list(self._gt.dataset["images"]), "annotations": [],
                              "categories": copy.deepcopy(self._gt.dataset["categories"])}
                dt.createIndex()
            evaluation = pycocotools.cocoeval.COCOeval(self._gt, dt, iouType="bbox")
            evaluation.params.catIds = sorted(self.category_ids)
            evaluation.evaluate()
            evaluation.accumulate()
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            evaluation.summarize()
        self.summary_text = text.getvalue().rstrip("\n")
        return evaluation

    def summarize(self) -> Dict[str, Any]:
        """COCOeval over every image of the ground truth; also sets :attr:`summary_text` (its 12 lines).

        Returns:
            ``{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small",
            "ar_medium", "ar_large"}``: ``COCOeval.stats`` as fractions, ``None`` where COCOeval reports -1
            (no ground truth of that kind); ``"per_class_ap"``: ``{class name: AP or None}``;
            ``"num_images"`` (evaluated, i.e. the ground truth's) and ``"num_detections"``.
        """
        unseen = len(self._image_ids - set(self._results))
        if unseen and self._results:
            warnings.warn(f"{unseen} of {len(self._image_ids)} ground-truth images were never given to update() "
                          f"(under torch.distributed: call synchronize() first); they count as images without "
                          f"detections", stacklevel=2)
        evaluation = self._run_cocoeval()
        metrics: Dict[str, Any] = {key: None if s < 0 else float(s) for key, s in zip(STAT_KEYS, evaluation.stats)}
        # detectron2's per-category AP: precision at every IoU threshold and recall level, all areas, 100 dets.
        precision = evaluation.eval["precision"]  # (IoU thresholds, recall levels, categories, areas, max dets)
        area = evaluation.params.areaRngLbl.index("all")
        max_dets = evaluation.params.maxDets.index(100)
        cat_index = {c: j for j, c in enumerate(evaluation.params.catIds)}
        per_class: Dict[str, Optional[float]] = {}
        for name, cat in zip(self.classes, self.category_ids):
            p = precision[:, :, cat_index[cat], area, max_dets]
            p = p[p > -1]
            per_class[name] = float(np.mean(p)) if p.size else None
        metrics["per_class_ap"] = per_class
        metrics["num_images"] = len(self._image_ids)
        metrics["num_detections"] = sum(len(d) for d in self._results.values())
        return metrics


def format_table(metrics: Mapping[str, Any], classes: Sequence[str]) -> str:
    """A per-class AP text table followed by the headline AP/AR numbers (in percent) and the counts."""
    width = max([len("detections")] + [len(c) for c in classes])

    def pct(v: Optional[float]) -> str:
        return "   n/a" if v is None or v != v else f"{100 * v:6.2f}"

    per_class = metrics.get("per_class_ap", {})
    lines = [f"{'class':<{width}}  {'AP':>6}", "-" * (width + 8)]
    lines += [f"{name:<{width}}  {pct(per_class.get(name))}" for name in classes]
    lines.append("-" * (width + 8))
    for label, key in (("AP", "ap"), ("AP50", "ap50"), ("AP75", "ap75"), ("AP small", "ap_small"),
                       ("AP medium", "ap_medium"), ("AP large", "ap_large"), ("AR@100", "ar100")):
        lines.append(f"{label:<{width}}  {pct(metrics.get(key))}")
    for label in ("images", "detections"):
        if f"num_{label}" in metrics:
            lines.append(f"{label:<{width}}  {metrics[f'num_{label}']:>6}")
    return "\n".join(lines)
