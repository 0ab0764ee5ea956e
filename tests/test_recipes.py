"""lowbit.recipes: one place for the defaults; explicit values win; the README table is generated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lowbit.errors import ConfigError, UnknownNameError
from lowbit.recipes import (DCQ_SECTIONS, OPTIMIZER_LR, QUANTIZED_FINETUNE, SEARCH_EVALUATION, WAVEQ_PHASE, Recipe,
                            qat_recipe, recipe_table)
from lowbit.runs.dcq_run import DcqOptions
from lowbit.runs.search_run import SearchOptions
from lowbit.runs.train_run import TrainOptions
from lowbit.runs.waveq_run import WaveQOptions
from lowbit.search.finetune import FineTuneEvaluator
from lowbit.distill import DCQConfig
from lowbit.train.config import warmup_factor

README = Path(__file__).resolve().parents[1] / "README.md"


def test_resolve_keeps_explicit_values_and_fills_the_rest():
    recipe = Recipe("sgd", 0.05, 1.0)
    assert recipe.resolve() == recipe
    assert recipe.resolve(lr=0.1) == Recipe("sgd", 0.1, 1.0)
    assert recipe.resolve(warmup_epochs=0.0) == Recipe("sgd", 0.05, 0.0)
    # another optimizer without an lr: that optimizer's plain default, no warm-up
    assert recipe.resolve("adam") == Recipe("adam", OPTIMIZER_LR["adam"], 0.0)
    assert recipe.resolve("adam", 3e-4, 2.0) == Recipe("adam", 3e-4, 2.0)
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        recipe.resolve("rmsprop")


def test_qat_recipe_knows_every_quantizer_and_refuses_others():
    for q in ("none", "dorefa", "wrpn", "pact", "lsq", "twn"):
        for from_float in (False, True):
            for batch_norm in (False, True):
                assert qat_recipe(q, from_float=from_float, batch_norm=batch_norm).lr > 0
    with pytest.raises(UnknownNameError, match="unknown quantizer 'dorefaa'.*did you mean 'dorefa'"):
        qat_recipe("dorefaa", from_float=False, batch_norm=False)


def test_train_options_read_the_recipe_and_the_user_wins():
    for bn in (False, True):
        expected = qat_recipe("dorefa", from_float=False, batch_norm=bn)
        scratch = TrainOptions(quantizer="dorefa", wbits=2).train_config(batch_norm=bn)
        assert (scratch.optimizer, scratch.lr, scratch.warmup_epochs) == (expected.optimizer, expected.lr,
                                                                          expected.warmup_epochs)
        init = TrainOptions(quantizer="wrpn", wbits=2, init="runs/x").train_config(batch_norm=bn)
        expected = qat_recipe("wrpn", from_float=True, batch_norm=bn)
        assert (init.optimizer, init.lr) == (expected.optimizer, expected.lr)
        mine = TrainOptions(quantizer="dorefa", wbits=2, optimizer="sgd", lr=0.3,
                            warmup_epochs=2).train_config(batch_norm=bn)
        assert (mine.optimizer, mine.lr, mine.warmup_epochs) == ("sgd", 0.3, 2.0)
    # the two kinds of network differ where the validation said so
    assert qat_recipe("dorefa", from_float=False, batch_norm=False) != qat_recipe("dorefa", from_float=False,
                                                                                  batch_norm=True)


def test_run_train_picks_the_recipe_of_the_network_it_built(tmp_path):
    from lowbit.runs.train_run import run_train
    from lowbit.train import Reporter

    for model, dataset, bn in (("lenet5", "synthetic", False), ("resnet20", "synthetic", True)):
        out = tmp_path / model
        run_train(TrainOptions(model=model, dataset=dataset, epochs=0, quantizer="dorefa", wbits=2, out=str(out)),
                  reporter=Reporter(quiet=True))
        import yaml
        saved = yaml.safe_load((out / "config.yaml").read_text())
        expected = qat_recipe("dorefa", from_float=False, batch_norm=bn)
        assert (saved["resolved_optimizer"], saved["resolved_lr"]) == (expected.optimizer, expected.lr), model


def test_every_method_reads_its_phase_recipes():
    waveq = WaveQOptions()
    assert waveq.train_config().lr == WAVEQ_PHASE[False].lr and waveq.finetune_config().lr == QUANTIZED_FINETUNE.lr
    assert WaveQOptions(init="runs/x").train_config().lr == WAVEQ_PHASE[True].lr
    assert DcqOptions(model="lenet5", sections=2, wbits=2).dcq_config().train.lr == DCQ_SECTIONS.lr
    assert DCQConfig().train.lr == DCQ_SECTIONS.lr
    assert SearchOptions().finetune_config().lr == QUANTIZED_FINETUNE.lr
    assert SearchOptions().eval_lr == SEARCH_EVALUATION.lr
    import inspect
    assert inspect.signature(FineTuneEvaluator).parameters["lr"].default == SEARCH_EVALUATION.lr


def test_waveq_python_api_defaults_equal_the_cli():
    import inspect

    from lowbit.reg.waveq_method import waveq_quantize
    params = inspect.signature(waveq_quantize).parameters
    assert params["train"].default is None and params["pretrained"].default is True
    finetune = params["finetune"].default
    options = WaveQOptions()
    assert (finetune.lr, finetune.epochs, finetune.optimizer) == (options.finetune_config().lr,
                                                                  options.finetune_epochs,
                                                                  options.finetune_config().optimizer)


def test_warmup_factor_ramps_linearly_then_stays_at_one():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_readme_table_is_the_generated_one():
    text = README.read_text()
    block = re.search(r"<!-- recipes:.*?-->\n(.*?)<!-- /recipes -->", text, re.S).group(1)
    rows = [line for line in block.strip().splitlines()[2:]]
    expected = [f"| `{r['quantizer']}` | {r['plain_scratch']} | {r['plain_float']} | {r['bn_scratch']} | "
                f"{r['bn_float']} |" for r in recipe_table()]
    assert rows == expected


def test_fit_scales_the_first_steps_by_the_warmup_and_leaves_the_schedule_alone():
    import torch
    from torch import nn

    from lowbit.train import TrainConfig, fit

    batch = [(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4))]

    def one_step(warmup: float) -> tuple[torch.Tensor, float]:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        start = model.weight.detach().clone()
        config = TrainConfig(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
                             warmup_epochs=warmup)
        history = fit(model, batch, config).history
        return model.weight.detach() - start, history[-1]["lr"]

    plain, lr_plain = one_step(0.0)
    warm, lr_warm = one_step(2.0)  # 2 warm-up steps over 1-batch epochs: the first step at half the LR
    torch.testing.assert_close(warm, 0.5 * plain)
    assert lr_plain == lr_warm == 0.1  # the scheduled LR is untouched
