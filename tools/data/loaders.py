"""Data loaders for training and evaluation: a resumable, shardable, seeded sampler and a padding collate.

The training sampler shuffles exactly like ``torch.utils.data.DistributedSampler`` (which it wraps), so with
``W`` processes the union of the ``W`` shards of one step's batches is the batch a single process would take
with a ``W`` times larger batch size. It yields ``(index, seed)`` pairs; the dataset draws that sample's
augmentation from ``seed`` (see :class:`tools.data.SegmentationDataset`), so the data a run sees depends on
neither the number of loader workers nor the iteration a run was resumed from.

A dataset's own errors (a damaged file, a bad label value: :data:`DATA_ERRORS`) reach the caller as the dataset
raised them, with or without worker processes. PyTorch would re-raise a worker's error with the worker's
traceback pasted into its message, so the loaders carry it to the main process as data instead.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate, get_worker_info

from .base import IGNORE_INDEX

__all__ = ["SeededShardSampler", "pad_collate", "build_train_loader", "build_eval_loader", "SampleFailure",
           "DATA_ERRORS"]

# The errors a dataset raises on purpose about its files (damaged image, bad label, missing file), each with a
# message naming the file. Anything else is a bug and keeps PyTorch's report with the worker's traceback.
DATA_ERRORS = (ValueError, OSError)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for sample ``index`` in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededShardSampler(Sampler):
    """This process's shard of a per-epoch shuffle, as ``(index, augmentation seed)`` pairs.

    Args:
        dataset: anything with ``len()``.
        seed: shuffling and augmentation seed; the same on every process.
        rank, world_size: this process and the number of processes (1 without DDP).

    Call :meth:`set_epoch` before each pass; ``start`` skips that many of the shard's first samples, to resume
    in the middle of an epoch.
    """

    def __init__(self, dataset: Dataset, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=False)
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches in one whole epoch of this shard."""
        return len(self.inner) // batch_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(self.inner)[self.start:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])


def pad_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image (3, h, w), mask (h, w))`` pairs, padding to the largest size in the batch.

    Images are padded with 0 (the mean colour once normalized), masks with 255 so padding is never scored.
    Returns ``images`` ``(N, 3, H, W)`` and ``masks`` ``(N, H, W)`` int64.
    """
    height = max(img.shape[-2] for img, _ in batch)
    width = max(img.shape[-1] for img, _ in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for k, (img, mask) in enumerate(batch):
        images[k, :, : img.shape[-2], : img.shape[-1]] = img
        masks[k, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


class SampleFailure:
    """A dataset error caught in a loader worker, travelling to the main process in place of a batch."""

    def __init__(self, error: BaseException) -> None:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # an exception class that cannot be rebuilt: keep its message
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


class _CarryErrors(Dataset):
    """``dataset`` whose :data:`DATA_ERRORS` come back as a :class:`SampleFailure` in a worker process."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except DATA_ERRORS as e:
            if get_worker_info() is None:  # main process: the error propagates with its own traceback
                raise
            return SampleFailure(e)


def _carry_errors_collate(collate: Callable[[List[Any]], Any]) -> Callable[[List[Any]], Any]:
    def collate_or_failure(batch: List[Any]) -> Any:
        failure = next((s for s in batch if isinstance(s, SampleFailure)), None)
        return failure if failure is not None else collate(batch)

    return collate_or_failure


class _Loader(DataLoader):
    """A DataLoader that raises a worker's :class:`SampleFailure` as the dataset's original error."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if isinstance(batch, SampleFailure):
                try:
                    raise batch.error
                finally:
                    # The traceback keeps this frame: a frame -> failure -> error -> traceback cycle would leave
                    # the loader to the garbage collector, whose finalizers can close the worker queues before
                    # the workers are told to stop, so each worker is waited for until PyTorch's timeout.
                    batch = None
            yield batch


def _loader(dataset: Dataset, *, collate_fn: Callable[[List[Any]], Any], **kwargs: Any) -> DataLoader:
    return _Loader(_CarryErrors(dataset), collate_fn=_carry_errors_collate(collate_fn), **kwargs)


def build_train_loader(dataset: Dataset, *, batch_size: int, workers: int, seed: int, rank: int = 0,
                       world_size: int = 1, pin_memory: bool = False,
                       collate_fn: Callable[[List[Any]], Any] = default_collate
                       ) -> Tuple[DataLoader, SeededShardSampler]:
    """A loader of full ``batch_size`` batches (the last partial batch of an epoch is dropped).

    ``collate_fn`` turns a list of samples into a batch (detection keeps lists). Raises ``ValueError`` when this
    process's shard cannot fill a single batch.
    """
    sampler = SeededShardSampler(dataset, seed=seed, rank=rank, world_size=world_size)
    if len(sampler) < batch_size:
        raise ValueError(
            f"the training set has {len(dataset)} samples, {len(sampler)} per process over {world_size} "
            f"process(es): fewer than one batch of {batch_size}; lower --batch-size"
        )
    loader = _loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                     collate_fn=collate_fn, pin_memory=pin_memory, persistent_workers=workers > 0,
                     generator=_private_generator(seed))
    return loader, sampler


def build_eval_loader(dataset: Dataset, *, batch_size: int = 1, workers: int = 0, rank: int = 0,
                      world_size: int = 1, pin_memory: bool = False,
                      collate_fn: Callable[[List[Any]], Any] = pad_collate) -> DataLoader:
    """A loader over this process's ``rank::world_size`` share of ``dataset``, in order, without padding.

    Shards are disjoint and cover the set once, so summing the processes' confusion matrices scores every
    image exactly once (``DistributedSampler`` would repeat images to even out the shards). ``collate_fn``
    turns a list of samples into a batch.
    """
    indices: List[int] = list(range(rank, len(dataset), world_size))
    return _loader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers, collate_fn=collate_fn,
                   pin_memory=pin_memory, persistent_workers=workers > 0, generator=_private_generator(0))


def _private_generator(seed: int) -> torch.Generator:
    # A DataLoader draws its workers' base seed from this generator, or else from the global one, which would
    # make the global random stream (dropout) depend on when loaders were (re)started, e.g. after a resume.
    return torch.Generator().manual_seed(seed)
