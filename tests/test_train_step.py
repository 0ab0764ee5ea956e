"""The shared training step (lowbit.train.step) and its users: ``Stepper`` (warm-up, clipping, the
LR schedule), ``train_steps`` / ``train_budget`` (a caller's own loss and batch shape, a step
budget, raise or stop on a non-finite loss), fit's train state piece, and DCQ's sections and the
search's per-plan fine-tune going through the same step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit.distill.section_training as section_training
import lowbit.search.finetune as search_finetune
from lowbit.data import ArrayLoader, load_dataset
from lowbit.distill import DCQConfig, SectionJob, TeacherFeatures, make_students, split, train_section
from lowbit.errors import CheckpointError, ConfigError, DataError, NumericsError
from lowbit.plan import Plan
from lowbit.search import FineTuneEvaluator
from lowbit.train import (LossTerm, NonFiniteLoss, Stepper, TrainConfig, build_optimizer, train_budget,
                          train_steps)
from lowbit.train.replicas import SingleProcess, replicas
from lowbit.train.state import TrainState
from search_support import small_model, small_space

SGD = TrainConfig(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0)


def linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def cross_entropy(model: nn.Module):
    return lambda batch: F.cross_entropy(model(batch[0]), batch[1])


class Epochs(list):
    """A list of batches that records the epochs it was set to, like an ArrayLoader."""

    def __init__(self, items) -> None:
        super().__init__(items)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


@pytest.fixture
def count_steps(monkeypatch) -> list[int]:
    """Every Stepper.step call, by optimizer step index."""
    calls: list[int] = []
    real = Stepper.step

    def step(self, loss, index=0):
        calls.append(index)
        return real(self, loss, index)

    monkeypatch.setattr(Stepper, "step", step)
    return calls


# ---- Stepper ---------------------------------------------------------------------------------

def test_stepper_step_is_zero_grad_backward_step() -> None:
    model, plain = linear(), linear()
    stepper, optimizer = Stepper(model, SGD), build_optimizer(plain, SGD)
    for x, y in batches(3):
        stepper.step(F.cross_entropy(model(x), y))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), y).backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))


def test_warm_up_scales_the_lr_of_its_steps_only() -> None:
    model = linear()
    stepper = Stepper(model, SGD, warmup_steps=4)
    (x, y), = batches(1)
    for index, factor in ((0, 0.25), (3, 1.0), (9, 1.0)):
        before = model.weight.detach().clone()
        stepper.step(F.cross_entropy(model(x), y), index)
        assert torch.allclose(model.weight, before - 0.1 * factor * model.weight.grad)
        assert stepper.lr == 0.1  # the schedule's LR is put back after the warm step


def test_gradients_are_clipped_to_grad_clip() -> None:
    model = linear()
    stepper = Stepper(model, TrainConfig(lr=0.1, grad_clip=0.01))
    (x, y), = batches(1)
    stepper.step(100 * F.cross_entropy(model(x), y))
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert norm == pytest.approx(0.01, rel=1e-4)


def test_end_epoch_returns_the_epochs_lr_and_state_round_trips() -> None:
    model = linear()
    stepper = Stepper(model, SGD)  # cosine over 2 epochs
    (x, y), = batches(1)
    stepper.step(F.cross_entropy(model(x), y))
    assert stepper.end_epoch() == 0.1 and stepper.lr == pytest.approx(0.05)
    other = Stepper(linear(), SGD)
    other.load_state_dict(stepper.state_dict())
    assert other.lr == stepper.lr and other.scheduler.last_epoch == 1


# ---- train_steps / train_budget ----------------------------------------------------------------

def test_train_steps_takes_the_callers_loss_on_its_batch_shape_and_adds_the_terms_after_it() -> None:
    model = linear()
    order: list[str] = []
    triples = [(x, torch.randn(4, 2), y) for x, y in batches(3)]  # (x, target, y), as DCQ's features

    def loss(batch):
        order.append("loss")
        x, target, _ = batch
        return F.mse_loss(model(x), target)

    def term(m):
        order.append("term")
        return m.weight.pow(2).sum()

    run = train_steps(Stepper(model, SGD), triples, loss, terms=[LossTerm("l2", term, 0.5)])
    assert run.steps == 3 and not run.diverged and order == ["loss", "term"] * 3
    assert run.loss_sum > 0


def test_non_finite_loss_raises_or_stops_before_the_step(count_steps) -> None:
    data = batches(4)
    data[2] = (torch.full((4, 3), float("nan")), data[2][1])
    model = linear()
    with pytest.raises(NonFiniteLoss, match=r"section 1, epoch 2, step 3") as info:
        train_steps(Stepper(model, SGD), data, cross_entropy(model), where="section 1, epoch 2")
    assert isinstance(info.value, NumericsError) and count_steps == [0, 1]
    weights = copy.deepcopy(model.state_dict())
    run = train_steps(Stepper(model, SGD), data[2:], cross_entropy(model), on_nonfinite="stop")
    assert run.diverged and run.steps == 0 and count_steps == [0, 1]
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # nothing stepped
    with pytest.raises(ConfigError, match="on_nonfinite"):
        train_steps(Stepper(model, SGD), data, cross_entropy(model), on_nonfinite="ignore")


def test_budget_runs_over_epochs_and_stops_mid_epoch(count_steps) -> None:
    model, loader = linear(), Epochs(batches(3))
    run = train_budget(Stepper(model, SGD), loader, cross_entropy(model), steps=7)
    assert run.steps == 7 and loader.epochs == [0, 1, 2] and count_steps == list(range(7))
    with pytest.raises(DataError, match="my loader yields no batches"):
        train_budget(Stepper(model, SGD), Epochs([]), cross_entropy(model), steps=2, name="my loader")


# ---- fit's pieces ------------------------------------------------------------------------------

def test_train_state_round_trip_with_a_mid_epoch_state(tmp_path) -> None:
    model = linear()
    stepper = Stepper(model, SGD)
    stepper.step(F.cross_entropy(model(batches(1)[0][0]), batches(1)[0][1]))
    partial = {"epoch": 1, "steps": 2, "seen": 8, "n_batches": 2, "running_loss": 1.5, "elapsed_s": 0.1,
               "correct": torch.tensor(3), "sums": {"loss": torch.tensor(1.5, dtype=torch.float64)}}
    TrainState(tmp_path / "c.ckpt", model, stepper, {"note": 1}).save(0, [{"epoch": 0}], partial=lambda: partial)
    fresh = linear(seed=1)
    fresh_stepper = Stepper(fresh, SGD)
    resumed = TrainState(tmp_path / "c.ckpt", fresh, fresh_stepper).restore()
    assert resumed.last_epoch == 0 and resumed.history == [{"epoch": 0}] and resumed.partial["steps"] == 2
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_stepper.optimizer.state_dict()["state"].keys() == stepper.optimizer.state_dict()["state"].keys()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        TrainState(tmp_path / "missing.ckpt", fresh, fresh_stepper).restore()
    assert type(replicas()) is SingleProcess  # no process group here


# ---- the users -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    splits = load_dataset("synthetic", seed=0, num_classes=10, input_size=8, n_train=96, n_test=32, noise=0.1)
    return splits, ArrayLoader(splits.train, batch_size=32, shuffle=True, seed=0, mean=splits.mean, std=splits.std)


def test_dcq_sections_use_the_shared_step_and_find_the_aux_terms_once(data, monkeypatch, count_steps) -> None:
    found, term_calls = [], []
    real = section_training.aux_loss_terms

    def spy(model):
        terms = real(model)
        found.append(len(terms))
        return [LossTerm(t.name, lambda m, fn=t.fn: term_calls.append(1) or fn(m)) for t in terms]

    monkeypatch.setattr(section_training, "aux_loss_terms", spy)
    _, loader = data
    sections = split(small_model().eval(), sections=2)
    students, _ = make_students(sections, Plan.uniform(2, 4), "pact")  # PACT: a quantizer aux term
    features = TeacherFeatures(sections, loader)
    config = DCQConfig(train=TrainConfig(epochs=2, lr=0.01))
    result = train_section(SectionJob(1, students[1], features, config))
    assert found == [1] and len(term_calls) == len(count_steps) == 2 * len(loader)
    assert [r["epoch"] for r in result.history] == [0, 1] and "train_acc" in result.history[-1]
    with torch.no_grad():
        next(students[0].parameters()).fill_(float("nan"))
    with pytest.raises(NumericsError, match=r"non-finite loss \(nan\) at section 1, epoch 1, step 1"):
        train_section(SectionJob(0, students[0], features, config))


def test_search_fine_tune_uses_the_shared_step_and_counts_divergence(data, monkeypatch, count_steps) -> None:
    splits, loader = data
    found = []
    real = search_finetune.aux_loss_terms
    monkeypatch.setattr(search_finetune, "aux_loss_terms", lambda model: found.append(1) or real(model))
    val = ArrayLoader(splits.test, batch_size=32, shuffle=False, mean=splits.mean, std=splits.std)
    space = small_space()
    ev = FineTuneEvaluator(small_model(), space, loader, val, steps=5, quantizer="pact")
    assert 0.0 <= ev(space.uniform(3)) <= 1.0
    assert count_steps == list(range(5)) and found == [1] and ev.diverged == 0
    poisoned = [batch for batch in loader]
    poisoned[1] = (torch.full_like(poisoned[1][0], float("nan")), poisoned[1][1])
    count_steps.clear()
    ev = FineTuneEvaluator(small_model(), space, poisoned, val, steps=5)
    accuracies = [ev(space.uniform(2)), ev(space.uniform(3))]  # the search goes on after a divergence
    assert ev.diverged == 2 and count_steps == [0, 0] and all(0.0 <= a <= 1.0 for a in accuracies)
