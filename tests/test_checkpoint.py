"""Checkpoint files: round trip, atomic writes, corruption detection and safe (code-free) loading."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import random

import pytest
import torch
from torch import nn

import lowbit.io
from lowbit.errors import CheckpointError
from lowbit.train.checkpoint import FORMAT_VERSION, HEADER_LEN, MAGIC, load_checkpoint, save_checkpoint


def _payload() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()  # creates momentum buffers
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    adam.step()
    return {
        "kind": "train-state", "epoch": 3, "lr": 0.05, "flag": True, "none": None,
        "model": model.state_dict(), "optimizer": opt.state_dict(), "adam": adam.state_dict(),
        "nested": {"a": [1, 2.5, "x", torch.arange(6).reshape(2, 3)], "b": {"c": torch.tensor([1.5]),
                                                                              "d": (1, 2)}},
        "ints": torch.tensor([1, 2, 3], dtype=torch.int64), "bytes": torch.get_rng_state(),
    }


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def _wrap(body: bytes) -> bytes:
    """A valid lowbit header (magic, version, correct sha256) around an arbitrary payload."""
    return MAGIC + bytes([FORMAT_VERSION]) + hashlib.sha256(body).digest() + body


def test_round_trip_tensors_nested_dicts_and_optimizer_state(tmp_path):
    payload = _payload()
    path = tmp_path / "state.ckpt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    _assert_same(payload, loaded)
    # the optimizer state can be loaded back into a fresh optimizer and steps identically
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model.load_state_dict(loaded["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(loaded["optimizer"])
    assert all("momentum_buffer" in s for s in opt.state_dict()["state"].values())
    assert path.read_bytes()[:len(MAGIC)] == MAGIC


def test_overwrite_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"epoch": 0})
    save_checkpoint(path, {"epoch": 1})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_crash_at_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"epoch": 0, "w": torch.ones(3)})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(lowbit.io.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"epoch": 1, "w": torch.zeros(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"epoch": 0, "w": torch.ones(3)})
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        """Writes half of the data to the temp file, then 'crashes'."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()
            return False

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError("simulated crash mid-write")

    monkeypatch.setattr(lowbit.io.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="mid-write"):
        save_checkpoint(path, {"epoch": 1, "w": torch.zeros(10_000)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_first_write_crash_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(lowbit.io.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "new.ckpt", {"epoch": 0})
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, _payload())
    full = path.read_bytes()
    cuts = [0, 1, 4, len(MAGIC), len(MAGIC) + 1, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 10,
            len(full) // 2, len(full) - 1]
    for cut in cuts:
        path.write_bytes(full[:cut])
        with pytest.raises(CheckpointError, match="corrupt|truncated") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("where", ["payload_start", "payload_middle", "payload_end", "digest", "magic"])
def test_flipped_byte_is_reported(tmp_path, where):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, _payload())
    data = bytearray(path.read_bytes())
    offset = {"payload_start": HEADER_LEN, "payload_middle": (HEADER_LEN + len(data)) // 2,
              "payload_end": len(data) - 1, "digest": len(MAGIC) + 5, "magic": 2}[where]
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_unsupported_version_is_reported(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"epoch": 0})
    data = bytearray(path.read_bytes())
    data[len(MAGIC)] = FORMAT_VERSION + 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(path)


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"model": nn.Linear(2, 2).state_dict()}, plain)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(random.Random(0).randbytes(4096))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for path in (plain, noise, empty):
        with pytest.raises(CheckpointError, match="not a lowbit checkpoint"):
            load_checkpoint(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_valid_header_around_non_dict_payload(tmp_path):
    buffer = io.BytesIO()
    torch.save([torch.ones(2)], buffer)
    path = tmp_path / "list.ckpt"
    path.write_bytes(_wrap(buffer.getvalue()))
    with pytest.raises(CheckpointError, match="dict"):
        load_checkpoint(path)


class _Evil:
    """Unpickling this calls ``pathlib.Path(sentinel).touch()``."""

    def __init__(self, sentinel: pathlib.Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.sentinel),))


class _EvilSystem:
    """Unpickling this runs a shell command that creates the sentinel."""

    def __init__(self, sentinel: pathlib.Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch '{self.sentinel}'",))


def _torch_body(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_malicious_payload_would_run_without_the_safe_loader(tmp_path):
    """Control: the payload used below really does create its sentinel when unpickled unsafely."""
    sentinel = tmp_path / "control-sentinel"
    body = _torch_body({"model": {}, "x": _Evil(sentinel)})
    torch.load(io.BytesIO(body), weights_only=False)
    assert sentinel.exists()
    sentinel2 = tmp_path / "control-sentinel-2"
    pickle.loads(pickle.dumps({"x": _Evil(sentinel2)}))
    assert sentinel2.exists()


@pytest.mark.parametrize("kind", ["torch-touch", "torch-system", "raw-pickle-touch", "raw-pickle-system"])
def test_malicious_payload_with_valid_header_is_refused(tmp_path, kind):
    sentinel = tmp_path / "pwned"
    evil = _Evil(sentinel) if kind.endswith("touch") else _EvilSystem(sentinel)
    obj = {"kind": "train-state", "model": {"w": torch.ones(2)}, "payload": evil}
    body = _torch_body(obj) if kind.startswith("torch") else pickle.dumps(obj, protocol=2)
    assert not sentinel.exists()  # building the payload ran nothing
    path = tmp_path / "evil.ckpt"
    path.write_bytes(_wrap(body))  # correct checksum: only the safe loader stands in the way
    with pytest.raises(CheckpointError, match="refused|safe"):
        load_checkpoint(path)
    assert not sentinel.exists()
