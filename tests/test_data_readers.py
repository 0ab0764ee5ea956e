"""File-based dataset readers on small files written here in the real formats."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.data import load_dataset, safe_load_pickle
from lowbit.data.files import verify_md5sums
from lowbit.data.mnist import idx_paths, read_idx_pair
from lowbit.errors import DataError

REAL_T10K = Path("/work/shared/data/mnist-t10k")


# ---------------------------------------------------------------- writers (real formats)
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, raw: bytes) -> Path:
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_mnist(folder: Path, prefix: str, n: int, *, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write(folder / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images, 0x803))
    write(folder / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels, 0x801))
    return images, labels


def write_cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data,
             b"filenames": [b"x.png"] * n}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return data, labels


def write_cifar(folder: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train = [write_cifar_batch(folder / f"data_batch_{i}", n, i) for i in range(1, 6)]
    write_cifar_batch(folder / "test_batch", n, 99)
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])


def write_svhn(folder: Path, n_train: int = 6, n_test: int = 4) -> np.ndarray:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    X = None
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
        savemat(folder / name, {"X": X, "y": y})
        if name.startswith("train"):
            train_X = X
    return train_X


# ---------------------------------------------------------------- mnist
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_plain_and_gz(tmp_path, gz):
    images, labels = write_mnist(tmp_path, "train", 12, gz=gz)
    write_mnist(tmp_path, "t10k", 5, gz=gz, seed=1)
    s = load_dataset("mnist", tmp_path)
    assert (len(s.train), len(s.test)) == (12, 5)
    assert s.train.x.shape == (12, 1, 28, 28) and s.train.x.dtype == torch.uint8
    assert torch.equal(s.train.x[:, 0], torch.from_numpy(images))
    assert torch.equal(s.train.y, torch.from_numpy(labels.astype(np.int64)))
    assert (s.in_channels, s.input_size, s.kind, s.num_classes) == (1, 28, "image", 10)
    assert s.mean == (0.1307,) and s.std == (0.3081,)


def test_mnist_missing_file_names_path(tmp_path):
    write_mnist(tmp_path, "train", 4, gz=True)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")


def test_default_data_dir_from_env(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    write_mnist(tmp_path / "mnist", "train", 4, gz=False)
    write_mnist(tmp_path / "mnist", "t10k", 2, gz=False)
    monkeypatch.setenv("LOWBIT_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist").train) == 4


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_wrong_magic(tmp_path, gz):
    write_mnist(tmp_path, "t10k", 5, gz=gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    write(path, idx_bytes(np.zeros((5, 28, 28), np.uint8), 0x801 + 0x1000))
    with pytest.raises(DataError, match=r"magic.*expected an IDX images file"):
        load_dataset("mnist-t10k", tmp_path)


def test_mnist_labels_file_in_images_place(tmp_path):
    write_mnist(tmp_path, "t10k", 5, gz=False)
    labels = (tmp_path / "t10k-labels-idx1-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match="0x00000801"):
        load_dataset("mnist-t10k", tmp_path)


def test_mnist_truncated(tmp_path):
    write_mnist(tmp_path, "t10k", 5, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("mnist-t10k", tmp_path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        load_dataset("mnist-t10k", tmp_path)


def test_mnist_truncated_gzip(tmp_path):
    write_mnist(tmp_path, "t10k", 5, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="gzip"):
        load_dataset("mnist-t10k", tmp_path)


def test_mnist_label_count_and_range(tmp_path):
    write_mnist(tmp_path, "t10k", 5, gz=False)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8), 0x801))
    with pytest.raises(DataError, match="4 labels.*5 images"):
        load_dataset("mnist-t10k", tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 2, 3, 10], np.uint8), 0x801))
    with pytest.raises(DataError, match="0..9"):
        load_dataset("mnist-t10k", tmp_path)


def test_mnist_wrong_image_size(tmp_path):
    write_mnist(tmp_path, "t10k", 5, gz=False)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 8, 8), np.uint8), 0x803))
    with pytest.raises(DataError, match="28x28"):
        load_dataset("mnist-t10k", tmp_path)


def test_mnist_t10k_small_split_and_md5(tmp_path):
    images, _ = write_mnist(tmp_path, "t10k", 20, gz=True)
    a = load_dataset("mnist-t10k", tmp_path, seed=5)
    b = load_dataset("mnist-t10k", tmp_path, seed=6)  # seed does not move the official split
    assert (len(a.train), len(a.test)) == (16, 4)
    perm = np.random.default_rng(0).permutation(20)
    assert torch.equal(a.train.x[:, 0], torch.from_numpy(images[perm[:16]]))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)

    names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    sums = [hashlib.md5((tmp_path / n).read_bytes()).hexdigest() for n in names]
    (tmp_path / "MD5SUMS").write_text(f"{sums[0]}  {names[0]}\n{sums[1]} *{names[1]}\n")
    assert len(load_dataset("mnist-t10k", tmp_path).train) == 16
    (tmp_path / "MD5SUMS").write_text(f"{'0' * 32}  {names[0]}\n")
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_dataset("mnist-t10k", tmp_path)
    assert names[0] in str(info.value)


@pytest.mark.skipif(not REAL_T10K.is_dir(), reason="real mnist-t10k copy not present")
def test_real_mnist_t10k():
    a = load_dataset("mnist-t10k", REAL_T10K)
    b = load_dataset("mnist-t10k", REAL_T10K, seed=3)
    assert (len(a.train), len(a.test)) == (8000, 2000)
    assert a.train.x.shape == (8000, 1, 28, 28)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    paths = idx_paths(REAL_T10K, "t10k", "t")
    assert verify_md5sums(REAL_T10K, paths, "t") == 2
    full = read_idx_pair(*paths, "t")
    perm = torch.from_numpy(np.random.default_rng(0).permutation(10000))
    assert torch.equal(a.test.x, full.x[perm[8000:]])
    assert sorted(torch.bincount(a.test.y).tolist())[0] > 150  # every digit present
    assert "8,000 train / 2,000 test" in a.description


# ---------------------------------------------------------------- cifar10
@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_reads_batches(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    data, labels = write_cifar(folder)
    s = load_dataset("cifar10", tmp_path)
    assert (len(s.train), len(s.test)) == (15, 3)
    assert s.train.x.shape == (15, 3, 32, 32) and s.train.x.dtype == torch.uint8
    # the row layout is 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert torch.equal(s.train.x[4, 1, 2], torch.from_numpy(data[4, 1024 + 64 : 1024 + 96]))
    assert s.train.y.tolist() == labels.tolist()
    assert (s.in_channels, s.input_size, len(s.mean)) == (3, 32, 3)


def test_cifar10_missing_file(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as info:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path / "data_batch_3") in str(info.value)


def test_cifar10_malformed(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match="3072"):
        load_dataset("cifar10", tmp_path)
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match="1 labels for 2 images"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    """Unpickling this with the plain unpickler creates (opens for writing) a sentinel file."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_cifar10_refuses_malicious_pickle(tmp_path):
    # sanity: the payload really does create the file with an ordinary unpickler
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Evil(proof), protocol=2)).close()
    assert proof.exists()

    write_cifar(tmp_path)
    sentinel = tmp_path / "SENTINEL"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(sentinel)}
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match="refusing") as info:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_2" in str(info.value)
    assert not sentinel.exists()
    for protocol in (0, 4, 5):
        path = tmp_path / f"evil{protocol}"
        path.write_bytes(pickle.dumps(_Evil(sentinel), protocol=protocol))
        with pytest.raises(DataError, match="refusing"):
            safe_load_pickle(path, "test")
        assert not sentinel.exists()


def test_safe_pickle_still_reads_arrays_of_other_protocols(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4):
        path = tmp_path / f"ok{protocol}"
        path.write_bytes(pickle.dumps({b"data": arr, b"labels": [1, 2, 3]}, protocol=protocol))
        out = safe_load_pickle(path, "test")
        assert np.array_equal(out[b"data"], arr) and out[b"labels"] == [1, 2, 3]
    # the real CIFAR-10 batches (numpy 1.x era) name numpy.core.multiarray, not numpy._core
    raw = pickle.dumps({b"data": arr}, protocol=2)
    assert b"numpy._core.multiarray\n" in raw
    path = tmp_path / "old"
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert np.array_equal(safe_load_pickle(path, "test")[b"data"], arr)


# ---------------------------------------------------------------- svhn
def test_svhn_reads_mat(tmp_path):
    X = write_svhn(tmp_path)
    s = load_dataset("svhn", tmp_path)
    assert (len(s.train), len(s.test)) == (6, 4)
    assert s.train.x.shape == (6, 3, 32, 32) and s.train.x.dtype == torch.uint8
    assert torch.equal(s.train.x[2, 1], torch.from_numpy(X[:, :, 1, 2]))
    assert s.train.y.tolist() == [1, 2, 3, 4, 5, 6]
    assert load_dataset("svhn", tmp_path).test.y.tolist() == [1, 2, 3, 4]
    from scipy.io import savemat

    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.array([[10]], np.uint8)})
    assert load_dataset("svhn", tmp_path).test.y.tolist() == [0]  # 10 means digit 0


def test_svhn_missing_and_malformed(tmp_path):
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="test_32x32.mat") as info:
        load_dataset("svhn", tmp_path)
    assert str(tmp_path / "test_32x32.mat") in str(info.value)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match="MATLAB v5"):
        load_dataset("svhn", tmp_path)
    from scipy.io import savemat

    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(DataError, match="X is"):
        load_dataset("svhn", tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1), np.uint8)})
    with pytest.raises(DataError, match="3 labels for 2 images"):
        load_dataset("svhn", tmp_path)
