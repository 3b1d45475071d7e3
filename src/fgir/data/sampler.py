"""Epoch-seeded sampling and the DataLoader built on it.

The sampler yields `(index, sample_seed)` keys that `ImageListDataset` understands. The order
depends only on (seed, epoch) and each sample's augmentation only on (seed, epoch, index), so a run
is reproducible whatever the number of workers, and a resumed run continues the same stream after
`set_epoch(epoch)`.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing.util  # noqa: F401 (registers its exit hook before ours, see _stop_workers)
import os
import signal
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fgir.data.datasets import collate_readable

# Starting worker processes costs more than it saves for tiny datasets (tests, smoke runs).
MIN_SAMPLES_FOR_WORKERS = 64
MAX_AUTO_WORKERS = 8
_U64 = np.uint64


def epoch_key(seed: int, epoch: int) -> int:
    """A 63-bit key mixing (seed, epoch); any ints, negative ones included."""
    entropy = [seed % 2**64, epoch % 2**64]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> _U64(1))


def sample_seeds(key: int, indices: np.ndarray) -> np.ndarray:
    """63-bit seeds, one per index: the splitmix64 finaliser of key + (index + 1) * golden ratio,
    vectorised so an epoch of hundreds of thousands of samples costs milliseconds."""
    x = _U64(key) + (indices.astype(_U64) + _U64(1)) * _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return (x ^ (x >> _U64(31))) >> _U64(1)


# timm's RepeatAugSampler rounds the samples of an epoch down to a multiple of this (selected_round).
REPEAT_ROUND = 256


def repeat_aug_share(num_samples: int, world_size: int) -> int:
    """A rank's samples per epoch under repeated augmentation: timm's `RepeatAugSampler`
    `num_selected_samples` with its defaults, the dataset's size rounded down to a multiple of 256
    (when it has that many), split over the ranks."""
    if num_samples >= REPEAT_ROUND:
        return num_samples // REPEAT_ROUND * REPEAT_ROUND // world_size
    return math.ceil(num_samples / world_size)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields `(index, sample_seed)` for one rank's share of an epoch.

    shuffle: a permutation drawn from a generator seeded by (seed, epoch); otherwise 0..n-1.
    With world_size W > 1 the epoch's order is dealt round-robin to the ranks. drop_last=False
    pads the order by wrapping to its start so every rank gets ceil(n / W) samples (a few samples
    then appear twice in the epoch, with the same seed); drop_last=True cuts it to floor(n / W) * W.
    repeats=N > 1 is repeated augmentation (Hoffer et al., arXiv:1901.09335; DeiT, arXiv:2012.12877)
    as timm's `RepeatAugSampler` deals it: each index of the order N times in a row, each copy with its
    own seed (so its own augmentation), dealt round-robin (the copies of an index go to different
    ranks when N >= W), and each rank keeps its first `repeat_aug_share` samples (drop_last does not
    apply): an epoch keeps about n samples, about n / N distinct images. The indices are those of
    timm's sampler whose epoch is this sampler's `epoch_key(seed, epoch)` (timm seeds by epoch alone).
    `set_epoch(epoch, skip=k)` leaves out this rank's first k samples of that epoch (a run resumed
    mid-epoch does not read again what it already trained on); `len` stays the whole epoch's share.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        repeats: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.repeats = repeats
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not 0 <= skip <= len(self):
            raise ValueError(f"skip must be in [0, {len(self)}] (this rank's samples per epoch), got {skip}")
        self.epoch, self.skip = epoch, skip

    def _epoch_length(self) -> int:
        """Positions in the epoch's order across all ranks (copies included), after padding or cutting."""
        total = self.num_samples * self.repeats
        if self.drop_last and self.repeats == 1:
            return total // self.world_size * self.world_size
        return math.ceil(total / self.world_size) * self.world_size

    def __len__(self) -> int:
        share = self._epoch_length() // self.world_size
        if self.repeats == 1:
            return share
        return min(share, repeat_aug_share(self.num_samples, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        key = epoch_key(self.seed, self.epoch)
        if self.shuffle:
            generator = torch.Generator().manual_seed(key)
            order = torch.randperm(self.num_samples, generator=generator).numpy()
        else:
            order = np.arange(self.num_samples)
        # Each index `repeats` times in a row; a position past the end wraps to the start (padding).
        positions = np.arange(self.rank, self._epoch_length(), self.world_size)[: len(self)][self.skip :]
        positions %= self.num_samples * self.repeats
        mine = order[positions // self.repeats]
        copy = positions % self.repeats  # which of the index's copies: each has its own seed
        return zip(mine.tolist(), sample_seeds(key, mine * self.repeats + copy).tolist(), strict=True)


def ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGINT / SIGTERM to the main process, which stops at the end of a step and saves
    a checkpoint (a Ctrl-C or a scheduler's SIGTERM reaches the whole process group); the main process
    shuts the workers down itself (`WorkerShutdownLoader`), and they exit when it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class WorkerShutdownLoader(DataLoader):
    """A DataLoader whose worker processes are shut down when the interpreter exits, however it exits.

    At exit Python's multiprocessing sends SIGTERM to daemon children and then waits for them: workers
    that ignore SIGTERM would keep a failed run waiting forever. So the workers of every loader still
    running are shut down before that, as the loader does when it is garbage collected (which the
    traceback of an exception, still referenced at exit, prevents), and killed if they do not stop.
    """

    def _get_iterator(self):
        iterator = super()._get_iterator()
        if self.num_workers > 0:
            _iterators_with_workers.add(iterator)
        return iterator


_iterators_with_workers: weakref.WeakSet = weakref.WeakSet()


def _stop_workers() -> None:
    for iterator in list(_iterators_with_workers):
        iterator._shutdown_workers()
        for worker in iterator._workers:
            if worker.is_alive():  # still busy after the loader's grace period, and deaf to SIGTERM
                worker.kill()
                worker.join()


# atexit runs the hook registered last first: this one before those of torch's DataLoader and of
# multiprocessing (both imported above), which would make the shutdown a no-op and wait on the workers.
atexit.register(_stop_workers)


def auto_num_workers(num_samples: int) -> int:
    """One worker per CPU core available to this process, at most 8; none for tiny datasets."""
    if num_samples < MIN_SAMPLES_FOR_WORKERS:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_AUTO_WORKERS)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int = -1,
    pin_memory: bool = False,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    repeats: int = 1,
) -> DataLoader:
    """A DataLoader over an `EpochSampler`: shuffled and dropping the last partial batch when
    `train` (unless `drop_last` says otherwise). Call `loader.sampler.set_epoch(epoch)` before each
    epoch. num_workers=-1 picks `auto_num_workers`; workers persist across epochs. With several
    ranks every rank gets ceil(n / world_size) samples (padded by wrapping, see EpochSampler), or
    floor(n / world_size) with drop_last: then W ranks at batch B / W train on exactly the batches
    one process at batch B would. repeats=N > 1: repeated augmentation (see EpochSampler). A dataset that skips unreadable images (on_error="skip") is
    collated by `collate_readable` unless `collate_fn` says otherwise."""
    drop_last = train if drop_last is None else drop_last
    if collate_fn is None and getattr(dataset, "on_error", "fail") == "skip":
        collate_fn = collate_readable
    sampler = EpochSampler(len(dataset), seed=seed, shuffle=train, rank=rank, world_size=world_size,
                           drop_last=drop_last, repeats=repeats)
    workers = auto_num_workers(len(dataset)) if num_workers < 0 else num_workers
    return WorkerShutdownLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
