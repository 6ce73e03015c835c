"""The task-free training loop as named steps: :func:`setup` builds a :class:`RunState`, then
:func:`train_step`, :func:`log_step`, :func:`evaluate_and_save` and :func:`finish` (torchvision's
``train_one_epoch``/``evaluate`` and detectron2's ``run_step`` shape). :func:`train` runs them in order.

What is specific to a task (its data, model, loss, validation score and pictures) comes from a
:class:`tools.engine.task.Task`; everything else (run folder, checkpoints and exact resume, Ctrl-C, DDP,
precision, optimizer and schedule, logging, ETA) is here and the same for every task.

SIGINT and SIGTERM stop the run between two steps with ``last.pt`` saved (:class:`TrainingInterrupted`). The
logged s/it counts training only; evaluations are timed apart, and the ETA adds the evaluations still to come.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import distributed as dist_utils
from .checkpoint import FORMAT_VERSION, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import save_config, to_plain
from .cli import MissingExtra
from .interrupt import StopOnSignal, TrainingInterrupted
from .optim import DEFAULT_LR, build_optimizer
from .precision import grad_scaler, resolve_amp
from .run_folder import RunLog, clear_outputs, fmt_time, prepare_run_dir
from .task import Evaluation, Task
from .tensorboard_log import BoardWriter, tensorboard_available
from .visualize import plot_curves, save_png

__all__ = ["NOT_CONFIG", "RunState", "TrainingInterrupted", "check_config", "setup", "train_step", "log_step",
           "evaluate_and_save", "save", "finish", "train"]

# Keys of the command line that are not part of a run's config.
NOT_CONFIG = ("config", "resume")


@dataclass
class RunState:
    """Everything one training run holds between steps."""

    cfg: Dict[str, Any]
    task: Task
    info: dist_utils.DistInfo
    run_dir: Path
    log: RunLog
    model: nn.Module
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: Any
    train_ds: Dataset
    val_ds: Dataset
    train_loader: DataLoader
    sampler: Any
    val_loader: DataLoader
    iters_per_epoch: int
    eval_interval: int
    ckpt_interval: int
    iteration: int = 0
    best_score: float = -1.0
    last_val: Optional[Dict[str, Any]] = None
    last_eval: Optional[Evaluation] = None
    last_saved: Optional[int] = None
    started: float = field(default_factory=time.perf_counter)
    window_loss: float = 0.0
    window_count: int = 0
    window_parts: Dict[str, float] = field(default_factory=dict)  # sums of the loss's named parts, if any
    window_timed: int = 0  # iterations of the window this process timed (a resumed window's first part was not)
    # The training clock: a log window's time is window_seconds (before an evaluation paused it) plus the time
    # since window_start; evaluations are counted apart.
    window_start: float = field(default_factory=time.perf_counter)
    window_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    last_eval_seconds: Optional[float] = None
    bar: Any = None

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def max_iters(self) -> int:
        return self.cfg["iters"]

    @property
    def done(self) -> bool:
        return self.iteration >= self.max_iters


# ------------------------------------------------------------------------------------------------- setup


def check_config(cfg: Dict[str, Any], task: Task) -> None:
    """Fill the learning-rate default and check the numeric options, then the task's own; raises
    ``ValueError`` naming the flag."""
    if cfg.get("lr") is None:
        cfg["lr"] = DEFAULT_LR[cfg["optimizer"]]
    for key in ("batch_size", "val_batch_size", "log_interval", "lr"):
        if not cfg[key] > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {cfg[key]!r}")
    for key in ("iters", "epochs", "eval_interval", "ckpt_interval", "clip_grad"):
        if cfg.get(key) is not None and not cfg[key] > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {cfg[key]!r}")
    if cfg.get("iters") is not None and cfg.get("epochs") is not None:
        raise ValueError(f"give --iters or --epochs, not both (got iters={cfg['iters']}, epochs={cfg['epochs']})")
    if cfg["workers"] < 0 or cfg["num_vis"] < 0 or cfg["warmup_iters"] < 0:
        raise ValueError("--workers, --num-vis and --warmup-iters must be >= 0")
    task.check_config(cfg)
    if cfg.get("tensorboard") is None:
        cfg["tensorboard"] = tensorboard_available()
    elif cfg["tensorboard"] and not tensorboard_available():
        raise MissingExtra("--tensorboard needs the tensorboard package: pip install tensorboard (or pass "
                           "--no-tensorboard)")


def setup(cfg: Dict[str, Any], task: Task, info: dist_utils.DistInfo, checkpoint: Optional[Mapping[str, Any]]
          ) -> RunState:
    """Data, model, optimizer and run folder of a new run, or of the run ``checkpoint`` continues."""
    device = info.device
    cfg["amp"], cfg["channels_last"], amp_reason = resolve_amp(cfg["amp"], cfg.get("channels_last"), device)
    if cfg["norm"] == "sync_bn" and info.distributed and device.type != "cuda":
        raise ValueError("--norm sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); on CPU use bn or "
                         "gn")
    resuming = bool(cfg.get("resume"))
    if resuming and checkpoint is None:
        checkpoint = load_checkpoint(cfg["resume"], resume=True, task=task.name)
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_ds, val_ds = task.build_datasets(cfg)
    loaders = task.build_loaders(cfg, train_ds, val_ds, info)
    iters_per_epoch = loaders.sampler.batches_per_epoch(cfg["batch_size"])
    if cfg.get("epochs"):
        cfg["iters"], cfg["epochs"] = cfg["epochs"] * iters_per_epoch, None
    max_iters = cfg["iters"] = cfg.get("iters") or task.default_iters
    eval_interval = cfg.get("eval_interval") or max(1, math.ceil(max_iters / 4))

    run_dir, restart = prepare_run_dir(cfg, resuming, name_keys=task.name_keys)
    where = repr(str(cfg["resume"])) if resuming else ""
    model = task.build_model(cfg, train_ds.classes, pretrained=None if resuming else cfg.get("pretrained"))
    if resuming:
        task.check_resume(checkpoint, cfg, model, train_ds, where)
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    if cfg["norm"] == "sync_bn" and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, scheduler = build_optimizer(cfg, model, max_iters=max_iters)
    state = RunState(
        cfg=cfg, task=task, info=info, run_dir=run_dir, log=RunLog(run_dir, enabled=info.is_main), model=model,
        ddp=model if not info.distributed else DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None),
        optimizer=optimizer, scheduler=scheduler, scaler=grad_scaler(device, cfg["amp"]),
        criterion=task.build_criterion(cfg), train_ds=train_ds, val_ds=val_ds, train_loader=loaders.train,
        sampler=loaders.sampler, val_loader=loaders.val, iters_per_epoch=iters_per_epoch, eval_interval=eval_interval,
        ckpt_interval=cfg.get("ckpt_interval") or eval_interval)
    if resuming:
        _restore(state, checkpoint, where)

    if info.is_main:
        if restart:
            clear_outputs(run_dir)
            state.log.print(f"run folder {run_dir} holds no checkpoint (its run stopped before the first save): "
                            f"starting that run again")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir / "config.yaml", {k: v for k, v in cfg.items() if k not in NOT_CONFIG})
        if resuming:
            state.log.truncate_after(state.iteration)
        if cfg["tensorboard"]:
            # what a killed run logged after its checkpoint goes, as in metrics.jsonl
            state.log.board = BoardWriter(run_dir, purge_step=state.iteration + 1 if resuming else None,
                                          val_scalars=task.board_scalars, per_class=task.per_class)
    precision = "fp32" if cfg["amp"] == "none" else f"{cfg['amp']} autocast"
    precision += (" + channels_last" if cfg["channels_last"] else "") + (f" ({amp_reason})" if amp_reason else "")
    state.log.print(
        f"{'resuming' if resuming else 'training'} {task.describe_model(cfg, train_ds.num_classes)} on "
        f"{train_ds.name} ({len(train_ds)} images) / {val_ds.name} ({len(val_ds)}), {info.world_size} process(es) "
        f"on {device}, {precision}, {max_iters} iterations of {cfg['batch_size']} x {info.world_size}; run folder "
        f"{run_dir}" + (f", from iteration {state.iteration}" if resuming else ""))
    return state


def _restore(state: RunState, checkpoint: Mapping[str, Any], where: str) -> None:
    """Model, optimizer, schedule, scaler, counters and RNG states from a ``last.pt``."""
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.scaler.load_state_dict(checkpoint["scaler"])
    state.iteration = state.last_saved = checkpoint["iteration"]
    state.best_score, state.last_val = checkpoint[state.task.best_key], checkpoint.get("metrics")
    # the losses of a log window that a checkpoint cut in two (older checkpoints: start a new window)
    window = list(checkpoint.get("log_window", (0.0, 0)))
    state.window_loss, state.window_count = window[:2]
    state.window_parts = dict(window[2]) if len(window) > 2 else {}
    if state.iteration >= state.max_iters:
        raise ValueError(f"checkpoint {where} is at iteration {state.iteration}, the run's end "
                         f"(iters={state.max_iters}); pass a larger --iters to train further")
    set_rng_state(checkpoint["rng"])


# ------------------------------------------------------------------------------------------------- steps


def train_step(state: RunState, inputs: Any, targets: Any) -> float:
    """One optimizer step on a batch; returns the loss averaged over processes. A non-finite loss stops the run."""
    inputs, targets = state.task.to_device(inputs, targets, state.device, state.cfg["channels_last"])
    loss, parts = state.task.loss(state.ddp, state.criterion, inputs, targets, state.cfg)
    loss_value = loss.detach().clone()
    if state.info.distributed:
        torch.distributed.all_reduce(loss_value)  # also spreads a NaN to every process
        loss_value /= state.info.world_size
    value = float(loss_value)
    if not math.isfinite(value):
        kept = (f"last.pt from iteration {state.last_saved} is kept" if state.last_saved is not None
                else "no checkpoint was written yet; the same command starts the run again")
        raise FloatingPointError(
            f"loss is {value} at iteration {state.iteration + 1}; stopping ({kept} in {state.run_dir}). Try a "
            f"lower --lr, --clip-grad, more --warmup-iters, or --amp none")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if state.cfg.get("clip_grad"):
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), state.cfg["clip_grad"])
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.iteration += 1
    for name, part in parts.items():  # this process's parts: a log of their trend, not an exact global mean
        state.window_parts[name] = state.window_parts.get(name, 0.0) + part
    return value


def base_lr(state: RunState) -> float:
    """The schedule's current base learning rate (before each group's ``lr_mult``)."""
    return state.cfg["lr"] * state.scheduler.lr_lambdas[0](state.scheduler.last_epoch)


def evals_from(state: RunState, iteration: int) -> int:
    """How many evaluations the run makes at iterations >= ``iteration``: every ``eval_interval`` and at the end."""
    interval, end = state.eval_interval, state.max_iters
    if iteration > end:
        return 0
    return end // interval - (iteration - 1) // interval + (1 if end % interval else 0)


def log_step(state: RunState, loss: float) -> None:
    """Add ``loss`` to the logging window; every ``log_interval`` iterations (and at the end) log the window.

    The record's ``sec_per_iter`` is training time only (data, forward, backward, step; evaluations are timed
    apart, see :func:`evaluate_and_save`); ``eta_sec`` adds ``evals_left`` x the last evaluation's time.
    """
    state.window_loss += loss
    state.window_count += 1
    state.window_timed += 1
    if state.iteration % state.cfg["log_interval"] and not state.done:
        return
    now = time.perf_counter()
    seconds = state.window_seconds + now - state.window_start
    state.train_seconds += seconds
    lr = base_lr(state)
    per_iter = seconds / state.window_timed
    evals_left = evals_from(state, state.iteration)  # this iteration's evaluation, if any, is still to come
    eta = per_iter * (state.max_iters - state.iteration)
    if state.last_eval_seconds is not None:
        eta += evals_left * state.last_eval_seconds
    entry = {"type": "train", "iter": state.iteration, "epoch": round(state.iteration / state.iters_per_epoch, 3),
             "loss": state.window_loss / state.window_count, "lr": lr, "sec_per_iter": per_iter, "eta_sec": eta,
             "evals_left": evals_left}
    if state.window_parts:
        entry["losses"] = {k: v / state.window_count for k, v in state.window_parts.items()}
    state.log.record(entry)
    unknown = f" + {evals_left} eval{'s' if evals_left > 1 else ''}" \
        if state.last_eval_seconds is None and evals_left else ""
    state.log.print(f"iter {state.iteration}/{state.max_iters}  epoch {entry['epoch']:.2f}  loss {entry['loss']:.4f}"
                    f"  lr {lr:.2e}  {per_iter:.2f}s/it  eta {fmt_time(eta)}{unknown}")
    state.window_loss, state.window_count, state.window_timed, state.window_parts = 0.0, 0, 0, {}
    state.window_seconds, state.window_start = 0.0, now


def save(state: RunState, *, best: bool) -> None:
    """``last.pt`` (everything to resume) and, when ``best``, ``best.pt`` (weights and metadata), rank 0 only."""
    if state.info.is_main:
        cfg = {k: v for k, v in state.cfg.items() if k not in NOT_CONFIG}
        meta = {"format_version": FORMAT_VERSION, "task": state.task.name, "model": state.model.state_dict(),
                "iteration": state.iteration, "epoch": state.iteration // state.iters_per_epoch,
                "config": to_plain(cfg), **state.task.checkpoint_meta(state.train_ds), "metrics": state.last_val}
        save_checkpoint(state.run_dir / "last.pt", {
            **meta, "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(), state.task.best_key: state.best_score, "rng": rng_state(),
            "log_window": [state.window_loss, state.window_count, state.window_parts]})
        if best:
            save_checkpoint(state.run_dir / "best.pt", meta)
    state.last_saved = state.iteration


def evaluate_and_save(state: RunState) -> None:
    """Score the validation split, log it, save the checkpoints and redraw ``curves.png`` (and, with
    TensorBoard, a few validation figures). The training clock stops meanwhile; the record's ``eval_sec`` is
    the scoring time, and the whole pause is what the ETA counts per evaluation still to come."""
    task = state.task
    paused = time.perf_counter()
    state.window_seconds += paused - state.window_start
    state.last_eval = task.evaluate(state.model, state.val_loader, state.val_ds, state.cfg, state.device,
                                    progress=not state.bar.disable)
    eval_sec = time.perf_counter() - paused
    state.last_val = state.last_eval.summary
    score = state.last_val[task.metric]
    improved = score > state.best_score
    state.best_score = max(state.best_score, score)
    state.log.record({"type": "val", "iter": state.iteration, **state.last_val, "eval_sec": eval_sec})
    state.log.print(f"eval at iter {state.iteration}: {state.last_eval.line}  (best {100 * state.best_score:.2f})  "
                    f"eval {eval_sec:.1f}s")
    save(state, best=improved)
    if state.info.is_main:
        plot_curves(state.log.path, state.run_dir / "curves.png", metric=task.curve)
        if state.log.board is not None:
            state.log.images("val", draw_validation(state), state.iteration)
    state.window_start = time.perf_counter()
    state.last_eval_seconds = state.window_start - paused
    state.eval_seconds += state.last_eval_seconds


def draw_validation(state: RunState) -> List[np.ndarray]:
    """The task's figures of the first ``num_vis`` validation images; the model's train/eval mode is restored
    afterwards."""
    model = state.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return state.task.draw_validation(model, state.val_ds, state.cfg, state.device,
                                              min(state.cfg["num_vis"], len(state.val_ds)))
    finally:
        model.train(was_training)


def finish(state: RunState) -> Dict[str, Any]:
    """Print the per-class table, draw ``vis/val_<i>.png`` and return the final metrics and the run folder."""
    task, last = state.task, state.last_val
    if state.info.is_main:
        state.log.print(state.last_eval.table)
        for i, figure in enumerate(draw_validation(state)):
            save_png(state.run_dir / "vis" / f"val_{i:03d}.png", figure)
    state.log.print(f"done in {fmt_time(time.perf_counter() - state.started)} (training {fmt_time(state.train_seconds)}"
                    f", evaluations and checkpoints {fmt_time(state.eval_seconds)}): final {task.metric_label} "
                    f"{100 * last[task.metric]:.2f}, best {100 * state.best_score:.2f}; run folder {state.run_dir}")
    return {"run_dir": str(state.run_dir), "iteration": state.iteration, **last, task.best_key: state.best_score}


# -------------------------------------------------------------------------------------------------- loop


def interrupt(state: RunState, signum: int) -> None:
    """Save ``last.pt`` at the current iteration (between two steps) and raise :class:`TrainingInterrupted`."""
    if state.iteration and state.last_saved != state.iteration:
        save(state, best=False)
    saved = f"saved {state.run_dir / 'last.pt'}" if state.iteration else "nothing to save yet"
    raise TrainingInterrupted(
        f"{signal.Signals(signum).name} at iteration {state.iteration}/{state.max_iters}: {saved}; continue with "
        f"--resume {state.run_dir}", signum, report=state.info.is_main)


def _stopped_at_once(state: Optional[RunState]) -> str:
    if state is None:
        return "before training started"
    kept = (f"last.pt from iteration {state.last_saved} is kept" if state.last_saved is not None
            else "no checkpoint was written yet")
    return (f"stopped at once during iteration {state.iteration + 1}/{state.max_iters} ({kept}); continue with "
            f"--resume {state.run_dir}")


def _batches(state: RunState, stop: StopOnSignal) -> Iterator[Tuple[Any, Any]]:
    """The loader's batches. A terminal's Ctrl-C also reaches loader workers that do not share our handler
    (a spawn or forkserver start) and ends them; the loader's error then means "stop", and the run is whole."""
    batches = iter(state.train_loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception:
            if stop.signum is None:
                raise
            interrupt(state, stop.signum)
        yield batch


def _run(state: RunState) -> Dict[str, Any]:
    cfg = state.cfg
    show_bars = cfg["progress"] if cfg["progress"] is not None else sys.stderr.isatty()
    state.bar = tqdm(total=state.max_iters, initial=state.iteration, desc="train", dynamic_ncols=True,
                     disable=not (show_bars and state.info.is_main), file=sys.stderr)
    epoch, offset = divmod(state.iteration, state.iters_per_epoch)
    state.ddp.train()
    with StopOnSignal(second_stops_at_once=not state.info.distributed) as stop:
        state.window_start = time.perf_counter()
        while not state.done:
            state.sampler.set_epoch(epoch, start=offset * cfg["batch_size"])
            for inputs, targets in _batches(state, stop):
                log_step(state, train_step(state, inputs, targets))
                state.bar.update(1)
                if state.iteration % state.eval_interval == 0 or state.done:
                    evaluate_and_save(state)
                elif state.iteration % state.ckpt_interval == 0:
                    save(state, best=False)
                signum = stop.requested(distributed=state.info.distributed, device=state.device)
                if signum and not state.done:
                    interrupt(state, signum)
                if state.done:
                    break
            epoch, offset = epoch + 1, 0
        state.bar.close()
        return finish(state)


def train(config: Mapping[str, Any], task: Task, *, checkpoint: Optional[Mapping[str, Any]] = None
          ) -> Dict[str, Any]:
    """Run ``task``'s training as ``config`` (its program's keys) says; returns the final metrics and the run folder.

    ``checkpoint`` (with ``config["resume"]``) continues a run; :func:`tools.engine.launch.resolve_config`
    prepares both.

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM stopped the run (``last.pt`` saved at the current iteration), or
            a second one stopped it at once.
    """
    cfg = dict(config)
    check_config(cfg, task)
    info = dist_utils.init_distributed(cfg["device"])
    state: Optional[RunState] = None
    try:
        state = setup(cfg, task, info, checkpoint)
        return _run(state)
    except KeyboardInterrupt:
        raise TrainingInterrupted(_stopped_at_once(state), signal.SIGINT, report=info.is_main) from None
    finally:
        if state is not None:
            state.log.close()
        dist_utils.cleanup()
