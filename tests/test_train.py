"""The training loop: learning, loss terms, metrics, determinism, exact resume, NaN handling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import lowbit.train.state as state_module
from lowbit.data import ArrayLoader, load_dataset
from lowbit.errors import CheckpointError, ConfigError, NumericsError
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.train import LossTerm, MetricsWriter, TrainConfig, evaluate, fit, load_checkpoint, read_metrics

EPOCH_FIELDS = {"epoch", "lr", "train_loss", "train_task_loss", "train_acc", "test_loss", "test_acc", "epoch_s"}


@pytest.fixture(scope="module")
def splits():
    return load_dataset("synthetic", seed=0, num_classes=4, in_channels=1, input_size=8, n_train=128, n_test=64)


def loaders(splits, seed: int = 0, batch_size: int = 32):
    train = ArrayLoader(splits.train, batch_size=batch_size, shuffle=True, seed=seed, mean=splits.mean, std=splits.std)
    test = ArrayLoader(splits.test, batch_size=64, shuffle=False, mean=splits.mean, std=splits.std)
    return train, test


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 4))


def quantized_model(seed: int = 0) -> nn.Module:
    model = tiny_model(seed)
    quantize_(model, Plan.uniform(2, 2), "lsq")
    return model


def config(epochs: int = 2, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=kw.pop("lr", 0.05), **kw)


def assert_state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


# ---- learning ---------------------------------------------------------------------------------

def test_fit_learns(splits):
    model = tiny_model()
    train, test = loaders(splits)
    _, acc_before = evaluate(model, test)
    result = fit(model, train, config(epochs=3), eval_loader=test)
    assert len(result.history) == 3
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["train_acc"] >= first["train_acc"]
    assert last["test_acc"] > acc_before
    assert last["test_acc"] >= 0.6
    loss, acc = evaluate(model, test)
    assert acc == pytest.approx(last["test_acc"]) and loss == pytest.approx(last["test_loss"])
    assert result.resumed_from_epoch is None and result.last is last


def test_evaluate_restores_mode_and_handles_empty(splits):
    model = tiny_model()
    model.train()
    _, test = loaders(splits)
    evaluate(model, test)
    assert model.training
    model.eval()
    evaluate(model, test)
    assert not model.training
    loss, acc = evaluate(model, [])
    assert math.isnan(loss) and math.isnan(acc)


def test_train_config_validation():
    for bad in (dict(epochs=-1), dict(lr=0.0), dict(optimizer="rmsprop"), dict(schedule="linear"),
                dict(weight_decay=-1.0), dict(device="tpu")):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


# ---- loss terms ------------------------------------------------------------------------------

def l2(model: nn.Module) -> torch.Tensor:
    return sum((p ** 2).sum() for p in model.parameters())


def test_zero_weight_term_changes_nothing(splits):
    train, _ = loaders(splits)
    plain = tiny_model()
    fit(plain, train, config())
    with_term = tiny_model()
    result = fit(with_term, train, config(), loss_terms=[LossTerm("l2", l2, weight=0.0)])
    assert_state_equal(plain, with_term)
    assert all(r["l2"] > 0 for r in result.history)
    weighted = tiny_model()
    fit(weighted, train, config(), loss_terms=[LossTerm("l2", l2, weight=0.01)])
    assert not torch.equal(weighted[0].weight, plain[0].weight)


def test_term_mean_is_logged_and_weight_schedule_applied(splits):
    train, _ = loaders(splits)
    calls: list[int] = []
    progress_seen: list[float] = []

    def counting(model):
        calls.append(1)
        return torch.tensor(float(len(calls)))  # 1, 2, 3, ... per step

    def schedule(progress: float) -> float:
        progress_seen.append(progress)
        return 0.0

    plain = tiny_model()
    fit(plain, train, config())
    model = tiny_model()
    result = fit(model, train, config(), loss_terms=[LossTerm("counter", counting, weight=schedule)])
    steps = len(train)
    assert steps == 4
    # epoch 0 sees values 1..4, epoch 1 sees 5..8: the record holds their mean
    assert result.history[0]["counter"] == pytest.approx(2.5)
    assert result.history[1]["counter"] == pytest.approx(6.5)
    assert progress_seen == [i / (2 * steps) for i in range(2 * steps)]
    # weight 0 -> total loss equals the task loss
    for record in result.history:
        assert record["train_loss"] == record["train_task_loss"]
    assert_state_equal(plain, model)


def test_term_weight_scales_reported_loss(splits):
    train, _ = loaders(splits)
    result = fit(tiny_model(), train, config(epochs=1),
                 loss_terms=[LossTerm("const", lambda m: torch.tensor(3.0), weight=0.5)])
    record = result.history[0]
    assert record["const"] == pytest.approx(3.0)
    assert record["train_loss"] == pytest.approx(record["train_task_loss"] + 1.5)


def test_callbacks_add_fields(splits):
    train, _ = loaders(splits)
    result = fit(tiny_model(), train, config(), callbacks=[lambda epoch, model: {"custom": epoch * 10}])
    assert [r["custom"] for r in result.history] == [0, 10]


# ---- metrics.jsonl -----------------------------------------------------------------------------

def test_metrics_jsonl_one_line_per_epoch(splits, tmp_path):
    train, test = loaders(splits)
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    result = fit(tiny_model(), train, config(epochs=3), eval_loader=test,
                 loss_terms=[LossTerm("l2", l2, weight=1e-4)], metrics=writer)
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert records == read_metrics(path)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for record in records:
        assert EPOCH_FIELDS | {"l2"} <= set(record)
        assert 0.0 <= record["train_acc"] <= 1.0 and 0.0 <= record["test_acc"] <= 1.0
        assert record["epoch_s"] >= 0 and record["lr"] > 0
    # the lr is the one used during the epoch: cosine from 0.05
    assert records[0]["lr"] == pytest.approx(0.05)
    assert records[1]["lr"] < records[0]["lr"]
    for record, kept in zip(records, result.history):
        assert record["train_loss"] == pytest.approx(kept["train_loss"])


def test_metrics_eval_name(splits):
    train, test = loaders(splits)
    result = fit(tiny_model(), train, config(epochs=1), eval_loader=test, eval_name="val")
    assert {"val_loss", "val_acc"} <= set(result.history[0]) and "test_acc" not in result.history[0]


# ---- determinism and resume ----------------------------------------------------------------------

def test_same_seed_gives_bitwise_equal_weights(splits):
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    fit(a, loaders(splits, seed=0)[0], config())
    fit(b, loaders(splits, seed=0)[0], config())
    fit(c, loaders(splits, seed=1)[0], config())
    assert_state_equal(a, b)
    assert not torch.equal(a[0].weight, c[0].weight)


class Interrupt(Exception):
    pass


def crash_at(epoch_index: int):
    def callback(epoch: int, model: nn.Module) -> dict:
        if epoch == epoch_index:
            raise Interrupt(f"simulated crash in epoch {epoch}")
        return {}
    return callback


@pytest.mark.parametrize("make_model", [tiny_model, quantized_model], ids=["float", "lsq-w2a2"])
def test_resume_equals_uninterrupted(splits, tmp_path, make_model):
    train, test = loaders(splits)
    cfg = config(epochs=3)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"

    reference = make_model(0)
    ref_result = fit(reference, train, cfg, eval_loader=test, checkpoint_path=ref_dir / "c.ckpt",
                     metrics=MetricsWriter(ref_dir / "metrics.jsonl"))

    interrupted = make_model(0)
    with pytest.raises(Interrupt):
        fit(interrupted, train, cfg, eval_loader=test, callbacks=[crash_at(1)],
            checkpoint_path=run_dir / "c.ckpt", metrics=MetricsWriter(run_dir / "metrics.jsonl"))
    assert load_checkpoint(run_dir / "c.ckpt")["epoch"] == 0

    torch.manual_seed(1234)  # the resumed process starts with other RNG state and other weights
    resumed = make_model(7)
    if make_model is quantized_model:
        assert not bool(resumed[2].input_quantizer.initialized)  # LSQ's data-dependent init is restored
    result = fit(resumed, train, cfg, eval_loader=test, checkpoint_path=run_dir / "c.ckpt", resume=True,
                 metrics=MetricsWriter(run_dir / "metrics.jsonl"))
    assert result.resumed_from_epoch == 0
    assert_state_equal(reference, resumed)
    assert [r["epoch"] for r in result.history] == [0, 1, 2]

    ref_lines, lines = read_metrics(ref_dir / "metrics.jsonl"), read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    for got, want in zip(lines, ref_lines):
        got.pop("epoch_s"), want.pop("epoch_s")
        assert got == want
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in ref_result.history]
    assert load_checkpoint(run_dir / "c.ckpt")["epoch"] == 2


def test_resume_drops_metrics_written_after_last_checkpoint(splits, tmp_path, monkeypatch):
    """A crash between writing an epoch's metrics and its checkpoint: the line is not duplicated."""
    train, _ = loaders(splits)
    cfg = config(epochs=3)
    real_save = state_module.save_checkpoint

    def crashing_save(path, payload):
        if payload["epoch"] == 1:
            raise Interrupt("crash while saving epoch 1")
        real_save(path, payload)

    monkeypatch.setattr(state_module, "save_checkpoint", crashing_save)
    with pytest.raises(Interrupt):
        fit(tiny_model(), train, cfg, checkpoint_path=tmp_path / "c.ckpt",
            metrics=MetricsWriter(tmp_path / "metrics.jsonl"))
    monkeypatch.undo()
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]
    # a torn last line (crash while appending) must not break resume either
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "train_lo')
    fit(tiny_model(), train, cfg, checkpoint_path=tmp_path / "c.ckpt", resume=True,
        metrics=MetricsWriter(tmp_path / "metrics.jsonl"))
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2]


def test_resume_without_checkpoint_or_mismatched(splits, tmp_path):
    train, _ = loaders(splits)
    with pytest.raises(CheckpointError, match="resume"):
        fit(tiny_model(), train, config(), checkpoint_path=tmp_path / "none.ckpt", resume=True)
    with pytest.raises(CheckpointError, match="resume"):
        fit(tiny_model(), train, config(), resume=True)
    fit(tiny_model(), train, config(epochs=1), checkpoint_path=tmp_path / "c.ckpt")
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(CheckpointError, match="does not match"):
        fit(other, train, config(), checkpoint_path=tmp_path / "c.ckpt", resume=True)


def test_checkpoint_payload(splits, tmp_path):
    train, _ = loaders(splits)
    fit(tiny_model(), train, config(epochs=2), checkpoint_path=tmp_path / "c.ckpt",
        checkpoint_extra={"note": "hello"})
    state = load_checkpoint(tmp_path / "c.ckpt")
    assert state["kind"] == "train-state" and state["epoch"] == 1 and state["note"] == "hello"
    assert {"model", "optimizer", "scheduler", "rng", "history"} <= set(state)
    assert len(state["history"]) == 2


# ---- numerics --------------------------------------------------------------------------------

def test_nan_loss_raises_and_writes_no_checkpoint_for_that_epoch(splits, tmp_path):
    train, _ = loaders(splits)
    steps = len(train)
    calls = []

    def nan_in_second_epoch(model):
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) == steps + 2 else 0.0)

    with pytest.raises(NumericsError, match=r"step 2") as info:
        fit(tiny_model(), train, config(epochs=3), loss_terms=[LossTerm("bad", nan_in_second_epoch)],
            checkpoint_path=tmp_path / "c.ckpt", metrics=MetricsWriter(tmp_path / "metrics.jsonl"))
    assert "epoch 2" in str(info.value) and "non-finite" in str(info.value)
    assert load_checkpoint(tmp_path / "c.ckpt")["epoch"] == 0
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt", "metrics.jsonl"]


def test_nan_loss_in_first_epoch_writes_no_checkpoint(splits, tmp_path):
    train, _ = loaders(splits)
    with pytest.raises(NumericsError, match="step 1"):
        fit(tiny_model(), train, config(), loss_terms=[LossTerm("bad", lambda m: torch.tensor(float("inf")))],
            checkpoint_path=tmp_path / "c.ckpt")
    assert not (tmp_path / "c.ckpt").exists()


def test_non_finite_weights_are_not_checkpointed(splits, tmp_path):
    train, _ = loaders(splits)

    def poison(epoch, model):
        if epoch == 1:
            with torch.no_grad():
                model[0].weight[0, 0, 0, 0] = float("nan")
        return {}

    with pytest.raises(NumericsError, match="non-finite"):
        fit(tiny_model(), train, config(epochs=3), callbacks=[poison], checkpoint_path=tmp_path / "c.ckpt")
    state = load_checkpoint(tmp_path / "c.ckpt")
    assert state["epoch"] == 0 and torch.isfinite(state["model"]["0.weight"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda(splits, tmp_path):
    """On CUDA the checkpoint's RNG states must come back as CPU tensors, and the AMP scaler is restored."""
    train, test = loaders(splits)
    cfg = config(epochs=2, device="cuda")
    with pytest.raises(Interrupt):
        fit(tiny_model(), train, cfg, callbacks=[crash_at(1)], checkpoint_path=tmp_path / "c.ckpt")
    state = load_checkpoint(tmp_path / "c.ckpt")
    assert state["scaler"]  # AMP is on by default on CUDA
    model = tiny_model(5)
    result = fit(model, train, cfg, eval_loader=test, checkpoint_path=tmp_path / "c.ckpt", resume=True)
    assert result.resumed_from_epoch == 0 and len(result.history) == 2
    assert all(t.is_cuda for t in model.state_dict().values())
