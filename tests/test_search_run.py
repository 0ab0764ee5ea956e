"""`lowbit search` / `lowbit releq` end to end (ReLeQ, METHODS.md section 5): run folder, resume from the
evaluation cache, user errors, and the evaluator's data (validation held out from train, never test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.cli.main import main
from lowbit.data import load_dataset
from lowbit.search.setup import evaluator_loaders

TINY = ["--max-evals", "4", "--eval-steps", "5", "--eval-train-size", "200", "--finetune-epochs", "1",
        "--quiet", "--threads", "1"]
LAYERS = ["conv1", "conv2", "fc3", "fc4", "fc5"]


@pytest.fixture(scope="module")
def float_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "float"
    assert main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--val-fraction", "0.2",
                 "--quiet", "--threads", "1", "--out", str(out)]) == 0
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_random_writes_the_run_folder(tmp_path) -> None:
    out = tmp_path / "random"
    assert main(["search", "--strategy", "random", "--model", "lenet5", "--dataset", "digits", "--float-epochs", "1",
                 *TINY, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    for key in ("command", "model", "dataset", "method", "seed", "accuracy", "fp_accuracy", "accuracy_loss",
                "weight_bits", "act_bits", "avg_bits", "weighted_bits", "size_bytes", "wall_s", "version", "compute"):
        assert key in result, key
    assert result["method"] == "random" and result["command"].startswith("lowbit search")
    assert result["accuracy_loss"] == pytest.approx(result["fp_accuracy"] - result["accuracy"])
    assert {"macs", "bops", "bit_serial_speedup", "bit_fusion_speedup"} <= set(result["compute"])
    assert result["init"] == str(out / "float") and (out / "float" / "model.ckpt").exists()  # float trained first

    search = result["search"]
    assert search["strategy"] == "random" and search["evaluations"] == search["new_evaluations"] == 4
    assert search["cache_hits"] >= 0 and search["plans_visited"] == 4
    best = search["best"]
    assert best["key"] == ",".join(f"{result['weight_bits'][n]}/{result['act_bits'][n]}" for n in LAYERS)
    assert best["reward"] == search["best_reward"] and 0 <= best["val_accuracy"] <= 1
    assert search["pareto"] and all({"key", "accuracy", "avg_bits", "reward"} <= set(r) for r in search["pareto"])
    assert search["hypervolume"] > 0 and search["hypervolume_ref"] == {"bits": 8.0, "accuracy": 0.0}
    assert search["budget"] == {"max_evals": 4, "time_limit_s": None}
    assert search["reward_config"] == {"th": 0.4, "a": 0.8, "b": 1.0}
    # the evaluator fine-tunes on 200 train samples and measures the 287 held-out ones (never the 360 test)
    assert search["evaluator"]["train_batches"] == 4 and search["evaluator"]["steps"] == 5

    plan = json.loads((out / "plan.json").read_text())
    assert {n: v["weight"] for n, v in plan["layers"].items()} == result["weight_bits"]
    assert result["weight_bits"]["conv1"] == result["weight_bits"]["fc5"] == 8  # pinned
    metrics = _lines(out / "metrics.jsonl")
    assert [m["phase"] for m in metrics] == ["search"] * 4 + ["finetune"]
    assert {"key", "accuracy", "avg_bits", "reward", "cached"} <= set(metrics[0])
    assert len(_lines(out / "evaluations.jsonl")) == 1 + 4  # header + one line per evaluation
    for name in ("rewards", "bits", "pareto"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert (out / "model.ckpt").exists() and (out / "config.yaml").exists()

    for name in ("float/model.ckpt", "float/result.json", "result.json"):  # killed right after the float epoch
        (out / name).unlink()
    assert main(["search", "--out", str(out), "--resume", "--quiet"]) == 0  # the rest comes from config.yaml
    again = json.loads((out / "result.json").read_text())
    assert again["search"]["new_evaluations"] == 0 and again["search"]["best"] == search["best"]
    assert again["fp_accuracy"] == result["fp_accuracy"]  # the float run was finished, not retrained


@pytest.mark.slow
def test_greedy_resume_reuses_the_cache(tmp_path, float_run) -> None:
    out = tmp_path / "greedy"
    args = ["search", "--strategy", "greedy", "--init", str(float_run), *TINY, "--out", str(out)]
    assert main(args) == 0
    first = json.loads((out / "result.json").read_text())["search"]
    assert first["new_evaluations"] == 4 and first["loaded_from_cache"] == 0

    assert main([*args, "--resume"]) == 0  # a finished search: every plan comes from the cache
    again = json.loads((out / "result.json").read_text())["search"]
    assert again["new_evaluations"] == 0 and again["loaded_from_cache"] == 4
    assert again["cache_hits"] >= first["plans_visited"] and again["evaluations"] == 4
    assert again["best"] == first["best"]
    assert len(_lines(out / "evaluations.jsonl")) == 1 + 4
    assert all(m["cached"] for m in _lines(out / "metrics.jsonl") if m["phase"] == "search")

    cache = (out / "evaluations.jsonl").read_text().splitlines()  # interrupted after two evaluations
    (out / "evaluations.jsonl").write_text("\n".join(cache[:3]) + "\n")
    assert main([*args, "--resume"]) == 0
    partial = json.loads((out / "result.json").read_text())["search"]
    assert partial["loaded_from_cache"] == 2 and partial["new_evaluations"] == 2 and partial["evaluations"] == 4
    assert partial["best"] == first["best"]  # ends where the uninterrupted search ended
    def plans(lines: list[str]) -> list[tuple]:
        return [(r["key"], r["accuracy"]) for r in map(json.loads, lines[1:])]

    assert plans((out / "evaluations.jsonl").read_text().splitlines()) == plans(cache)  # same plans, same accuracy


@pytest.mark.slow
def test_releq_searches_acts_and_keeps_its_agent_in_the_folder(tmp_path, float_run, monkeypatch) -> None:
    import lowbit.search.releq as releq

    calls = []
    real = releq.releq_search

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(releq, "releq_search", spy)
    out = tmp_path / "releq"
    assert main(["releq", "--init", str(float_run), "--search-acts", "--act-choices", "4,8", "--policy", "mlp",
                 *TINY, "--out", str(out)]) == 0
    assert calls and calls[0]["state_dir"] == out / "agent" and calls[0]["resume"] is False
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "releq" and result["search"]["ppo"]["policy"] == "mlp"
    assert result["search"]["episodes"] >= 4
    assert result["act_bits"]["conv1"] == 32 and {result["act_bits"][n] for n in LAYERS[1:]} <= {4, 8}
    assert (out / "plots" / "rewards.png").exists() and (out / "plots" / "bits.png").exists()


@pytest.mark.parametrize("argv,message", [
    (["search", "--strategy", "bogus"], "unknown search strategy 'bogus'"),
    (["search", "--strategy", "random", "--bit-choices", "2,9"], "allowed values are 1..8"),
    (["search", "--strategy", "random", "--bit-choices", "2,x"], "integer bitwidths"),
    (["releq", "--act-choices", "4,8"], "--act-choices needs --search-acts"),
    (["releq", "--max-evals", "0"], "max_evals must be an integer >= 1"),
    (["releq", "--val-fraction", "0"], "never on test"),
    (["releq", "--policy", "cnn"], "unknown policy 'cnn'"),
    (["search", "--strategy", "greedy", "--model", "nope"], "unknown model"),
    (["releq", "--resume"], "no search to resume"),
])
def test_user_errors_exit_2_and_leave_no_folder(tmp_path, capsys, argv, message) -> None:
    out = tmp_path / "run"
    assert main([*argv, "--quiet", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_releq_refuses_another_strategy_from_its_config(tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("strategy: random\n")
    out = tmp_path / "run"
    assert main(["releq", "--config", str(config), "--quiet", "--out", str(out)]) == 2
    assert "lowbit search --strategy random" in capsys.readouterr().err and not out.exists()


def test_evaluator_data_is_held_out_from_train_never_test() -> None:
    full = load_dataset("digits", seed=0)
    data = load_dataset("digits", seed=0, val_fraction=0.2)
    train, val = evaluator_loaders(data, train_size=200, batch_size=64, seed=0)
    assert train.data is data.train and val.data is data.val  # built from train and val only
    assert len(data.train) + len(data.val) == len(full.train) and len(data.test) == len(full.test)
    assert train.num_samples == 200 and len(set(train.indices.tolist())) == 200
    big, _ = evaluator_loaders(data, train_size=10_000, batch_size=64, seed=0)
    assert big.num_samples == len(data.train)


def test_the_agent_sees_the_float_weights_std(tmp_path, float_run, monkeypatch) -> None:
    """The observation's weight-std feature comes from the --init weights, not a fresh initialisation."""
    import lowbit.search.strategies as search_run
    from lowbit.runs.model_io import load_model

    seen = []
    real = search_run.random_search

    def spy(space, *args, **kwargs):
        seen.append(space)
        return real(space, *args, **kwargs)

    monkeypatch.setattr(search_run, "random_search", spy)
    assert main(["search", "--strategy", "random", "--init", str(float_run), *TINY,
                 "--out", str(tmp_path / "r")]) == 0
    model = load_model(str(float_run))[0]
    modules = dict(model.named_modules())
    for layer in seen[0].layers:
        expected = modules[layer.name].weight.detach().double().std(unbiased=False).item()
        assert layer.weight_std == pytest.approx(expected, rel=1e-5)
