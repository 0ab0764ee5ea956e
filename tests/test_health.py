"""lowbit.health: the checks, the per-epoch watch, result.json's ``health`` and ``--strict``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lowbit.cli.main import main
from lowbit.errors import EXIT_UNHEALTHY, UnhealthyRunError
from lowbit.health import HealthWatch, check_health, top_level_shares
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter

QUIET = Reporter(quiet=True)


def epochs(losses, accs):
    return [{"epoch": i, "train_task_loss": l, "train_acc": a} for i, (l, a) in enumerate(zip(losses, accs))]


class Recorder(Reporter):
    def __init__(self):
        super().__init__(quiet=True)
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_healthy_history_passes_every_check():
    health = check_health(None, epochs([2.0, 0.8, 0.3], [0.4, 0.8, 0.95]), 10, accuracy=0.93)
    assert health.ok and health.failed == [] and set(health.checks) == {"learning", "above_chance"}
    assert health.to_dict()["hints"] == []


def test_a_run_from_float_weights_that_starts_low_counts_as_learning():
    health = check_health(None, epochs([0.05, 0.049], [0.99, 0.99]), 10, accuracy=0.98)
    assert health.checks["learning"]["ok"]


def test_chance_accuracy_and_flat_loss_fail_with_figures_and_hints():
    health = check_health(None, epochs([2.31, 2.30, 2.305], [0.11, 0.09, 0.10]), 10, accuracy=0.1,
                          accuracy_name="val")
    assert not health.ok and health.failed == ["learning", "above_chance"]
    chance = health.checks["above_chance"]
    assert chance["floor"] == pytest.approx(0.2) and chance["val_accuracy"] == 0.1
    assert "val 10.0%" in chance["detail"]
    assert len(health.to_dict()["hints"]) == 2
    assert json.loads(json.dumps(health.to_dict())) == health.to_dict()


def test_a_diverged_loss_fails_learning():
    health = check_health(None, epochs([2.3, float("nan")], [0.1, 0.1]), 10, accuracy=None)
    assert health.failed == ["learning", "above_chance"]


def test_levels_check_finds_a_layer_on_one_level():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 3))
    with torch.no_grad():
        model[0].weight.mul_(0.1)  # |w| far below WRPN's first rounding threshold in the unit range
    quantize_(model, Plan.uniform(2, first_last_bits=2), QuantizerSpec("wrpn", scale="none"))
    health = check_health(model, [], 3, accuracy=None)
    assert health.failed == ["levels"] and health.checks["levels"]["collapsed_layers"] == ["0", "4"]
    assert top_level_shares(model)["0"] == 1.0
    # the default (auto) scale of WRPN behind batch norm is learned, started at max|w|: no collapse
    quantize_(model, Plan.uniform(2, first_last_bits=2), "wrpn")
    assert check_health(model, [], 3, accuracy=None).ok


def test_watch_warns_once_when_not_learning_and_never_when_healthy():
    reporter = Recorder()
    watch = HealthWatch(10, epochs=8, reporter=reporter)
    for record in epochs([2.3] * 8, [0.1] * 8):
        watch(record)
    assert len(reporter.warnings) == 1 and "not learning after 2 epochs" in reporter.warnings[0]
    quiet = Recorder()
    watch = HealthWatch(10, epochs=8, reporter=quiet)
    for record in epochs([2.3, 1.0, 0.5, 0.3], [0.2, 0.6, 0.8, 0.9]):
        watch(record)
    assert quiet.warnings == []


def options(out, **kw) -> TrainOptions:
    base = dict(model="lenet5", dataset="digits", epochs=3, batch_size=64, seed=0, threads=1, out=str(out))
    return TrainOptions(**{**base, **kw})


@pytest.mark.slow
def test_forced_collapse_is_recorded_and_strict_exits_nonzero(tmp_path):
    """A huge learning rate: the run finishes, result.json says unhealthy; --strict exits with 3."""
    result = run_train(options(tmp_path / "a", quantizer="dorefa", wbits=2, optimizer="sgd", lr=50.0),
                       reporter=QUIET)
    assert not result["health"]["ok"] and "above_chance" in result["health"]["failed"]
    with pytest.raises(UnhealthyRunError, match="--strict"):
        run_train(options(tmp_path / "b", quantizer="dorefa", wbits=2, optimizer="sgd", lr=50.0, strict=True),
                  reporter=QUIET)
    assert json.loads((tmp_path / "b" / "result.json").read_text())["health"]["ok"] is False  # nothing lost
    code = main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--threads", "1",
                 "--quantizer", "dorefa", "--wbits", "2", "--optimizer", "sgd", "--lr", "50", "--strict",
                 "--quiet", "--out", str(tmp_path / "c")])
    assert code == EXIT_UNHEALTHY


@pytest.mark.slow
def test_healthy_default_run_is_quiet_and_passes_strict(tmp_path):
    result = run_train(options(tmp_path / "ok", quantizer="dorefa", wbits=2, strict=True), reporter=QUIET)
    assert result["health"]["ok"], result["health"]
    assert math.isfinite(result["health"]["checks"]["learning"]["last_loss"])
