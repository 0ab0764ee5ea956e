"""WaveQ end to end: the Python API on a user's own model and loaders, and `lowbit waveq`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lowbit.cli.main import main
from lowbit.nn import layer_bits, quantized_layers
from lowbit.quant.registry import QuantizerSpec
from lowbit.reg.waveq import WaveQConfig
from lowbit.reg.waveq_method import integer_plan, waveq_quantize
from lowbit.train import TrainConfig


def _data(n: int = 96, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.mark.parametrize("family,scale", [("wrpn", "learned"), ("lsq", "none"), ("dorefa", "auto")])
def test_api_on_a_users_model(family: str, scale: str) -> None:
    config = WaveQConfig(quantizer=family, budget=5.5, c_beta=1.0)
    outcome = waveq_quantize(_net(), _data(), waveq=config, train=TrainConfig(epochs=3, lr=0.02),
                             quantizer=QuantizerSpec(family, scale=scale),
                             finetune=TrainConfig(epochs=1, lr=0.01), eval_loader=_data(32, seed=1))
    bits = layer_bits(outcome.model)
    assert {n: b.weight for n, b in bits.items()} == outcome.bits
    assert sum(outcome.bits.values()) / len(outcome.bits) <= 5.5
    assert bits["0"].act == 32 and outcome.bits["0"] == 8 and outcome.bits["7"] == 8
    assert len(outcome.waveq_history) == 3 and len(outcome.finetune_history) == 1
    assert all(r["phase"] == "waveq" and set(r["waveq_beta"]) == {"2", "5"} for r in outcome.waveq_history)
    assert 0.0 <= outcome.accuracy_before_finetune <= 1.0
    assert all(outcome.beta[n] == outcome.bits[n] for n in outcome.beta)  # frozen at the integer plan


def test_alpha_seeds_the_learned_scales() -> None:
    from lowbit.nn import quantize_
    from lowbit.reg.waveq_method import seed_scales_from_alpha

    for family, scale in (("wrpn", "learned"), ("lsq", "none")):
        net = _net()
        quantize_(net, integer_plan({"0": 8, "2": 3, "5": 4, "7": 8}), QuantizerSpec(family, scale=scale))
        seed_scales_from_alpha(net, {"2": 0.5, "5": 0.25})
        layers = quantized_layers(net)
        if family == "wrpn":
            assert float(layers["2"].weight_quantizer.scale.detach()) == 0.5
        else:
            assert float(layers["2"].weight_quantizer.step.detach()) == pytest.approx(0.5 / 4)
            assert float(layers["5"].weight_quantizer.step.detach()) == pytest.approx(0.25 / 8)


def test_integer_plan_pins_activations() -> None:
    plan = integer_plan({"a": 8, "b": 3, "c": 8}, act_bits=4).resolve(["a", "b", "c"])
    assert [(plan[n].weight, plan[n].act) for n in "abc"] == [(8, 32), (3, 4), (8, 8)]


@pytest.mark.slow
def test_cli_writes_the_run_folder(tmp_path) -> None:
    out = tmp_path / "wq"
    code = main(["waveq", "--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--finetune-epochs", "1",
                 "--budget", "5.5", "--quiet", "--threads", "1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert result["method"] == "waveq-dorefa" and result["avg_bits"] <= 5.5
    assert {n: v["weight"] for n, v in plan["layers"].items()} == result["weight_bits"]
    for key in ("accuracy", "weighted_bits", "size_bytes", "wall_s"):
        assert key in result
    assert set(result["waveq"]["beta"]) == {"conv2", "fc3", "fc4"}
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["phase"] for l in lines] == ["waveq", "waveq", "finetune"]
    assert set(lines[0]["waveq_beta"]) == set(lines[0]["waveq_alpha"]) == {"conv2", "fc3", "fc4"}
    assert (out / "plots" / "beta.png").stat().st_size > 1000
    assert (out / "model.ckpt").exists()


def test_cli_infeasible_budget_is_a_user_error(tmp_path, capsys) -> None:
    out = tmp_path / "wq"
    code = main(["waveq", "--model", "lenet5", "--dataset", "digits", "--budget", "3", "--quiet", "--out", str(out)])
    assert code == 2
    assert "cannot be met" in capsys.readouterr().err
    assert not out.exists()
