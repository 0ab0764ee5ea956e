"""run_train and the run folder (Python API, tiny synthetic data), model files, and plan costs."""

from __future__ import annotations

import json
import math
import stat

import pytest
import torch
from torch import nn

from lowbit.costs import costs_of, model_costs, weight_counts
from lowbit.errors import CheckpointError, ConfigError, PlanError
from lowbit.io import atomic_write_text
from lowbit.nn import quantize_
from lowbit.plan import LayerBits, Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.runs.folder import RunFolder
from lowbit.runs.model_io import load_float_weights, load_model, resolve_model_file
from lowbit.runs.train_run import MethodHooks, TrainOptions, run_train
from lowbit.train import LossTerm, Reporter, load_checkpoint, read_metrics

QUIET = Reporter(quiet=True)
RESULT_FIELDS = {"command", "model", "dataset", "method", "seed", "accuracy", "fp_accuracy", "weight_bits",
                 "act_bits", "avg_bits", "weighted_bits", "size_bytes", "wall_s", "version"}


def options(out, **kw) -> TrainOptions:
    base = dict(model="lenet5", dataset="synthetic", epochs=1, batch_size=128, seed=0, out=str(out))
    return TrainOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "float"
    run_train(options(out, epochs=2), reporter=QUIET, command="test float")
    return out


# ---- run_train ---------------------------------------------------------------------------------

def test_result_json_matches_return_value(float_dir):
    result = json.loads((float_dir / "result.json").read_text())
    assert RESULT_FIELDS <= set(result)
    assert result["command"] == "test float" and result["dataset"] == "synthetic" and result["method"] == "float"
    assert result["fp_accuracy"] == result["accuracy"] and 0.0 <= result["accuracy"] <= 1.0
    assert result["environment"]["torch"] == torch.__version__
    assert [m["epoch"] for m in read_metrics(float_dir / "metrics.jsonl")] == [0, 1]


def test_run_files_are_readable_like_ordinary_files(float_dir):
    """Atomic writes must not leave run files 0600 while metrics.jsonl is 0644."""
    probe = float_dir.parent / "probe.txt"
    probe.write_text("")
    expected = stat.S_IMODE(probe.stat().st_mode)
    for name in ("result.json", "config.yaml", "model.ckpt", "checkpoint.ckpt", "metrics.jsonl"):
        assert stat.S_IMODE((float_dir / name).stat().st_mode) == expected, name
    # an existing file keeps its mode when rewritten atomically
    target = float_dir.parent / "kept.txt"
    target.write_text("a")
    target.chmod(0o640)
    atomic_write_text(target, "b")
    assert target.read_text() == "b" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_quantized_run_with_init_file_hooks_and_model_round_trip(float_dir, tmp_path):
    calls = {"terms": 0}

    def tracked(model):
        calls["terms"] += 1
        return torch.zeros(())

    torch.manual_seed(99)
    x = torch.randn(8, 1, 16, 16)
    trained = {}

    def result_fields(model):  # sees the trained model: keep its outputs to compare with the reloaded one
        model.eval()
        with torch.no_grad():
            trained["out"] = model(x)
        return {"extra_field": 42}

    hooks = MethodHooks(suffix="+test", loss_terms=lambda model: [LossTerm("zero", tracked, weight=1.0)],
                        callbacks=[lambda epoch, model: {"hooked": epoch + 100}],
                        result_fields=result_fields, config={"hook_option": "x"})
    out = tmp_path / "pact"
    result = run_train(options(out, quantizer="pact", wbits=3, abits=4, init=str(float_dir / "model.ckpt")),
                       hooks=hooks, reporter=QUIET, command="test pact")
    float_result = json.loads((float_dir / "result.json").read_text())
    assert result["fp_accuracy"] == float_result["accuracy"]  # --init to the model file of a float run
    assert result["method"] == "pact+test" and result["extra_field"] == 42
    assert calls["terms"] > 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[0]["hooked"] == 100 and "zero" in metrics[0] and "quantizer_aux" in metrics[0]
    assert json.loads((out / "result.json").read_text()) == json.loads(json.dumps(result))
    config = (out / "config.yaml").read_text()
    assert "hook_option: x" in config and "method: pact+test" in config

    model, args, spec, plan = load_model(out)
    assert spec == QuantizerSpec("pact") and args.name == "lenet5"
    assert plan.resolve(["conv1", "conv2", "fc3", "fc4", "fc5"])["conv2"] == LayerBits(3, 4)
    stored = load_checkpoint(out / "model.ckpt")["model"]
    assert set(model.state_dict()) == set(stored)
    assert (args.in_channels, args.input_size) == (1, 16)
    again, *_ = load_model(out / "model.ckpt")
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(x), trained["out"])  # the reloaded model computes what the trained one did
        assert torch.equal(again(x), trained["out"])


def test_quantized_run_without_float_reference(tmp_path):
    result = run_train(options(tmp_path / "q", quantizer="dorefa", wbits=2), reporter=QUIET)
    assert result["fp_accuracy"] is None and "fp_accuracy" in result
    assert result["weight_bits"]["conv2"] == 2 and result["act_bits"]["conv2"] == 32


def test_plan_file_option(tmp_path):
    plan_path = tmp_path / "plan.json"
    Plan.uniform(4).with_entries(*Plan.from_layer_bits({"fc3": (2, 8)}).entries).save(plan_path)
    result = run_train(options(tmp_path / "p", quantizer="dorefa", plan=str(plan_path)), reporter=QUIET)
    assert result["weight_bits"] == {"conv1": 8, "conv2": 4, "fc3": 2, "fc4": 4, "fc5": 8}
    assert result["act_bits"] == {"conv1": 32, "conv2": 32, "fc3": 8, "fc4": 32, "fc5": 8}
    assert Plan.load(tmp_path / "p" / "plan.json").resolve(list(result["weight_bits"]))["fc3"] == LayerBits(2, 8)


def test_plan_that_matches_no_layer_leaves_no_folder(tmp_path):
    plan_path = tmp_path / "plan.json"
    Plan.uniform(4).with_entries(*Plan.from_layer_bits({"fc9": 2}).entries).save(plan_path)
    with pytest.raises(PlanError, match="fc9"):
        run_train(options(tmp_path / "p", quantizer="dorefa", plan=str(plan_path)), reporter=QUIET)
    assert not (tmp_path / "p").exists()


def test_option_validation(tmp_path):
    for bad in (dict(epochs=-1), dict(batch_size=0), dict(seed=1.5), dict(width_mult=0.0),
                dict(quantizer="dorefa", wbits=2, plan="p.json"), dict(lr=-1.0), dict(optimizer="rmsprop")):
        with pytest.raises(ConfigError):
            run_train(options(tmp_path / "o", **bad), reporter=QUIET)
    assert not (tmp_path / "o").exists()


def test_init_from_other_architecture_is_refused(float_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not fit"):
        run_train(options(tmp_path / "w", width_mult=2.0, init=str(float_dir)), reporter=QUIET)


# ---- run folders and model files ----------------------------------------------------------------

def test_run_folder_prepare_rules(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    RunFolder(empty).prepare(resume=False)  # an empty folder is fine
    RunFolder(tmp_path / "a" / "b").prepare(resume=False)  # parents are created
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    (empty / "x").write_text("")
    with pytest.raises(ConfigError, match="already holds a run"):
        RunFolder(empty).prepare(resume=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        RunFolder(empty).prepare(resume=True)
    blocker = tmp_path / "file"
    blocker.write_text("")
    for path in (blocker, blocker / "sub" / "run"):
        with pytest.raises(ConfigError, match="is a file"):
            RunFolder(path).check(resume=False)
        with pytest.raises(ConfigError):
            RunFolder(path).prepare(resume=False)
    assert blocker.is_file()


def test_read_result_errors(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(CheckpointError, match="result.json"):
        folder.read_result()
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        folder.read_result()


def test_model_file_errors(float_dir, tmp_path):
    with pytest.raises(CheckpointError, match="has no model.ckpt"):
        resolve_model_file(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model_file(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="model description"):
        load_model(float_dir / "checkpoint.ckpt")  # a training state, not a model file
    model, args, spec, plan = load_model(float_dir)
    assert spec is None and plan is None
    fresh = args.build()
    assert load_float_weights(fresh, float_dir) == args
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


# ---- costs -------------------------------------------------------------------------------------

def tiny() -> nn.Module:
    """conv 1->2 3x3 (18 w + 2 b), BN(2) (2+2 params, 2+2 float buffers), linear 8->3 (24 w + 3 b)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


OTHERS = 2 + 4 + 4 + 3  # conv bias, BN weight/bias, BN running mean/var, linear bias


def test_costs_of_float_model():
    model = tiny()
    model(torch.randn(2, 1, 4, 4))
    assert weight_counts(model) == {"0": 18, "4": 24}
    costs = model_costs(model)
    assert costs.avg_bits == 32.0 and costs.weighted_bits == 32.0
    assert costs.size_bytes == costs.float_size_bytes == 4 * (18 + 24 + OTHERS) == 220
    assert costs.compression == 1.0


@pytest.mark.parametrize("scale", ["auto", "learned"])
def test_costs_one_quantized_layer(scale):
    model = tiny()
    quantize_(model, Plan.from_layer_bits({"0": (4, 32), "4": (32, 32)}), QuantizerSpec("dorefa", scale=scale))
    costs = model_costs(model)
    assert costs.avg_bits == 4.0  # mean over quantized layers only
    assert costs.weighted_bits == pytest.approx((18 * 4 + 24 * 32) / 42) == 20.0
    # 18 weights at 4 bits = 9 bytes + one float32 scale; linear stays float32 (96 B); others float32.
    # A learned output scale is that one scale, not an extra parameter.
    assert costs.size_bytes == 9 + 4 + 96 + 4 * OTHERS == 161
    assert costs.float_size_bytes == 220
    assert costs.compression == pytest.approx(220 / 161)
    assert costs.to_dict()["compression"] == pytest.approx(220 / 161)


def test_costs_two_quantized_layers_with_act_quantizer():
    model = tiny()
    quantize_(model, Plan.from_layer_bits({"0": (3, 4), "4": (2, 32)}), "lsq")
    costs = model_costs(model)
    assert costs.avg_bits == 2.5
    assert costs.weighted_bits == pytest.approx((18 * 3 + 24 * 2) / 42)
    # ceil(54 / 8) = 7 B + scale, 48 bits = 6 B + scale; the LSQ activation step is one more float32
    assert costs.size_bytes == (7 + 4) + (6 + 4) + 4 * (OTHERS + 1) == 77


def test_costs_of_without_a_model():
    counts = {"a": 10, "b": 30}
    bits = {"a": LayerBits(1, 32), "b": LayerBits(32, 8)}  # b: float weights, quantized input only
    costs = costs_of(counts, bits, other_params=5)
    assert costs.avg_bits == 1.0
    assert costs.weighted_bits == pytest.approx((10 * 1 + 30 * 32) / 40)
    assert costs.size_bytes == math.ceil(10 / 8) + 4 + 30 * 4 + 5 * 4
    assert costs.float_size_bytes == 4 * 45
    none = costs_of({}, {})
    assert none.avg_bits == 32.0 and none.weighted_bits == 32.0 and none.size_bytes == 0
    assert none.compression == float("inf")
