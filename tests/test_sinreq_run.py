"""SinReQ inside training runs: it lowers the grid distance, its pre-quantization mode trains a
float forward pass and quantizes after, the weight plot is written, validation split reported."""

from __future__ import annotations

import json

import pytest

from lowbit.errors import ConfigError
from lowbit.nn import quantized_layers
from lowbit.train.hooks import MethodHooks
from lowbit.runs.model_io import load_model
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import QUIET


def _run(tmp_path, name: str, hooks: MethodHooks | None = None, **kw) -> dict:
    options = TrainOptions(model="lenet5", dataset="digits", epochs=2, threads=1, quantizer="dorefa", wbits=2,
                           lr=0.01, out=str(tmp_path / name), **kw)
    return run_train(options, hooks=hooks, reporter=QUIET, command="test")


def _fake_quant_state(epoch, model) -> dict:
    return {"fake_quant": [layer.fake_quant for layer in quantized_layers(model).values()]}


def test_sinreq_ends_closer_to_the_levels_than_the_same_run_without(tmp_path) -> None:
    run_train(TrainOptions(model="lenet5", dataset="digits", epochs=2, threads=1, out=str(tmp_path / "float")),
              reporter=QUIET, command="test")
    plain = _run(tmp_path, "plain", init=str(tmp_path / "float"))
    regularized = _run(tmp_path, "reg", init=str(tmp_path / "float"), sinreq=0.03)
    assert regularized["grid_distance"] < 0.9 * plain["grid_distance"]
    assert regularized["accuracy"] > 0.5  # a sane λ: the run still learns
    assert (tmp_path / "reg" / "plots" / "weights.png").stat().st_size > 10_000


def test_pre_quantization_mode_trains_float_then_quantizes(tmp_path) -> None:
    result = _run(tmp_path, "pre", hooks=MethodHooks(callbacks=[_fake_quant_state]), sinreq=1.0, sinreq_mode="pre")
    assert result["method"] == "dorefa+sinreq-pre" and result["sinreq"]["mode"] == "pre"
    model, *_ = load_model(tmp_path / "pre")
    assert all(layer.fake_quant for layer in quantized_layers(model).values())
    lines = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["sinreq"] > 0
    assert not any(any(line["fake_quant"]) for line in lines)  # float forward pass while training
    # the reported accuracy is the quantized model's: re-evaluating the reloaded model agrees
    from lowbit.data import ArrayLoader, load_dataset
    from lowbit.runs.build import fit_model_to_data
    from lowbit.train import evaluate

    _, data, _ = fit_model_to_data("lenet5", load_dataset("digits"))
    loader = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    assert evaluate(model, loader)[1] == pytest.approx(result["accuracy"])


def test_validation_split_is_reported_and_logged(tmp_path) -> None:
    result = _run(tmp_path, "val", val_fraction=0.2)
    assert 0.0 <= result["val_accuracy"] <= 1.0
    line = json.loads((tmp_path / "val" / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_acc" in line and "test_acc" not in line


@pytest.mark.parametrize("bad", [{"sinreq_mode": "post"}, {"val_fraction": 1.0},
                                 {"sinreq": 0.1, "sinreq_schedule": "cosine"}, {"sinreq_domain": "tanh"}])
def test_bad_sinreq_options_are_rejected_before_work(tmp_path, bad) -> None:
    with pytest.raises(ConfigError):
        _run(tmp_path, "bad", **bad)
    assert not (tmp_path / "bad").exists()
