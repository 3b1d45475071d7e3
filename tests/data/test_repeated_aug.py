"""data.repeated_aug: EpochSampler(repeats=N) against timm's RepeatAugSampler."""

from collections import Counter

import pytest
from timm.data.distributed_sampler import RepeatAugSampler

from fgir.config import ConfigError, load_config
from fgir.data.sampler import EpochSampler, build_loader, epoch_key

CASES = [  # num_samples, world_size, repeats, shuffle: both sides of timm's 256-sample rounding
    (50, 1, 3, True), (50, 4, 3, True), (13, 5, 4, True), (600, 2, 3, True), (600, 3, 2, False), (1000, 8, 3, True),
]


def epoch_keys(sampler, epoch, skip=0):
    sampler.set_epoch(epoch, skip=skip)
    return list(sampler)


@pytest.mark.parametrize(("num_samples", "world_size", "repeats", "shuffle"), CASES)
def test_indices_equal_timms_repeat_aug_sampler(num_samples, world_size, repeats, shuffle):
    # timm seeds its permutation by the epoch alone; fgir by epoch_key(seed, epoch): given that as
    # its epoch, timm's sampler deals the same indices to every rank.
    for rank in range(world_size):
        ours = EpochSampler(num_samples, seed=9, shuffle=shuffle, rank=rank, world_size=world_size, repeats=repeats)
        timm = RepeatAugSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                num_repeats=repeats)
        timm.set_epoch(epoch_key(9, 4))
        assert [index for index, _ in epoch_keys(ours, 4)] == list(timm)
        assert len(ours) == len(timm)


def test_copies_of_an_image_get_their_own_seeds_and_ranks():
    shards = [epoch_keys(EpochSampler(40, seed=3, shuffle=True, rank=r, world_size=3, repeats=3), 1) for r in range(3)]
    keys = [key for shard in shards for key in shard]
    assert len(set(keys)) == len(keys) == 3 * 14  # no (index, seed) twice: shards disjoint, copies distinct
    for shard in shards:
        assert len({index for index, _ in shard}) == len(shard)  # with N = W, no rank sees an image twice
    counts = Counter(index for index, _ in keys)
    assert set(counts.values()) == {3}  # 14 images, each 3 times: the epoch stays 42 ~ 40 samples


def test_one_repeat_is_the_plain_sampler():
    plain = EpochSampler(23, seed=5, shuffle=True, rank=1, world_size=2, drop_last=True)
    once = EpochSampler(23, seed=5, shuffle=True, rank=1, world_size=2, drop_last=True, repeats=1)
    assert epoch_keys(plain, 2) == epoch_keys(once, 2)


def test_resuming_mid_epoch_continues_the_same_stream():
    sampler = EpochSampler(600, seed=5, shuffle=True, rank=1, world_size=2, repeats=3)
    full = epoch_keys(sampler, 3)
    assert len(full) == len(sampler) == 256  # 600 rounded down to 512, over 2 ranks
    assert epoch_keys(sampler, 3, skip=100) == full[100:]
    assert epoch_keys(sampler, 4) != full
    with pytest.raises(ValueError, match=r"skip must be in \[0, 256\]"):
        sampler.set_epoch(3, skip=257)


def test_loader_batches_follow_the_repeated_sampler():
    loader = build_loader(list(range(30)), batch_size=4, train=True, seed=2, num_workers=0, repeats=3,
                          collate_fn=list)
    assert len(loader.sampler) == 30 and len(loader) == 7  # drop_last on batches still holds


@pytest.mark.parametrize("value", [0, -2])
def test_bad_repeat_counts_are_refused(value):
    with pytest.raises(ConfigError, match=rf"'data.repeated_aug' must be >= 1 or null .*got {value}"):
        load_config(overrides=[f"data.repeated_aug={value}"])
