"""The ``lowbit`` command line, end to end on the embedded digits data (in-process via ``main``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lowbit.train.state as state_module
from lowbit import __version__
from lowbit.cli.main import build_parser, main
from lowbit.cli.config import options_from_args
from lowbit.runs.train_run import TrainOptions
from lowbit.data import ArrayLoader, list_datasets, load_dataset
from lowbit.models import list_models
from lowbit.quant.registry import list_quantizers
from lowbit.runs.build import fit_model_to_data
from lowbit.runs.model_io import load_model
from lowbit.train import load_checkpoint, read_metrics

RESULT_FIELDS = {"command", "model", "dataset", "method", "seed", "accuracy", "fp_accuracy", "weight_bits",
                 "act_bits", "avg_bits", "weighted_bits", "size_bytes", "wall_s", "version"}
RUN_FILES = {"config.yaml", "metrics.jsonl", "result.json", "model.ckpt", "checkpoint.ckpt"}
FAST = ["--batch-size", "128", "--quiet"]


def train(*args: str) -> int:
    return main(["train", *args])


@pytest.fixture(scope="module")
def float_run(tmp_path_factory) -> Path:
    """A 2-epoch float LeNet-5 run; options come partly from a YAML config that flags override."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "float.yaml"
    config.write_text(yaml.safe_dump({"model": "lenet5", "dataset": "digits", "epochs": 5, "batch-size": 128,
                                      "seed": 3}))
    out = root / "float"
    assert train("--config", str(config), "--epochs", "2", "--seed", "0", "--out", str(out), "--quiet") == 0
    return out


@pytest.fixture(scope="module")
def quant_run(float_run) -> Path:
    out = float_run.parent / "lsq"
    assert train("--quantizer", "lsq", "--wbits", "2", "--abits", "2", "--init", str(float_run),
                 "--epochs", "1", "--out", str(out), *FAST) == 0
    return out


def result_of(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


# ---- successful runs ---------------------------------------------------------------------------

def test_float_run_folder(float_run):
    assert RUN_FILES <= {p.name for p in float_run.iterdir()}
    assert not [p.name for p in float_run.iterdir() if p.name.endswith(".tmp")]
    result = result_of(float_run)
    assert RESULT_FIELDS <= set(result)
    assert result["model"] == "lenet5" and result["dataset"] == "digits" and result["method"] == "float"
    assert result["seed"] == 0 and result["version"] == __version__
    assert result["command"].startswith("lowbit train --config ") and "--epochs 2" in result["command"]
    assert 0.5 < result["accuracy"] <= 1.0 and result["fp_accuracy"] == result["accuracy"]
    layers = ["conv1", "conv2", "fc3", "fc4", "fc5"]
    assert list(result["weight_bits"]) == layers and set(result["weight_bits"].values()) == {32}
    assert list(result["act_bits"]) == layers and set(result["act_bits"].values()) == {32}
    assert result["avg_bits"] == 32.0 and result["weighted_bits"] == 32.0
    n_params = sum(p.numel() for p in load_model(float_run)[0].parameters())
    assert result["size_bytes"] == 4 * n_params
    assert result["wall_s"] > 0

    config = yaml.safe_load((float_run / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["seed"] == 0  # flags win over the YAML file
    assert config["batch_size"] == 128 and config["model"] == "lenet5"  # YAML keys (dashes too) work
    assert config["method"] == "float" and config["out"] == str(float_run)

    metrics = read_metrics(float_run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert metrics[-1]["test_acc"] == pytest.approx(result["accuracy"])
    assert load_checkpoint(float_run / "checkpoint.ckpt")["epoch"] == 1
    assert load_checkpoint(float_run / "model.ckpt")["kind"] == "model"
    assert not (float_run / "plan.json").exists()


def test_quantized_run_with_init(float_run, quant_run):
    result = result_of(quant_run)
    assert RESULT_FIELDS <= set(result)
    assert result["method"] == "lsq" and result["quantizer"]["name"] == "lsq"
    assert result["fp_accuracy"] == result_of(float_run)["accuracy"]
    plan = json.loads((quant_run / "plan.json").read_text())
    layers = plan["layers"]
    assert list(layers) == ["conv1", "conv2", "fc3", "fc4", "fc5"]
    assert layers["conv1"] == {"weight": 8, "act": 32}  # first layer: 8-bit weights, float input
    assert layers["fc5"] == {"weight": 8, "act": 8}  # last layer pinned at 8 bits
    for name in ("conv2", "fc3", "fc4"):
        assert layers[name] == {"weight": 2, "act": 2}
    assert result["weight_bits"] == {n: b["weight"] for n, b in layers.items()}
    assert result["act_bits"] == {n: b["act"] for n, b in layers.items()}
    assert result["avg_bits"] == pytest.approx((8 + 2 + 2 + 2 + 8) / 5)
    assert 2 < result["weighted_bits"] < 8
    assert result["size_bytes"] < result_of(float_run)["size_bytes"] / 4
    assert RUN_FILES | {"plan.json"} <= {p.name for p in quant_run.iterdir()}


def test_load_model_rebuilds_quantized_model(quant_run):
    model, args, spec, plan = load_model(quant_run / "model.ckpt")
    assert spec is not None and spec.name == "lsq" and plan is not None
    assert type(model.conv2).__name__ != "Conv2d"  # came back quantized
    assert bool(model.conv2.input_quantizer.initialized)
    data = load_dataset("digits")
    args2, data, _ = fit_model_to_data("lenet5", data)
    assert args2 == args
    x, _ = next(iter(ArrayLoader(data.test, batch_size=64, shuffle=False, mean=data.mean, std=data.std)))
    stored = load_checkpoint(quant_run / "model.ckpt")["model"]
    model.eval()
    with torch.no_grad():
        out1 = model(x)
    again, *_ = load_model(quant_run)  # the run folder works too
    again.eval()
    with torch.no_grad():
        out2 = again(x)
    assert torch.equal(out1, out2)
    for key, value in again.state_dict().items():
        assert torch.equal(value, stored[key])
    # the outputs are the quantized model's: accuracy on the test split matches result.json
    loader = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    from lowbit.train import evaluate
    assert evaluate(model, loader)[1] == pytest.approx(result_of(quant_run)["accuracy"])


def test_resume_continues_from_config(float_run, tmp_path, monkeypatch):
    """Interrupt a run (same options as float_run) after epoch 0, resume with only --resume --out."""
    out = tmp_path / "run"
    real_save = state_module.save_checkpoint

    def interrupt(path, payload):
        if payload["epoch"] == 1:
            raise KeyboardInterrupt
        real_save(path, payload)

    monkeypatch.setattr(state_module, "save_checkpoint", interrupt)
    assert train("--epochs", "2", "--out", str(out), *FAST) == 130
    monkeypatch.undo()
    assert not (out / "result.json").exists()
    assert [m["epoch"] for m in read_metrics(out / "metrics.jsonl")] == [0, 1]  # epoch 1 line, no checkpoint

    assert train("--resume", "--out", str(out), "--quiet") == 0
    result = result_of(out)
    assert result["epochs"] == 2 and result["dataset"] == "digits"
    assert [m["epoch"] for m in read_metrics(out / "metrics.jsonl")] == [0, 1]
    # same options as the uninterrupted float run -> the very same weights
    resumed, reference = load_checkpoint(out / "model.ckpt")["model"], load_checkpoint(float_run / "model.ckpt")["model"]
    assert list(resumed) == list(reference)
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert result["accuracy"] == result_of(float_run)["accuracy"]


def test_config_layers_and_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: lenet5\nbatch-size: 32\nlr: 1\nquantizer: dorefa\nwbits: 3\n")
    args = build_parser().parse_args(["train", "--config", str(config), "--wbits", "4", "--out", "x"])
    options = options_from_args(args, TrainOptions)
    assert options.batch_size == 32 and options.lr == 1.0 and isinstance(options.lr, float)
    assert options.wbits == 4 and options.quantizer == "dorefa" and options.out == "x"
    assert options.epochs == 10  # default when neither file nor flag sets it


# ---- user errors: exit 2, one line, no traceback, nothing written ------------------------------

def expect_user_error(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unknown_config_key(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epoch: 3\n")
    expect_user_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")],
                      "did you mean", "epochs")
    config.write_text("epochs: three\n")
    expect_user_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")], "epochs")
    expect_user_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")], "not found")
    config.write_text("epochs: [1,\nmodel: x\n")  # YAML syntax error: PyYAML's message spans lines
    expect_user_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")],
                      "invalid YAML", "line 3")
    config.write_text("- epochs\n- 3\n")
    expect_user_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")], "mapping")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, needles", [
    (["--quantizer", "dorefa", "--wbits", "9"], ("9", "1..8")),
    (["--quantizer", "dorefa", "--abits", "0"], ("0",)),
    (["--quantizer", "lsq", "--wbits", "1"], ("lsq", "2..8")),
    (["--wbits", "2"], ("quantizer",)),
    (["--model", "lenet6"], ("lenet6", "did you mean", "lenet5")),
    (["--dataset", "digitz"], ("digitz", "did you mean", "digits")),
    (["--quantizer", "dorefaa"], ("dorefaa", "did you mean", "dorefa")),
    (["--quantizer", "dorefa", "--plan", "no-such-plan.json"], ("no-such-plan.json",)),
    (["--init", "no-such-run"], ("no-such-run",)),
    (["--epochs", "-1"], ("epochs",)),
], ids=["wbits9", "abits0", "lsq-w1", "bits-without-quantizer", "model", "dataset", "quantizer", "plan",
        "init", "epochs"])
def test_bad_arguments(capsys, tmp_path, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    expect_user_error(capsys, ["train", *argv, "--out", str(out), "--quiet"], *needles)
    assert not out.exists()  # a user error leaves no half-made run folder
    assert list(tmp_path.iterdir()) == []


def test_output_folder_holding_a_run_is_untouched(capsys, float_run):
    before = snapshot(float_run)
    expect_user_error(capsys, ["train", "--epochs", "1", "--out", str(float_run), "--quiet"], "already holds a run")
    assert snapshot(float_run) == before


def test_output_under_a_file_or_a_file(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    expect_user_error(capsys, ["train", "--out", str(blocker / "run"), "--quiet"], "file.txt")
    expect_user_error(capsys, ["train", "--out", str(blocker), "--quiet"], "file.txt")
    assert blocker.read_text() == "not a folder"
    assert list(tmp_path.iterdir()) == [blocker]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_non_writable_output_folder(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        expect_user_error(capsys, ["train", "--out", str(locked / "run"), "--quiet"], "writable")
    finally:
        locked.chmod(0o700)


def test_resume_without_checkpoint(capsys, tmp_path):
    expect_user_error(capsys, ["train", "--resume", "--out", str(tmp_path / "none"), "--quiet"], "resume")
    assert not (tmp_path / "none").exists()


def test_debug_shows_the_exception(tmp_path):
    from lowbit.errors import UnknownNameError
    with pytest.raises(UnknownNameError):
        main(["train", "--model", "nope", "--debug", "--out", str(tmp_path / "o")])


def test_no_command_and_argparse_errors(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "two"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# ---- list, help, demo --------------------------------------------------------------------------

@pytest.mark.parametrize("what, names", [("models", list_models), ("datasets", list_datasets),
                                         ("quantizers", list_quantizers)])
def test_list(capsys, what, names):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    for name in names():
        assert name in out


def test_subprocess_help_and_list():
    env = {**os.environ, "COLUMNS": "200"}
    helped = subprocess.run([sys.executable, "-m", "lowbit", "--help"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert helped.returncode == 0
    for command in ("train", "list", "demo"):
        assert command in helped.stdout
    listed = subprocess.run([sys.executable, "-m", "lowbit", "list", "models"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert listed.returncode == 0, listed.stderr
    for name in list_models():
        assert name in listed.stdout


@pytest.mark.slow
def test_demo_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that rich prints the folder paths whole
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--quiet", "--out", str(out)]) == 0
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["dcq-binary", "dorefa-w2", "dorefa-w2-sinreq", "dorefa-w2a2", "float", "releq-search",
                       "waveq-budget-5"]
    float_acc = result_of(out / "float")["accuracy"]
    for name in folders:
        result = result_of(out / name)
        assert RESULT_FIELDS <= set(result)
        assert {"config.yaml", "metrics.jsonl", "result.json", "model.ckpt"} <= {p.name for p in (out / name).iterdir()}
        if name != "releq-search":  # the search trains its own float model without its validation split
            assert result["fp_accuracy"] == float_acc
        assert isinstance(result["health"]["ok"], bool), name  # every command records its health
    assert result_of(out / "waveq-budget-5")["avg_bits"] <= 5.0
    assert result_of(out / "releq-search")["search"]["strategy"] == "releq"
    report = (out / "report.html").read_text()
    assert "<th>health</th>" in report
    for name in folders:
        assert name in report
    assert result_of(out / "dorefa-w2a2")["act_bits"]["conv2"] == 2
    assert result_of(out / "dorefa-w2-sinreq")["method"] == "dorefa+sinreq"
    assert result_of(out / "dcq-binary")["weight_bits"]["conv2"] == 1
    assert (out / "best.lowbit").stat().st_size < 30_000  # the packed export of the best quantized run
    printed = capsys.readouterr().out
    assert "best.lowbit" in printed and "report.html" in printed
    for name in folders:
        assert str(out / name) in printed  # the table names the real run folders
    # a second demo into the same folder refuses and changes nothing
    before = snapshot(out / "float")
    assert main(["demo", "--fast", "--quiet", "--out", str(out)]) == 2
    assert snapshot(out / "float") == before
