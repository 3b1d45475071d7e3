import hashlib
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from fgir.config import DataConfig
from fgir.data.datasets import ImageListDataset
from fgir.data.sampler import EpochSampler, auto_num_workers, build_loader, ignore_stop_signals, sample_seeds
from fgir.data.transforms import build_transform


def keys(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_same_seed_and_epoch_give_the_same_stream():
    a = EpochSampler(50, seed=7, shuffle=True)
    b = EpochSampler(50, seed=7, shuffle=True)
    assert keys(a, 3) == keys(b, 3)
    indices = [index for index, _ in keys(a, 3)]
    assert sorted(indices) == list(range(50))
    assert indices != list(range(50))


def test_epochs_and_seeds_change_order_and_sample_seeds():
    sampler = EpochSampler(50, seed=7, shuffle=True)
    epoch0, epoch1 = dict(keys(sampler, 0)), dict(keys(sampler, 1))
    assert list(epoch0) != list(epoch1)
    assert all(epoch0[i] != epoch1[i] for i in range(50))
    other_seed = dict(keys(EpochSampler(50, seed=8, shuffle=True), 0))
    assert all(epoch0[i] != other_seed[i] for i in range(50))


def test_sample_seed_depends_on_index_not_position():
    shuffled = dict(keys(EpochSampler(20, seed=1, shuffle=True), 4))
    ordered = keys(EpochSampler(20, seed=1, shuffle=False), 4)
    assert [index for index, _ in ordered] == list(range(20))
    assert dict(ordered) == shuffled


def test_sample_seeds_are_distinct_63_bit_values():
    seeds = sample_seeds(12345, np.arange(100_000))
    assert len(np.unique(seeds)) == 100_000
    assert seeds.max() < 2**63
    assert seeds.max() > 2**62  # spread over the whole range


def test_two_shards_cover_everything_once():
    shards = [keys(EpochSampler(40, seed=3, shuffle=True, rank=r, world_size=2), 2) for r in range(2)]
    assert [len(s) for s in shards] == [20, 20]
    assert sorted(shards[0] + shards[1]) == sorted(keys(EpochSampler(40, seed=3, shuffle=True), 2))


def test_uneven_shards_pad_by_wrapping_or_cut():
    full = [i for i, _ in keys(EpochSampler(10, seed=0, shuffle=True), 0)]
    padded = [EpochSampler(10, seed=0, shuffle=True, rank=r, world_size=4) for r in range(4)]
    assert [len(s) for s in padded] == [3, 3, 3, 3]
    dealt = [[i for i, _ in keys(s, 0)] for s in padded]
    # Round-robin over the epoch order padded with its own start.
    padded_order = full + full[:2]
    assert dealt == [padded_order[r::4] for r in range(4)]
    cut = [EpochSampler(10, seed=0, shuffle=True, rank=r, world_size=4, drop_last=True) for r in range(4)]
    assert [len(list(s)) for s in cut] == [2, 2, 2, 2]
    assert sorted(i for s in cut for i, _ in s) == sorted(full[:8])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="rank must be in"):
        EpochSampler(10, seed=0, shuffle=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        EpochSampler(0, seed=0, shuffle=True)


def test_auto_workers_skip_tiny_datasets():
    assert auto_num_workers(10) == 0
    assert 1 <= auto_num_workers(1000) <= 8


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    data = DataConfig(image_size=16, resize_ratio=1.25, augment="medium")
    return ImageListDataset(
        paths, [i % 3 for i in range(12)], ["a", "b", "c"], build_transform(data, train=True)
    )


def epoch_digest(loader, epoch) -> list[str]:
    loader.sampler.set_epoch(epoch)
    return [
        hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
        for images, labels in loader
    ]


def test_batches_do_not_depend_on_worker_count(small_dataset):
    serial = build_loader(small_dataset, batch_size=5, train=True, seed=11, num_workers=0)
    parallel = build_loader(small_dataset, batch_size=5, train=True, seed=11, num_workers=2)
    assert len(serial) == 2  # train drops the last partial batch
    first = epoch_digest(serial, 0)
    assert epoch_digest(parallel, 0) == first
    assert epoch_digest(parallel, 1) == epoch_digest(serial, 1) != first
    assert epoch_digest(serial, 0) == first  # going back to an epoch replays it (resume)


def test_eval_loader_keeps_order_and_every_sample(small_dataset):
    loader = build_loader(small_dataset, batch_size=5, train=False, seed=0, num_workers=0)
    labels = torch.cat([batch_labels for _, batch_labels in loader])
    assert labels.tolist() == small_dataset.labels


def test_skipping_the_start_of_an_epoch_continues_the_same_stream():
    sampler = EpochSampler(23, seed=5, shuffle=True, rank=1, world_size=2, drop_last=True)
    full = keys(sampler, 3)
    sampler.set_epoch(3, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == len(full) == 11
    sampler.set_epoch(4)  # the skip holds for one epoch only
    assert len(list(sampler)) == 11
    with pytest.raises(ValueError, match=r"skip must be in \[0, 11\]"):
        sampler.set_epoch(3, skip=12)


class KeyEcho(torch.utils.data.Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, key):
        return key


def test_train_shards_of_a_global_batch_are_the_single_process_batches():
    # W processes at batch B / W train on exactly the samples of one process at batch B.
    keys_ = KeyEcho(19)
    one = build_loader(keys_, batch_size=4, train=True, seed=2, num_workers=0, collate_fn=list)
    two = [build_loader(keys_, batch_size=2, train=True, seed=2, num_workers=0, collate_fn=list,
                        rank=r, world_size=2) for r in range(2)]
    for loader in (one, *two):
        loader.sampler.set_epoch(1)
    shards = [list(loader) for loader in two]
    assert len(one) == len(two[0]) == 4
    for batch, *parts in zip(one, *shards, strict=True):
        assert sorted(batch) == sorted(key for part in parts for key in part)


def test_workers_leave_stop_signals_to_the_main_process(small_dataset):
    loader = build_loader(small_dataset, batch_size=5, train=False, seed=0, num_workers=1)
    assert loader.worker_init_fn is ignore_stop_signals
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(0)
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
