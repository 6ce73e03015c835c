"""Detection loaders: a collate that keeps lists, and batches grouped by aspect ratio, resumable and sharded.

torchvision's detectors take a list of images of any sizes and pad them to the largest of the batch; a batch
that mixes portrait and landscape images pads each to a square of the longer sides, computing on padding.
:class:`GroupedBatchSampler` batches images of similar aspect ratio together (the idea of torchvision's
references' ``GroupedBatchSampler``), as a pure function of the seed, the epoch and the shard, so that a run
resumed in the middle of an epoch sees exactly the batches an uninterrupted one would.

Errors of the dataset's files reach the caller as the dataset raised them, with or without workers: the loaders
are those of :mod:`tools.data.loaders`.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..loaders import SeededShardSampler, _loader, _private_generator, build_eval_loader, build_train_loader

__all__ = ["ASPECT_RATIO_EDGES", "GroupedBatchSampler", "aspect_ratio_groups", "detection_collate",
           "build_detection_train_loader", "build_detection_eval_loader"]

# Bin edges of width / height, three bins per octave between 1/2 and 2 with square images in the middle of one:
# 0.56, 0.71, 0.89, 1.12, 1.41, 1.78, so 4:3 (1.33) and 3:2 (1.5) fall apart, and so do their portraits.
ASPECT_RATIO_EDGES = tuple(float(2 ** ((k - 0.5) / 3)) for k in range(-2, 4))

Batch = List[Tuple[int, int]]


def detection_collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]
                      ) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
    """``[(image, target), ...]`` -> ``(images, targets)``, two lists: the detectors batch images themselves."""
    return [image for image, _ in batch], [target for _, target in batch]


def aspect_ratio_groups(dataset: Any, *, edges: Sequence[float] = ASPECT_RATIO_EDGES) -> List[int]:
    """The aspect-ratio bin (``0..len(edges)``) of every image of ``dataset``, read from ``image_size(i)``."""
    sizes = np.array([dataset.image_size(i) for i in range(len(dataset))], np.float64).reshape(-1, 2)
    return np.searchsorted(np.asarray(edges), sizes[:, 1] / sizes[:, 0]).tolist()


class GroupedBatchSampler(Sampler[Batch]):
    """Batches of ``(index, seed)`` pairs from one shard's epoch, each batch of one aspect-ratio group.

    Walking the shard's shuffled stream, a batch is emitted when its group has collected ``batch_size`` samples;
    at the end of the stream the samples still waiting are batched in stream order, groups mixed, and the last
    ``len(shard) % batch_size`` dropped. So every epoch has ``len(shard) // batch_size`` full batches, like the
    ungrouped loader, and no sample is seen twice in an epoch.

    Args:
        sampler: this process's :class:`SeededShardSampler` (its ``set_epoch`` is driven from here).
        groups: the group of every dataset index (:func:`aspect_ratio_groups`).
        batch_size: samples per batch.

    Call :meth:`set_epoch` before each pass; ``start`` is the number of this epoch's samples already consumed
    (a multiple of ``batch_size``), to resume in the middle of an epoch.
    """

    def __init__(self, sampler: SeededShardSampler, groups: Sequence[int], *, batch_size: int) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.sampler = sampler
        self.groups = [int(g) for g in groups]
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if start % self.batch_size:
            raise ValueError(f"start must be a multiple of the batch size {self.batch_size} (whole batches consumed), "
                             f"got {start}")
        self.epoch, self.start = epoch, start

    def batches_per_epoch(self, batch_size: int) -> int:
        """Batches in one whole epoch of this shard."""
        if batch_size != self.batch_size:
            raise ValueError(f"this sampler makes batches of {self.batch_size}, asked about batches of {batch_size}")
        return len(self.sampler.inner) // batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(self.batch_size) - self.start // self.batch_size)

    def epoch_batches(self) -> List[Batch]:
        """The whole epoch's batches, in order."""
        self.sampler.set_epoch(self.epoch, 0)
        stream = list(self.sampler)
        waiting: Dict[int, List[int]] = {}  # group -> positions in the stream
        batches: List[List[int]] = []
        for position, (index, _) in enumerate(stream):
            bucket = waiting.setdefault(self.groups[index], [])
            bucket.append(position)
            if len(bucket) == self.batch_size:
                batches.append(bucket)
                waiting[self.groups[index]] = []
        rest = sorted(p for bucket in waiting.values() for p in bucket)
        size = self.batch_size
        batches += [rest[k:k + size] for k in range(0, len(rest) - size + 1, size)]
        return [[stream[p] for p in batch] for batch in batches]

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.epoch_batches()[self.start // self.batch_size:])


def build_detection_train_loader(dataset: Any, *, batch_size: int, workers: int, seed: int, rank: int = 0,
                                 world_size: int = 1, group_aspect_ratio: bool = True, pin_memory: bool = False
                                 ) -> Tuple[DataLoader, Union[GroupedBatchSampler, SeededShardSampler]]:
    """A loader of full batches ``(images list of (3, h, w), targets list of dicts)`` and its resumable sampler.

    With ``group_aspect_ratio`` each batch holds images of one aspect-ratio bin (:class:`GroupedBatchSampler`),
    otherwise the shard's stream is cut into consecutive batches (:class:`SeededShardSampler`). Either sampler
    has ``set_epoch(epoch, start)`` (``start`` in samples) and ``batches_per_epoch(batch_size)``.

    Raises ``ValueError`` when this process's shard cannot fill a single batch.
    """
    if not group_aspect_ratio:
        return build_train_loader(dataset, batch_size=batch_size, workers=workers, seed=seed, rank=rank,
                                  world_size=world_size, pin_memory=pin_memory, collate_fn=detection_collate)
    shard = SeededShardSampler(dataset, seed=seed, rank=rank, world_size=world_size)
    sampler = GroupedBatchSampler(shard, aspect_ratio_groups(dataset), batch_size=batch_size)
    if len(shard) < batch_size:
        raise ValueError(
            f"the training set has {len(dataset)} samples, {len(shard)} per process over {world_size} "
            f"process(es): fewer than one batch of {batch_size}; lower --batch-size"
        )
    loader = _loader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=detection_collate,
                     pin_memory=pin_memory, persistent_workers=workers > 0, generator=_private_generator(seed))
    return loader, sampler


def build_detection_eval_loader(dataset: Any, *, batch_size: int = 1, workers: int = 0, rank: int = 0,
                                world_size: int = 1) -> DataLoader:
    """This process's ``rank::world_size`` share of ``dataset`` in order, each image once, as
    ``(images list, targets list)`` batches."""
    return build_eval_loader(dataset, batch_size=batch_size, workers=workers, rank=rank, world_size=world_size,
                             collate_fn=detection_collate)
