"""Training checkpoints: plain dicts of tensors and python values, written atomically, read weights-only.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over the old
one (``os.replace`` is atomic on POSIX and Windows), so a run killed at any moment leaves either the previous
checkpoint or the new one, never a torn file. Everything stored is a tensor or a plain python value, so
``torch.load(weights_only=True)`` reads it without unpickling code.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from backbones.weights import state_dict_mismatches

__all__ = ["FORMAT_VERSION", "CHECKPOINT_KEYS", "RESUME_KEYS", "TASK_KEYS", "checkpoint_task", "save_checkpoint",
           "load_checkpoint",
           "rng_state", "set_rng_state", "check_model_state"]

FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # torch reports a full disk as RuntimeError("PytorchStreamWriter failed writing file data/0: file write
        # failed"), which names neither the checkpoint nor the cause.
        raise OSError(f"could not write checkpoint {str(path)!r} ({_free_space(path.parent)} free on its disk): "
                      f"{type(e).__name__}: {e}. The previous checkpoint there, if any, is unchanged.") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable; not possible on every platform
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


# What every checkpoint holds (last.pt and best.pt alike), and what continuing a run needs besides (last.pt only).
CHECKPOINT_KEYS = ("model", "config")
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "iteration", "rng")
# Per task: the config keys that name its model (every checkpoint's config holds them) and the last.pt key of
# the best validation score. A checkpoint without a "task" key was written before detection existed.
TASK_KEYS = {"segmentation": (("backbone", "head"), "best_miou"),
             "detection": (("backbone", "detector"), "best_ap")}
LEGACY_TASK = "segmentation"
# The program that writes each task's checkpoints, for messages.
TRAINER_OF = {"segmentation": "dense-train", "detection": "dense-train-det"}
WRITERS = "tools.train_seg or tools.train_det"


def checkpoint_task(checkpoint: Mapping[str, Any]) -> str:
    """The task a checkpoint's model solves (``"segmentation"``, ``"detection"``)."""
    return checkpoint.get("task", LEGACY_TASK)


def load_checkpoint(path: PathLike, *, resume: bool = False, task: Optional[str] = None) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU, weights only) and check its keys.

    Args:
        resume: also require what continuing the run needs (:data:`RESUME_KEYS` and the best score: held by
            ``last.pt``, not by ``best.pt``).
        task: the task the caller takes (``"segmentation"``, ``"detection"``); a checkpoint of another task is
            refused. ``None`` takes either.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint of this project's format, holds another task's model,
            or lacks a key it needs; the message names the file and the missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, which would run any code the file holds: never pass it on.
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(f"refusing to load {str(path)!r}: it holds pickled Python code ({found.group(1)}); "
                             f"a checkpoint written by {WRITERS} holds only tensors and plain values") from e
        raise ValueError(f"cannot read checkpoint {str(path)!r}: not a checkpoint written by "
                         f"tools.train_seg, or corrupt (not a torch file)") from e
    except Exception as e:  # truncated, or not a torch file at all
        detail = re.split(r"(?<=[.?]) ", str(e).strip().split("\n")[0])[0]  # torch's first sentence
        detail = "" if "weights_only" in detail or not detail else f": {type(e).__name__}: {detail}"
        raise ValueError(f"cannot read checkpoint {str(path)!r}: not a checkpoint written by "
                         f"tools.train_seg, or corrupt{detail}") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{str(path)!r} is not a checkpoint written by {WRITERS} (expected keys 'model' and "
                         f"'config', got {keys})")
    kind = checkpoint_task(ckpt)
    if kind not in TASK_KEYS:
        raise ValueError(f"checkpoint {str(path)!r} is damaged: its task {kind!r} is not one of "
                         f"{', '.join(map(repr, TASK_KEYS))}")
    if task is not None and kind != task:
        raise ValueError(f"checkpoint {str(path)!r} holds a {kind} model (written by {TRAINER_OF[kind]}); this "
                         f"program takes {task} checkpoints, written by {TRAINER_OF[task]}")
    config = ckpt["config"]
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {str(path)!r} is damaged: its config is a {type(config).__name__}, not a "
                         f"mapping of option names to values")
    name_keys, best_key = TASK_KEYS[kind]
    missing = [k for k in name_keys if k not in config]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is damaged: its config lacks {_names(missing)}, the name of "
                         f"the model's {' and '.join(missing)}, which {TRAINER_OF[kind]} always writes")
    needed = RESUME_KEYS[:-1] + (best_key, RESUME_KEYS[-1])
    missing = [k for k in needed if k not in ckpt] if resume else []
    if missing:
        raise ValueError(f"cannot resume from {str(path)!r}: it lacks {_names(missing)}. Resume from a run's "
                         f"last.pt (best.pt holds the weights only, for evaluation and prediction)")
    return ckpt


def _names(keys: Sequence[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def rng_state() -> Dict[str, Any]:
    """Every random generator's state as tensors and plain python values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    cuda: List[torch.Tensor] = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        for device, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, device)
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def check_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, where: str) -> None:
    """Raise ``ValueError`` listing missing, unexpected and wrongly shaped keys before anything is loaded."""
    problems = state_dict_mismatches(model, state_dict, limit=5)
    if problems:
        raise ValueError(f"checkpoint {where} does not fit this model: {problems}")
