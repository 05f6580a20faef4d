"""training/data.py: the loaders' seeds, the digits' shifts, the samplers (helper-171's mutation audit); and
training/pixel.py's CNN test."""

import torch
from torch.utils.data import Dataset, TensorDataset, get_worker_info


def test_loader_orders_of_seed_0_epoch_1_and_seed_1_epoch_0_differ():  # data.py:227 seed * 1_000_003 + epoch
    from masksub_kernels.training import data as data_mod

    dataset = torch.utils.data.TensorDataset(torch.arange(64))

    def order(epoch, seed):
        return list(data_mod.train_loader(dataset, 8, epoch, seed, 0, 1, 0, False).sampler.order)

    assert order(1, 0) != order(0, 1)


def test_digit_shifts_reach_both_ends():  # data.py:60 randint(0, 2 * s + 1)
    from masksub_kernels.training.data import DigitsDataset

    images = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # background (its min) 1: padding reads as 1
    dataset = DigitsDataset(images, torch.zeros(1, dtype=torch.int64), shift=1)
    torch.manual_seed(0)
    corners = {float(dataset[0][0][0, 0, 0]) for _ in range(200)}
    assert 5.0 in corners  # (dy, dx) = (2, 2): the image moved up-left by the whole shift


def test_tiny_digits_still_shift():  # data.py:82 max(1, img_size // 8)
    from masksub_kernels.training.data import build_datasets

    assert build_datasets(None, 4).train.shift == 1


def test_distributed_shards_drop_the_tail():  # data.py:208 drop_last=True
    from masksub_kernels.training.data import train_sampler

    dataset = torch.utils.data.TensorDataset(torch.arange(11))
    shards = [list(train_sampler(dataset, 0, 0, rank, 2)) for rank in (0, 1)]
    assert [len(s) for s in shards] == [5, 5] and not set(shards[0]) & set(shards[1])


def test_repeated_augmentation_on_a_small_set_keeps_every_image():  # data.py:201 no 256-rounding below 256
    from masksub_kernels.training.data import train_sampler

    dataset = torch.utils.data.TensorDataset(torch.arange(100))
    assert len(list(train_sampler(dataset, 0, 0, 0, 1, aug_repeats=3))) == 100


def test_poolformer_is_not_a_cnn():  # pixel.py:42 kernel > 1 (its 1x1 convolutions mix no pixels)
    import timm

    from masksub_kernels.training.pixel import is_convolutional

    with torch.device("meta"):
        assert not is_convolutional(timm.create_model("poolformer_s12"))


# helper-218's third mutation audit of the image command's data and augmentation pipeline (53 mutants)


# BUG (helper-218, B1): fails on 9cf0e0d, passes with /tmp/h218/worker_seed_fix.diff. Under torchrun the loader's
# generator was seeded by (seed, epoch) alone, and the DataLoader draws its workers' seeds from it: worker w of every
# rank had the same seed, so the ranks drew the same augmentations; with --aug-repeats the copies of an image (on
# other ranks, at the same place in their batches) came out identical, bit for bit (world 2, 2 repeats: both ranks
# trained the same batch).
class _RandomDraws(torch.utils.data.Dataset):
    """Each item: one draw from the worker's torch generator (what RandomResizedCrop, the flip, erasing draw)."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.rand(()), index


def test_loader_workers_draw_other_augmentations_on_each_rank():
    from masksub_kernels.training.data import train_loader

    for repeats in (0, 2):
        draws = [
            next(iter(train_loader(_RandomDraws(), 4, 0, 0, rank, 2, workers=1, pin=False, aug_repeats=repeats)))[0]
            for rank in (0, 1)
        ]
        assert not torch.equal(draws[0], draws[1]), repeats


# Kills data.py train_loader `drop_last=True` -> False (the command's _Truncated cuts the tail too, so only the
# function's own promise catches it): a partial last batch is an odd one for Mixup and shifts accumulation windows.
def test_train_loader_yields_whole_batches_only():
    from masksub_kernels.training.data import train_loader

    dataset = torch.utils.data.TensorDataset(torch.arange(10))
    sizes = [len(batch[0]) for batch in train_loader(dataset, 4, 0, 0, 0, 1, 0, False)]
    assert sizes == [4, 4]


# Kills data.py:201 `len(dataset) >= 256` -> `> 256` (the boundary of timm's rounding to whole 256s): a set of exactly
# 256 images is rounded as timm does, 256 // 256 * 256 / 3 -> 85 per process (not ceil(256 / 3) = 86), and
# --aug-repeats 1 is timm's RepeatAugSampler too (timm's loader takes it for any count > 0; kills `aug_repeats > 1`).
def test_repeated_augmentation_rounds_from_256_images_and_from_one_repeat():
    from masksub_kernels.training.data import train_sampler

    exactly = torch.utils.data.TensorDataset(torch.arange(256))
    assert len(list(train_sampler(exactly, 0, 0, 0, 3, aug_repeats=3))) == 85
    more = torch.utils.data.TensorDataset(torch.arange(600))
    assert len(list(train_sampler(more, 0, 0, 0, 1, aug_repeats=1))) == 512


# Kills data.py:50 `self.background = float(images.amin())` -> 0.0: the shifted-in border is the digits' empty
# paper (the normalised value of a 0 pixel, the set's minimum, about -0.8), not 0 (a grey border after
# normalisation, a frame the model could learn the shift from).
def test_digit_shifts_pad_with_the_background():
    from masksub_kernels.training.data import DigitsDataset

    images = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # background (its min) 1
    dataset = DigitsDataset(images, torch.zeros(1, dtype=torch.int64), shift=1)
    torch.manual_seed(0)
    values = {float(v) for _ in range(50) for v in dataset[0][0].flatten()}
    assert values <= {float(v) for v in range(1, 10)}


# Kills data.py:82 `... if augment else 0` -> `else 1`: --no-aug (augment=False) trains the digits unshifted, as
# the validation split is.
def test_digits_without_augmentation_do_not_shift():
    from masksub_kernels.training.data import build_datasets

    assert build_datasets(None, 16, augment=False).train.shift == 0


def test_ddp_data_orders_of_consecutive_seeds_are_not_shifted_epochs():
    # helper-218: torch's DistributedSampler shuffles with seed + epoch, and it was given the run's seed: under
    # torchrun seed 0's epoch 1 was seed 1's epoch 0 (a set of seeds replayed each other's orders an epoch apart,
    # their spread no longer independent). The single-process and repeated-augmentation samplers never did.
    from masksub_kernels.training.data import train_sampler

    dataset = torch.utils.data.TensorDataset(torch.arange(64))
    for rank in (0, 1):
        orders = {
            (seed, epoch): list(train_sampler(dataset, epoch, seed, rank, 2)) for seed in (0, 1) for epoch in (0, 1)
        }
        assert orders[(0, 1)] != orders[(1, 0)] and orders[(0, 0)] != orders[(0, 1)]
        assert sorted(orders[(0, 0)] + list(train_sampler(dataset, 0, 0, 1 - rank, 2))) == list(range(64))


# helper-220's review of the per-rank worker seeds (6f9f81d): the mutants its tests left


class _WorkerSeeds(Dataset):
    """Each item: its index and the seed of the worker that loaded it (torch's base seed + worker id)."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return index, get_worker_info().seed


# Kills data.py train_loader `if world > 1:` -> `if world >= 1:` (survived the whole training suite): a single
# process's loader must keep the one generator its shuffle draws from, the worker seeds first, then the order (as
# before 6f9f81d: "single-process runs unchanged"); a generator of its own would reshuffle every single-process run
# and move every worker seed, so a resume across the change, or a rerun of a published seed, would differ.
def test_a_single_process_loader_draws_its_worker_seeds_and_order_from_one_generator():
    from masksub_kernels.training.data import train_loader

    seed, epoch = 7, 3
    loader = train_loader(_WorkerSeeds(), 4, epoch, seed, 0, 1, workers=2, pin=False)
    assert loader.generator is loader.sampler.order.generator
    expected = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    base = int(torch.empty((), dtype=torch.int64).random_(generator=expected))
    order = torch.randperm(16, generator=expected).tolist()
    items = [(int(i), int(s)) for indices, seeds in loader for i, s in zip(indices, seeds)]
    assert [i for i, _ in items] == order
    assert {s for _, s in items} == {base, base + 1}


# Kills data.py train_loader's worker generator `((seed * 1_000_003 + epoch) * 1_000_003 + rank)` -> `seed *
# 1_000_003 + rank` (every epoch's workers the same draws), -> `seed * 1_000_003 + epoch + rank` (rank 1's epoch e
# was rank 0's epoch e + 1) and -> `epoch * 1_000_003 + rank` (every seed the same augmentations): under torchrun
# each (seed, epoch, rank) gets workers of its own.
def test_ddp_loader_workers_are_seeded_by_seed_epoch_and_rank():
    from masksub_kernels.training.data import train_loader

    seeds = {}
    for seed in (0, 1):
        for epoch in (0, 1):
            for rank in (0, 1):
                loader = train_loader(_WorkerSeeds(), 4, epoch, seed, rank, 2, workers=1, pin=False)
                seeds[(seed, epoch, rank)] = int(next(iter(loader))[1][0])
    assert len(set(seeds.values())) == len(seeds), seeds


# Kills data.py train_loader's `% 2**63` dropped: --seed takes up to +-(2**43 - 1) (run_setup's _RANGES: seed *
# 1_000_003 + epoch fits an int64), but (seed * 1_000_003 + epoch) * 1_000_003 + rank does not: torch's manual_seed
# raised "Overflow when unpacking long" on every rank of such a torchrun.
def test_ddp_loader_takes_the_largest_seeds():
    from masksub_kernels.training.data import train_loader

    for seed in (2**43 - 1, -(2**43) + 1):
        for rank in (0, 1):
            batch = next(iter(train_loader(TensorDataset(torch.arange(16)), 4, 5, seed, rank, 2, 0, False)))
            assert len(batch[0]) == 4
