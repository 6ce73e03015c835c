"""Train a segmentation model on one process or many (``torchrun``).

Examples::

    python -m tools.train_seg                          # resnet18 + BiSeNet on the built-in synthetic set, ~2 min
    python -m tools.train_seg --config configs/voc_deeplabv3plus_r50.yaml --root data/VOCdevkit
    python -m tools.train_seg --resume runs/<name>     # continue exactly where the run stopped
    torchrun --nproc_per_node=4 -m tools.train_seg --config ... --norm sync_bn

Every flag is also a key of the YAML file given with ``--config`` (``crop_size: [512, 512]``); explicit flags
win over the file. A run writes ``runs/<name>/``: ``config.yaml`` (the resolved config), ``metrics.jsonl``,
``last.pt`` (everything needed to resume), ``best.pt`` (weights of the best validation mIoU),
``curves.png`` and ``vis/`` (validation overlays). ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from backbones import param_groups

from . import distributed as dist_utils
from .cli import run_cli
from .checkpoint import FORMAT_VERSION, check_model_state, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import explicit_dests, parse_config, save_config, to_plain, yaml_mapping
from .data import build_eval_loader, build_train_loader
from .datasets import SegmentationDataset, build_dataset, list_datasets
from .inference import evaluate, predict_probs
from .losses import SegLoss
from .metrics import format_table
from .model import MODEL_KEYS, build_model, describe_model
from .precision import AMP_MODES, autocast, check_amp, grad_scaler
from .schedule import poly_warmup_scheduler
from .transforms import eval_transform, normalize, train_transform
from .visualize import add_legend, overlay, plot_curves, save_png

__all__ = ["build_parser", "train", "run", "main"]

DEFAULT_ITERS = 400
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 0.001}
# Keys of the command line that are not part of a run's config.
_NOT_CONFIG = ("config", "resume")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.train_seg", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bool_flag = argparse.BooleanOptionalAction
    g = p.add_argument_group("run")
    g.add_argument("--config", help="YAML file whose keys are these flags (underscores for dashes)")
    g.add_argument("--resume", help="run folder (or its last.pt) to continue; its saved config is used and "
                                    "explicit flags override it")
    g.add_argument("--output-dir", default="runs", help="parent folder of run folders")
    g.add_argument("--name", help="run folder name; unset: <backbone>_<head>_<dataset>_<date-time>")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="resnet18", help="registered backbone name")
    g.add_argument("--head", default="bisenet", help="registered head: fcn, deeplabv3, deeplabv3plus, fpn, bisenet")
    g.add_argument("--head-kwargs", type=yaml_mapping, default={}, help="head options, e.g. '{dropout: 0.0}'")
    g.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    g.add_argument("--norm", default="bn", choices=("bn", "frozen_bn", "sync_bn", "gn"),
                   help="backbone norm; sync_bn turns every BatchNorm (backbone and head) into SyncBatchNorm "
                        "under DDP on CUDA")
    g.add_argument("--frozen-stages", type=int, default=-1, help="-1: none, 0: stem, k: stem and layer1..k")
    g.add_argument("--pretrained", help="backbone weights: 'imagenet', a path or a URL; unset: from scratch")
    g.add_argument("--aux-weight", type=float, default=0.0, help="> 0 adds an auxiliary FCN head on stride 16 "
                                                                  "with this loss weight")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=list_datasets())
    g.add_argument("--root", help="dataset folder (not needed for synthetic)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--data-kwargs", type=yaml_mapping, default={},
                   help="dataset options, e.g. '{num_images: 64}' for synthetic")
    g.add_argument("--crop-size", type=int, nargs="+", default=[96], help="training crop: S or H W")
    g.add_argument("--scale-range", type=float, nargs=2, default=[0.75, 1.25],
                   help="random rescale range (0.5 2.0 is usual for real datasets)")
    g.add_argument("--hflip", action=bool_flag, default=True, help="random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=0.2, help="brightness/contrast/saturation jitter")
    g.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=8, help="per process")
    g.add_argument("--val-batch-size", type=int, default=1, help="per process; images of different sizes "
                                                                 "are padded (padding is not scored)")
    g.add_argument("--iters", type=int, help=f"training iterations; unset: {DEFAULT_ITERS}, or --epochs")
    g.add_argument("--epochs", type=int, help="training epochs, instead of --iters")
    g.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="sgd (with momentum; the usual choice with --pretrained) or adamw (trains from scratch "
                        "much faster: the default synthetic run)")
    g.add_argument("--lr", type=float, help="base learning rate; unset: 0.01 for sgd, 0.001 for adamw")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="for weights")
    g.add_argument("--norm-weight-decay", type=float, default=0.0, help="for norm parameters and biases")
    g.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="backbone lr = base lr x this (0.1 is usual with --pretrained); the head gets base lr")
    g.add_argument("--warmup-iters", type=int, default=30)
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="lr factor at the first warm-up iteration")
    g.add_argument("--poly-power", type=float, default=0.9)
    g.add_argument("--ohem-thresh", type=float, help="online hard example mining: keep pixels whose "
                                                     "true-class probability is below this (e.g. 0.7)")
    g.add_argument("--ohem-min-kept", type=int, default=100_000, help="at least this many pixels per process")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", default="none", choices=AMP_MODES, help="bf16 (CPU or CUDA) or fp16 (CUDA)")
    g.add_argument("--channels-last", action=bool_flag, default=False)
    g.add_argument("--seed", type=int, default=0, help="model initialization, data order and augmentation")
    g.add_argument("--log-interval", type=int, default=20, help="iterations between log lines")
    g.add_argument("--eval-interval", type=int, help="iterations between evaluations; unset: 4 per run")
    g.add_argument("--ckpt-interval", type=int, help="iterations between last.pt saves; unset: at each "
                                                     "evaluation")
    g.add_argument("--num-vis", type=int, default=4, help="validation images drawn into vis/ at the end")
    g.add_argument("--progress", action=bool_flag, default=None,
                   help="progress bars; unset: when stderr is a terminal")
    return p


# ----------------------------------------------------------------------------------------------- config


def resolve_config(argv: Optional[List[str]] = None) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The run's config from the defaults, ``--config`` and the flags; with ``--resume`` the checkpoint's
    config plus the explicitly given flags. Returns ``(config, checkpoint or None)``."""
    parser = build_parser()
    args = vars(parse_config(parser, argv))
    if not args["resume"]:
        return args, None
    if args["config"]:
        raise ValueError("--resume continues with the run's saved config; pass flags to change it, not --config")
    path = Path(args["resume"])
    path = path / "last.pt" if path.is_dir() else path
    checkpoint = load_checkpoint(path)
    config = dict(checkpoint["config"])
    overrides = explicit_dests(parser, argv) - {"resume", "config"}
    config.update({k: args[k] for k in overrides})
    config["resume"] = str(path)
    return config, checkpoint


def _check_config(cfg: Dict[str, Any]) -> None:
    if cfg.get("lr") is None:
        cfg["lr"] = DEFAULT_LR[cfg["optimizer"]]
    positive = ("batch_size", "val_batch_size", "log_interval", "lr")
    for key in positive:
        if not cfg[key] > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {cfg[key]!r}")
    for key in ("iters", "epochs", "eval_interval", "ckpt_interval", "clip_grad"):
        if cfg.get(key) is not None and not cfg[key] > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {cfg[key]!r}")
    if cfg.get("iters") is not None and cfg.get("epochs") is not None:
        raise ValueError(f"give --iters or --epochs, not both (got iters={cfg['iters']}, epochs={cfg['epochs']})")
    if len(cfg["crop_size"]) not in (1, 2):
        raise ValueError(f"--crop-size takes one or two ints (H W), got {cfg['crop_size']}")
    if cfg["workers"] < 0 or cfg["num_vis"] < 0 or cfg["warmup_iters"] < 0:
        raise ValueError("--workers, --num-vis and --warmup-iters must be >= 0")


def _default_name(cfg: Mapping[str, Any]) -> str:
    name = f"{cfg['backbone']}_{cfg['head']}_{cfg['dataset']}_{time.strftime('%Y%m%d-%H%M%S')}"
    return name.replace(":", "-").replace("/", "-")


def _prepare_run_dir(cfg: Dict[str, Any], resuming: bool) -> Path:
    """Rank 0 picks (and checks) the run folder; every process gets the same answer or the same error."""
    answer: Tuple[Optional[str], Optional[str]] = (None, None)
    if dist_utils.is_main():
        if resuming:
            run_dir = Path(cfg["resume"]).parent
        else:
            cfg["name"] = cfg.get("name") or _default_name(cfg)
            run_dir = Path(cfg["output_dir"]) / cfg["name"]
        error = None
        if not resuming and any((run_dir / f).exists() for f in ("last.pt", "best.pt", "config.yaml")):
            error = (f"run folder {str(run_dir)!r} already holds a run; continue it with --resume {run_dir} "
                     f"or choose another --name")
        answer = (str(run_dir), error)
    run_dir_s, error = dist_utils.broadcast_object(answer)
    if error:
        raise ValueError(error)
    return Path(run_dir_s)


# ------------------------------------------------------------------------------------------------ logging


class RunLog:
    """Log lines on stdout (all of them, bars or not) and ``metrics.jsonl`` records, on rank 0 only."""

    def __init__(self, run_dir: Path, *, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"

    def print(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def record(self, entry: Mapping[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(to_plain(entry)) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Drop the records a killed run wrote after its last checkpoint, so a resumed log reads straight."""
        if self.enabled and self.path.is_file():
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("iter", 0) <= iteration]
            self.path.write_text("".join(ln + "\n" for ln in kept))


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# ----------------------------------------------------------------------------------------------- training


def _build_datasets(cfg: Mapping[str, Any]) -> Tuple[SegmentationDataset, SegmentationDataset]:
    crop = cfg["crop_size"] * 2 if len(cfg["crop_size"]) == 1 else cfg["crop_size"]
    common = dict(root=cfg["root"], **(cfg["data_kwargs"] or {}))
    train_ds = build_dataset(cfg["dataset"], split=cfg["train_split"], **common,
                             transform=train_transform(crop_size=tuple(crop), scale_range=tuple(cfg["scale_range"]),
                                                       hflip=cfg["hflip"], color_jitter=cfg["color_jitter"]))
    val_ds = build_dataset(cfg["dataset"], split=cfg["val_split"], transform=eval_transform(), **common)
    if val_ds.classes != train_ds.classes:
        raise ValueError(f"the {cfg['train_split']!r} and {cfg['val_split']!r} splits disagree on the classes: "
                         f"{len(train_ds.classes)} vs {len(val_ds.classes)}")
    return train_ds, val_ds


def _build_optimizer(cfg: Mapping[str, Any], model: nn.Module, max_iters: int):
    lr_mult = {"backbone": cfg["backbone_lr_mult"]} if cfg["backbone_lr_mult"] != 1.0 else None
    # Each group gets lr = base lr x its multiplier; LambdaLR then scales each group's own initial lr, which
    # keeps the multiplier for the whole run.
    groups = param_groups(model, cfg["weight_decay"], norm_weight_decay=cfg["norm_weight_decay"],
                          bias_weight_decay=cfg["norm_weight_decay"], lr_mult=lr_mult, lr=cfg["lr"])
    if cfg["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])
    scheduler = poly_warmup_scheduler(optimizer, max_iters=max_iters, power=cfg["poly_power"],
                                      warmup_iters=min(cfg["warmup_iters"], max_iters),
                                      warmup_ratio=cfg["warmup_ratio"])
    return optimizer, scheduler


def _check_resume(checkpoint: Mapping[str, Any], cfg: Mapping[str, Any], model: nn.Module, classes, where: str
                  ) -> None:
    saved = checkpoint["config"]
    if list(checkpoint.get("classes", [])) != list(classes):
        raise ValueError(f"checkpoint {where} was trained on {len(checkpoint.get('classes', []))} classes "
                         f"{list(checkpoint.get('classes', []))[:6]}..., but dataset {cfg['dataset']!r} has "
                         f"{len(classes)}: {list(classes)[:6]}...")
    changed = [k for k in MODEL_KEYS if saved.get(k) != cfg.get(k)]
    if changed:
        raise ValueError(f"checkpoint {where} holds {describe_model(saved)}; the model options "
                         f"{', '.join(f'{k}={cfg.get(k)!r} (saved {saved.get(k)!r})' for k in changed)} differ")
    check_model_state(model, checkpoint["model"], where=where)


def _save_vis(model: nn.Module, dataset: SegmentationDataset, out_dir: Path, count: int,
              device: torch.device, cfg: Mapping[str, Any]) -> None:
    """``vis/val_<i>.png``: image | ground truth | prediction, with a legend of the classes shown."""
    model.eval()
    for i in range(min(count, len(dataset))):
        image, mask = dataset.load(i)
        x = normalize(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))[None].to(device)
        with torch.no_grad():
            pred = predict_probs(model, x, amp=cfg["amp"]).argmax(1)[0].cpu().numpy().astype(np.uint8)
        labels = sorted(set(np.unique(pred).tolist()) | (set(np.unique(mask).tolist()) - {255}))
        row = np.concatenate([image, overlay(image, mask, dataset.palette, num_classes=dataset.num_classes),
                              overlay(image, pred, dataset.palette, num_classes=dataset.num_classes)], axis=1)
        save_png(out_dir / f"val_{i:03d}.png", add_legend(row, dataset.classes, dataset.palette, labels=labels))


def train(config: Mapping[str, Any], *, checkpoint: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Run training as ``config`` (the parser's keys) says; returns the final metrics and the run folder.

    ``checkpoint`` (with ``config["resume"]``) continues a run; :func:`resolve_config` prepares both.
    """
    cfg = dict(config)
    _check_config(cfg)
    info = dist_utils.init_distributed(cfg["device"])
    try:
        return _train(cfg, info, checkpoint)
    finally:
        dist_utils.cleanup()


def _train(cfg: Dict[str, Any], info: dist_utils.DistInfo, checkpoint: Optional[Mapping[str, Any]]
           ) -> Dict[str, Any]:
    started = time.time()
    device = info.device
    check_amp(cfg["amp"], device)
    if cfg["norm"] == "sync_bn" and info.distributed and device.type != "cuda":
        raise ValueError("--norm sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); on CPU use bn or "
                         "gn")
    resuming = bool(cfg.get("resume"))
    if resuming and checkpoint is None:
        checkpoint = load_checkpoint(cfg["resume"])
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_ds, val_ds = _build_datasets(cfg)
    train_loader, sampler = build_train_loader(train_ds, batch_size=cfg["batch_size"], workers=cfg["workers"],
                                               seed=cfg["seed"], rank=info.rank, world_size=info.world_size,
                                               pin_memory=device.type == "cuda")
    val_loader = build_eval_loader(val_ds, batch_size=cfg["val_batch_size"], workers=cfg["workers"],
                                   rank=info.rank, world_size=info.world_size, pin_memory=device.type == "cuda")
    iters_per_epoch = sampler.batches_per_epoch(cfg["batch_size"])
    if cfg.get("epochs"):
        cfg["iters"], cfg["epochs"] = cfg["epochs"] * iters_per_epoch, None
    max_iters = cfg["iters"] = cfg.get("iters") or DEFAULT_ITERS
    eval_interval = cfg.get("eval_interval") or max(1, math.ceil(max_iters / 4))
    ckpt_interval = cfg.get("ckpt_interval") or eval_interval

    run_dir = _prepare_run_dir(cfg, resuming)
    log = RunLog(run_dir, enabled=info.is_main)
    where = repr(str(cfg["resume"])) if resuming else ""
    model = build_model(cfg, train_ds.num_classes, pretrained=None if resuming else cfg.get("pretrained"))
    if resuming:
        _check_resume(checkpoint, cfg, model, train_ds.classes, where)
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    if cfg["norm"] == "sync_bn" and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, scheduler = _build_optimizer(cfg, model, max_iters)
    scaler = grad_scaler(device, cfg["amp"])
    criterion = SegLoss(aux_weight=cfg["aux_weight"], ohem_thresh=cfg["ohem_thresh"],
                        ohem_min_kept=cfg["ohem_min_kept"])
    start_iter, best_miou, last_val = 0, -1.0, None
    if resuming:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_iter, best_miou, last_val = checkpoint["iteration"], checkpoint["best_miou"], checkpoint.get("metrics")
        if start_iter >= max_iters:
            raise ValueError(f"checkpoint {where} is at iteration {start_iter}, the run's end (iters={max_iters}); "
                             f"pass a larger --iters to train further")
        set_rng_state(checkpoint["rng"])
    ddp = model if not info.distributed else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir / "config.yaml", {k: v for k, v in cfg.items() if k not in _NOT_CONFIG})
        if resuming:
            log.truncate_after(start_iter)
    log.print(f"{'resuming' if resuming else 'training'} {describe_model(cfg, train_ds.num_classes)} on "
              f"{train_ds.name} ({len(train_ds)} images) / {val_ds.name} ({len(val_ds)}), {info.world_size} "
              f"process(es) on {device}, {max_iters} iterations of {cfg['batch_size']} x {info.world_size}; "
              f"run folder {run_dir}" + (f", from iteration {start_iter}" if resuming else ""))

    last_saved = start_iter if resuming else None
    inference = dict(amp=cfg["amp"], channels_last=cfg["channels_last"])

    def save(iteration: int, epoch: int, metrics: Optional[Mapping[str, Any]], best: bool) -> None:
        nonlocal last_saved
        if info.is_main:
            meta = {"format_version": FORMAT_VERSION, "model": model.state_dict(), "iteration": iteration,
                    "epoch": epoch, "config": to_plain({k: v for k, v in cfg.items() if k not in _NOT_CONFIG}),
                    "classes": list(train_ds.classes), "palette": train_ds.palette, "metrics": metrics}
            save_checkpoint(run_dir / "last.pt", {
                **meta, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "best_miou": best_miou, "rng": rng_state()})
            if best:
                save_checkpoint(run_dir / "best.pt", meta)
        last_saved = iteration

    iteration = start_iter
    epoch, offset = divmod(iteration, iters_per_epoch)
    show_bars = cfg["progress"] if cfg["progress"] is not None else sys.stderr.isatty()
    bar = tqdm(total=max_iters, initial=iteration, desc="train", disable=not (show_bars and info.is_main),
               dynamic_ncols=True, file=sys.stderr)
    window_loss, window_count, window_start = 0.0, 0, time.time()
    ddp.train()
    while iteration < max_iters:
        sampler.set_epoch(epoch, start=offset * cfg["batch_size"])
        for images, masks in train_loader:
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            if cfg["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg["amp"]):
                output = ddp(images)
            loss = criterion(output, masks)
            loss_value = loss.detach().clone()
            if info.distributed:
                torch.distributed.all_reduce(loss_value)  # also spreads a NaN to every process
                loss_value /= info.world_size
            loss_value = float(loss_value)
            if not math.isfinite(loss_value):
                kept = (f"last.pt from iteration {last_saved} is kept" if last_saved is not None
                        else "no checkpoint was written yet")
                raise FloatingPointError(
                    f"loss is {loss_value} at iteration {iteration + 1}; stopping ({kept} in {run_dir}). Try a "
                    f"lower --lr, --clip-grad, more --warmup-iters, or --amp none")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.get("clip_grad"):
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1
            bar.update(1)
            window_loss, window_count = window_loss + loss_value, window_count + 1
            done = iteration >= max_iters
            if iteration % cfg["log_interval"] == 0 or done:
                lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_mult"]
                per_iter = (time.time() - window_start) / window_count
                entry = {"type": "train", "iter": iteration, "epoch": round(iteration / iters_per_epoch, 3),
                         "loss": window_loss / window_count, "lr": lr, "sec_per_iter": per_iter}
                log.record(entry)
                log.print(f"iter {iteration}/{max_iters}  epoch {entry['epoch']:.2f}  loss {entry['loss']:.4f}  "
                          f"lr {lr:.2e}  {per_iter:.2f}s/it  eta {_fmt_time(per_iter * (max_iters - iteration))}")
                window_loss, window_count, window_start = 0.0, 0, time.time()
            evaluated = False
            if iteration % eval_interval == 0 or done:
                last_cm = evaluate(model, val_loader, num_classes=train_ds.num_classes, device=device,
                                   progress=not bar.disable, **inference)
                last_val = last_cm.summary(train_ds.classes)
                improved = last_val["miou"] > best_miou
                best_miou = max(best_miou, last_val["miou"])
                log.record({"type": "val", "iter": iteration, **last_val})
                log.print(f"eval at iter {iteration}: mIoU {100 * last_val['miou']:.2f}  pixel accuracy "
                          f"{100 * last_val['pixel_accuracy']:.2f}  (best {100 * best_miou:.2f})")
                save(iteration, iteration // iters_per_epoch, last_val, best=improved)
                if info.is_main:
                    plot_curves(log.path, run_dir / "curves.png")
                evaluated = True
                window_start = time.time()
            if not evaluated and iteration % ckpt_interval == 0:
                save(iteration, iteration // iters_per_epoch, last_val, best=False)
            if done:
                break
        epoch, offset = epoch + 1, 0
    bar.close()

    if info.is_main:
        log.print(format_table(last_cm, train_ds.classes))
        _save_vis(model, val_ds, run_dir / "vis", cfg["num_vis"], device, cfg)
    log.print(f"done in {_fmt_time(time.time() - started)}: final mIoU {100 * last_val['miou']:.2f}, best "
              f"{100 * best_miou:.2f}; run folder {run_dir}")
    return {"run_dir": str(run_dir), "iteration": iteration, "miou": last_val["miou"], "best_miou": best_miou,
            "pixel_accuracy": last_val["pixel_accuracy"], "iou": last_val["iou"]}


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` and train; errors propagate (``main`` turns them into a message)."""
    config, checkpoint = resolve_config(argv)
    return train(config, checkpoint=checkpoint)


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point (``dense-train``)."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
