"""Process-group setup from torchrun's environment, and the few collective helpers the tools need.

``torchrun --nproc_per_node=N -m tools.train_seg ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; without them everything runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Tuple

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "torchrun_env", "init_distributed", "cleanup", "rank", "world_size", "is_main", "barrier",
           "broadcast_object", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available) -> this process's device."""
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def torchrun_env() -> Tuple[int, int, int]:
    """This process's rank, the number of processes and the local rank, from torchrun's environment variables
    (``0, 1, 0`` without them)."""
    rank_, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank_ < size:
        raise ValueError(f"RANK {rank_} is not below WORLD_SIZE {size}")
    return rank_, size, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables (gloo on CPU, nccl on CUDA).

    Returns this process's rank, world size, local rank and device; a single process when ``WORLD_SIZE`` is
    unset or 1.
    """
    rank_, size, local_rank = torchrun_env()
    dev = resolve_device(device, local_rank)
    if size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank=rank_, world_size=size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as held by process ``src`` (e.g. a run directory or an error message chosen by rank 0)."""
    if world_size() == 1:
        return obj
    box: List[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
