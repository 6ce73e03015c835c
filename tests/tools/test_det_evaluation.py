"""COCO mAP: our evaluator gives exactly pycocotools' numbers on a fixed set, merges ranks without changing them,
scores an empty result set, and refuses malformed detections with one clear error."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tools.tasks.detection.evaluation import STAT_KEYS, CocoEvaluator, detections_to_coco, format_table

# Gapped category ids (as in COCO's own file); "cross" has no ground truth anywhere but is still detected.
CATEGORIES = [(1, "circle"), (3, "square"), (7, "triangle"), (10, "cross")]
CATEGORY_IDS = [c for c, _ in CATEGORIES]
CLASSES = [n for _, n in CATEGORIES]
# Every coordinate is a multiple of 1/4 and every score a multiple of 1/64: exact in float32, so the detector-
# style tensors and the user's JSON hold the same numbers.
IMAGES = [(10, 320, 240), (11, 200, 200), (12, 160, 120), (13, 256, 256), (14, 300, 300), (20, 64, 64)]
# (image id, category id, [x, y, w, h], area, iscrowd); areas as a mask's, below the box's
GT = [
    (10, 1, [20, 30, 20, 20], 314.0, 0),          # small (area < 32^2)
    (10, 3, [100, 50, 50, 40], 1900.0, 0),        # medium
    (10, 7, [150, 100, 120, 100], 11000.0, 0),    # large (area > 96^2)
    (11, 1, [0, 0, 150, 150], 17000.0, 1),        # a crowd region: detections inside it are ignored
    (11, 1, [160, 160, 36, 36], 1000.0, 0),
    (13, 3, [10, 10, 60, 60], 3600.0, 0),         # image 13 gets no detections: two misses
    (13, 3, [100, 100, 120, 120], 12000.0, 0),
    (14, 7, [40, 40, 24, 24], 300.0, 0),
    (14, 1, [100, 100, 90, 80], 5000.0, 0),
    (14, 1, [200, 20, 40, 30], 1100.0, 0),
    (20, 3, [8, 8, 16, 16], 256.0, 0),
]                                                 # image 12 has no ground truth at all
# (image id, category id, [x, y, w, h], score)
DETECTIONS = [
    (10, 1, [21, 31, 19.5, 19.25], 60 / 64),      # good small match
    (10, 3, [102, 52, 48, 40], 58 / 64),
    (10, 3, [101.5, 49.75, 50, 41], 33 / 64),     # duplicate of the square: a false positive
    (10, 7, [160, 110, 110, 95], 50 / 64),        # IoU ~0.79: a hit up to the 0.75 threshold
    (10, 1, [250, 10, 30, 30], 45 / 64),          # nothing there
    (11, 1, [10, 10, 40, 40], 62 / 64),           # inside the crowd region
    (11, 1, [60, 70, 50, 50], 40 / 64),           # inside the crowd region
    (11, 1, [161, 158, 36, 38.5], 20 / 64),
    (11, 3, [160, 160, 36, 36], 44 / 64),         # right place, wrong class
    (12, 7, [10, 10, 50, 50], 55 / 64),           # no ground truth on image 12
    (12, 1, [80.25, 60.5, 12.75, 12], 12 / 64),
    (14, 7, [44, 44, 24, 24], 57 / 64),           # IoU ~0.5
    (14, 1, [110, 105, 90, 80], 36 / 64),         # IoU ~0.7
    (14, 1, [202, 21, 40, 30], 36 / 64),          # same score as the one before
    (14, 1, [98, 99, 92, 82], 9 / 64),            # duplicate, low score
    (20, 3, [8.5, 8.25, 16, 16], 63 / 64),
    (20, 10, [30, 30, 20, 20], 30 / 64),          # a class without ground truth
]


def ground_truth() -> Dict[str, Any]:
    return {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in IMAGES],
        "annotations": [{"id": j + 1, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": z}
                        for j, (i, c, b, a, z) in enumerate(GT)],
        "categories": [{"id": c, "name": n} for c, n in CATEGORIES],
    }


def detector_outputs(image_ids: List[int]) -> List[Dict[str, torch.Tensor]]:
    """The detections of ``image_ids`` as torchvision detectors return them: xyxy, labels 1..C."""
    outputs = []
    for image_id in image_ids:
        rows = [d for d in DETECTIONS if d[0] == image_id]
        outputs.append({
            "boxes": torch.tensor([[x, y, x + w, y + h] for _, _, (x, y, w, h), _ in rows],
                                  dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([s for *_, s in rows], dtype=torch.float32),
            "labels": torch.tensor([CATEGORY_IDS.index(c) + 1 for _, c, _, _ in rows], dtype=torch.int64),
        })
    return outputs


def evaluator() -> CocoEvaluator:
    return CocoEvaluator(ground_truth(), category_ids=CATEGORY_IDS, classes=CLASSES)


def reference(tmp_path: Path, detections: List[tuple]) -> Tuple[COCOeval, str]:
    """pycocotools run by hand, as a user would: the ground truth file and a results JSON of xywh boxes."""
    gt_file, det_file = tmp_path / "gt.json", tmp_path / "detections.json"
    gt_file.write_text(json.dumps(ground_truth()))
    det_file.write_text(json.dumps([{"image_id": i, "category_id": c, "bbox": b, "score": s}
                                    for i, c, b, s in detections]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        evaluation = COCOeval(coco, coco.loadRes(str(det_file)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        evaluation.summarize()
    return evaluation, text.getvalue().rstrip("\n")


def all_image_ids() -> List[int]:
    return [i for i, _, _ in IMAGES]


def test_numbers_equal_pycocotools_on_a_results_file(tmp_path):
    ev = evaluator()
    ids = all_image_ids()
    random.Random(0).shuffle(ids)  # the order images arrive in must not matter
    ev.update(ids[:3], detector_outputs(ids[:3]))
    ev.update(ids[3:], detector_outputs(ids[3:]))
    metrics = ev.summarize()

    ref, ref_text = reference(tmp_path, DETECTIONS)
    expected = [None if s == -1 else float(s) for s in ref.stats]
    assert [metrics[k] for k in STAT_KEYS] == expected
    assert ev.summary_text == ref_text and len(ev.summary_text.splitlines()) == 12
    assert metrics["num_images"] == len(IMAGES) and metrics["num_detections"] == len(DETECTIONS)
    # the set is not degenerate: the numbers are neither all zero nor all one and differ between kinds
    assert 0.2 < metrics["ap"] < 0.8 and metrics["ap50"] > metrics["ap75"] > 0
    areas = [metrics[k] for k in ("ap_small", "ap_medium", "ap_large")]
    assert None not in areas and len(set(areas)) == 3


def test_per_class_ap_is_the_mean_valid_precision_of_its_category(tmp_path):
    ev = evaluator()
    ev.update(all_image_ids(), detector_outputs(all_image_ids()))
    per_class = ev.summarize()["per_class_ap"]
    ref, _ = reference(tmp_path, DETECTIONS)
    precision = ref.eval["precision"]  # (T, R, K, A, M); K in sorted category id order
    expected = {}
    for name, cat in zip(CLASSES, CATEGORY_IDS):
        p = precision[:, :, ref.params.catIds.index(cat), 0, 2]  # area "all", maxDets 100
        p = p[p > -1]
        expected[name] = float(np.mean(p)) if p.size else None
    assert per_class == expected
    assert per_class["cross"] is None  # detected but never in the ground truth
    assert all(0 < per_class[n] < 1 for n in ("circle", "square", "triangle"))
    # with 3 categories that have ground truth, COCO's AP is their mean
    assert np.mean([per_class[n] for n in ("circle", "square", "triangle")]) == pytest.approx(ev.summarize()["ap"])


def test_detections_are_written_as_xywh_with_category_ids():
    outputs = [{"boxes": torch.tensor([[10.25, 20.5, 30.75, 40.0], [0.1, 0.2, 5.3, 7.7]]),
                "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([4, 1])}]
    dets = detections_to_coco([7], outputs, CATEGORY_IDS)
    assert dets[0] == {"image_id": 7, "category_id": 10, "bbox": [10.25, 20.5, 20.5, 19.5],
                       "score": float(torch.tensor(0.9))}
    # float32 boxes rounded to a hundredth of a pixel: what the JSON holds and what the evaluator scores
    assert dets[1]["bbox"] == [0.1, 0.2, 5.2, 7.5] and dets[1]["category_id"] == 1
    assert detections_to_coco([7], outputs, CATEGORY_IDS, score_thresh=0.5) == dets[:1]
    json.dumps(dets)  # plain python numbers only


def test_zero_detections_score_zero_where_there_is_ground_truth(tmp_path):
    ev = evaluator()
    ev.update(all_image_ids(), detector_outputs([-1] * len(IMAGES)))  # no detection anywhere
    metrics = ev.summarize()
    assert metrics["num_detections"] == 0
    assert all(metrics[k] == 0.0 for k in STAT_KEYS)  # this set has small, medium and large ground truth
    assert metrics["per_class_ap"] == {"circle": 0.0, "square": 0.0, "triangle": 0.0, "cross": None}
    assert len(ev.summary_text.splitlines()) == 12
    # and with nothing given at all (a rank that saw no image), still no failure
    assert evaluator().summarize()["ap"] == 0.0


def test_a_missing_image_warns_and_counts_as_undetected(tmp_path):
    ev = evaluator()
    ids = [i for i in all_image_ids() if i != 10]
    ev.update(ids, detector_outputs(ids))
    with pytest.warns(UserWarning, match="1 of 6 ground-truth images were never given"):
        metrics = ev.summarize()
    ref, _ = reference(tmp_path, [d for d in DETECTIONS if d[0] != 10])
    assert [metrics[k] for k in STAT_KEYS] == [None if s == -1 else float(s) for s in ref.stats]


def test_format_table_lists_each_class_and_the_headline_numbers():
    ev = evaluator()
    ev.update(all_image_ids(), detector_outputs(all_image_ids()))
    metrics = ev.summarize()
    table = format_table(metrics, CLASSES)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "AP"]
    assert lines[2].split() == ["circle", f"{100 * metrics['per_class_ap']['circle']:.2f}"]
    assert lines[5].split() == ["cross", "n/a"]
    assert f"{100 * metrics['ap50']:6.2f}" in next(ln for ln in lines if ln.startswith("AP50 "))
    assert lines[-1].split() == ["detections", str(len(DETECTIONS))]


def test_two_ranks_give_the_single_process_summary(monkeypatch):
    # The collective simulated in one process: each rank's evaluator holds its shard, and all_gather_object hands
    # every rank both shards. (A real two-process gloo run of the merge: tests/tools/test_distributed.py.)
    shards = []
    for rank in range(2):
        ev = evaluator()
        ids = all_image_ids()[rank::2]  # the eval loader's shard
        if rank == 1:
            ids.append(all_image_ids()[0])  # padded with an image rank 0 has: must count once
        ev.update(ids, detector_outputs(ids))
        shards.append(ev)

    def all_gather_object(out, obj):
        out[:] = [copy.deepcopy(shard._results) for shard in shards]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    single = evaluator()
    single.update(all_image_ids(), detector_outputs(all_image_ids()))
    expected = single.summarize()
    for shard in shards:
        shard.synchronize()
    for shard in shards:
        assert shard.summarize() == expected
        assert shard.summary_text == single.summary_text


@pytest.mark.filterwarnings("ignore:5 of 6 ground-truth images")
def test_synchronize_is_a_no_op_on_one_process():
    ev = evaluator()
    ev.update([10], detector_outputs([10]))
    ev.synchronize()
    assert ev.summarize()["num_detections"] == sum(d[0] == 10 for d in DETECTIONS)


@pytest.mark.parametrize("change, message", [
    (lambda o: o.update(labels=torch.tensor([0])), r"holds \[0\], outside 1\.\.4"),
    (lambda o: o.update(labels=torch.tensor([5])), r"holds \[5\], outside 1\.\.4"),
    (lambda o: o.update(boxes=torch.zeros(4)), r"\['boxes'\] must be \(K, 4\) xyxy, got shape \(4,\)"),
    (lambda o: o.update(boxes=torch.zeros(1, 5)), r"got shape \(1, 5\)"),
    (lambda o: o.update(scores=torch.zeros(2)), r"\['scores'\] must be \(1,\) for 1 boxes, got shape \(2,\)"),
    (lambda o: o.update(boxes=torch.tensor([[5.0, 5, 2, 9]])), r"is not xyxy"),
    (lambda o: o.update(scores=torch.tensor([float("nan")])), r"non-finite"),
    (lambda o: o.pop("scores"), r"has no \['scores'\]"),
])
def test_malformed_detections_raise_one_clear_error(change, message):
    output = {"boxes": torch.tensor([[1.0, 2, 3, 4]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}
    change(output)
    ev = evaluator()
    with pytest.raises(ValueError, match=r"outputs\[0\] \(image id 10\)" + ".*" + message):
        ev.update([10], [output])
    assert ev.summarize()["num_detections"] == 0  # nothing half-added


def test_bad_image_ids_and_categories_are_refused():
    ev = evaluator()
    with pytest.raises(ValueError, match="image id 99 is not in the ground truth"):
        ev.update([99], detector_outputs([99]))
    ev.update([10], detector_outputs([10]))
    with pytest.raises(ValueError, match="image id 10 was given twice"):
        ev.update([10], detector_outputs([10]))
    with pytest.raises(ValueError, match=r"category id\(s\) \[4\] are not among"):
        CocoEvaluator(ground_truth(), category_ids=[1, 3, 4, 10], classes=CLASSES)
    with pytest.raises(ValueError, match="3 class names for 4 category ids"):
        CocoEvaluator(ground_truth(), category_ids=CATEGORY_IDS, classes=CLASSES[:3])
    gt = ground_truth()
    del gt["annotations"][2]["area"]
    with pytest.raises(ValueError, match=r"annotations\[2\] has no \['area'\]"):
        CocoEvaluator(gt, category_ids=CATEGORY_IDS, classes=CLASSES)
