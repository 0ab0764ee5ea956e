"""Validation before work starts: each mistake is one error line (exit 2) naming the field, found
before data is loaded or a run folder is made. (Bits, model, dataset, quantizer, unknown config
keys and plan entries that match no layer: test_cli.py and test_runs.py.)"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import safetensors.torch

import lowbit.runs.folder as folder_module
import lowbit.runs.lifecycle as run_start_module
from lowbit.cli.main import main
from lowbit.data import load_dataset
from lowbit.errors import CheckpointError, DataError
from lowbit.export import ExportError, PackedModel, pack_model
from lowbit.export.packed import DIGEST_KEY, HEADER_KEY, _BLANK_DIGEST, _find_digest
from lowbit.runs.build import ModelArgs
from lowbit.runs.folder import RunFolder
from lowbit.train import MetricsWriter
from test_data_readers import write_cifar, write_mnist, write_svhn


def user_error(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fails the test if the run gets as far as loading data."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the mistake was reported")

    monkeypatch.setattr(run_start_module, "load_model_and_data", refuse)  # where every run loads its data


@pytest.mark.parametrize("flags, needles", [
    (["--lr", "inf"], ("lr", "finite")),
    (["--lr", "nan"], ("lr",)),
    (["--weight-decay", "nan"], ("weight_decay", "finite")),
    (["--weight-decay", "inf"], ("weight_decay",)),
    (["--out", ""], ("out", "empty")),
], ids=["lr-inf", "lr-nan", "wd-nan", "wd-inf", "out-empty"])
def test_non_finite_or_empty_values_are_refused_up_front(capsys, tmp_path, monkeypatch, no_data_loading,
                                                         flags, needles):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "run")] if "--out" not in flags else []
    user_error(capsys, ["train", *flags, *out, "--quiet"], *needles)
    assert list(tmp_path.iterdir()) == []  # no run folder (and no default runs/ folder either)


def test_output_folder_that_is_not_writable_is_refused_before_data_is_loaded(capsys, tmp_path, monkeypatch,
                                                                           no_data_loading):
    """Runs as root too (where chmod does not stop writes): the writability check is simulated."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(folder_module.os, "access",
                        lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    user_error(capsys, ["train", "--out", str(locked / "run"), "--quiet"], "not writable", str(locked))
    user_error(capsys, ["train", "--out", str(locked), "--quiet"], "not writable")
    (locked / "checkpoint.ckpt").write_bytes(b"")
    user_error(capsys, ["train", "--resume", "--out", str(locked), "--quiet"], "not writable")
    assert sorted(p.name for p in locked.iterdir()) == ["checkpoint.ckpt"]


def test_duplicate_config_key_is_refused(capsys, tmp_path, no_data_loading):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nlr: 0.1\nepochs: 30\n")
    user_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o"), "--quiet"],
               "epochs", "twice", "line 3")


def test_deeply_nested_plan_is_a_plan_error(capsys, tmp_path):
    plan = tmp_path / "deep.json"
    plan.write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json: a traceback before
    user_error(capsys, ["train", "--quantizer", "dorefa", "--plan", str(plan), "--out", str(tmp_path / "o"),
                        "--quiet"], "deep.json", "nested too deeply")


def test_deeply_nested_packed_header_behind_a_valid_digest(tmp_path):
    args = ModelArgs("lenet5", 10, 1, 12, 0.25)
    raw = pack_model(args.build(), args).to_bytes()
    tensors = safetensors.torch.load(raw)
    deep = "[" * 100_000 + "]" * 100_000
    resealed = safetensors.torch.save(tensors, metadata={HEADER_KEY: deep, DIGEST_KEY: _BLANK_DIGEST})
    start = 8 + _find_digest(resealed).start(1)
    resealed = resealed[:start] + hashlib.sha256(resealed).hexdigest().encode() + resealed[start + 64:]
    with pytest.raises(ExportError, match="invalid header"):
        PackedModel.from_bytes(resealed)


def test_run_folder_files_of_the_wrong_shape(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "result.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        folder.read_result()
    (tmp_path / "result.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="cannot read"):
        folder.read_result()
    (tmp_path / "config.yaml").write_text("- a list\n")
    with pytest.raises(CheckpointError, match="mapping"):
        folder.read_config()
    (tmp_path / "config.yaml").write_text("epochs: 2001-02-30\n")
    with pytest.raises(CheckpointError, match="cannot read"):
        folder.read_config()


def test_metrics_lines_of_any_shape_do_not_break_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0}\n{"epoch": "1"}\n[1]\n{"epoch": true}\n\xff\xfe\n{"epoch": 1}\n'
                     + b"[" * 50_000 + b"\n")
    MetricsWriter(path).truncate_after(1)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"epoch": 0}, {"epoch": 1}]


# ---- data ---------------------------------------------------------------------------------------

def test_data_dir_that_is_a_file(tmp_path):
    blocker = tmp_path / "mnist.tar.gz"
    blocker.write_bytes(b"not a folder")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset("mnist", blocker)


@pytest.mark.parametrize("dataset", ["mnist", "mnist-t10k-empty", "cifar10", "svhn"])
def test_empty_data_files(capsys, tmp_path, dataset):
    data = tmp_path / "data"
    data.mkdir()
    if dataset == "mnist":
        write_mnist(data, "train", 0, gz=False)
        write_mnist(data, "t10k", 3, gz=True)
        args, needle = ["--dataset", "mnist"], "train split is empty"
    elif dataset == "mnist-t10k-empty":
        write_mnist(data, "train", 4, gz=False)
        write_mnist(data, "t10k", 0, gz=False)
        args, needle = ["--dataset", "mnist"], "test split is empty"
    elif dataset == "cifar10":
        write_cifar(data)
        (data / "test_batch").write_bytes(b"")
        args, needle = ["--dataset", "cifar10", "--model", "resnet20"], "test_batch"
    else:
        write_svhn(data, n_train=0, n_test=2)
        args, needle = ["--dataset", "svhn", "--model", "svhnnet"], "train split is empty"
    out = tmp_path / "run"
    user_error(capsys, ["train", *args, "--data-dir", str(data), "--out", str(out), "--quiet"], needle)
    assert not out.exists()
