"""Predict masks (a segmentation checkpoint) or boxes (a detector) for image files and draw them.

Examples::

    python -m tools.predict --checkpoint runs/<name>/best.pt photo.jpg more_photos/ --output predictions/
    python -m tools.predict --checkpoint best.pt big.png --mode slide --crop-size 512 --flip --save-mask
    python -m tools.predict --checkpoint best.pt --model best.int8.onnx photos/     # an exported file, same code
    torchrun --nproc_per_node=2 -m tools.predict --checkpoint best.pt photos/       # images shared among ranks

Each input ``<stem>.<ext>`` gives ``<output>/<stem>.png``: for a segmentation model the overlay with a legend of
the predicted classes (``--save-mask`` also writes ``<stem>_mask.png`` holding the raw class indices); for a
detector the image with its labelled boxes of score ``>= --score-thresh`` and ``<stem>.json`` listing them
(``{"image", "width", "height", "detections": [{"box": [x0, y0, x1, y1], "score", "label", "class"}]}``, boxes in
the image's pixels). Folders are expanded to the
images directly inside them. The default output folder is ``predictions/`` next to the checkpoint.

An unreadable image is skipped with a one-line warning; the others are still written, and the command ends with
a count of the skipped files and exit status 1. Under ``torchrun`` rank ``r`` of ``W`` takes images
``r, r + W, ...`` of the expanded list, so every image is written once; output names are decided on the whole
list first, so they do not depend on the number of ranks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import torch

from .data.io import IMAGE_EXTENSIONS, list_images, read_image
from .data.transforms import normalize
from .engine.checkpoint import checkpoint_task
from .engine.cli import run_cli
from .engine.distributed import resolve_device, torchrun_env
from .tasks.segmentation.inference import add_inference_args, inference_options, predict_probs
from .engine.precision import check_amp
from .engine.visualize import add_legend, overlay, save_png
from .tasks.detection.inference import detect, image_tensor
from .tasks.detection.visualize import draw_detections
from .runtime.runners import add_runner_args, inference_device, load_for_inference

__all__ = ["build_parser", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.predict", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by tools.train_seg or "
                                                       "tools.train_det")
    p.add_argument("--output", help="output folder; unset: predictions/ beside the checkpoint")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the mask colours")
    p.add_argument("--save-mask", action=argparse.BooleanOptionalAction, default=False,
                   help="also write <stem>_mask.png with the class indices (segmentation)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="detection: draw and list the boxes of at least this score")
    add_inference_args(p)
    add_runner_args(p)
    return p


def _expand(inputs: List[str]) -> List[Path]:
    paths: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise FileNotFoundError(f"folder {item!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        else:
            paths.append(path)  # a missing file is reported, and skipped, with the unreadable ones
    return paths


def _output_stems(paths: List[Path]) -> List[str]:
    """One output stem per input, made unique (``a``, ``a_1``...) when inputs from two folders share a name."""
    stems, used = [], set()
    for path in paths:
        stem, k = path.stem, 1
        while stem in used:
            stem, k = f"{path.stem}_{k}", k + 1
        used.add(stem)
        stems.append(stem)
    return stems


def run(argv: Optional[List[str]] = None) -> List[Path]:
    """Predict every input image (this rank's share under torchrun); returns the overlay files written.

    Raises ``ValueError`` after writing the others when some images could not be read.
    """
    args = vars(build_parser().parse_args(argv))
    if not 0 <= args["alpha"] <= 1:
        raise ValueError(f"--alpha must be in [0, 1], got {args['alpha']}")
    rank, world, local_rank = torchrun_env()  # prediction needs no communication: no process group
    device = resolve_device(inference_device(args), local_rank)
    check_amp(args["amp"], device)
    inputs = _expand(args["images"])
    model, checkpoint = load_for_inference(args, device)
    detector = checkpoint_task(checkpoint) == "detection"
    if detector and (args["mode"] != "whole" or args["scales"] != [1.0] or args["flip"] or args["save_mask"]):
        raise ValueError(f"checkpoint {args['checkpoint']!r} is a detector: --mode slide, --scales, --flip and "
                         f"--save-mask apply to segmentation checkpoints only")
    if not 0 <= args["score_thresh"] <= 1:
        raise ValueError(f"--score-thresh must be in [0, 1], got {args['score_thresh']}")
    classes, palette = list(checkpoint["classes"]), checkpoint.get("palette")
    options = None if detector else inference_options(args, checkpoint["config"])
    out_dir = Path(args["output"]) if args["output"] else Path(args["checkpoint"]).parent / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = list(zip(inputs, _output_stems(inputs)))[rank::world]
    written: List[Path] = []
    failed: Dict[Path, str] = {}
    for path, stem in mine:
        try:
            image = read_image(path)  # every decode error names the file
        except (ValueError, FileNotFoundError, OSError) as err:
            failed[path] = str(err)
            print(f"warning: skipping {path}: {err}", file=sys.stderr)
            continue
        target = out_dir / f"{stem}.png"
        if detector:
            _draw_detections(model, image, path, target, classes, palette, args, device)
        else:
            x = normalize(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))[None].to(device)
            with torch.no_grad():
                pred = predict_probs(model, x, **options).argmax(1)[0].cpu().numpy().astype(np.uint8)
            blended = overlay(image, pred, palette, num_classes=len(classes), alpha=args["alpha"])
            save_png(target, add_legend(blended, classes, palette, labels=np.unique(pred).tolist()))
            if args["save_mask"]:
                cv2.imwrite(str(out_dir / f"{stem}_mask.png"), pred)
        written.append(target)
        print(f"{path} -> {target}")
    share = f" (rank {rank} of {world})" if world > 1 else ""
    if failed:
        raise ValueError(f"{len(failed)} of {len(mine)} images could not be read and were skipped{share} (named "
                         f"above); the other {len(written)} were written to {out_dir}")
    print(f"wrote {len(written)} {'detection figures' if detector else 'overlays'} to {out_dir}{share}")
    return written


def _draw_detections(model: Any, image: np.ndarray, path: Path, target: Path, classes: List[str],
                     palette: Any, args: Dict[str, Any], device: torch.device) -> None:
    """``target`` (the labelled boxes of score >= --score-thresh) and its ``.json`` beside it."""
    found = detect(model, [image_tensor(image).to(device)], amp=args["amp"])[0]
    keep = found["scores"] >= args["score_thresh"]
    boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
    save_png(target, draw_detections(image, boxes, labels, scores, classes, palette=palette))
    listing = {"image": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
               "detections": [{"box": [round(float(v), 2) for v in box], "score": round(float(score), 4),
                               "label": int(label), "class": classes[int(label) - 1]}
                              for box, score, label in zip(boxes, scores, labels)]}
    target.with_suffix(".json").write_text(json.dumps(listing, indent=1))


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point (``dense-predict``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
