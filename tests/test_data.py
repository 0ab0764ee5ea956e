"""The data layer's core: registry, generated datasets, val hold-out, ArrayLoader, resizing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lowbit.data import (
    ArrayLoader,
    DatasetSplits,
    TensorData,
    describe_datasets,
    hold_out,
    list_datasets,
    load_dataset,
    resize_images,
    resize_splits,
)
from lowbit.errors import ConfigError, DataError, UnknownNameError


def tagged(n: int, channels: int = 1, side: int = 4) -> TensorData:
    """Images whose first pixel is the sample index (n <= 256), labels i % 10."""
    x = torch.zeros(n, channels, side, side, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return TensorData(x, torch.arange(n) % 10)


def served(loader: ArrayLoader) -> list[int]:
    return [int(v) for x, _ in loader for v in x[:, 0, 0, 0].mul(255).round()]


# ---------------------------------------------------------------- registry
def test_list_and_unknown_name():
    names = list_datasets()
    assert {"digits", "mnist", "mnist-t10k", "cifar10", "svhn", "mnist1d", "synthetic"} <= set(names)
    assert set(describe_datasets()) == set(names)
    with pytest.raises(UnknownNameError, match=r"did you mean 'cifar10'\?") as info:
        load_dataset("cifar")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)
    assert "choose one of" in str(info.value)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("synthetic", val_fraction=1.0)
    with pytest.raises(ConfigError, match="seed"):
        load_dataset("synthetic", seed=-1)
    with pytest.raises(ConfigError, match="did you mean 'n_train'"):
        load_dataset("synthetic", n_trian=5)
    with pytest.raises(ConfigError, match="options: none"):
        load_dataset("digits", num_classes=3)
    with pytest.raises(ConfigError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)


def test_tensordata_validation():
    with pytest.raises(DataError):
        TensorData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError):
        TensorData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int32))
    assert len(tagged(7)) == 7


# ---------------------------------------------------------------- generated datasets
def test_digits():
    a = load_dataset("digits")
    b = load_dataset("digits", seed=7)
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert a.train.x.shape == (1437, 1, 8, 8) and a.train.x.dtype == torch.uint8
    assert int(a.train.x.max()) == 255 and (a.input_size, a.in_channels, a.kind) == (8, 1, "image")
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert a.input_shape == (1, 8, 8)
    assert "1,437 train / 360 test" in a.description


def test_mnist1d_offline_and_leaves_global_rng_alone():
    random.seed(123)
    np.random.seed(123)
    py_before, np_before = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    s = load_dataset("mnist1d")
    assert random.random() == py_before and np.random.rand() == np_before
    assert s.train.x.shape == (4000, 1, 40) and s.train.x.dtype == torch.float32
    assert len(s.test) == 1000 and s.kind == "sequence" and s.input_size == 40
    assert s.input_shape == (1, 40)
    assert torch.equal(s.train.x, load_dataset("mnist1d").train.x)


def test_synthetic_deterministic_and_learnable():
    a = load_dataset("synthetic", seed=3)
    b = load_dataset("synthetic", seed=3)
    c = load_dataset("synthetic", seed=4)
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)
    assert a.train.x.shape == (512, 1, 16, 16) and len(a.test) == 256
    # nearest class mean (from train) classifies test well: class means are well separated
    xtr, xte = a.train.x.flatten(1).float(), a.test.x.flatten(1).float()
    means = torch.stack([xtr[a.train.y == k].mean(0) for k in range(10)])
    acc = (torch.cdist(xte, means).argmin(1) == a.test.y).float().mean()
    assert acc > 0.9
    s = load_dataset("synthetic", num_classes=3, in_channels=2, input_size=12, n_train=30,
                     n_test=9, kind="sequence")
    assert s.train.x.shape == (30, 2, 12) and s.train.x.dtype == torch.float32
    assert len(s.mean) == 2 and set(s.train.y.tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- val hold-out
def test_val_split_disjoint_and_deterministic():
    data = tagged(100)
    train, val = hold_out(data, 0.2, seed=1)
    ids_t = set(train.x[:, 0, 0, 0].tolist())
    ids_v = set(val.x[:, 0, 0, 0].tolist())
    assert len(val) == 20 and not ids_t & ids_v and ids_t | ids_v == set(range(100))
    again = hold_out(data, 0.2, seed=1)[1]
    other = hold_out(data, 0.2, seed=2)[1]
    assert torch.equal(val.x, again.x) and not torch.equal(val.x, other.x)

    full = load_dataset("digits")
    s = load_dataset("digits", val_fraction=0.1, seed=5)
    assert (len(s.train), len(s.val)) == (1293, 144) and len(s.test) == 360
    assert torch.equal(s.test.x, full.test.x)  # test untouched
    assert torch.equal(s.val.x, load_dataset("digits", val_fraction=0.1, seed=5).val.x)
    assert "held out" in s.description and full.val is None
    with pytest.raises(ConfigError, match="val_fraction"):
        hold_out(tagged(3), 0.01, seed=0)


# ---------------------------------------------------------------- ArrayLoader
def test_loader_len_and_coverage():
    data = tagged(50)
    kw = dict(mean=0.0, std=1.0, shuffle=True, seed=9)
    assert len(ArrayLoader(data, batch_size=16, **kw)) == 4
    assert len(ArrayLoader(data, batch_size=16, drop_last=True, **kw)) == 3
    loader = ArrayLoader(data, batch_size=16, **kw)
    for epoch in range(3):
        loader.set_epoch(epoch)
        order = served(loader)
        assert sorted(order) == list(range(50))  # every sample exactly once
        assert order == loader.order().tolist()
    sizes = [len(y) for _, y in ArrayLoader(data, batch_size=16, drop_last=True, **kw)]
    assert sizes == [16, 16, 16]
    assert served(ArrayLoader(data, batch_size=16, mean=0.0, std=1.0, shuffle=False)) == list(range(50))


def test_loader_order_depends_only_on_seed_and_epoch():
    data = tagged(64)

    def order(seed, epoch):
        loader = ArrayLoader(data, batch_size=10, shuffle=True, seed=seed, mean=0.0, std=1.0)
        loader.set_epoch(epoch)
        return served(loader)

    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3)
    assert order(1, 2) != order(2, 2)
    g = torch.Generator().manual_seed(1 * 1_000_003 + 2)
    assert order(1, 2) == torch.randperm(64, generator=g).tolist()


def test_loader_normalises_images_and_sequences():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).repeat(1, 2, 2, 2)
    data = TensorData(x, torch.tensor([0, 1, 2]))
    (xb, yb), = list(ArrayLoader(data, batch_size=8, shuffle=False, mean=(0.5, 0.1), std=(0.5, 0.2)))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.allclose(xb[:, 0, 0, 0], torch.tensor([-1.0, -0.6, 1.0]))
    assert torch.allclose(xb[:, 1, 0, 0], torch.tensor([-0.5, 0.5, 4.5]))
    seq = TensorData(torch.tensor([[[1.0, 3.0]]]), torch.tensor([0]))
    (xs, _), = list(ArrayLoader(seq, batch_size=1, shuffle=False, mean=1.0, std=2.0))
    assert torch.allclose(xs, torch.tensor([[[0.0, 1.0]]]))
    assert torch.equal(seq.x, torch.tensor([[[1.0, 3.0]]]))  # the stored data is not modified
    with pytest.raises(ConfigError, match="mean"):
        ArrayLoader(data, batch_size=1, shuffle=False, mean=(0.1, 0.2, 0.3), std=1.0)
    with pytest.raises(ConfigError, match="batch_size"):
        ArrayLoader(data, batch_size=0, shuffle=False, mean=0.0, std=1.0)


def test_loader_indices_subset():
    loader = ArrayLoader(tagged(30), batch_size=4, shuffle=True, mean=0.0, std=1.0,
                         indices=[3, 5, 7, 11, 13])
    assert len(loader) == 2 and sorted(served(loader)) == [3, 5, 7, 11, 13]


def test_loader_augment():
    data = TensorData(torch.full((20, 3, 8, 8), 200, dtype=torch.uint8), torch.zeros(20, dtype=torch.long))
    data.x[:, :, :, :4] = 100  # left half darker, so flips are visible

    def batches(epoch, augment):
        loader = ArrayLoader(data, batch_size=20, shuffle=True, seed=1, mean=0.0, std=1.0, augment=augment)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    a, b, c = batches(0, "crop_flip"), batches(0, "crop_flip"), batches(1, "crop_flip")
    assert a.shape == (20, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a == 0).any()  # zero padding shows up in some crops
    values = {round(v * 255) for v in a.unique().tolist()}
    assert values <= {0, 100, 200}
    crop = batches(0, "crop")
    assert not torch.equal(crop, a)
    with pytest.raises(ConfigError, match="augment"):
        ArrayLoader(data, batch_size=2, shuffle=False, mean=0.0, std=1.0, augment="flip")
    seq = TensorData(torch.zeros(2, 1, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="images"):
        ArrayLoader(seq, batch_size=2, shuffle=False, mean=0.0, std=1.0, augment="crop")


def test_augment_matches_pad_crop_flip_reference():
    from lowbit.data.augment import augment_batch

    x = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8)
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # same draws, same order: dy, dx, flip
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        ref = padded[i, :, dy[i] : dy[i] + 10, dx[i] : dx[i] + 12]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


# ---------------------------------------------------------------- resize
def test_resize_images():
    data = TensorData(torch.full((3, 2, 8, 8), 77, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    big = resize_images(data, 32)
    assert big.x.shape == (3, 2, 32, 32) and big.x.dtype == torch.uint8
    assert (big.x == 77).all() and torch.equal(big.y, data.y)
    assert resize_images(big, 8).x.shape == (3, 2, 8, 8)
    with pytest.raises(ConfigError):
        resize_images(TensorData(torch.zeros(2, 1, 5), torch.zeros(2, dtype=torch.long)), 8)
    s = resize_splits(load_dataset("synthetic", n_train=10, n_test=5, val_fraction=0.2), 20)
    assert isinstance(s, DatasetSplits) and s.input_size == 20
    assert s.train.x.shape == (8, 1, 20, 20) and s.val.x.shape == (2, 1, 20, 20)
