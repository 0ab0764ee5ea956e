"""The comparison protocol (lowbit.runs.protocol, lowbit compare): tuning never sees the test split,
equal trials per arm, the choice made on the hold-out only, paired statistics against a reference."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from scipy import stats

from lowbit.cli.compare_cmd import load_spec
from lowbit.cli.main import main
from lowbit.data import TensorData, load_dataset
from lowbit.data import registry
from lowbit.errors import ConfigError
from lowbit.report.stats import Summary, paired_difference
from lowbit.runs.protocol import Arm, Protocol, chosen_setting, compare, grid, run_command, seeded, tune

LENET = {"model": "lenet5", "dataset": "digits", "quantizer": "dorefa", "wbits": 2, "epochs": 1, "threads": 1}


# ---- the tuner never receives the test split -------------------------------------------------------

class _Sealed(TensorData):
    """A split that fails the moment anything reads its samples."""

    def __getattribute__(self, name: str):
        if name in ("x", "y", "subset"):
            raise AssertionError("the test split was read")
        return object.__getattribute__(self, name)

    def __len__(self) -> int:
        return int(object.__getattribute__(self, "y").shape[0])


def _seal(data: TensorData) -> TensorData:
    sealed = object.__new__(_Sealed)
    object.__setattr__(sealed, "x", data.x)
    object.__setattr__(sealed, "y", data.y)
    return sealed


@pytest.fixture
def sealed_digits(monkeypatch):
    entry = registry.DATASETS["digits"]

    def reader(directory, seed, **options):
        splits = entry.reader(directory, seed, **options)
        return dataclasses.replace(splits, test=_seal(splits.test))

    monkeypatch.setitem(registry.DATASETS, "digits", dataclasses.replace(entry, reader=reader))


def test_tuning_runs_never_read_the_test_split(sealed_digits, tmp_path):
    arm = Arm("dorefa", "train", dict(LENET), {"lr": [0.001, 0.003]})
    trials = tune(arm, Protocol(trials=2), tmp_path / "tune")
    assert len(trials) == 2 and all(0.0 <= t.score <= 1.0 for t in trials)
    result = json.loads(next((tmp_path / "tune").glob("*/result.json")).read_text())
    assert result["scored_on"] == "tuning hold-out of train" and "TUNING VIEW" in result["data"]
    with pytest.raises(AssertionError, match="test split was read"):  # the seal bites on a normal run
        run_command("train", dict(LENET), tmp_path / "final")


def test_the_tuning_view_holds_out_a_fixed_share_of_train():
    full = load_dataset("digits")
    view = load_dataset("digits", tuning_fraction=0.25, seed=3)
    again = load_dataset("digits", tuning_fraction=0.25, seed=7)
    assert len(view.train) + len(view.test) == len(full.train) and view.val is None
    assert torch.equal(view.test.x, again.test.x)  # the same hold-out for every seed and arm
    test_rows = {bytes(x.numpy()) for x in full.test.x}
    assert not any(bytes(x.numpy()) in test_rows for x in view.test.x[:50])  # it comes from train


# ---- equal budgets, the choice on the hold-out -------------------------------------------------------

def _fake_run(scores):
    """A stand-in for run_command: hold-out or test accuracy from a table, recording every call."""
    calls = []

    def run(command, options, out):
        calls.append(dict(options))
        tuning = options.get("tuning_fraction", 0) > 0
        value = scores(options, tuning)
        return {"accuracy": value, "avg_bits": 2.0, "health": {"ok": True},
                "scored_on": "tuning hold-out of train" if tuning else "test"}

    return run, calls


def test_every_arm_gets_the_same_number_of_trials_and_the_best_hold_out_setting(tmp_path):
    run, calls = _fake_run(lambda o, tuning: (o["lr"] if tuning else 0.5 + o["lr"]) + 0.001 * o.get("sinreq", 0))
    small = Arm("base", "train", dict(LENET), {"lr": [0.1, 0.3]})
    large = Arm("sinreq", "train", dict(LENET), {"lr": [0.1, 0.2, 0.3], "sinreq": [0.0, 1.0, 2.0]})
    comparison = compare([small, large], "base", Protocol(seeds=(0, 1, 2), trials=4), tmp_path, run=run)
    tuning = [c for c in calls if c.get("tuning_fraction")]
    assert sum(c["sinreq"] is not None for c in tuning if "sinreq" in c) == 4  # TPE: 4 of 9 points
    assert len([c for c in tuning if "sinreq" not in c]) == 2  # the whole (smaller) grid
    arms = {a["name"]: a for a in comparison["arms"]}
    assert arms["base"]["chosen"] == {"lr": 0.3}
    assert len(arms["sinreq"]["trials"]) == 4
    finals = [c for c in calls if not c.get("tuning_fraction")]
    assert sorted(c["seed"] for c in finals) == [0, 0, 1, 1, 2, 2]
    assert all(c["lr"] == arms[("sinreq" if "sinreq" in c else "base")]["chosen"]["lr"] for c in finals)
    assert (tmp_path / "comparison.json").exists()


def test_the_choice_keeps_the_first_of_equal_scores_and_seeds_fill_placeholders():
    from lowbit.runs.protocol import Trial

    trials = [Trial({"lr": 1}, {0: 0.5}), Trial({"lr": 2}, {0: 0.7}), Trial({"lr": 3}, {0: 0.7})]
    assert chosen_setting(trials) == {"lr": 2} and chosen_setting([]) == {}
    assert seeded({"init": "runs/f-s{seed}", "lr": 1}, 2, tuning_fraction=0.2) == {
        "init": "runs/f-s2", "lr": 1, "seed": 2, "tuning_fraction": 0.2}
    assert grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}] and grid({}) == []


def test_arms_may_not_set_what_the_protocol_sets(tmp_path):
    with pytest.raises(ConfigError, match="set by the protocol"):
        Arm("a", "train", {**LENET, "seed": 1}).check()
    with pytest.raises(ConfigError, match="non-empty list"):
        Arm("a", "train", dict(LENET), {"lr": []}).check()
    with pytest.raises(ConfigError, match="lr"):  # every candidate is validated before anything runs
        Arm("a", "train", dict(LENET), {"lr": [float("nan")]}).check()
    with pytest.raises(ConfigError, match="baseline"):
        compare([Arm("a", "train", dict(LENET))], "b", Protocol(), tmp_path)


# ---- statistics against a reference --------------------------------------------------------------------

def test_paired_difference_matches_scipy_and_says_within_noise():
    arm = {0: 0.92, 1: 0.93, 2: 0.915, 3: 0.93}
    base = {0: 0.90, 1: 0.90, 2: 0.89, 3: 0.91}
    diff = paired_difference(arm, base, 0.95)
    d = [arm[s] - base[s] for s in arm]
    low, high = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=stats.sem(d))
    assert diff.mean == pytest.approx(sum(d) / len(d)) and diff.low == pytest.approx(low)
    assert diff.high == pytest.approx(high) and not diff.within_noise
    noisy = paired_difference({0: 0.9, 1: 0.8, 2: 0.95}, {0: 0.85, 1: 0.9, 2: 0.9})
    assert noisy.within_noise
    one = paired_difference({0: 0.9}, {0: 0.8})
    assert one.within_noise and one.to_dict()["low"] is None
    assert Summary.of([0.5]).to_dict()["sd"] is None and math.isclose(Summary.of([1, 3]).sd, math.sqrt(2))
    with pytest.raises(ValueError):
        paired_difference({0: 0.9}, {1: 0.8})


# ---- lowbit compare -------------------------------------------------------------------------------------

def test_spec_errors_name_the_problem(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("arms: {a: {command: train, options: {epochs: 1}, tunes: {lr: [1]}}}\n")
    with pytest.raises(ConfigError, match="unknown key 'tunes'"):
        load_spec(spec)
    spec.write_text("arms: {a: {command: train, config: x.yaml}}\n")
    with pytest.raises(ConfigError, match="exactly one of"):
        load_spec(spec)
    spec.write_text("baseline: a\narms: {a: {command: train}}\nprotocol: {seed: [1]}\n")
    with pytest.raises(ConfigError, match="bad protocol"):
        load_spec(spec)


@pytest.mark.slow
def test_compare_end_to_end_writes_table_and_plot(tmp_path, capsys):
    float_run = tmp_path / "float"
    assert main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--threads", "1", "--quiet",
                 "--out", str(float_run)]) == 0
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""baseline: dorefa
protocol: {{seeds: [0, 1], trials: 1}}
arms:
  dorefa: {{command: train, options: {json.dumps(LENET)}}}
  pact:
    run: {float_run}
    set: {{quantizer: pact, wbits: 2, abits: 4, epochs: 1}}
    tune: {{lr: [0.01, 0.05]}}
""")
    assert main(["compare", str(spec), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| pact |" in table and "baseline" in table and (tmp_path / "cmp" / "comparison.png").exists()
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [a["name"] for a in comparison["arms"]] == ["dorefa", "pact"]
    pact = comparison["arms"][1]
    assert len(pact["trials"]) == 1 and pact["options"]["quantizer"] == "pact"
    assert main(["report", str(tmp_path / "cmp"), "--out", str(tmp_path / "r.html"), "--quiet"]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "Protocol comparisons" in html and "<td>pact</td>" in html
    assert "/tune/" not in html  # the report brings the final runs, not the tuning runs
