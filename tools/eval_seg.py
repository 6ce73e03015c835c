"""Evaluate a trained checkpoint, or a file exported from it: mIoU, pixel accuracy and a per-class IoU table for a
segmentation model; COCO mAP (pycocotools) and a per-class AP table for a detector.

Examples::

    python -m tools.eval_seg --checkpoint runs/<name>/best.pt                  # the run's own validation split
    python -m tools.eval_seg --checkpoint best.pt --dataset cityscapes --root data/cityscapes \\
        --mode slide --crop-size 512,1024 --stride 341,682 --scales 0.75,1.0,1.25 --flip
    python -m tools.eval_seg --checkpoint runs/<name>/best.pt --model runs/<name>/best.int8.onnx  # ONNX Runtime
    python -m tools.eval_seg --checkpoint runs/<name>/best.pt --model best.onnx --engine openvino --precision bf16

The model is rebuilt from the config stored in the checkpoint, or is the ``--model`` file run by ``--engine``
(the checkpoint then gives the classes and the dataset); the dataset defaults to the run's own (dataset, root,
validation split, data options), and any of them can be replaced by a flag. Every engine goes through the same
preprocessing, sliding window, multi-scale/flip and resize-back (:mod:`tools.tasks.segmentation.inference`).
A detection checkpoint (``tools.train_det``) is scored with COCO's AP, AP50, AP75, APs/m/l and per-class AP,
the detections of all processes merged before scoring; its exported files are ``.onnx`` (ONNX Runtime) and
``.ts`` (TorchScript), in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .data import build_dataset, list_datasets
from .data.detection import build_detection_dataset, build_detection_eval_loader, det_eval_transform
from .data.detection import list_detection_datasets
from .data.loaders import build_eval_loader
from .data.transforms import eval_transform
from .engine import distributed as dist_utils
from .engine.checkpoint import checkpoint_task
from .engine.cli import run_cli
from .engine.config import yaml_mapping
from .tasks.segmentation.inference import add_inference_args, evaluate, inference_options
from .tasks.segmentation.metrics import format_table
from .tasks.detection.evaluation import CocoEvaluator
from .tasks.detection.evaluation import format_table as detection_table
from .tasks.detection.inference import run_evaluation
from .tasks.detection.model import describe_model as describe_detector
from .tasks.segmentation.model import describe_model
from .engine.precision import check_amp
from .runtime.runners import Runner, add_runner_args, inference_device, load_for_inference

__all__ = ["build_parser", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.eval_seg", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by tools.train_seg or "
                                                       "tools.train_det")
    p.add_argument("--dataset", choices=sorted(set(list_datasets()) | set(list_detection_datasets())),
                   help="unset: the run's dataset (a segmentation layout for a segmentation checkpoint, a detection "
                        "layout for a detector)")
    p.add_argument("--root", help="unset: the run's dataset root")
    p.add_argument("--split", help="unset: the run's validation split")
    p.add_argument("--data-kwargs", type=yaml_mapping, help="dataset options; unset: the run's")
    add_inference_args(p)
    add_runner_args(p)
    p.add_argument("--batch-size", type=int, default=1, help="images of different sizes are padded (unscored)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output", help="also write the results as JSON to this file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar; unset: when stderr is a terminal")
    return p


def _dataset_options(args: Dict[str, Any], config: Dict[str, Any]) -> Dict[str, Any]:
    """The dataset to score on: each flag, or when unset the run's own (its dataset's root and options, its
    validation split)."""
    name = args["dataset"] or config["dataset"]
    same = name == config["dataset"]
    root = args["root"] if args["root"] is not None else (config.get("root") if same else None)
    data_kwargs = args["data_kwargs"] if args["data_kwargs"] is not None else (
        config.get("data_kwargs") or {} if same else {})
    return {"name": name, "root": root, "split": args["split"] or config.get("val_split", "val"), **data_kwargs}


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Evaluate as ``argv`` says and return ``{"miou", "pixel_accuracy", "iou": {class: IoU}}`` for a segmentation
    checkpoint, the COCO metrics (``ap``, ``ap50``, ..., ``per_class_ap``) for a detector."""
    args = vars(build_parser().parse_args(argv))
    if args["batch_size"] < 1 or args["workers"] < 0:
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    info = dist_utils.init_distributed(inference_device(args))
    try:
        check_amp(args["amp"], info.device)
        model, checkpoint = load_for_inference(args, info.device)
        if checkpoint_task(checkpoint) == "detection":
            return _evaluate_detector(args, info, model, checkpoint)
        config, classes = checkpoint["config"], list(checkpoint["classes"])
        options = _dataset_options(args, config)
        if options["name"] not in list_datasets():
            raise ValueError(f"--dataset {options['name']!r} is a detection layout, but checkpoint "
                             f"{args['checkpoint']!r} is a segmentation model; segmentation layouts: "
                             f"{', '.join(list_datasets())}")
        dataset = build_dataset(options.pop("name"), transform=eval_transform(), **options)
        if list(dataset.classes) != classes:
            raise ValueError(f"checkpoint {args['checkpoint']!r} predicts {len(classes)} classes {classes[:6]}, "
                             f"but {dataset.name} has {dataset.num_classes}: {list(dataset.classes)[:6]}")
        loader = build_eval_loader(dataset, batch_size=args["batch_size"], workers=args["workers"],
                                   rank=info.rank, world_size=info.world_size)
        progress = args["progress"] if args["progress"] is not None else sys.stderr.isatty()
        cm = evaluate(model, loader, num_classes=len(classes), device=info.device,
                      progress=progress and info.is_main, **inference_options(args, config))
        results = cm.summary(classes)
        if info.is_main:
            runner = f" as {model.source} on {model.kind} {model.precision}" if isinstance(model, Runner) else ""
            print(f"{describe_model(config, len(classes))}{runner} on {dataset.name} ({len(dataset)} images), "
                  f"mode {args['mode']}, scales {args['scales']}, flip {args['flip']}")
            print(format_table(cm, classes))
            print(f"mIoU {100 * results['miou']:.2f}  pixel accuracy {100 * results['pixel_accuracy']:.2f}")
            if args["output"]:
                Path(args["output"]).write_text(json.dumps(results, indent=2))
        return results
    finally:
        dist_utils.cleanup()


# The segmentation-only inference flags and their defaults: a detector resizes its images itself.
_SEGMENTATION_ONLY = {"mode": "whole", "crop_size": None, "stride": None, "scales": [1.0], "flip": False,
                      "channels_last": False}


def _evaluate_detector(args: Dict[str, Any], info: dist_utils.DistInfo, model: Any, checkpoint: Dict[str, Any]
                       ) -> Dict[str, Any]:
    """COCO mAP of a detection checkpoint (or of a file exported from it) on the run's validation split."""
    given = [k for k, v in _SEGMENTATION_ONLY.items() if args.get(k) != v]
    if given:
        raise ValueError(f"checkpoint {args['checkpoint']!r} is a detector: "
                         f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to segmentation checkpoints "
                         f"only (a detector resizes its images itself)")
    config, classes = checkpoint["config"], list(checkpoint["classes"])
    options = _dataset_options(args, config)
    if options["name"] not in list_detection_datasets():
        raise ValueError(f"--dataset {options['name']!r} is a segmentation layout, but checkpoint "
                         f"{args['checkpoint']!r} is a detector; detection layouts: "
                         f"{', '.join(list_detection_datasets())}")
    dataset = build_detection_dataset(options.pop("name"), transform=det_eval_transform(), keep_empty=True,
                                      **options)
    if list(dataset.classes) != classes:
        raise ValueError(f"checkpoint {args['checkpoint']!r} detects {len(classes)} classes {classes[:6]}, but "
                         f"{dataset.name} has {dataset.num_classes}: {list(dataset.classes)[:6]}")
    saved_ids = checkpoint.get("category_ids")
    if saved_ids is not None and list(saved_ids) != list(dataset.category_ids):
        raise ValueError(f"checkpoint {args['checkpoint']!r} was trained with category ids {list(saved_ids)[:6]}, "
                         f"but {dataset.name} numbers the same classes {list(dataset.category_ids)[:6]}")
    loader = build_detection_eval_loader(dataset, batch_size=args["batch_size"], workers=args["workers"],
                                         rank=info.rank, world_size=info.world_size)
    evaluator = CocoEvaluator(dataset.coco_gt(), category_ids=dataset.category_ids, classes=dataset.classes)
    progress = args["progress"] if args["progress"] is not None else sys.stderr.isatty()
    run_evaluation(model, loader, evaluator, device=info.device, amp=args["amp"], progress=progress and info.is_main)
    results = evaluator.summarize()
    if info.is_main:
        runner = "" if isinstance(model, torch.nn.Module) else f" as {model.source} on {model.kind}"
        print(f"{describe_detector(config, len(classes))}{runner} on {dataset.name} ({len(dataset)} images)")
        print(detection_table(results, classes))
        print(f"AP {100 * results['ap']:.2f}  AP50 {100 * results['ap50']:.2f}  AP75 {100 * results['ap75']:.2f}")
        if args["output"]:
            Path(args["output"]).write_text(json.dumps(results, indent=2))
    return results


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point (``dense-eval``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
