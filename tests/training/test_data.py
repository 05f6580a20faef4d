"""training/data.py: the loaders' seeds, the digits' shifts, the samplers (helper-171's mutation audit); and
training/pixel.py's CNN test."""

import torch


def test_loader_orders_of_seed_0_epoch_1_and_seed_1_epoch_0_differ():  # data.py:227 seed * 1_000_003 + epoch
    from masksub_kernels.training import data as data_mod

    dataset = torch.utils.data.TensorDataset(torch.arange(64))

    def order(epoch, seed):
        return list(data_mod.train_loader(dataset, 8, epoch, seed, 0, 1, 0, False).sampler)

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
